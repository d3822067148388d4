"""The EC2 Query protocol layer, checked against botocore itself.

botocore is the reference implementation of the client side of the dialect: whatever its EC2
serializer sends, :func:`parse_request` must give back exactly; whatever :func:`serialize_response`
writes, botocore's EC2 parser must read back exactly. The tests do that for hand-written realistic
requests, for every operation in the model (deterministic "every member set" samples), and for
hypothesis-generated values; then they throw garbage at the parsers.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
from collections.abc import Mapping
from typing import Any

import pytest
from botocore.awsrequest import AWSRequest
from botocore.model import ServiceModel, Shape
from botocore.parsers import create_parser
from botocore.serialize import create_serializer
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cloudlab.api import query_input, query_output, query_templates
from cloudlab.api.errors import ApiError, ResponseShapeError
from cloudlab.api.model import XML_NAMESPACE, operation_model, operation_names, service_model
from cloudlab.api.protocol import parse_body, parse_request, serialize_error, serialize_response

UTC = dt.UTC
SERIALIZER = create_serializer("ec2")  # validates like boto3 does (min lengths, min values, types)
RAW_SERIALIZER = create_serializer("ec2", include_validation=False)  # for generated, model-agnostic values
PARSER = create_parser("ec2")
FORM = "application/x-www-form-urlencoded; charset=utf-8"


# -- helpers ------------------------------------------------------------------------------------


def wire(op_name: str, params: Mapping[str, Any], validate: bool = True) -> tuple[str, bytes]:
    """What boto3 puts on the wire for ``params``: (content type, body bytes)."""
    serializer = SERIALIZER if validate else RAW_SERIALIZER
    request = serializer.serialize_to_request(dict(params), operation_model(op_name))
    prepared = AWSRequest(method="POST", url="http://cloud/", data=request["body"], headers=request["headers"])
    body = prepared.prepare().body
    return request["headers"]["Content-Type"], body.encode() if isinstance(body, str) else body


def round_trip(op_name: str, params: Mapping[str, Any], validate: bool = True) -> dict[str, Any]:
    """Serialise with botocore, send through form decoding, parse with cloudlab."""
    content_type, body = wire(op_name, params, validate)
    return parse_request(operation_model(op_name), parse_body(content_type, body, ""))


def botocore_parse(op_name: str, xml: bytes, status: int = 200) -> dict[str, Any]:
    op = operation_model(op_name)
    parsed = PARSER.parse({"body": xml, "headers": {}, "status_code": status}, op.output_shape)
    parsed.pop("ResponseMetadata", None)
    return parsed


def output_round_trip(op_name: str, output: Mapping[str, Any]) -> dict[str, Any]:
    return botocore_parse(op_name, serialize_response(operation_model(op_name), output, "req-1"))


def without_none(value: Any) -> Any:
    """What a client sees of an output: members set to None are simply absent."""
    if isinstance(value, dict):
        return {k: without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_none(v) for v in value if v is not None]
    return value


def error_code(excinfo: pytest.ExceptionInfo[ApiError]) -> str:
    return excinfo.value.code


T0 = dt.datetime(2024, 5, 17, 9, 30, 15, 123000, tzinfo=UTC)


# -- requests: realistic round trips ------------------------------------------------------------

REQUESTS: list[tuple[str, dict[str, Any]]] = [
    (
        "RunInstances",
        {
            "ImageId": "ami-0123456789abcdef0",
            "MinCount": 1,
            "MaxCount": 3,
            "InstanceType": "m1.small",
            "KeyName": "my key",
            "UserData": base64.b64encode(b"#!/bin/sh\necho hi\n").decode(),
            "Placement": {"AvailabilityZone": "cloudlab-1a", "Tenancy": "default"},
            "SecurityGroupIds": ["sg-1", "sg-2"],
            "SecurityGroups": ["default"],
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "web 1"}, {"Key": "a&b", "Value": ""}]},
                {"ResourceType": "volume", "Tags": [{"Key": "k", "Value": "v"}]},
            ],
            "BlockDeviceMappings": [{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 8, "DeleteOnTermination": True}}],
            "NetworkInterfaces": [
                {
                    "DeviceIndex": 0,
                    "AssociatePublicIpAddress": False,
                    "Ipv6Addresses": [{"Ipv6Address": "fd00::1"}],
                    "PrivateIpAddresses": [{"PrivateIpAddress": "10.0.0.5", "Primary": True}],
                }
            ],
            "Monitoring": {"Enabled": False},
            "DryRun": True,
            "ClientToken": "token-1",
        },
    ),
    (
        "DescribeInstances",
        {
            "Filters": [
                {"Name": "instance-state-name", "Values": ["running", "pending"]},
                {"Name": "tag:Name", "Values": ["web*"]},
            ],
            "InstanceIds": [f"i-{n:017x}" for n in range(12)],
            "MaxResults": 50,
            "NextToken": "eyJvZmZzZXQiOiA1MH0=",
        },
    ),
    ("TerminateInstances", {"InstanceIds": ["i-1", "i-2", "i-3"]}),
    ("StopInstances", {"InstanceIds": ["i-1"], "Force": True, "Hibernate": False}),
    ("RebootInstances", {"InstanceIds": ["i-1"], "DryRun": False}),
    (
        "AuthorizeSecurityGroupIngress",
        {
            "GroupId": "sg-1",
            "IpPermissions": [
                {
                    "IpProtocol": "tcp",
                    "FromPort": 22,
                    "ToPort": 22,
                    "IpRanges": [{"CidrIp": "0.0.0.0/0", "Description": "ssh from anywhere"}],
                    "Ipv6Ranges": [{"CidrIpv6": "::/0"}],
                    "UserIdGroupPairs": [{"GroupId": "sg-2", "UserId": "123456789012"}],
                },
                {"IpProtocol": "-1", "FromPort": -1, "ToPort": -1, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]},
            ],
        },
    ),
    (
        "AuthorizeSecurityGroupIngress",
        {"GroupName": "web", "IpProtocol": "icmp", "FromPort": -1, "ToPort": -1, "CidrIp": "192.0.2.0/24"},
    ),
    ("CreateTags", {"Resources": ["i-1", "ami-2"], "Tags": [{"Key": "Name", "Value": "ünïcødé ☃"}, {"Key": "x"}]}),
    ("DeleteTags", {"Resources": ["i-1"], "Tags": [{"Key": "Name"}]}),
    (
        "DescribeImages",
        {
            "Owners": ["self", "amazon"],
            "ImageIds": ["ami-1", "ami-2"],
            "ExecutableUsers": ["all"],
            "IncludeDeprecated": True,
        },
    ),
    (
        "RegisterImage",
        {
            "Name": "cloudlab-default",
            "Description": "busybox + iperf3",
            "Architecture": "x86_64",
            "KernelId": "aki-1",
            "RamdiskId": "ari-1",
            "RootDeviceName": "/dev/vda",
            "VirtualizationType": "paravirtual",
            "BlockDeviceMappings": [{"DeviceName": "/dev/vda", "VirtualName": "ephemeral0"}],
        },
    ),
    ("ImportKeyPair", {"KeyName": "laptop", "PublicKeyMaterial": b"ssh-ed25519 AAAAC3Nz\x00\xff laptop"}),
    ("CreateKeyPair", {"KeyName": "k1", "KeyType": "ed25519", "KeyFormat": "pem"}),
    ("DescribeKeyPairs", {"KeyNames": ["a", "b"], "IncludePublicKey": True}),
    (
        "DescribeAddresses",
        {
            "PublicIps": ["198.51.100.1"],
            "AllocationIds": ["eipalloc-1"],
            "Filters": [{"Name": "domain", "Values": ["standard"]}],
        },
    ),
    ("AllocateAddress", {"Domain": "vpc"}),
    ("AssociateAddress", {"InstanceId": "i-1", "PublicIp": "198.51.100.1", "AllowReassociation": True}),
    ("DescribeAvailabilityZones", {"ZoneNames": ["cloudlab-1a"], "AllAvailabilityZones": True}),
    ("DescribeRegions", {"RegionNames": ["cloudlab-1"], "AllRegions": False}),
    ("GetConsoleOutput", {"InstanceId": "i-1", "Latest": True}),
    ("CreateSecurityGroup", {"GroupName": "web", "Description": "web servers"}),
    ("DescribeSecurityGroups", {"GroupIds": ["sg-1"], "GroupNames": ["default"], "MaxResults": 5}),
    (
        "ModifyInstanceAttribute",
        {
            "InstanceId": "i-1",
            "InstanceType": {"Value": "m1.large"},
            "Groups": ["sg-1", "sg-2"],
            "UserData": {"Value": b"\x01\x02"},
        },
    ),
    (
        "RequestSpotInstances",
        {
            "InstanceCount": 2,
            "SpotPrice": "0.05",
            "ValidFrom": T0,
            "ValidUntil": T0 + dt.timedelta(days=1),
            "LaunchSpecification": {"ImageId": "ami-1", "SecurityGroupIds": ["sg-1"]},
        },
    ),
    (
        "RequestSpotFleet",
        {
            "SpotFleetRequestConfig": {
                "IamFleetRole": "arn:aws:iam::1:role/fleet",
                "TargetCapacity": 3,
                "SpotPrice": "0.1",
                "LaunchSpecifications": [
                    {
                        "ImageId": "ami-1",
                        "WeightedCapacity": 1.5,
                        "NetworkInterfaces": [{"DeviceIndex": 0, "Ipv6Addresses": [{"Ipv6Address": "fd00::2"}]}],
                        "TagSpecifications": [{"ResourceType": "instance", "Tags": [{"Key": "k", "Value": "v"}]}],
                    }
                ],
            }
        },
    ),
    ("DescribeInstanceTypes", {"InstanceTypes": ["m1.small", "m1.large"]}),
    ("CreateVolume", {"AvailabilityZone": "cloudlab-1a", "Size": 2**31 - 1, "Iops": -(2**31)}),
]


@pytest.mark.parametrize(("op_name", "params"), REQUESTS, ids=[f"{op}-{i}" for i, (op, _) in enumerate(REQUESTS)])
def test_request_round_trip(op_name: str, params: dict[str, Any]) -> None:
    assert round_trip(op_name, params) == params


def test_wire_names_follow_ec2_rules() -> None:
    """Pin the naming rules themselves, independently of botocore, on the usual suspects."""
    run = operation_model("RunInstances")
    params = {
        "MinCount": "1",
        "MaxCount": "1",
        "SecurityGroupId.1": "sg-1",  # InstanceIds-style: list member's locationName, capitalised
        "Placement.AvailabilityZone": "az",  # nested structure
        "TagSpecification.1.Tag.1.Key": "k",  # list of structures within a list of structures
        "NetworkInterface.1.Ipv6Addresses.1.Ipv6Address": "fd00::1",  # queryName beats locationName
        "UserData": "not base64 at all",  # a string shape: kept verbatim
    }
    assert parse_request(run, params) == {
        "MinCount": 1,
        "MaxCount": 1,
        "SecurityGroupIds": ["sg-1"],
        "Placement": {"AvailabilityZone": "az"},
        "TagSpecifications": [{"Tags": [{"Key": "k"}]}],
        "NetworkInterfaces": [{"Ipv6Addresses": [{"Ipv6Address": "fd00::1"}]}],
        "UserData": "not base64 at all",
    }
    # The locationName spelling (ipv6AddressesSet) is output-only; on input it names nothing.
    assert (
        "NetworkInterfaces"
        not in parse_request(
            run, {"MinCount": "1", "MaxCount": "1", "NetworkInterface.1.Ipv6AddressesSet.1.Ipv6Address": "x"}
        ).get("NetworkInterfaces", [{}])[0]
    )


def test_typed_parameter_values_are_tolerated() -> None:
    """botocore's serialised dict (ints, bools) can be fed straight in, handy in tests and tools."""
    body = SERIALIZER.serialize_to_request(
        {"MinCount": 1, "MaxCount": 2, "DisableApiTermination": True}, operation_model("RunInstances")
    )["body"]
    assert parse_request(operation_model("RunInstances"), body) == {
        "MinCount": 1,
        "MaxCount": 2,
        "DisableApiTermination": True,
    }


