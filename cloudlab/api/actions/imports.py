"""ImportSnapshot and DescribeImportSnapshotTasks: EBS snapshots from disk images in Walrus."""

from __future__ import annotations

from typing import Any

from cloudlab.api import filters
from cloudlab.api.actions import Context, action
from cloudlab.clc.snapshot_imports import SnapshotImports

TASK_FILTERS: dict[str, filters.Getter] = {
    "task-state": lambda t: t["SnapshotTaskDetail"]["Status"],
    "import-task-id": lambda t: t["ImportTaskId"],
}


@action("ImportSnapshot")
def import_snapshot(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    imports = ctx.clc.service(SnapshotImports)
    task_id = imports.start(ctx.user, req.get("DiskContainer") or {}, req.get("Description") or "")
    [task] = imports.describe(ctx.user, [task_id])
    return task


@action("DescribeImportSnapshotTasks")
def describe_import_snapshot_tasks(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    tasks = ctx.clc.service(SnapshotImports).describe(ctx.user, req.get("ImportTaskIds") or None)
    tasks = filters.apply_filters(tasks, req.get("Filters"), TASK_FILTERS, "DescribeImportSnapshotTasks")
    page, token = filters.paginate(tasks, req.get("MaxResults"), req.get("NextToken"))
    return {"ImportSnapshotTasks": page, "NextToken": token}
