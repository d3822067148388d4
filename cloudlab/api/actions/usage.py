"""``DescribeUsage`` and ``DescribeNodeUsage`` (cloudlab's own actions, see :mod:`cloudlab.api.extension`):
the accounting report, and each node's powered-on time (what POWERSAVE saves)."""

from __future__ import annotations

import time
from typing import Any

from cloudlab.api.actions import Context, action
from cloudlab.api.errors import ApiError
from cloudlab.clc.node_hours import node_usage
from cloudlab.clc.usage import UsageError, parse_time, usage_report

GROUP_BY = ("user", "type", "day", "instance")


def _row(row: dict[str, Any]) -> dict[str, Any]:
    out = {
        "Key": row["key"],
        "Instances": row["instances"],
        "InstanceHours": row["instance_hours"],
        "VcpuHours": row["vcpu_hours"],
        "GbHours": row["gb_hours"],
        "NetRxBytes": row["net_rx_bytes"],
        "NetTxBytes": row["net_tx_bytes"],
        "StorageGbHours": row["storage_gb_hours"],
        "S3BytesIn": row["s3_bytes_in"],
        "S3BytesOut": row["s3_bytes_out"],
        "EbsGbHours": row["ebs_gb_hours"],
    }
    if "user" in row:
        out["User"] = row["user"]
    if "instance_type" in row:
        out["InstanceType"] = row["instance_type"]
    return out


@action("DescribeUsage")
def describe_usage(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    if not ctx.user.is_admin:
        raise ApiError("UnauthorizedOperation", "You are not authorized to perform this operation (admins only).")
    by = req.get("GroupBy") or "user"
    if by not in GROUP_BY:
        raise ApiError("InvalidParameterValue", f"GroupBy {by!r} is not one of: {', '.join(GROUP_BY)}")
    now = time.time()
    window = {"user": req.get("User") or None, "since": req.get("Since") or None, "until": req.get("Until") or None}
    try:
        rows = usage_report(ctx.clc.store, by=by, now=now, **window)
        total = usage_report(ctx.clc.store, by="total", now=now, **window)[0]
        since = parse_time(window["since"], now)
        until = parse_time(window["until"], now)
    except UsageError as exc:
        raise ApiError("InvalidParameterValue", str(exc)) from None
    result: dict[str, Any] = {
        "GroupBy": by,
        "Until": min(now, until) if until is not None else now,
        "UsageRows": [_row(r) for r in rows],
        "Total": _row(total),
    }
    if since is not None:
        result["Since"] = since
    return result


@action("DescribeNodeUsage")
def describe_node_usage(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    if not ctx.user.is_admin:
        raise ApiError("UnauthorizedOperation", "You are not authorized to perform this operation (admins only).")
    now = time.time()
    try:
        since = parse_time(req.get("Since") or None, now)
        until = parse_time(req.get("Until") or None, now)
    except UsageError as exc:
        raise ApiError("InvalidParameterValue", str(exc)) from None
    rows = node_usage(ctx.clc.store, since=since, until=until)
    result: dict[str, Any] = {
        "Until": min(now, until) if until is not None else now,
        "NodeUsageRows": [
            {
                "Node": r["node"],
                "Cluster": r["cluster"],
                "PoweredOnHours": r["on_hours"],
                "PoweredOffHours": r["off_hours"],
                "PowerOns": r["power_ons"],
                "Power": r["power"],
            }
            for r in rows
        ],
    }
    if since is not None:
        result["Since"] = since
    return result