def test_list_indexes_sort_numerically_and_may_have_gaps() -> None:
    op = operation_model("TerminateInstances")
    params = {"InstanceId.10": "i-10", "InstanceId.2": "i-2", "InstanceId.1": "i-1", "InstanceId.7": "i-7"}
    assert parse_request(op, params) == {"InstanceIds": ["i-1", "i-2", "i-7", "i-10"]}


def test_ignores_protocol_auth_and_unknown_parameters() -> None:
    op = operation_model("DescribeInstances")
    params = {
        "Action": "DescribeInstances",
        "Version": "2016-11-15",
        "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
        "X-Amz-Signature": "ab" * 32,
        "AWSAccessKeyId": "AK",
        "Signature": "sig",
        "SignatureMethod": "HmacSHA256",
        "SignatureVersion": "2",
        "Timestamp": "2024-01-01T00:00:00Z",
        "Expires": "2024-01-01T00:00:00Z",
        "SomethingNew": "1",
        "Filter.1.Unknown": "x",
        "MaxResults": "5",
        "MaxResults.1": "ignored: a scalar has no indexed form",
        "InstanceId.1.Deeper": "ignored",
    }
    assert parse_request(op, params) == {"MaxResults": 5, "Filters": [{}]}


def test_value_and_prefix_under_the_same_name() -> None:
    op = operation_model("RunInstances")
    params = {
        "MinCount": "1",
        "MaxCount": "2",
        "Placement": "bare",
        "Placement.Tenancy": "default",
        "SecurityGroupId": "",
        "SecurityGroupId.1": "sg-1",
    }
    assert parse_request(op, params) == {
        "MinCount": 1,
        "MaxCount": 2,
        "Placement": {"Tenancy": "default"},
        "SecurityGroupIds": ["sg-1"],
    }


