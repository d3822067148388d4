"""The AWS CLI (``awscli`` from PyPI, unmodified) against a cloud on libvirt's test driver.

Every call is ``aws --endpoint-url URL --output json ec2 ...`` with the credentials in the environment,
as a user types it. Most run the CLI's own entry point (``awscli.clidriver``, what the ``aws`` script
calls) in this process, sharing one loaded EC2 service model so that each call costs milliseconds
instead of a second of start-up; ``test_the_aws_command_itself`` runs the installed ``aws`` program.

Actions that other parts of cloudlab are still adding are tested here already, against EC2's
documented behaviour, and skipped (``not implemented yet``) until their handler is registered in
:data:`cloudlab.api.actions.ACTIONS`. The cloud is shared: every name is unique and every test
cleans up its instances.
"""

from __future__ import annotations

import base64
import io
import ipaddress
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from cloudlab.api.actions import ACTIONS
from tests.clouds import RunningCloud, unique, wait_states

clidriver = pytest.importorskip("awscli.clidriver", reason="the AWS CLI is not installed (pip install -e .[dev])")

AWS = Path(sys.executable).with_name("aws")
MISSING_INSTANCE = "i-0123456789abcdef0"
MISSING_IMAGE = "ami-0123456789abcdef0"


def needs(*actions: str) -> pytest.MarkDecorator:
    """Skip until every one of ``actions`` has a handler (evaluated when the tests are collected)."""
    missing = [a for a in actions if a not in ACTIONS]
    return pytest.mark.skipif(bool(missing), reason=f"not implemented yet: {', '.join(missing)}")


@dataclass
class Answer:
    code: int
    out: str
    err: str


class AwsCli:
    """``aws --endpoint-url URL --output json ARGS`` in-process, with the environment set by the fixture."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._loader: Any = None

    def run(self, *args: str) -> Answer:
        driver = clidriver.create_clidriver()
        if self._loader is None:
            self._loader = driver.session.get_component("data_loader")
        else:  # one parsed EC2 model for all calls (a fresh process would parse it again, slowly)
            driver.session.register_component("data_loader", self._loader)
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = driver.main(["--endpoint-url", self.url, "--output", "json", *args])
            except SystemExit as exc:  # the CLI's own argument checks (a missing required option)
                code = exc.code if isinstance(exc.code, int) else 255
        return Answer(code, out.getvalue(), err.getvalue())

    def __call__(self, *args: str) -> Any:
        """Run and return the parsed JSON output ({} for commands without output); fail on an error."""
        answer = self.run(*args)
        assert answer.code == 0, f"aws {' '.join(args)} failed ({answer.code}): {answer.err}"
        assert "Traceback" not in answer.err
        return json.loads(answer.out) if answer.out.strip() else {}

    def fails(self, *args: str, code: str) -> str:
        """Run, expect EC2's error ``code`` (as the CLI prints it), and return stderr."""
        answer = self.run(*args)
        assert answer.code != 0, f"aws {' '.join(args)} succeeded: {answer.out[:500]}"
        assert f"An error occurred ({code})" in answer.err, answer.err
        return answer.err


