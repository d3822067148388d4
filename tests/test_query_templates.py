"""The templated XML writer (cloudlab.api.query_templates) writes exactly what the member-by-member writer
writes, and refuses exactly what it refuses, whatever the value: the fast path is only faster."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from cloudlab.api import query_output
from cloudlab.api.errors import ResponseShapeError
from cloudlab.api.model import operation_model, operation_names
from cloudlab.api.protocol import serialize_response
from tests.test_api_protocol import Sampler, describe_instances_output


def member_by_member(op_name: str, output: dict[str, Any]) -> bytes:
    """The response as the member-by-member writer alone writes it (the templates' fallback)."""
    op = operation_model(op_name)
    out = [
        f'{query_output._XML_DECLARATION}<{op_name}Response xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
        "<requestId>r</requestId>"
    ]
    query_output._top_output_writer(op.output_shape)(output, out, op_name)
    out.append(f"</{op_name}Response>")
    return "".join(out).encode()


def test_every_operation_writes_the_same_bytes() -> None:
    checked = 0
    for op_name in sorted(operation_names()):
        op = operation_model(op_name)
        if op.output_shape is None:
            continue
        output = Sampler(max_depth=7, timestamp_ms=True).value(op.output_shape)
        assert serialize_response(op, output, "r") == member_by_member(op_name, output), op_name
        checked += 1
    assert checked > 400


def test_odd_values_take_the_member_by_member_path_and_come_out_the_same() -> None:
    output = describe_instances_output(4)
    first, second, third, fourth = (r["Instances"][0] for r in output["Reservations"])
    first["KeyName"] = "needs <escaping> & \r\x01 dropping"  # a string that needs escaping
    second["KernelId"] = None  # a None member (left out)
    second["Placement"]["HostId"] = None
    third["SecurityGroups"] = ({"GroupId": "sg-1", "GroupName": "tuple"},)  # a tuple for a list
    fourth["LaunchTime"] = dt.datetime(2020, 1, 2, 3, 4, 5, 678000)
    output["NextToken"] = None
    op = operation_model("DescribeInstances")
    for _ in range(2):  # the second time through, the templates are built already
        body = serialize_response(op, output, "r")
        assert body == member_by_member("DescribeInstances", output)
    assert b"needs &lt;escaping&gt; &amp; &#13; dropping" in body and b"<kernelId>" in body


@pytest.mark.parametrize(
    ("member", "value"),
    [("AmiLaunchIndex", "zero"), ("EbsOptimized", 1), ("InstanceId", 7), ("Bogus", "x"), ("State", "running")],
)
def test_wrong_values_are_refused_with_the_same_error(member: str, value: Any) -> None:
    output = describe_instances_output(2)
    output["Reservations"][1]["Instances"][0][member] = value
    with pytest.raises(ResponseShapeError) as slow:
        member_by_member("DescribeInstances", output)
    with pytest.raises(ResponseShapeError) as fast:
        serialize_response(operation_model("DescribeInstances"), output, "r")
    assert str(fast.value) == str(slow.value)