def test_bare_empty_list_marker_means_empty_list() -> None:
    op = operation_model("TerminateInstances")
    assert parse_request(op, {"InstanceId": ""}) == {"InstanceIds": []}


def test_typed_scalars() -> None:
    op = operation_model("RequestSpotInstances")
    parsed = parse_request(
        op,
        {
            "InstanceCount": "+7",
            "DryRun": "TRUE",
            "ValidFrom": "2024-05-17T11:30:15.5+02:00",
            "ValidUntil": "2024-05-17T09:30:15",
        },
    )
    assert parsed == {
        "InstanceCount": 7,
        "DryRun": True,
        "ValidFrom": dt.datetime(2024, 5, 17, 9, 30, 15, 500000, tzinfo=UTC),
        "ValidUntil": dt.datetime(2024, 5, 17, 9, 30, 15, tzinfo=UTC),  # naive: taken as UTC
    }
    assert parsed["ValidFrom"].tzinfo == UTC


# -- requests: errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op_name", "params", "missing"),
    [
        ("TerminateInstances", {}, "InstanceId"),
        ("GetConsoleOutput", {"Latest": "true"}, "InstanceId"),
        ("CreateTags", {"ResourceId.1": "i-1"}, "Tag"),
        ("ImportKeyPair", {"KeyName": "k"}, "PublicKeyMaterial"),
        ("RunInstances", {"MinCount": "1"}, "MaxCount"),
        ("RequestSpotFleet", {"SpotFleetRequestConfig.TargetCapacity": "1"}, "SpotFleetRequestConfig.IamFleetRole"),
        # elements that name nothing do not make the list present
        ("TerminateInstances", {"InstanceId.1.x": "scalar with children only"}, "InstanceId"),
    ],
)
def test_missing_parameter(op_name: str, params: dict[str, str], missing: str) -> None:
    op = operation_model(op_name)
    with pytest.raises(ApiError) as excinfo:
        parse_request(op, params)
    assert excinfo.value.code == "MissingParameter"
    assert excinfo.value.status == 400
    assert excinfo.value.message == f"The request must contain the parameter {missing}"


@pytest.mark.parametrize(
    ("op_name", "params", "named"),
    [
        ("DescribeInstances", {"MaxResults": "ten"}, "MaxResults"),
        ("DescribeInstances", {"MaxResults": "1_000"}, "MaxResults"),
        ("DescribeInstances", {"MaxResults": "１２"}, "MaxResults"),  # non-ASCII digits
        ("DescribeInstances", {"MaxResults": "2147483648"}, "MaxResults"),
        ("DescribeInstances", {"MaxResults": "9" * 5000}, "MaxResults"),
        ("DescribeInstances", {"MaxResults": ""}, "MaxResults"),
        ("DescribeInstances", {"DryRun": "yes"}, "DryRun"),
        ("DescribeInstances", {"DryRun": "1"}, "DryRun"),
        ("RequestSpotInstances", {"ValidFrom": "yesterday"}, "ValidFrom"),
        ("RequestSpotInstances", {"ValidFrom": "2024-13-01T00:00:00Z"}, "ValidFrom"),
        ("RequestSpotInstances", {"ValidFrom": "２０２４-01-01"}, "ValidFrom"),
        ("ImportKeyPair", {"KeyName": "k", "PublicKeyMaterial": "not*base64"}, "PublicKeyMaterial"),
        ("ImportKeyPair", {"KeyName": "k", "PublicKeyMaterial": "abc"}, "PublicKeyMaterial"),  # bad padding
        ("ImportKeyPair", {"KeyName": "k", "PublicKeyMaterial": "é"}, "PublicKeyMaterial"),
        ("TerminateInstances", {"InstanceId.0": "i-1"}, "InstanceId.0"),
        ("TerminateInstances", {"InstanceId.-1": "i-1"}, "InstanceId.-1"),
        ("TerminateInstances", {"InstanceId.01": "i-1"}, "InstanceId.01"),
        ("TerminateInstances", {"InstanceId.x": "i-1"}, "InstanceId.x"),
        ("TerminateInstances", {"InstanceId.1001": "i-1"}, "InstanceId.1001"),
        ("TerminateInstances", {"InstanceId.99999999999999999999": "i-1"}, "InstanceId.99999999999999999999"),
        ("TerminateInstances", {"InstanceId": "i-1"}, "InstanceId"),  # not indexed
        ("DescribeInstances", {"Filter.1.Value.0": "x"}, "Filter.1.Value.0"),
        (
            "RequestSpotFleet",
            {
                "SpotFleetRequestConfig.IamFleetRole": "r",
                "SpotFleetRequestConfig.TargetCapacity": "1",
                "SpotFleetRequestConfig.LaunchSpecifications.1.WeightedCapacity": "1,5",
            },
            "SpotFleetRequestConfig.LaunchSpecifications.1.WeightedCapacity",
        ),
    ],
)
def test_invalid_parameter_value(op_name: str, params: dict[str, str], named: str) -> None:
    with pytest.raises(ApiError) as excinfo:
        parse_request(operation_model(op_name), params)
    assert excinfo.value.code == "InvalidParameterValue"
    assert f"parameter {named} " in excinfo.value.message
    assert len(excinfo.value.message) < 300  # a huge value is not echoed back in full