@pytest.fixture(scope="module")
def aws_env(sim_cloud: RunningCloud, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Admin credentials in the environment and nothing else of the user's AWS set-up."""
    creds = sim_cloud.credentials()
    empty = tmp_path_factory.mktemp("aws-home")
    env = {
        "AWS_ACCESS_KEY_ID": creds["access_key"],
        "AWS_SECRET_ACCESS_KEY": creds["secret_key"],
        "AWS_DEFAULT_REGION": sim_cloud.info["region"],
        "AWS_CONFIG_FILE": str(empty / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(empty / "credentials"),
        "AWS_MAX_ATTEMPTS": "1",  # a 5xx shows at once instead of after back-off
    }
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("AWS_") and name != "AWS_DATA_PATH":  # awscli's own data (set when imported)
                patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        yield env


@pytest.fixture(scope="module")
def aws(sim_cloud: RunningCloud, aws_env: dict[str, str]) -> AwsCli:
    return AwsCli(sim_cloud.url)


@pytest.fixture(scope="module")
def image(aws: AwsCli) -> dict[str, Any]:
    images = aws("ec2", "describe-images", "--filters", "Name=name,Values=cloudlab-default")["Images"]
    assert len(images) == 1, images
    return images[0]


@pytest.fixture(scope="module")
def admin(sim_cloud: RunningCloud) -> Any:
    """boto3, only to wait for states quickly; everything under test goes through the CLI."""
    return sim_cloud.ec2()


def instances_of(answer: dict[str, Any]) -> list[dict[str, Any]]:
    return [i for r in answer["Reservations"] for i in r["Instances"]]


@pytest.fixture
def run(aws: AwsCli, image: dict[str, Any], admin: Any) -> Iterator[Any]:
    """``run(*extra_args, count=1)``: run instances through the CLI, wait until running; terminated afterwards."""
    started: list[str] = []

    def launch(*extra: str, count: int = 1, wait: bool = True) -> list[str]:
        answer = aws("ec2", "run-instances", "--image-id", image["ImageId"], "--count", str(count), *extra)
        ids = [i["InstanceId"] for i in answer["Instances"]]
        started.extend(ids)
        if wait:
            wait_states(admin, ids, "running")
        return ids

    yield launch
    if started:
        admin.terminate_instances(InstanceIds=started)


# -- the installed program ---------------------------------------------------------------------------------------


@pytest.mark.skipif(not AWS.exists(), reason="the AWS CLI is not installed (pip install -e .[dev])")
def test_the_aws_command_itself(sim_cloud: RunningCloud, aws_env: dict[str, str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | aws_env
    base = [str(AWS), "--endpoint-url", sim_cloud.url, "--output", "json", "ec2"]

    def aws_process(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *args], capture_output=True, text=True, env=env, timeout=60, check=False)

    regions = aws_process("describe-regions")
    assert regions.returncode == 0, regions.stderr
    assert [r["RegionName"] for r in json.loads(regions.stdout)["Regions"]] == [sim_cloud.info["region"]]
    missing = aws_process("terminate-instances", "--instance-ids", MISSING_INSTANCE)
    assert missing.returncode != 0
    assert "An error occurred (InvalidInstanceID.NotFound) when calling the TerminateInstances operation" in (
        missing.stderr
    )
    assert "Traceback" not in missing.stderr


# -- regions, zones, images ---------------------------------------------------------------------------------------


def test_regions_and_zones(aws: AwsCli, sim_cloud: RunningCloud) -> None:
    region = sim_cloud.info["region"]
    assert [r["RegionName"] for r in aws("ec2", "describe-regions")["Regions"]] == [region]
    assert [r["RegionName"] for r in aws("ec2", "describe-regions", "--region-names", region)["Regions"]] == [region]
    zones = aws("ec2", "describe-availability-zones")["AvailabilityZones"]
    assert [(z["ZoneName"], z["State"], z["RegionName"]) for z in zones] == [(f"{region}a", "available", region)]
    picked = aws("ec2", "describe-availability-zones", "--zone-names", f"{region}a")["AvailabilityZones"]
    assert [z["ZoneName"] for z in picked] == [f"{region}a"]


def test_describe_images(aws: AwsCli, image: dict[str, Any]) -> None:
    assert image["State"] == "available" and image["ImageType"] == "machine"
    assert image["ImageId"].startswith("ami-") and image["KernelId"].startswith("aki-")
    by_id = aws("ec2", "describe-images", "--image-ids", image["ImageId"])["Images"]
    assert [i["ImageId"] for i in by_id] == [image["ImageId"]]
    kinds = {i["ImageType"] for i in aws("ec2", "describe-images")["Images"]}
    assert {"machine", "kernel", "ramdisk"} <= kinds
    kernels = aws("ec2", "describe-images", "--filters", "Name=image-type,Values=kernel")["Images"]
    assert kernels and all(i["ImageType"] == "kernel" for i in kernels)


# -- instances ------------------------------------------------------------------------------------------------------


def test_instance_lifecycle(aws: AwsCli, image: dict[str, Any], admin: Any) -> None:
    answer = aws("ec2", "run-instances", "--image-id", image["ImageId"], "--count", "2", "--instance-type", "t2.micro")
    assert answer["ReservationId"].startswith("r-")
    ids = [i["InstanceId"] for i in answer["Instances"]]
    try:
        assert len(ids) == 2 and all(re.fullmatch(r"i-[0-9a-f]{17}", i) for i in ids)
        assert {i["State"]["Name"] for i in answer["Instances"]} == {"pending"}
        assert {i["InstanceType"] for i in answer["Instances"]} == {"t2.micro"}
        wait_states(admin, ids, "running")
        running = aws(
            "ec2",
            "describe-instances",
            "--filters",
            "Name=instance-state-name,Values=running",
            f"Name=instance-id,Values={','.join(ids)}",
        )
        found = instances_of(running)
        assert sorted(i["InstanceId"] for i in found) == sorted(ids)
        assert all(i["ImageId"] == image["ImageId"] and i["Placement"]["AvailabilityZone"] for i in found)
        assert instances_of(aws("ec2", "describe-instances", "--filters", "Name=instance-type,Values=m9.none")) == []
        queried = aws(
            "ec2", "describe-instances", "--instance-ids", ids[0], "--query", "Reservations[].Instances[].InstanceId"
        )
        assert queried == [ids[0]]

        console = aws("ec2", "get-console-output", "--instance-id", ids[0])
        assert console["InstanceId"] == ids[0]
        assert aws("ec2", "reboot-instances", "--instance-ids", *ids) == {}
        assert {i["State"]["Name"] for i in wait_states(admin, ids, "running").values()} == {"running"}

        changes = aws("ec2", "terminate-instances", "--instance-ids", *ids)["TerminatingInstances"]
        assert sorted(c["InstanceId"] for c in changes) == sorted(ids)
        assert {c["PreviousState"]["Name"] for c in changes} == {"running"}
        assert {c["CurrentState"]["Name"] for c in changes} <= {"shutting-down", "terminated"}
        wait_states(admin, ids, "terminated")
        again = aws("ec2", "terminate-instances", "--instance-ids", *ids)["TerminatingInstances"]
        assert {(c["PreviousState"]["Name"], c["CurrentState"]["Name"]) for c in again} == {
            ("terminated", "terminated")
        }
    finally:
        admin.terminate_instances(InstanceIds=ids)


def test_describe_instances_pagination(aws: AwsCli, run: Any) -> None:
    ids = run(count=2, wait=False) + run(count=2, wait=False) + run(count=2, wait=False)  # 3 reservations
    only_these = ["--filters", f"Name=instance-id,Values={','.join(ids)}"]
    # --max-items counts the paginator's items (reservations) and hands back the CLI's own token
    first = aws("ec2", "describe-instances", *only_these, "--max-items", "2")
    assert len(first["Reservations"]) == 2 and first.get("NextToken")
    rest = aws("ec2", "describe-instances", *only_these, "--max-items", "2", "--starting-token", first["NextToken"])
    assert "NextToken" not in rest
    seen = [i["InstanceId"] for i in instances_of(first) + instances_of(rest)]
    assert sorted(seen) == sorted(ids)
    # --page-size is EC2's MaxResults: the CLI follows the NextTokens itself
    paged = aws("ec2", "describe-instances", *only_these, "--page-size", "5")
    assert sorted(i["InstanceId"] for i in instances_of(paged)) == sorted(ids)
    # one raw page, as EC2 returns it: MaxResults instances and a NextToken
    raw = aws("ec2", "describe-instances", *only_these, "--no-paginate", "--max-results", "5")
    assert len(instances_of(raw)) == 5 and raw["NextToken"]
    tail = aws(
        "ec2",
        "describe-instances",
        *only_these,
        "--no-paginate",
        "--max-results",
        "5",
        "--next-token",
        raw["NextToken"],
    )
    assert len(instances_of(tail)) == 1 and not tail.get("NextToken")


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["describe-instances", "--instance-ids", MISSING_INSTANCE], "InvalidInstanceID.NotFound"),
        (["describe-instances", "--instance-ids", "bogus"], "InvalidInstanceID.Malformed"),
        (["describe-instances", "--filters", "Name=no-such-filter,Values=x"], "InvalidParameterValue"),
        (["describe-instances", "--no-paginate", "--max-results", "3"], "InvalidParameterValue"),
        (["describe-instances", "--no-paginate", "--max-results", "5", "--next-token", "garbage"], "InvalidNextToken"),
        (["terminate-instances", "--instance-ids", MISSING_INSTANCE], "InvalidInstanceID.NotFound"),
        (["reboot-instances", "--instance-ids", MISSING_INSTANCE], "InvalidInstanceID.NotFound"),
        (["get-console-output", "--instance-id", MISSING_INSTANCE], "InvalidInstanceID.NotFound"),
        (["run-instances", "--image-id", MISSING_IMAGE], "InvalidAMIID.NotFound"),
        (["run-instances", "--image-id", "not-an-image"], "InvalidAMIID.Malformed"),
        (["run-instances", "--image-id", "DEFAULT", "--instance-type", "z9.enormous"], "InvalidParameterValue"),
        (
            ["run-instances", "--image-id", "DEFAULT", "--placement", "AvailabilityZone=mars-1a"],
            "InvalidParameterValue",
        ),
        (["run-instances", "--image-id", "DEFAULT", "--dry-run"], "DryRunOperation"),
        (
            ["run-instances", "--image-id", "DEFAULT", "--count", "100", "--instance-type", "m1.xlarge"],
            "InsufficientInstanceCapacity",
        ),
        (["describe-images", "--image-ids", MISSING_IMAGE], "InvalidAMIID.NotFound"),
        (["describe-availability-zones", "--zone-names", "mars-1a"], "InvalidParameterValue"),
    ],
)
def test_error_paths(aws: AwsCli, image: dict[str, Any], admin: Any, args: list[str], code: str) -> None:
    args = [image["ImageId"] if a == "DEFAULT" else a for a in args]
    before = sorted(i["InstanceId"] for i in instances_of(admin.describe_instances()))
    err = aws.fails("ec2", *args, code=code)
    assert "Traceback" not in err
    assert sorted(i["InstanceId"] for i in instances_of(admin.describe_instances())) == before


