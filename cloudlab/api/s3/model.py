"""S3's service model, as shipped with botocore (``s3/2006-03-01/service-2.json``): the wire dialect.

Routing, request parsing and response serialising all read this model, so the face speaks exactly
the restXml that the installed botocore (and so boto3 and the AWS CLI) speaks. What the model does
not say, AWS's API reference does, and is kept here as data: the root element of each response
document (botocore ignores it; s3cmd, rclone and browsers read it).
"""

from __future__ import annotations

import threading
from pathlib import Path

import botocore
from botocore.loaders import Loader
from botocore.model import OperationModel, ServiceModel

API_VERSION = "2006-03-01"
XML_NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"

#: Root elements of response documents without a payload member (from the S3 API reference).
ROOT_ELEMENTS = {
    "ListBuckets": "ListAllMyBucketsResult",
    "ListObjects": "ListBucketResult",
    "ListObjectsV2": "ListBucketResult",
    "ListObjectVersions": "ListVersionsResult",
    "CreateMultipartUpload": "InitiateMultipartUploadResult",
    "CompleteMultipartUpload": "CompleteMultipartUploadResult",
    "ListMultipartUploads": "ListMultipartUploadsResult",
    "ListParts": "ListPartsResult",
    "GetBucketAcl": "AccessControlPolicy",
    "GetObjectAcl": "AccessControlPolicy",
    "GetBucketVersioning": "VersioningConfiguration",
    "GetBucketCors": "CORSConfiguration",
    "GetBucketTagging": "Tagging",
    "GetObjectTagging": "Tagging",
    "DeleteObjects": "DeleteResult",
    "GetBucketLocation": "LocationConstraint",
}

_lock = threading.Lock()
_model: ServiceModel | None = None


def service_model() -> ServiceModel:
    """The S3 model from botocore's own data folder, loaded once per process."""
    global _model
    with _lock:
        if _model is None:
            data_dir = str(Path(botocore.__file__).parent / "data")
            loader = Loader(extra_search_paths=[data_dir], include_default_search_paths=False)
            data = loader.load_service_model("s3", "service-2", api_version=API_VERSION)
            _model = ServiceModel(data, service_name="s3")
        return _model


def operation_model(name: str) -> OperationModel:
    return service_model().operation_model(name)