def test_unknown_action_is_invalid_action() -> None:
    with pytest.raises(ApiError) as excinfo:
        operation_model("LaunchRockets")
    assert excinfo.value.code == "InvalidAction"
    assert "RunInstances" in operation_names()
    assert service_model() is service_model()  # loaded once


# -- requests: every operation in the model -----------------------------------------------------


class Sampler:
    """Deterministic 'every member set' values, distinct everywhere so that a swapped or misnamed
    member cannot go unnoticed."""

    def __init__(self, max_depth: int, list_size: int = 2, timestamp_ms: bool = False) -> None:
        self.n = 0
        self.max_depth = max_depth
        self.list_size = list_size
        self.timestamp_ms = timestamp_ms

    def value(self, shape: Shape, depth: int = 0) -> Any:
        self.n += 1
        n = self.n
        kind = shape.type_name
        if kind == "structure":
            if depth >= self.max_depth:
                return {}
            return {name: self.value(member, depth + 1) for name, member in shape.members.items()}
        if kind == "list":
            if depth >= self.max_depth:
                return []
            return [self.value(shape.member, depth + 1) for _ in range(self.list_size)]
        if kind == "map":
            return {f"k{n}": self.value(shape.value, depth + 1)}
        if kind == "string":
            return f"v{n}" if n % 5 else f"v{n} <&> é\t+%=/"
        if kind == "integer":
            return n if n % 2 else -n
        if kind == "long":
            return 2**40 + n
        if kind == "boolean":
            return n % 2 == 0
        if kind in ("float", "double"):
            return n + 0.25
        if kind == "timestamp":
            micro = (n % 1000) * 1000 if self.timestamp_ms else n % 1_000_000
            return dt.datetime(2020, 1, 1, tzinfo=UTC) + dt.timedelta(seconds=n, microseconds=micro)
        if kind == "blob":
            return bytes([n % 256, 0, 255]) + b"blob"
        raise AssertionError(kind)


def test_every_operation_request_round_trips() -> None:
    """All ~800 actions: botocore's EC2 serializer -> form body -> parse_request is the identity."""
    checked = 0
    for op_name in sorted(operation_names()):
        op = operation_model(op_name)
        if op.input_shape is None:
            continue
        params = Sampler(max_depth=99).value(op.input_shape)
        assert round_trip(op_name, params, validate=False) == params, op_name
        checked += 1
    assert checked > 700


def test_every_operation_response_round_trips() -> None:
    """All actions: serialize_response -> botocore's EC2 parser is the identity (cycles cut off)."""
    checked = 0
    for op_name in sorted(operation_names()):
        op = operation_model(op_name)
        if op.output_shape is None:
            xml = serialize_response(op, {}, "r")
            assert b"<return>true</return>" in xml
            continue
        output = Sampler(max_depth=7, timestamp_ms=True).value(op.output_shape)
        assert output_round_trip(op_name, output) == output, op_name
        checked += 1
    assert checked > 700


# -- requests: hypothesis-generated values ------------------------------------------------------


def strategy_for(shape: Shape, depth: int = 0) -> st.SearchStrategy[Any]:
    """Values for a shape as a boto3 user could pass them (lists non-empty: botocore sends nothing
    for an empty list, tested separately)."""
    kind = shape.type_name
    if kind == "structure":
        members = shape.members
        required = set(shape.required_members)
        if depth > 6:
            optional: dict[str, st.SearchStrategy[Any]] = {}
        else:
            optional = {n: strategy_for(m, depth + 1) for n, m in members.items() if n not in required}
        return st.fixed_dictionaries({n: strategy_for(members[n], depth + 1) for n in required}, optional=optional)
    if kind == "list":
        return st.lists(strategy_for(shape.member, depth + 1), min_size=1, max_size=3)
    if kind == "string":
        return st.text(max_size=12)
    if kind == "integer":
        return st.integers(-(2**31), 2**31 - 1)
    if kind == "long":
        return st.integers(-(2**63), 2**63 - 1)
    if kind == "boolean":
        return st.booleans()
    if kind in ("float", "double"):
        return st.floats(allow_nan=False)
    if kind == "timestamp":
        return st.datetimes(
            min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(2200, 1, 1), timezones=st.just(UTC)
        )
    if kind == "blob":
        return st.binary(max_size=24)
    raise AssertionError(kind)


_DROP = object()


def expected_after_wire(shape: Shape, value: Any) -> Any:
    """What survives botocore's serializer: structures that end up empty are not sent at all."""
    if shape.type_name == "structure":
        kept = {}
        for name, member_value in value.items():
            v = expected_after_wire(shape.members[name], member_value)
            if v is not _DROP:
                kept[name] = v
        if not kept:
            return _DROP
        missing = set(shape.required_members) - set(kept)
        assume(not missing)  # botocore would send a request EC2 must refuse; tested elsewhere
        return kept
    if shape.type_name == "list":
        items = [expected_after_wire(shape.member, v) for v in value]
        items = [v for v in items if v is not _DROP]
        return items if items else _DROP
    return value


HYPOTHESIS_OPS = [
    "RunInstances",
    "DescribeInstances",
    "AuthorizeSecurityGroupIngress",
    "CreateTags",
    "RegisterImage",
    "ImportKeyPair",
    "RequestSpotInstances",
    "RequestSpotFleet",
    "ModifyInstanceAttribute",
    "CreateVolume",
]


@pytest.mark.parametrize("op_name", HYPOTHESIS_OPS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.data())
def test_generated_requests_round_trip(op_name: str, data: st.DataObject) -> None:
    shape = operation_model(op_name).input_shape
    params = data.draw(strategy_for(shape))
    expected = expected_after_wire(shape, params)
    expected = {} if expected is _DROP else expected
    assert round_trip(op_name, params, validate=False) == expected


def test_empty_lists_are_not_sent_by_botocore_and_come_back_absent() -> None:
    assert round_trip("DescribeInstances", {"InstanceIds": [], "Filters": []}) == {}


