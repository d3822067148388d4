"""Accounting reports as pandas DataFrames, fetched from a running cloud's ``DescribeUsage`` action (admins only).

botocore does the protocol: a client built from EC2's model plus cloudlab's extension
(:mod:`cloudlab.api.extension`) signs the request and parses the answer by shape, as for any EC2 action.
The reports themselves are computed by the cloud controller (``cloudlab.clc.usage``); this module only
asks for them and shapes the answer into frames.

>>> df = fetch_usage(cloud.boto3_kwargs(), by="type", since="7d")   # doctest: +SKIP
>>> df.attrs["total"]["instance_hours"]                              # doctest: +SKIP
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import botocore.session
import pandas as pd
from botocore.config import Config

from cloudlab.api.extension import extended_loader

COLUMNS = ("instances", "instance_hours", "vcpu_hours", "gb_hours", "net_rx_bytes", "net_tx_bytes",
           "storage_gb_hours", "s3_bytes_in", "s3_bytes_out", "ebs_gb_hours")  # fmt: skip
_FIELDS = {
    "Key": "key",
    "User": "user",
    "InstanceType": "instance_type",
    "Instances": "instances",
    "InstanceHours": "instance_hours",
    "VcpuHours": "vcpu_hours",
    "GbHours": "gb_hours",
    "NetRxBytes": "net_rx_bytes",
    "NetTxBytes": "net_tx_bytes",
    "StorageGbHours": "storage_gb_hours",
    "S3BytesIn": "s3_bytes_in",
    "S3BytesOut": "s3_bytes_out",
    "EbsGbHours": "ebs_gb_hours",
}
_DEFAULTS = {"instances": 0, "instance_hours": 0.0, "vcpu_hours": 0.0, "gb_hours": 0.0, "net_rx_bytes": 0}
_DEFAULTS |= {"net_tx_bytes": 0, "storage_gb_hours": 0.0, "s3_bytes_in": 0, "s3_bytes_out": 0, "ebs_gb_hours": 0.0}


_SESSION_LOCK = threading.Lock()


@functools.cache
def _session() -> botocore.session.Session:
    """One session per process: loading the EC2 model and the extension takes about a second, once."""
    session = botocore.session.Session()
    session.register_component("data_loader", extended_loader())
    return session


def usage_client(ec2_client_kwargs: dict[str, Any]) -> Any:
    """A botocore EC2 client that also knows cloudlab's actions (``describe_usage``)."""
    kwargs = dict(ec2_client_kwargs)
    kwargs.setdefault("config", Config(retries={"max_attempts": 2}))
    with _SESSION_LOCK:  # botocore sessions are not safe to create clients from concurrently
        return _session().create_client("ec2", **kwargs)


def _row(item: dict[str, Any]) -> dict[str, Any]:
    row = {_FIELDS[k]: v for k, v in item.items() if k in _FIELDS}
    return {**_DEFAULTS, **row}


def fetch_usage(
    ec2_client_kwargs: dict[str, Any],
    *,
    user: str | None = None,
    since: str | None = None,
    until: str | None = None,
    by: str = "user",
) -> pd.DataFrame:
    """The usage report as a DataFrame: one row per user, type, UTC day or instance (column named so).

    Columns: the grouping, ``instances``, ``instance_hours``, ``vcpu_hours``, ``gb_hours``,
    ``net_rx_bytes``, ``net_tx_bytes`` (by instance also ``user`` and ``instance_type``).
    ``df.attrs`` holds ``total`` (a dict of the same metrics, computed on its own by the cloud: the
    columns sum to it), ``since``, ``until`` and ``by``. ``since``/``until`` take ISO dates or times, or
    durations ago such as ``"2h"`` or ``"7d"``. Errors are botocore ``ClientError`` (e.g.
    ``UnauthorizedOperation`` for a non-admin, ``InvalidParameterValue`` for a bad time or grouping).
    """
    params: dict[str, Any] = {"GroupBy": by}
    for name, value in (("User", user), ("Since", since), ("Until", until)):
        if value is not None:
            params[name] = str(value)
    answer = usage_client(ec2_client_kwargs).describe_usage(**params)
    rows = [_row(item) for item in answer.get("UsageRows", [])]
    extra = ["user", "instance_type"] if by == "instance" else []
    frame = pd.DataFrame(rows, columns=["key", *extra, *COLUMNS]).rename(columns={"key": by})
    frame = frame.astype({"instances": "int64", "net_rx_bytes": "int64", "net_tx_bytes": "int64",
                          "s3_bytes_in": "int64", "s3_bytes_out": "int64"})  # fmt: skip
    total = _row(answer.get("Total", {}))
    total.pop("key", None)
    frame.attrs.update(
        {"total": total, "since": answer.get("Since"), "until": answer.get("Until"), "by": answer.get("GroupBy", by)}
    )
    return frame


NODE_COLUMNS = ("node", "cluster", "powered_on_hours", "powered_off_hours", "power_ons", "power")
_NODE_FIELDS = {"Node": "node", "Cluster": "cluster", "PoweredOnHours": "powered_on_hours",
                "PoweredOffHours": "powered_off_hours", "PowerOns": "power_ons", "Power": "power"}  # fmt: skip


def fetch_node_usage(
    ec2_client_kwargs: dict[str, Any], *, since: str | None = None, until: str | None = None
) -> pd.DataFrame:
    """Node-hours as a DataFrame, one row per node: ``powered_on_hours``, ``powered_off_hours`` (POWERSAVE's
    saving), ``power_ons`` and the node's last ``power`` (``on``/``off``); ``df.attrs`` has ``since``/``until``."""
    params = {name: str(value) for name, value in (("Since", since), ("Until", until)) if value is not None}
    answer = usage_client(ec2_client_kwargs).describe_node_usage(**params)
    rows = [
        {_NODE_FIELDS[k]: v for k, v in item.items() if k in _NODE_FIELDS} for item in answer.get("NodeUsageRows", [])
    ]
    frame = pd.DataFrame(rows, columns=list(NODE_COLUMNS))
    frame.attrs.update({"since": answer.get("Since"), "until": answer.get("Until"), "by": "node"})
    return frame


__all__ = ["COLUMNS", "NODE_COLUMNS", "fetch_node_usage", "fetch_usage", "usage_client"]
