"""EC2's service model, as shipped with botocore: the single source of truth for the wire protocol.

Parsing requests and serialising responses are driven by this model (never by per-action code), so
cloudlab speaks exactly the dialect that boto3 and the AWS CLI of the installed botocore speak.
The model is large (~3,400 shapes); it is loaded once per process, on first use, and botocore
resolves shapes lazily, so only the operations actually used cost memory.
"""

from __future__ import annotations

import threading
from pathlib import Path

import botocore
from botocore.loaders import Loader
from botocore.model import OperationModel, ServiceModel

from cloudlab.api.errors import invalid_action
from cloudlab.api.extension import extend_model

SERVICE_NAME = "ec2"
API_VERSION = "2016-11-15"
#: The namespace EC2 puts on every response document (with the trailing slash EC2 uses; botocore's
#: model spells it without, and botocore's parser ignores namespaces anyway).
XML_NAMESPACE = f"http://ec2.amazonaws.com/doc/{API_VERSION}/"

_lock = threading.Lock()
_service_model: ServiceModel | None = None
_operation_names: frozenset[str] = frozenset()


def service_model() -> ServiceModel:
    """Return the EC2 :class:`ServiceModel`, loading it on first call (thread-safe, once)."""
    global _service_model, _operation_names
    model = _service_model
    if model is not None:
        return model
    with _lock:
        if _service_model is None:
            # Only botocore's own data directory: a stray ~/.aws/models/ec2 must not silently change
            # the dialect the cloud speaks.
            data_dir = str(Path(botocore.__file__).parent / "data")
            loader = Loader(extra_search_paths=[data_dir], include_default_search_paths=False)
            data = loader.load_service_model(SERVICE_NAME, "service-2", api_version=API_VERSION)
            data = extend_model(data)  # cloudlab's own actions (DescribeUsage), in the same format
            loaded = ServiceModel(data, service_name=SERVICE_NAME)
            _operation_names = frozenset(loaded.operation_names)
            _service_model = loaded
        return _service_model


def operation_names() -> frozenset[str]:
    """All action names in the model (e.g. ``RunInstances``)."""
    service_model()
    return _operation_names


def operation_model(name: str) -> OperationModel:
    """Return the model of action ``name``; an unknown name is EC2's ``InvalidAction``.

    botocore caches operation models on the service model, so repeated calls are cheap.
    """
    model = service_model()
    if not isinstance(name, str) or name not in _operation_names:
        raise invalid_action(str(name))
    return model.operation_model(name)