def test_special_floats_round_trip() -> None:
    op_name = "RequestSpotFleet"
    params = {
        "SpotFleetRequestConfig": {
            "IamFleetRole": "r",
            "TargetCapacity": 1,
            "LaunchSpecifications": [
                {"WeightedCapacity": float("inf")},
                {"WeightedCapacity": float("-inf")},
                {"WeightedCapacity": 1e-300},
            ],
        }
    }
    assert round_trip(op_name, params) == params
    nan = round_trip(
        op_name,
        {
            "SpotFleetRequestConfig": {
                "IamFleetRole": "r",
                "TargetCapacity": 1,
                "LaunchSpecifications": [{"WeightedCapacity": float("nan")}],
            }
        },
    )
    assert nan["SpotFleetRequestConfig"]["LaunchSpecifications"][0]["WeightedCapacity"] != 0  # NaN != anything


# -- parse_body ---------------------------------------------------------------------------------


def test_parse_body_merges_query_and_body() -> None:
    params = parse_body(FORM, b"Action=RunInstances&Tag.1.Value=a+b%2Bc%20d&Empty=&Flag", "Version=2016-11-15&x=%C3%A9")
    assert params == {
        "Action": "RunInstances",
        "Version": "2016-11-15",
        "x": "é",
        "Tag.1.Value": "a b+c d",
        "Empty": "",
        "Flag": "",
    }


def test_parse_body_accepts_bytes_query_and_missing_content_type() -> None:
    assert parse_body(None, b"a=1", b"b=%E2%98%83") == {"a": "1", "b": "☃"}
    assert parse_body("application/json", b"", "a=1") == {"a": "1"}  # no body, nothing to misread


def test_parse_body_repeated_parameters() -> None:
    assert parse_body(FORM, b"Action=X&Action=X", "Action=X") == {"Action": "X"}
    with pytest.raises(ApiError) as excinfo:
        parse_body(FORM, b"InstanceId.1=i-1", "InstanceId.1=i-2")
    assert excinfo.value.code == "InvalidParameterValue"
    assert "InstanceId.1" in excinfo.value.message


@pytest.mark.parametrize(
    ("content_type", "body", "query", "code"),
    [
        (FORM, b"a=%zz", "", "MalformedQueryString"),
        (FORM, b"a=%4", "", "MalformedQueryString"),
        (FORM, b"a=%FF%FE", "", "MalformedQueryString"),  # percent-encoded, not UTF-8
        (FORM, b"a=\xff", "", "MalformedQueryString"),  # raw bytes, not UTF-8
        (FORM, b"", "a=%C3", "MalformedQueryString"),
        (FORM, b"", b"a=\xc3", "MalformedQueryString"),
        ("application/json", b'{"Action": "RunInstances"}', "", "InvalidParameterValue"),
    ],
)
def test_parse_body_rejects_malformed_input(content_type: str, body: bytes, query: str | bytes, code: str) -> None:
    with pytest.raises(ApiError) as excinfo:
        parse_body(content_type, body, query)
    assert excinfo.value.code == code


# -- responses ----------------------------------------------------------------------------------


def instance(n: int, state: tuple[int, str] = (16, "running"), **extra: Any) -> dict[str, Any]:
    item = {
        "InstanceId": f"i-{n:017x}",
        "ImageId": "ami-0000000000000001",
        "State": {"Code": state[0], "Name": state[1]},
        "PrivateDnsName": f"ip-10-0-0-{n % 250}.cloudlab.internal",
        "PublicDnsName": "",
        "StateTransitionReason": "",
        "KeyName": "laptop",
        "AmiLaunchIndex": 0,
        "ProductCodes": [],
        "InstanceType": "m1.small",
        "LaunchTime": T0 + dt.timedelta(seconds=n),
        "Placement": {"AvailabilityZone": "cloudlab-1a", "GroupName": "", "Tenancy": "default"},
        "KernelId": "aki-1",
        "RamdiskId": "ari-1",
        "Monitoring": {"State": "disabled"},
        "PrivateIpAddress": f"10.0.{n // 250}.{n % 250}",
        "PublicIpAddress": None,  # omitted, never an empty element
        "Architecture": "x86_64",
        "RootDeviceType": "instance-store",
        "BlockDeviceMappings": [],
        "VirtualizationType": "paravirtual",
        "Tags": [{"Key": "Name", "Value": f"vm <{n}> & co"}],
        "SecurityGroups": [{"GroupName": "default", "GroupId": "sg-1"}],
        "SourceDestCheck": True,
        "Hypervisor": "xen",
        "EbsOptimized": False,
        "CpuOptions": {"CoreCount": 1, "ThreadsPerCore": 1},
        "UsageOperationUpdateTime": T0,
    }
    item.update(extra)
    return item


def describe_instances_output(count: int) -> dict[str, Any]:
    return {
        "Reservations": [
            {"ReservationId": f"r-{n:017x}", "OwnerId": "000000000001", "Groups": [], "Instances": [instance(n)]}
            for n in range(count)
        ]
    }