def test_bad_credentials(aws: AwsCli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA0000000000000000")
    aws.fails("ec2", "describe-regions", code="AuthFailure")
    monkeypatch.undo()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    err = aws.run("ec2", "describe-regions").err
    assert re.search(r"An error occurred \((SignatureDoesNotMatch|AuthFailure)\)", err), err


# -- actions the lead committed with this slice (stop/start, status, types, attributes, images) -------------------


@needs("StopInstances", "StartInstances", "DescribeInstanceStatus")
def test_stop_and_start(aws: AwsCli, run: Any, admin: Any) -> None:
    [instance] = run()
    [status] = aws("ec2", "describe-instance-status", "--instance-ids", instance)["InstanceStatuses"]
    assert status["InstanceState"]["Name"] == "running"
    assert status["InstanceStatus"]["Status"] in ("ok", "initializing")
    assert status["SystemStatus"]["Status"] in ("ok", "initializing")

    [stopping] = aws("ec2", "stop-instances", "--instance-ids", instance)["StoppingInstances"]
    assert stopping["InstanceId"] == instance and stopping["PreviousState"]["Name"] == "running"
    assert stopping["CurrentState"]["Name"] in ("stopping", "stopped")
    wait_states(admin, [instance], "stopped")
    # stopped instances are reported only with --include-all-instances
    assert aws("ec2", "describe-instance-status", "--instance-ids", instance)["InstanceStatuses"] == []
    [stopped] = aws("ec2", "describe-instance-status", "--instance-ids", instance, "--include-all-instances")[
        "InstanceStatuses"
    ]
    assert stopped["InstanceState"]["Name"] == "stopped"
    again = aws("ec2", "stop-instances", "--instance-ids", instance)["StoppingInstances"]
    assert again[0]["CurrentState"]["Name"] == "stopped"

    [starting] = aws("ec2", "start-instances", "--instance-ids", instance)["StartingInstances"]
    assert starting["PreviousState"]["Name"] == "stopped"
    assert starting["CurrentState"]["Name"] in ("pending", "running")
    wait_states(admin, [instance], "running")

    aws("ec2", "terminate-instances", "--instance-ids", instance)
    wait_states(admin, [instance], "terminated")
    aws.fails("ec2", "start-instances", "--instance-ids", instance, code="IncorrectInstanceState")
    aws.fails("ec2", "stop-instances", "--instance-ids", instance, code="IncorrectInstanceState")
    aws.fails("ec2", "stop-instances", "--instance-ids", MISSING_INSTANCE, code="InvalidInstanceID.NotFound")
    aws.fails("ec2", "start-instances", "--instance-ids", MISSING_INSTANCE, code="InvalidInstanceID.NotFound")
    aws.fails("ec2", "describe-instance-status", "--instance-ids", MISSING_INSTANCE, code="InvalidInstanceID.NotFound")


@needs("DescribeInstanceTypes")
def test_describe_instance_types(aws: AwsCli, run: Any, admin: Any) -> None:
    [t2] = aws("ec2", "describe-instance-types", "--instance-types", "t2.micro")["InstanceTypes"]
    assert t2["InstanceType"] == "t2.micro"
    assert t2["VCpuInfo"]["DefaultVCpus"] >= 1 and t2["MemoryInfo"]["SizeInMiB"] >= 128
    assert "x86_64" in t2["ProcessorInfo"]["SupportedArchitectures"]
    every = aws("ec2", "describe-instance-types")["InstanceTypes"]
    assert "t2.micro" in {t["InstanceType"] for t in every} and len(every) > 1
    ones = aws("ec2", "describe-instance-types", "--filters", "Name=vcpu-info.default-vcpus,Values=1")["InstanceTypes"]
    assert ones and all(t["VCpuInfo"]["DefaultVCpus"] == 1 for t in ones)
    aws.fails("ec2", "describe-instance-types", "--instance-types", "z9.enormous", code="InvalidInstanceType")
    # every type the cloud lists can be launched
    smallest = min(every, key=lambda t: t["VCpuInfo"]["DefaultVCpus"])
    [instance] = run("--instance-type", smallest["InstanceType"], wait=False)
    assert (
        admin.describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]["InstanceType"]
        == (smallest["InstanceType"])
    )


