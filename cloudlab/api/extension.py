"""cloudlab's own actions, as a small extension of EC2's service model (botocore's JSON format).

EC2 has no usage report, so ``DescribeUsage`` is described here in the same terms as EC2's actions:
the server merges this into the model it parses and serialises with, and a client merges it into the
model botocore builds its client from (:func:`extended_loader`), so both ends stay shape-driven.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import botocore
from botocore.loaders import Loader

SERVICE_NAME = "ec2"

OPERATIONS: dict[str, Any] = {
    "DescribeUsage": {
        "name": "DescribeUsage",
        "http": {"method": "POST", "requestUri": "/"},
        "input": {"shape": "DescribeUsageRequest"},
        "output": {"shape": "DescribeUsageResult"},
        "documentation": "<p>cloudlab: usage computed from the accounting ledger (administrators only).</p>",
    },
    "DescribeNodeUsage": {
        "name": "DescribeNodeUsage",
        "http": {"method": "POST", "requestUri": "/"},
        "input": {"shape": "DescribeNodeUsageRequest"},
        "output": {"shape": "DescribeNodeUsageResult"},
        "documentation": "<p>cloudlab: each node's powered-on and powered-off hours (administrators only).</p>",
    },
}

SHAPES: dict[str, Any] = {
    "DescribeNodeUsageRequest": {
        "type": "structure",
        "members": {
            "Since": {"shape": "String", "documentation": "<p>Window start: ISO time or a duration ago (7d).</p>"},
            "Until": {"shape": "String", "documentation": "<p>Window end (default now), as Since.</p>"},
        },
    },
    "DescribeNodeUsageResult": {
        "type": "structure",
        "members": {
            "Since": {"shape": "DateTime", "locationName": "since"},
            "Until": {"shape": "DateTime", "locationName": "until"},
            "NodeUsageRows": {"shape": "NodeUsageRowList", "locationName": "nodeUsageRowSet"},
        },
    },
    "NodeUsageRowList": {"type": "list", "member": {"shape": "NodeUsageRow", "locationName": "item"}},
    "NodeUsageRow": {
        "type": "structure",
        "members": {
            "Node": {"shape": "String", "locationName": "node"},
            "Cluster": {"shape": "String", "locationName": "cluster"},
            "PoweredOnHours": {"shape": "Double", "locationName": "poweredOnHours"},
            "PoweredOffHours": {"shape": "Double", "locationName": "poweredOffHours"},
            "PowerOns": {"shape": "Integer", "locationName": "powerOns"},
            "Power": {"shape": "String", "locationName": "power"},
        },
    },
    "DescribeUsageRequest": {
        "type": "structure",
        "members": {
            "User": {"shape": "String", "documentation": "<p>Only this user's usage.</p>"},
            "Since": {"shape": "String", "documentation": "<p>Window start: ISO time or a duration ago (7d).</p>"},
            "Until": {"shape": "String", "documentation": "<p>Window end (default now), as Since.</p>"},
            "GroupBy": {"shape": "String", "documentation": "<p>user (default), type, day or instance.</p>"},
        },
    },
    "DescribeUsageResult": {
        "type": "structure",
        "members": {
            "GroupBy": {"shape": "String", "locationName": "groupBy"},
            "Since": {"shape": "DateTime", "locationName": "since"},
            "Until": {"shape": "DateTime", "locationName": "until"},
            "UsageRows": {"shape": "UsageRowList", "locationName": "usageRowSet"},
            "Total": {"shape": "UsageRow", "locationName": "total"},
        },
    },
    "UsageRowList": {"type": "list", "member": {"shape": "UsageRow", "locationName": "item"}},
    "UsageRow": {
        "type": "structure",
        "members": {
            "Key": {"shape": "String", "locationName": "key"},
            "User": {"shape": "String", "locationName": "user"},
            "InstanceType": {"shape": "String", "locationName": "instanceType"},
            "Instances": {"shape": "Integer", "locationName": "instances"},
            "InstanceHours": {"shape": "Double", "locationName": "instanceHours"},
            "VcpuHours": {"shape": "Double", "locationName": "vcpuHours"},
            "GbHours": {"shape": "Double", "locationName": "gbHours"},
            "NetRxBytes": {"shape": "Long", "locationName": "netRxBytes"},
            "NetTxBytes": {"shape": "Long", "locationName": "netTxBytes"},
            "StorageGbHours": {"shape": "Double", "locationName": "storageGbHours"},
            "S3BytesIn": {"shape": "Long", "locationName": "s3BytesIn"},
            "S3BytesOut": {"shape": "Long", "locationName": "s3BytesOut"},
            "EbsGbHours": {"shape": "Double", "locationName": "ebsGbHours"},
        },
    },
}


def extend_model(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of EC2's model description ``data`` with cloudlab's actions added (``data`` is not changed)."""
    clash = (set(OPERATIONS) & set(data["operations"])) | (set(SHAPES) & set(data["shapes"]))
    if clash:
        raise RuntimeError(f"cloudlab's model extension clashes with EC2's model: {sorted(clash)}")
    return data | {"operations": data["operations"] | OPERATIONS, "shapes": data["shapes"] | SHAPES}


class ExtendedLoader(Loader):
    """botocore's loader (its own data only), answering EC2's model with cloudlab's actions added."""

    def load_service_model(self, service_name: str, type_name: str, api_version: str | None = None) -> Any:
        data = super().load_service_model(service_name, type_name, api_version)
        if service_name == SERVICE_NAME and type_name == "service-2":
            return extend_model(data)
        return data


def extended_loader() -> ExtendedLoader:
    """A loader that reads only botocore's own data directory (as the server does)."""
    data_dir = str(Path(botocore.__file__).parent / "data")
    return ExtendedLoader(extra_search_paths=[data_dir], include_default_search_paths=False)