OUTPUTS: list[tuple[str, dict[str, Any]]] = [
    ("DescribeInstances", describe_instances_output(3) | {"NextToken": "next"}),
    (
        "TerminateInstances",
        {
            "TerminatingInstances": [
                {
                    "InstanceId": "i-1",
                    "PreviousState": {"Code": 16, "Name": "running"},
                    "CurrentState": {"Code": 32, "Name": "shutting-down"},
                },
                {
                    "InstanceId": "i-2",
                    "PreviousState": {"Code": 48, "Name": "terminated"},
                    "CurrentState": {"Code": 48, "Name": "terminated"},
                },
            ]
        },
    ),
    (
        "RunInstances",
        {
            "ReservationId": "r-1",
            "OwnerId": "000000000001",
            "Groups": [{"GroupName": "default", "GroupId": "sg-1"}],
            "Instances": [instance(1, (0, "pending")), instance(2, (0, "pending"), UsageOperationUpdateTime=None)],
        },
    ),
    (
        "DescribeImages",
        {
            "Images": [
                {
                    "ImageId": "ami-1",
                    "ImageLocation": "cloudlab/default",
                    "State": "available",
                    "OwnerId": "000000000000",
                    "Public": True,
                    "Architecture": "x86_64",
                    "ImageType": "machine",
                    "KernelId": "aki-1",
                    "RamdiskId": "ari-1",
                    "Name": "default",
                    "Description": "busybox & iperf3",
                    "RootDeviceType": "instance-store",
                    "VirtualizationType": "paravirtual",
                    "Hypervisor": "xen",
                    "CreationDate": "2024-05-17T09:30:15.000Z",
                    "BlockDeviceMappings": [],
                    "Tags": [],
                    "ProductCodes": [{"ProductCodeId": "p", "ProductCodeType": "marketplace"}],
                },
                {"ImageId": "aki-1", "ImageType": "kernel", "State": "available", "Public": False},
            ]
        },
    ),
    (
        "DescribeAvailabilityZones",
        {
            "AvailabilityZones": [
                {
                    "ZoneName": "cloudlab-1a",
                    "State": "available",
                    "RegionName": "cloudlab-1",
                    "ZoneId": "clab1-az1",
                    "ZoneType": "availability-zone",
                    "OptInStatus": "opt-in-not-required",
                    "Messages": [{"Message": "2 nodes, 4 vCPUs free"}],
                },
            ]
        },
    ),
    (
        "DescribeRegions",
        {"Regions": [{"RegionName": "cloudlab-1", "Endpoint": "localhost:8773", "OptInStatus": "opt-in-not-required"}]},
    ),
    (
        "GetConsoleOutput",
        {
            "InstanceId": "i-1",
            "Timestamp": T0,
            "Output": base64.b64encode(b"Linux version 6.1\r\nlogin: \x1b[0m ok\n").decode(),
        },
    ),
    (
        "DescribeKeyPairs",
        {
            "KeyPairs": [
                {
                    "KeyPairId": "key-1",
                    "KeyName": "laptop",
                    "KeyFingerprint": "ab:cd",
                    "KeyType": "ed25519",
                    "Tags": [],
                    "PublicKey": "ssh-ed25519 AAAA laptop",
                    "CreateTime": T0,
                }
            ]
        },
    ),
    (
        "DescribeSecurityGroups",
        {
            "SecurityGroups": [
                {
                    "GroupId": "sg-1",
                    "GroupName": "default",
                    "Description": "default group",
                    "OwnerId": "1",
                    "VpcId": None,
                    "IpPermissions": [
                        {
                            "IpProtocol": "tcp",
                            "FromPort": 22,
                            "ToPort": 22,
                            "IpRanges": [{"CidrIp": "0.0.0.0/0", "Description": "ssh"}],
                            "Ipv6Ranges": [],
                            "PrefixListIds": [],
                            "UserIdGroupPairs": [{"GroupId": "sg-1", "UserId": "1"}],
                        },
                    ],
                    "IpPermissionsEgress": [],
                    "Tags": [{"Key": "k", "Value": "v"}],
                },
            ]
        },
    ),
    ("ImportKeyPair", {"KeyFingerprint": "ab:cd", "KeyName": "laptop", "KeyPairId": "key-1"}),
    (
        "CreateKeyPair",
        {
            "KeyName": "k",
            "KeyFingerprint": "f",
            "KeyMaterial": "-----BEGIN-----\nabc\n-----END-----\n",
            "KeyPairId": "key-2",
        },
    ),
    ("AllocateAddress", {"PublicIp": "198.51.100.1", "AllocationId": "eipalloc-1", "Domain": "standard"}),
    ("DescribeAddresses", {"Addresses": [{"PublicIp": "198.51.100.1", "InstanceId": "i-1", "Domain": "standard"}]}),
    ("CreateSecurityGroup", {"GroupId": "sg-2", "Tags": []}),
    ("AuthorizeSecurityGroupIngress", {"Return": True, "SecurityGroupRules": []}),
    ("DeleteKeyPair", {"Return": False}),
]


@pytest.mark.parametrize(("op_name", "output"), OUTPUTS, ids=[op for op, _ in OUTPUTS])
def test_response_round_trip(op_name: str, output: dict[str, Any]) -> None:
    assert output_round_trip(op_name, output) == without_none(output)


def test_response_xml_looks_like_ec2() -> None:
    xml = serialize_response(operation_model("DescribeInstances"), describe_instances_output(1), "req-42").decode()
    assert xml.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<DescribeInstancesResponse xmlns="')
    assert f'xmlns="{XML_NAMESPACE}"' in xml and XML_NAMESPACE.endswith("/")
    assert "<requestId>req-42</requestId>" in xml
    assert "<reservationSet><item><reservationId>" in xml
    assert "<instancesSet><item>" in xml
    assert "<instanceState><code>16</code><name>running</name></instanceState>" in xml
    assert "<launchTime>2024-05-17T09:30:15.123Z</launchTime>" in xml
    assert "<groupSet></groupSet>" in xml
    assert "<sourceDestCheck>true</sourceDestCheck>" in xml and "<ebsOptimized>false</ebsOptimized>" in xml
    assert "<value>vm &lt;0&gt; &amp; co</value>" in xml
    assert "ipAddress" not in xml  # PublicIpAddress=None is omitted
    assert "<tagSet><item><key>Name</key>" in xml
    assert xml.endswith("</DescribeInstancesResponse>")