@needs("DescribeInstanceAttribute")
def test_describe_instance_attribute(aws: AwsCli, run: Any, image: dict[str, Any]) -> None:
    [instance] = run("--instance-type", "t2.nano", "--user-data", "#!/bin/sh\necho hello\n", wait=False)
    answer = aws("ec2", "describe-instance-attribute", "--instance-id", instance, "--attribute", "instanceType")
    assert answer["InstanceId"] == instance and answer["InstanceType"] == {"Value": "t2.nano"}
    user_data = aws("ec2", "describe-instance-attribute", "--instance-id", instance, "--attribute", "userData")
    assert base64.b64decode(user_data["UserData"]["Value"]) == b"#!/bin/sh\necho hello\n"
    kernel = aws("ec2", "describe-instance-attribute", "--instance-id", instance, "--attribute", "kernel")
    assert kernel["KernelId"]["Value"] == image["KernelId"]
    ramdisk = aws("ec2", "describe-instance-attribute", "--instance-id", instance, "--attribute", "ramdisk")
    assert ramdisk["RamdiskId"]["Value"] == image["RamdiskId"]
    aws.fails(
        "ec2",
        "describe-instance-attribute",
        "--instance-id",
        MISSING_INSTANCE,
        "--attribute",
        "instanceType",
        code="InvalidInstanceID.NotFound",
    )
    aws.fails(
        "ec2",
        "describe-instance-attribute",
        "--instance-id",
        instance,
        "--attribute",
        "noSuchAttribute",
        code="InvalidParameterValue",
    )


