"""cloudlab: a small, real, EC2-compatible private cloud for experiments."""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """``cloudlab.connect()`` for notebooks, imported on first use: the controllers (which import this
    package too) must not pay for boto3 and pandas, nor depend on the client."""
    if name == "connect":
        from cloudlab.client import connect

        return connect
    raise AttributeError(f"module 'cloudlab' has no attribute {name!r}")