def test_response_timestamps() -> None:
    op = operation_model("GetConsoleOutput")
    naive = dt.datetime(2024, 1, 2, 3, 4, 5, 678999)
    aware = dt.datetime(2024, 1, 2, 5, 4, 5, 678999, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    for value in (naive, aware, naive.replace(tzinfo=UTC).timestamp()):
        xml = serialize_response(op, {"InstanceId": "i-1", "Timestamp": value}, "r").decode()
        assert "<timestamp>2024-01-02T03:04:05.678Z</timestamp>" in xml
    parsed = botocore_parse("GetConsoleOutput", serialize_response(op, {"Timestamp": dt.date(2024, 1, 2)}, "r"))
    assert parsed["Timestamp"] == dt.datetime(2024, 1, 2, tzinfo=UTC)
    # stored strings are normalised to EC2's form; an unparseable one is a bug, not an empty element
    xml = serialize_response(op, {"Timestamp": "2024-01-02T05:04:05+02:00"}, "r").decode()
    assert "<timestamp>2024-01-02T03:04:05.000Z</timestamp>" in xml
    for bad in ("", "yesterday"):
        with pytest.raises(ResponseShapeError):
            serialize_response(op, {"Timestamp": bad}, "r")


def test_response_text_is_escaped_and_cleaned() -> None:
    op = operation_model("DescribeKeyPairs")
    nasty = "a<b>&c\r\nd\x00e\x07f\ud800g\ufffeh\U0001f600]]>"
    parsed = botocore_parse("DescribeKeyPairs", serialize_response(op, {"KeyPairs": [{"KeyName": nasty}]}, "r\x01<"))
    assert parsed["KeyPairs"][0]["KeyName"] == "a<b>&c\r\ndefgh\U0001f600]]>"


def test_response_rejects_unknown_members_and_wrong_types() -> None:
    op = operation_model("DescribeInstances")
    with pytest.raises(ResponseShapeError, match="Instance has no member .Colour."):
        serialize_response(op, {"Reservations": [{"Instances": [{"Colour": "blue"}]}]}, "r")
    with pytest.raises(ResponseShapeError, match="Statee"):
        serialize_response(op, {"Reservations": [{"Instances": [{"InstanceId": "i", "Statee": None}]}]}, "r")
    for bad in (
        {"Reservations": {"not": "a list"}},
        {"Reservations": [{"Instances": [{"AmiLaunchIndex": "0"}]}]},
        {"Reservations": [{"Instances": [{"AmiLaunchIndex": True}]}]},
        {"Reservations": [{"Instances": [{"EbsOptimized": 1}]}]},
        {"Reservations": [{"Instances": [{"InstanceId": 7}]}]},
        {"Reservations": [{"Instances": [{"LaunchTime": object()}]}]},
        {"Reservations": ["not a dict"]},
    ):
        with pytest.raises(ResponseShapeError):
            serialize_response(op, bad, "r")
    with pytest.raises(ResponseShapeError):
        serialize_response(operation_model("RebootInstances"), {"Return": True}, "r")


def test_response_ignores_response_metadata() -> None:
    op = operation_model("DescribeRegions")
    output = {"Regions": [], "ResponseMetadata": {"RequestId": "x", "HTTPStatusCode": 200}}
    assert botocore_parse("DescribeRegions", serialize_response(op, output, "r")) == {"Regions": []}


def test_response_metadata_request_id() -> None:
    op = operation_model("DescribeRegions")
    parsed = PARSER.parse(
        {"body": serialize_response(op, {}, "abc-123"), "headers": {}, "status_code": 200}, op.output_shape
    )
    assert parsed["ResponseMetadata"]["RequestId"] == "abc-123"


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("InvalidInstanceID.NotFound", "The instance ID 'i-1' does not exist"),
        ("AuthFailure", "AWS was not able to validate the provided access credentials"),
        ("InvalidParameterValue", "Value (<&>\x00\r\n\ud800) for parameter X is invalid."),
    ],
)
def test_error_envelope_parses_in_botocore(code: str, message: str) -> None:
    xml = serialize_error(code, message, "req-9")
    assert xml.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>')
    parsed = PARSER.parse(
        {"body": xml, "headers": {}, "status_code": 400}, operation_model("RunInstances").output_shape
    )
    assert parsed["Error"]["Code"] == code
    assert parsed["Error"]["Message"] == message.replace("\x00", "").replace("\ud800", "")
    assert parsed["ResponseMetadata"]["RequestId"] == "req-9"


def test_error_statuses() -> None:
    assert ApiError("DryRunOperation", "m").status == 412
    assert ApiError("UnauthorizedOperation", "m").status == 403
    assert ApiError("InternalError", "m").status == 500
    assert ApiError("AuthFailure", "m").status == 401
    assert ApiError("InvalidInstanceID.NotFound", "m").status == 400
    assert ApiError("InvalidParameterValue", "m", status=422).status == 422
    assert str(ApiError("A", "b")) == "A: b"


# -- maps (EC2's model has none today; the layer supports them for when it does) ----------------


def synthetic_op() -> Any:
    model = ServiceModel(
        {
            "metadata": {
                "protocol": "ec2",
                "apiVersion": "2016-11-15",
                "endpointPrefix": "zz",
                "xmlNamespace": "http://ec2.amazonaws.com/doc/2016-11-15",
            },
            "operations": {
                "ZzOp": {
                    "name": "ZzOp",
                    "http": {"method": "POST", "requestUri": "/"},
                    "input": {"shape": "ZzIn"},
                    "output": {"shape": "ZzOut"},
                }
            },
            "shapes": {
                "ZzIn": {
                    "type": "structure",
                    "members": {
                        "Attrs": {"shape": "ZzMap", "locationName": "attr"},
                        "Flat": {"shape": "ZzFlatMap"},
                        "Num": {"shape": "ZzInt"},
                    },
                },
                "ZzOut": {
                    "type": "structure",
                    "members": {
                        "Attrs": {"shape": "ZzMap", "locationName": "attrSet"},
                        "Items": {"shape": "ZzFlatList", "locationName": "items"},
                    },
                },
                "ZzMap": {"type": "map", "key": {"shape": "ZzStr"}, "value": {"shape": "ZzInt"}},
                "ZzFlatMap": {
                    "type": "map",
                    "flattened": True,
                    "key": {"shape": "ZzStr", "locationName": "name"},
                    "value": {"shape": "ZzStr", "locationName": "content"},
                },
                "ZzFlatList": {"type": "list", "flattened": True, "member": {"shape": "ZzStr", "locationName": "it"}},
                "ZzStr": {"type": "string"},
                "ZzInt": {"type": "integer"},
            },
        },
        service_name="zz",
    )
    return model.operation_model("ZzOp")


def test_maps_and_flattened_lists() -> None:
    op = synthetic_op()
    params = {"Attrs": {"a": 1, "b": 2}, "Flat": {"x": "1", "y": ""}, "Num": 3}
    body = RAW_SERIALIZER.serialize_to_request(params, op)["body"]
    assert body["Attr.entry.1.key"] == "a" and body["Flat.1.Name"] == "x"
    assert parse_request(op, {k: str(v) for k, v in body.items()}) == params
    with pytest.raises(ApiError) as excinfo:
        parse_request(op, {"Attr.entry.1.value": "1"})
    assert excinfo.value.code == "MissingParameter"
    output = {"Attrs": {"a": 1, "b": 2}, "Items": ["x", "y"]}
    xml = serialize_response(op, output, "r")
    parsed = PARSER.parse({"body": xml, "headers": {}, "status_code": 200}, op.output_shape)
    parsed.pop("ResponseMetadata")
    assert parsed == output


# -- fuzzing: only ApiError, ever ---------------------------------------------------------------

FUZZ_OPS = [
    "RunInstances",
    "DescribeInstances",
    "TerminateInstances",
    "AuthorizeSecurityGroupIngress",
    "ImportKeyPair",
    "RequestSpotFleet",
    "CreateTags",
]