@needs("RegisterImage", "DeregisterImage", "DescribeImageAttribute")
def test_register_and_deregister_image(aws: AwsCli, image: dict[str, Any], admin: Any) -> None:
    name = unique("registered")
    new_id = aws(
        "ec2",
        "register-image",
        "--name",
        name,
        "--description",
        "made by test_awscli",
        "--architecture",
        "x86_64",
        "--kernel-id",
        image["KernelId"],
        "--ramdisk-id",
        image["RamdiskId"],
    )["ImageId"]
    assert re.fullmatch(r"ami-[0-9a-f]{8,17}", new_id)
    [registered] = aws("ec2", "describe-images", "--image-ids", new_id)["Images"]
    assert registered["Name"] == name and registered["State"] == "available"
    assert registered["KernelId"] == image["KernelId"] and registered["RamdiskId"] == image["RamdiskId"]
    by_name = aws("ec2", "describe-images", "--filters", f"Name=name,Values={name}")["Images"]
    assert [i["ImageId"] for i in by_name] == [new_id]

    attribute = aws("ec2", "describe-image-attribute", "--image-id", new_id, "--attribute", "description")
    assert attribute["ImageId"] == new_id and attribute["Description"]["Value"] == "made by test_awscli"
    kernel = aws("ec2", "describe-image-attribute", "--image-id", new_id, "--attribute", "kernel")
    assert kernel["KernelId"]["Value"] == image["KernelId"]
    aws.fails(
        "ec2", "describe-image-attribute", "--image-id", new_id, "--attribute", "bogus", code="InvalidParameterValue"
    )
    aws.fails(
        "ec2",
        "describe-image-attribute",
        "--image-id",
        MISSING_IMAGE,
        "--attribute",
        "description",
        code="InvalidAMIID.NotFound",
    )

    # the new image runs
    [instance] = [i["InstanceId"] for i in aws("ec2", "run-instances", "--image-id", new_id)["Instances"]]
    try:
        assert wait_states(admin, [instance], "running")[instance]["ImageId"] == new_id
    finally:
        admin.terminate_instances(InstanceIds=[instance])

    assert aws("ec2", "deregister-image", "--image-id", new_id) in ({}, {"Return": True})
    aws.fails("ec2", "describe-images", "--image-ids", new_id, code="InvalidAMIID.NotFound")
    aws.fails("ec2", "run-instances", "--image-id", new_id, code="InvalidAMIID.NotFound")
    aws.fails("ec2", "deregister-image", "--image-id", MISSING_IMAGE, code="InvalidAMIID.NotFound")
    aws.fails("ec2", "register-image", "--name", unique("nothing"), code="MissingParameter")


# -- key pairs ------------------------------------------------------------------------------------------------------


def _openssh_rsa_public_key() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


@needs("CreateKeyPair", "DescribeKeyPairs", "DeleteKeyPair")
@pytest.mark.parametrize("key_type", ["rsa", "ed25519"])
def test_create_describe_delete_key_pair(aws: AwsCli, key_type: str) -> None:
    name = unique("key")
    created = aws("ec2", "create-key-pair", "--key-name", name, "--key-type", key_type)
    assert created["KeyName"] == name and created["KeyPairId"].startswith("key-")
    material = created["KeyMaterial"].encode()
    if key_type == "rsa":
        assert material.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
        private = serialization.load_pem_private_key(material, password=None)
        assert re.fullmatch(r"([0-9a-f]{2}:){19}[0-9a-f]{2}", created["KeyFingerprint"])  # SHA-1 of the key
    else:
        assert material.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
        private = serialization.load_ssh_private_key(material, password=None)
        assert re.fullmatch(r"[A-Za-z0-9+/]{43}=?", created["KeyFingerprint"])  # base64 SHA-256, as OpenSSH
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)

    [described] = aws("ec2", "describe-key-pairs", "--key-names", name, "--include-public-key")["KeyPairs"]
    assert described["KeyName"] == name and described["KeyPairId"] == created["KeyPairId"]
    assert described["KeyFingerprint"] == created["KeyFingerprint"] and described["KeyType"] == key_type
    assert described["PublicKey"].split()[:2] == public.decode().split()[:2]
    assert "KeyMaterial" not in described
    by_id = aws("ec2", "describe-key-pairs", "--key-pair-ids", created["KeyPairId"])["KeyPairs"]
    assert [k["KeyName"] for k in by_id] == [name]
    filtered = aws("ec2", "describe-key-pairs", "--filters", f"Name=key-name,Values={name}")["KeyPairs"]
    assert [k["KeyName"] for k in filtered] == [name]

    aws.fails("ec2", "create-key-pair", "--key-name", name, code="InvalidKeyPair.Duplicate")
    aws("ec2", "delete-key-pair", "--key-name", name)
    aws.fails("ec2", "describe-key-pairs", "--key-names", name, code="InvalidKeyPair.NotFound")
    aws("ec2", "delete-key-pair", "--key-name", name)  # EC2 deletes idempotently: a missing name is not an error


@needs("ImportKeyPair", "DescribeKeyPairs", "DeleteKeyPair")
def test_import_key_pair(aws: AwsCli, tmp_path: Path) -> None:
    name = unique("imported")
    public = _openssh_rsa_public_key()
    (tmp_path / "id.pub").write_bytes(public + b" someone@example\n")
    imported = aws("ec2", "import-key-pair", "--key-name", name, "--public-key-material", f"fileb://{tmp_path}/id.pub")
    assert imported["KeyName"] == name and imported["KeyPairId"].startswith("key-")
    assert re.fullmatch(r"([0-9a-f]{2}:){15}[0-9a-f]{2}", imported["KeyFingerprint"])  # MD5, as EC2 shows imports
    [described] = aws("ec2", "describe-key-pairs", "--key-names", name, "--include-public-key")["KeyPairs"]
    assert described["KeyFingerprint"] == imported["KeyFingerprint"] and described["KeyType"] == "rsa"
    assert described["PublicKey"].split()[:2] == public.decode().split()[:2]
    aws.fails(
        "ec2",
        "import-key-pair",
        "--key-name",
        name,
        "--public-key-material",
        f"fileb://{tmp_path}/id.pub",
        code="InvalidKeyPair.Duplicate",
    )
    (tmp_path / "junk.pub").write_bytes(b"this is not a public key")
    aws.fails(
        "ec2",
        "import-key-pair",
        "--key-name",
        unique("junk"),
        "--public-key-material",
        f"fileb://{tmp_path}/junk.pub",
        code="InvalidKey.Format",
    )
    aws("ec2", "delete-key-pair", "--key-pair-id", imported["KeyPairId"])
    aws.fails("ec2", "describe-key-pairs", "--key-names", name, code="InvalidKeyPair.NotFound")


@needs("CreateKeyPair", "DeleteKeyPair")
def test_run_instances_with_a_key_pair(aws: AwsCli, run: Any, admin: Any) -> None:
    name = unique("launch-key")
    aws("ec2", "create-key-pair", "--key-name", name)
    try:
        [instance] = run("--key-name", name, wait=False)
        described = instances_of(aws("ec2", "describe-instances", "--instance-ids", instance))[0]
        assert described["KeyName"] == name
        filtered = aws("ec2", "describe-instances", "--filters", f"Name=key-name,Values={name}")
        assert [i["InstanceId"] for i in instances_of(filtered)] == [instance]
        aws.fails(
            "ec2",
            "run-instances",
            "--image-id",
            described["ImageId"],
            "--key-name",
            unique("nokey"),
            code="InvalidKeyPair.NotFound",
        )
    finally:
        aws("ec2", "delete-key-pair", "--key-name", name)


# -- security groups ---------------------------------------------------------------------------------------------


def _group(aws: AwsCli, group_id: str) -> dict[str, Any]:
    [group] = aws("ec2", "describe-security-groups", "--group-ids", group_id)["SecurityGroups"]
    return group


@needs("CreateSecurityGroup", "DescribeSecurityGroups", "DeleteSecurityGroup")
def test_security_group_create_describe_delete(aws: AwsCli) -> None:
    name = unique("group")
    group_id = aws("ec2", "create-security-group", "--group-name", name, "--description", "web servers")["GroupId"]
    assert re.fullmatch(r"sg-[0-9a-f]{8,17}", group_id)
    group = _group(aws, group_id)
    assert group["GroupName"] == name and group["Description"] == "web servers"
    assert group["IpPermissions"] == [] and re.fullmatch(r"[0-9]{12}", group["OwnerId"])
    by_name = aws("ec2", "describe-security-groups", "--group-names", name)["SecurityGroups"]
    assert [g["GroupId"] for g in by_name] == [group_id]
    filtered = aws("ec2", "describe-security-groups", "--filters", f"Name=group-name,Values={name}")["SecurityGroups"]
    assert [g["GroupId"] for g in filtered] == [group_id]
    default = aws("ec2", "describe-security-groups", "--group-names", "default")["SecurityGroups"]
    # every account has one (the admin, who sees every account's resources, may be shown the others' too)
    assert {g["GroupName"] for g in default} == {"default"}
    assert [g["OwnerId"] for g in default].count(group["OwnerId"]) == 1

    aws.fails(
        "ec2", "create-security-group", "--group-name", name, "--description", "again", code="InvalidGroup.Duplicate"
    )
    aws("ec2", "delete-security-group", "--group-id", group_id)
    aws.fails("ec2", "describe-security-groups", "--group-ids", group_id, code="InvalidGroup.NotFound")
    aws.fails("ec2", "describe-security-groups", "--group-names", name, code="InvalidGroup.NotFound")
    aws.fails("ec2", "delete-security-group", "--group-id", group_id, code="InvalidGroup.NotFound")
    aws.fails("ec2", "describe-security-groups", "--group-ids", "sg-nothex!", code="InvalidGroupId.Malformed")
    no_description = aws.run("ec2", "create-security-group", "--group-name", unique("group"))
    assert no_description.code != 0 and "--description" in no_description.err  # required: the CLI refuses