_segments = st.one_of(
    st.sampled_from(
        [
            "Filter",
            "Name",
            "Value",
            "InstanceId",
            "MinCount",
            "MaxCount",
            "Placement",
            "AvailabilityZone",
            "TagSpecification",
            "Tag",
            "Key",
            "IpPermissions",
            "FromPort",
            "IpRanges",
            "CidrIp",
            "PublicKeyMaterial",
            "KeyName",
            "SpotFleetRequestConfig",
            "LaunchSpecifications",
            "WeightedCapacity",
            "ValidFrom",
            "DryRun",
            "MaxResults",
            "NetworkInterface",
            "Ipv6Addresses",
            "ResourceId",
            "1",
            "2",
            "0",
            "1001",
            "-1",
            "01",
            "",
            "entry",
            "\x00",
            "é",
        ]
    ),
    st.text(max_size=6),
)
_keys = st.lists(_segments, min_size=1, max_size=8).map(".".join)
_values = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", "true", "1", "-1", "2024-01-01T00:00:00Z", "AAAA", "9" * 30, "NaN", "1e999", " 1", "\ud800"]),
)


@settings(max_examples=300, deadline=None)
@given(op_name=st.sampled_from(FUZZ_OPS), params=st.dictionaries(_keys, _values, max_size=25))
def test_fuzz_parse_request_raises_only_api_error(op_name: str, params: dict[str, str]) -> None:
    with contextlib.suppress(ApiError):
        parse_request(operation_model(op_name), params)


@settings(max_examples=300, deadline=None)
@given(
    op_name=st.sampled_from(FUZZ_OPS),
    body=st.one_of(st.binary(max_size=200), _keys.map(lambda k: f"{k}=1&{k}.1=%41%zz%C3%A9+".encode(errors="replace"))),
    query=st.one_of(st.text(max_size=60), st.binary(max_size=60)),
    content_type=st.one_of(st.none(), st.just(FORM), st.text(max_size=20)),
)
def test_fuzz_parse_body_raises_only_api_error(op_name: str, body: bytes, query: Any, content_type: Any) -> None:
    try:
        params = parse_body(content_type, body, query)
        parse_request(operation_model(op_name), params)
    except ApiError:
        pass


def test_absurd_inputs_stay_cheap_and_clean() -> None:
    op = operation_model("DescribeInstances")
    deep = "Filter.1." + ".".join(["Value"] * 100_000)
    many = {f"InstanceId.{i}": f"i-{i}" for i in range(1, 1001)}
    assert parse_request(op, {deep: "x"}) == {}
    assert len(parse_request(op, many)["InstanceIds"]) == 1000
    assert parse_request(op, {"Filter.1.Name": "é" * 1_000_000})["Filters"][0]["Name"] == "é" * 1_000_000
    with pytest.raises(ApiError):
        parse_request(op, {"MaxResults": "1" * 1_000_000})


# -- speed --------------------------------------------------------------------------------------


def test_describe_instances_of_1000_round_trips_through_botocore() -> None:
    """A page of 1,000 instances serialises to a document botocore parses back whole. (How fast is a
    benchmark's question: `make bench` reports DescribeInstances of 1,000 against the bare SQL query.)"""
    from botocore.parsers import create_parser

    op = operation_model("DescribeInstances")
    output = describe_instances_output(1000)
    body = serialize_response(op, output, "r")
    parsed = create_parser("ec2").parse({"body": body, "headers": {}, "status_code": 200}, op.output_shape)
    ids = [i["InstanceId"] for r in parsed["Reservations"] for i in r["Instances"]]
    assert len(ids) == 1000 and len(set(ids)) == 1000
    params = {f"InstanceId.{i}": f"i-{i:017x}" for i in range(1, 1001)} | {"Action": "DescribeInstances"}
    assert len(parse_request(op, params)["InstanceIds"]) == 1000


def test_plans_are_cached() -> None:
    op = operation_model("DescribeInstances")
    serialize_response(op, {}, "r")
    parse_request(op, {})
    assert query_output._out_writers[op.output_shape.name] is query_output._output_writer(op.output_shape)
    assert query_templates._fast[op.output_shape.name] is query_templates.fast_writer(op.output_shape)
    assert query_input._in_ready[op.input_shape.name] is query_input._top_input_plan(op.input_shape)


def test_unix_timestamps_format_as_through_datetime() -> None:
    """Numbers take a fast path (the time of day formatted once a second); it must agree with datetime's
    own conversion to the millisecond, rounding included, for any Unix time, and leave other forms alone."""
    import math
    import random
    from datetime import UTC, datetime

    from cloudlab.api.query_output import format_timestamp

    def through_datetime(value: float) -> str:
        d = datetime.fromtimestamp(value, UTC)
        return f"{d:%Y-%m-%dT%H:%M:%S}.{d.microsecond // 1000:03d}Z"

    rng = random.Random(14)
    values: list[float] = [0, 1, 0.0005, 0.9995, 1.9999995, 1.0000005, 1.0000025, 2.5e-6, 2**34 - 0.5]
    values += [rng.uniform(0, 2**34) for _ in range(20_000)] + [rng.uniform(1.7e9, 1.8e9) for _ in range(20_000)]
    values += [math.floor(v) + k / 1e6 + e for v in values[:500] for k in (0, 999_999, 500_000) for e in (0, 5e-7)]
    assert [format_timestamp(v) for v in values] == [through_datetime(v) for v in values]
    assert format_timestamp(1_764_882_000) == "2025-12-04T21:00:00.000Z"
    assert format_timestamp(-1.5) == "1969-12-31T23:59:58.500Z"  # outside the fast path, as before
    assert format_timestamp(datetime(2026, 1, 2, 3, 4, 5, 678_900)) == "2026-01-02T03:04:05.678Z"


def test_http_dates_of_unix_times_as_through_datetime() -> None:
    """S3's Last-Modified header: numbers formatted once per whole second, the same as before, rounding
    into the next second included."""
    import random
    from datetime import UTC, datetime
    from email.utils import format_datetime

    from cloudlab.api.s3.restxml import http_date

    rng = random.Random(7)
    values = [0, 0.5, 1.9999995, 1.9999996, 2**34 - 1, -1.0] + [rng.uniform(0, 2**34) for _ in range(20_000)]
    expected = [format_datetime(datetime.fromtimestamp(v, UTC), usegmt=True) for v in values]
    assert [http_date(v) for v in values] == expected
    assert http_date(1.9999996) == "Thu, 01 Jan 1970 00:00:02 GMT"