@needs("CreateSecurityGroup", "AuthorizeSecurityGroupIngress", "RevokeSecurityGroupIngress", "DeleteSecurityGroup")
def test_security_group_ingress_rules(aws: AwsCli) -> None:
    name = unique("group-rules")
    group_id = aws("ec2", "create-security-group", "--group-name", name, "--description", "rules")["GroupId"]
    try:
        ssh = ["--group-id", group_id, "--protocol", "tcp", "--port", "22", "--cidr", "10.0.0.0/8"]
        aws("ec2", "authorize-security-group-ingress", *ssh)
        web = json.dumps(
            [
                {
                    "IpProtocol": "tcp",
                    "FromPort": 8000,
                    "ToPort": 8080,
                    "IpRanges": [{"CidrIp": "0.0.0.0/0"}, {"CidrIp": "192.0.2.0/24"}],
                }
            ]
        )
        aws("ec2", "authorize-security-group-ingress", "--group-id", group_id, "--ip-permissions", web)
        aws(
            "ec2",
            "authorize-security-group-ingress",
            "--group-name",
            name,
            "--protocol",
            "icmp",
            "--port",
            "-1",
            "--cidr",
            "0.0.0.0/0",
        )
        rules = {
            (p["IpProtocol"], p.get("FromPort"), p.get("ToPort")): sorted(r["CidrIp"] for r in p["IpRanges"])
            for p in _group(aws, group_id)["IpPermissions"]
        }
        assert rules == {
            ("tcp", 22, 22): ["10.0.0.0/8"],
            ("tcp", 8000, 8080): ["0.0.0.0/0", "192.0.2.0/24"],
            ("icmp", -1, -1): ["0.0.0.0/0"],
        }
        matching = aws(
            "ec2",
            "describe-security-groups",
            "--filters",
            "Name=ip-permission.from-port,Values=8000",
            f"Name=group-id,Values={group_id}",
        )["SecurityGroups"]
        assert [g["GroupId"] for g in matching] == [group_id]

        aws.fails("ec2", "authorize-security-group-ingress", *ssh, code="InvalidPermission.Duplicate")
        aws.fails(
            "ec2",
            "authorize-security-group-ingress",
            "--group-id",
            group_id,
            "--protocol",
            "tcp",
            "--port",
            "22",
            "--cidr",
            "10.0.0.300/8",
            code="InvalidParameterValue",
        )
        aws.fails(
            "ec2",
            "authorize-security-group-ingress",
            "--group-id",
            "sg-0123456789abcdef0",
            "--protocol",
            "tcp",
            "--port",
            "22",
            "--cidr",
            "10.0.0.0/8",
            code="InvalidGroup.NotFound",
        )

        aws("ec2", "revoke-security-group-ingress", *ssh)
        aws("ec2", "revoke-security-group-ingress", "--group-id", group_id, "--ip-permissions", web)
        left = [(p["IpProtocol"], p.get("FromPort")) for p in _group(aws, group_id)["IpPermissions"]]
        assert left == [("icmp", -1)]
    finally:
        aws("ec2", "delete-security-group", "--group-id", group_id)


@needs("CreateSecurityGroup", "DeleteSecurityGroup", "DescribeSecurityGroups")
def test_instances_in_a_security_group(aws: AwsCli, run: Any, admin: Any) -> None:
    name = unique("group-used")
    group_id = aws("ec2", "create-security-group", "--group-name", name, "--description", "in use")["GroupId"]
    [instance] = run("--security-group-ids", group_id)
    described = instances_of(aws("ec2", "describe-instances", "--instance-ids", instance))[0]
    assert [g["GroupId"] for g in described["SecurityGroups"]] == [group_id]
    assert [g["GroupName"] for g in described["SecurityGroups"]] == [name]
    by_group = aws("ec2", "describe-instances", "--filters", f"Name=instance.group-id,Values={group_id}")
    assert [i["InstanceId"] for i in instances_of(by_group)] == [instance]
    # a group in use by a live instance cannot go (EC2 says DependencyViolation; EC2-Classic said InvalidGroup.InUse)
    err = aws.run("ec2", "delete-security-group", "--group-id", group_id).err
    assert re.search(r"An error occurred \((DependencyViolation|InvalidGroup\.InUse)\)", err), err
    aws("ec2", "terminate-instances", "--instance-ids", instance)
    wait_states(admin, [instance], "terminated")
    aws("ec2", "delete-security-group", "--group-id", group_id)
    aws.fails(
        "ec2",
        "run-instances",
        "--image-id",
        described["ImageId"],
        "--security-group-ids",
        group_id,
        code="InvalidGroup.NotFound",
    )
    err = aws.run("ec2", "delete-security-group", "--group-name", "default").err
    assert re.search(r"An error occurred \((CannotDelete|InvalidGroup\.Reserved)\)", err), err


# -- elastic addresses ------------------------------------------------------------------------------------------


@needs("AllocateAddress", "DescribeAddresses", "AssociateAddress", "DisassociateAddress", "ReleaseAddress")
def test_addresses(aws: AwsCli, run: Any, sim_cloud: RunningCloud) -> None:
    pool = ipaddress.ip_network(json.loads(sim_cloud.layout.config.read_text())["public_pool"])
    [instance] = run()
    allocated = aws("ec2", "allocate-address", "--domain", "vpc")
    ip, allocation = allocated["PublicIp"], allocated["AllocationId"]
    released = False
    try:
        assert ipaddress.ip_address(ip) in pool
        assert re.fullmatch(r"eipalloc-[0-9a-f]{8,17}", allocation) and allocated["Domain"] == "vpc"
        [address] = aws("ec2", "describe-addresses", "--allocation-ids", allocation)["Addresses"]
        assert address["PublicIp"] == ip and "InstanceId" not in address and "AssociationId" not in address
        assert [a["AllocationId"] for a in aws("ec2", "describe-addresses", "--public-ips", ip)["Addresses"]] == [
            allocation
        ]

        association = aws("ec2", "associate-address", "--instance-id", instance, "--allocation-id", allocation)[
            "AssociationId"
        ]
        assert re.fullmatch(r"eipassoc-[0-9a-f]{8,17}", association)
        [address] = aws("ec2", "describe-addresses", "--allocation-ids", allocation)["Addresses"]
        assert address["InstanceId"] == instance and address["AssociationId"] == association
        described = instances_of(aws("ec2", "describe-instances", "--instance-ids", instance))[0]
        assert described["PublicIpAddress"] == ip
        by_instance = aws("ec2", "describe-addresses", "--filters", f"Name=instance-id,Values={instance}")["Addresses"]
        assert [a["PublicIp"] for a in by_instance] == [ip]

        aws.fails(
            "ec2",
            "associate-address",
            "--instance-id",
            MISSING_INSTANCE,
            "--allocation-id",
            allocation,
            code="InvalidInstanceID.NotFound",
        )
        aws("ec2", "disassociate-address", "--association-id", association)
        [address] = aws("ec2", "describe-addresses", "--allocation-ids", allocation)["Addresses"]
        assert "InstanceId" not in address and "AssociationId" not in address
        assert "PublicIpAddress" not in instances_of(aws("ec2", "describe-instances", "--instance-ids", instance))[0]

        aws("ec2", "release-address", "--allocation-id", allocation)
        released = True
        aws.fails("ec2", "describe-addresses", "--allocation-ids", allocation, code="InvalidAllocationID.NotFound")
        aws.fails("ec2", "release-address", "--allocation-id", allocation, code="InvalidAllocationID.NotFound")
        aws.fails(
            "ec2",
            "associate-address",
            "--instance-id",
            instance,
            "--allocation-id",
            "eipalloc-0123456789abcdef0",
            code="InvalidAllocationID.NotFound",
        )
    finally:
        if not released:
            aws.run("ec2", "disassociate-address", "--public-ip", ip)
            aws.run("ec2", "release-address", "--allocation-id", allocation)


# -- tags ----------------------------------------------------------------------------------------------------------


@needs("CreateTags", "DeleteTags", "DescribeTags")
def test_tags(aws: AwsCli, run: Any, image: dict[str, Any]) -> None:
    [instance] = run(wait=False)
    project = unique("project")
    aws("ec2", "create-tags", "--resources", instance, "--tags", f"Key=project,Value={project}", "Key=tier,Value=web")
    tags = aws("ec2", "describe-tags", "--filters", f"Name=resource-id,Values={instance}")["Tags"]
    assert sorted((t["Key"], t["Value"], t["ResourceType"], t["ResourceId"]) for t in tags) == [
        ("project", project, "instance", instance),
        ("tier", "web", "instance", instance),
    ]
    described = instances_of(aws("ec2", "describe-instances", "--instance-ids", instance))[0]
    assert {t["Key"]: t["Value"] for t in described["Tags"]} == {"project": project, "tier": "web"}
    by_tag = aws("ec2", "describe-instances", "--filters", f"Name=tag:project,Values={project}")
    assert [i["InstanceId"] for i in instances_of(by_tag)] == [instance]
    by_key = aws("ec2", "describe-tags", "--filters", "Name=key,Values=project", f"Name=value,Values={project}")["Tags"]
    assert [t["ResourceId"] for t in by_key] == [instance]

    aws("ec2", "create-tags", "--resources", instance, "--tags", "Key=tier,Value=db")  # overwrites the value
    tags = aws("ec2", "describe-tags", "--filters", f"Name=resource-id,Values={instance}", "Name=key,Values=tier")
    assert [t["Value"] for t in tags["Tags"]] == ["db"]
    aws("ec2", "delete-tags", "--resources", instance, "--tags", "Key=tier,Value=web")  # wrong value: kept
    assert len(aws("ec2", "describe-tags", "--filters", f"Name=resource-id,Values={instance}")["Tags"]) == 2
    aws("ec2", "delete-tags", "--resources", instance, "--tags", "Key=tier")  # no value: any value goes
    left = aws("ec2", "describe-tags", "--filters", f"Name=resource-id,Values={instance}")["Tags"]
    assert [t["Key"] for t in left] == ["project"]

    aws("ec2", "create-tags", "--resources", image["ImageId"], "--tags", f"Key=seen-by,Value={project}")
    try:
        on_image = aws(
            "ec2", "describe-tags", "--filters", f"Name=value,Values={project}", "Name=resource-type,Values=image"
        )
        assert [(t["ResourceId"], t["ResourceType"]) for t in on_image["Tags"]] == [(image["ImageId"], "image")]
    finally:
        aws("ec2", "delete-tags", "--resources", image["ImageId"], "--tags", "Key=seen-by")

    aws.fails(
        "ec2",
        "create-tags",
        "--resources",
        MISSING_INSTANCE,
        "--tags",
        "Key=a,Value=b",
        code="InvalidInstanceID.NotFound",
    )
    aws.fails("ec2", "create-tags", "--resources", "nonsense-123", "--tags", "Key=a,Value=b", code="InvalidID")


@needs("CreateTags", "DescribeTags")
def test_run_instances_with_tag_specifications(aws: AwsCli, run: Any) -> None:
    name = unique("tagged")
    [instance] = run("--tag-specifications", f"ResourceType=instance,Tags=[{{Key=Name,Value={name}}}]", wait=False)
    described = instances_of(aws("ec2", "describe-instances", "--filters", f"Name=tag:Name,Values={name}"))
    assert [i["InstanceId"] for i in described] == [instance]
    assert {"Key": "Name", "Value": name} in described[0]["Tags"]
