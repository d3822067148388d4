"""``cloudlab user ...`` and ``cloudlab creds``: users, access keys and the credential bundle.

The commands work on the state folder directly, so most run in-process (``cli.main``) against a
state built without a service, or against the shared ``sim_cloud``; a few run as real processes to
prove the installed command, the AWS CLI and a shell sourcing ``eucarc`` work end to end.
"""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from cloudlab.clc.store import Store
from cloudlab.clc.users import Users
from cloudlab.cli import main
from cloudlab.paths import StateLayout
from cloudlab.security.ca import CertificateAuthority
from tests.clouds import RunningCloud

AWS = Path(sys.executable).with_name("aws")
NO_RETRY = Config(retries={"max_attempts": 1})
needs_awscli = pytest.mark.skipif(not AWS.exists(), reason="the AWS CLI is not installed (pip install -e .[dev])")


@dataclass
class Result:
    code: int
    out: str
    err: str


def cli(state: Path, *args: str) -> Result:
    """Run ``cloudlab --state STATE ARGS`` in this process, as the installed command would."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(["--state", str(state), *args])
        except SystemExit as exc:  # argparse: --help (0) and usage errors (2)
            code = exc.code if isinstance(exc.code, int) else 1
    return Result(code, out.getvalue(), err.getvalue())


def one_line_error(result: Result, code: int, needle: str) -> None:
    assert result.code == code, result
    assert "Traceback" not in result.err
    lines = result.err.strip().splitlines()
    if code == 1:
        assert len(lines) == 1, lines
        assert lines[0].startswith("cloudlab: error: ")
    assert needle in result.err, result.err


def unique(prefix: str = "u") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def offline_state(tmp_path: Path) -> Path:
    """A cloud's state folder as the first ``cloudlab up`` leaves it (CA, database, admin), cloud not running."""
    layout = StateLayout(tmp_path / "state")
    ca = CertificateAuthority.load_or_create(layout.pki)
    store = Store(layout.database)
    try:
        Users(store, ca).ensure_admin()
    finally:
        store.close()
    return layout.root


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any AWS_*/EC2_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "EC2_", "EUCA"))}
    return env | {"HOME": os.environ.get("HOME", "/root")} | extra


def client(cloud: RunningCloud, access_key: str, secret_key: str) -> Any:
    return boto3.client(
        "ec2",
        endpoint_url=cloud.url,
        region_name=cloud.info["region"],
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=NO_RETRY,
    )


def instance_ids(ec2: Any) -> list[str]:
    return sorted(i["InstanceId"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"])


def snapshot(admin: Any) -> list[tuple[str, str]]:
    """What every user's instances look like to the admin (id and state)."""
    return sorted(
        (i["InstanceId"], i["State"]["Name"])
        for r in admin.describe_instances()["Reservations"]
        for i in r["Instances"]
    )


def default_image(ec2: Any) -> str:
    return ec2.describe_images(Filters=[{"Name": "name", "Values": ["cloudlab-default"]}])["Images"][0]["ImageId"]


# -- the command line itself ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["user"],
        ["user", "add"],
        ["user", "list"],
        ["user", "disable"],
        ["user", "enable"],
        ["user", "keys"],
        ["user", "keys", "create"],
        ["user", "keys", "list"],
        ["user", "keys", "delete"],
        ["creds"],
    ],
)
def test_help(tmp_path: Path, command: list[str]) -> None:
    result = cli(tmp_path / "state", *command, "--help")
    assert result.code == 0, result
    assert "usage: cloudlab" in result.out and " ".join(command) in result.out


def test_help_of_the_installed_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cloudlab.cli", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0
    assert "user" in done.stdout and "creds" in done.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["user"], "required"),
        (["user", "add"], "name"),
        (["user", "keys"], "required"),
        (["user", "keys", "delete", "alice"], "ACCESS_KEY_ID"),
        (["user", "frobnicate"], "invalid choice"),
        (["creds"], "name"),
    ],
)
def test_usage_errors(tmp_path: Path, args: list[str], needle: str) -> None:
    one_line_error(cli(tmp_path / "state", *args), 2, needle)
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["user", "add", "alice"],
        ["user", "list"],
        ["user", "disable", "alice"],
        ["user", "enable", "alice"],
        ["user", "keys", "create", "alice"],
        ["user", "keys", "list", "alice"],
        ["user", "keys", "delete", "alice", "AKIA0000000000000000"],
        ["creds", "alice"],
    ],
)
def test_missing_state_is_one_clear_line(tmp_path: Path, args: list[str]) -> None:
    one_line_error(cli(tmp_path / "state", *args), 1, "start it once with 'cloudlab up'")
    assert not (tmp_path / "state").exists(), "a refused command creates nothing"


def test_missing_state_from_the_installed_command(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cloudlab.cli", "--state", str(tmp_path / "none"), "user", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("cloudlab: error: no cloud in") and len(done.stderr.splitlines()) == 1


# -- users and keys in a state folder whose cloud is down ------------------------------------------------------


def test_user_commands_with_the_cloud_down(offline_state: Path) -> None:
    state = offline_state
    added = cli(state, "user", "add", "alice")
    assert added.code == 0, added
    assert "account " in added.out and "access key AKIA" in added.out
    store = Store(StateLayout(state).database)
    try:
        [first] = Users(store, None).keys("alice")
    finally:
        store.close()
    assert first.access_key in added.out and first.secret_key not in added.out  # the secret is not printed
    assert cli(state, "user", "add", "root-2", "--admin").code == 0

    one_line_error(cli(state, "user", "add", "alice"), 1, "already exists")
    for bad in ("bad name", "x" * 65, "a/b", "../etc", "é"):
        one_line_error(cli(state, "user", "add", bad), 1, "must be 1-64 letters")

    users = {u["name"]: u for u in json.loads(cli(state, "user", "list", "--json").out)}
    assert set(users) == {"admin", "alice", "root-2"}
    assert users["alice"]["admin"] is False and users["root-2"]["admin"] is True
    assert users["alice"]["enabled"] is True and users["alice"]["active_keys"] == 1
    assert len(users["alice"]["account_id"]) == 12 and users["alice"]["account_id"].isdigit()
    table = cli(state, "user", "list").out.splitlines()
    assert table[0].split() == [
        "NAME",
        "ACCOUNT_ID",
        "ADMIN",
        "ENABLED",
        "ACTIVE_KEYS",
        "INSTANCES",
        "VCPUS",
        "ADDRESSES",
        "VOLUMES",
        "VOLUME_GIB",
        "SNAPSHOTS",
    ]
    assert next(line for line in table if line.startswith("alice ")).split()[5:] == [
        "0/20",
        "0/32",
        "0/5",
        "0/20",
        "0/200",
        "0/50",
    ]
    assert any(line.startswith("alice ") for line in table)

    assert "disabled" in cli(state, "user", "disable", "alice").out
    assert "already disabled" in cli(state, "user", "disable", "alice").out
    assert {u["name"]: u["enabled"] for u in json.loads(cli(state, "user", "list", "--json").out)}["alice"] is False
    assert "enabled" in cli(state, "user", "enable", "alice").out
    one_line_error(cli(state, "user", "disable", "admin"), 1, "cannot be disabled")

    created = json.loads(cli(state, "user", "keys", "create", "alice", "--json").out)
    assert created["access_key"].startswith("AKIA") and len(created["secret_key"]) == 40
    human = cli(state, "user", "keys", "create", "alice").out
    assert "secret access key:" in human
    keys = json.loads(cli(state, "user", "keys", "list", "alice", "--json").out)
    assert len(keys) == 3 and all(k["active"] for k in keys)
    assert "secret" not in json.dumps(keys).lower()

    revoked = cli(state, "user", "keys", "delete", "alice", created["access_key"])
    assert revoked.code == 0 and "revoked" in revoked.out
    assert "already revoked" in cli(state, "user", "keys", "delete", "alice", created["access_key"]).out
    keys = {k["access_key"]: k["active"] for k in json.loads(cli(state, "user", "keys", "list", "alice", "--json").out)}
    assert keys[created["access_key"]] is False and sum(keys.values()) == 2
    one_line_error(cli(state, "user", "keys", "delete", "alice", "AKIA0000000000000000"), 1, "has no access key")

    [admin_key] = json.loads(cli(state, "user", "keys", "list", "admin", "--json").out)
    one_line_error(cli(state, "user", "keys", "delete", "admin", admin_key["access_key"]), 1, "last active key")

    # the cloud is down: a bundle cannot name its endpoint
    one_line_error(cli(state, "creds", "alice"), 1, "not running")
    assert not (state / "credentials" / "alice").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["user", "disable", "nobody"],
        ["user", "enable", "nobody"],
        ["user", "keys", "create", "nobody"],
        ["user", "keys", "list", "nobody"],
        ["user", "keys", "delete", "nobody", "AKIA0000000000000000"],
        ["creds", "nobody"],
    ],
)
def test_unknown_user(offline_state: Path, args: list[str]) -> None:
    one_line_error(cli(offline_state, *args), 1, "no user 'nobody'")


def test_revoking_the_admin_key_in_use_moves_the_cloud_tools_to_another(offline_state: Path) -> None:
    layout = StateLayout(offline_state)
    store = Store(layout.database)
    try:
        _, key = Users(store, None).ensure_admin()
    finally:
        store.close()
    layout.credentials.mkdir(parents=True, exist_ok=True)
    (layout.credentials / "admin.json").write_text(
        json.dumps({"user": "admin", "access_key": key.access_key, "secret_key": key.secret_key})
    )
    spare = json.loads(cli(offline_state, "user", "keys", "create", "admin", "--json").out)
    assert cli(offline_state, "user", "keys", "delete", "admin", key.access_key).code == 0
    assert json.loads((layout.credentials / "admin.json").read_text())["access_key"] == spare["access_key"]


# -- against a running cloud ---------------------------------------------------------------------------------------


@pytest.fixture
def bundle(sim_cloud: RunningCloud, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A fresh user of the shared cloud and its credential bundle in a temporary folder."""
    name = unique("alice")
    state = sim_cloud.layout.root
    assert cli(state, "user", "add", name).code == 0
    out = tmp_path / "bundle"
    result = cli(state, "creds", name, "--out", str(out))
    assert result.code == 0, result
    yield name, out
    cli(state, "user", "disable", name)


def read_ini(path: Path) -> dict[str, dict[str, str]]:
    import configparser

    parser = configparser.ConfigParser()
    parser.read(path)
    return {section: dict(parser[section]) for section in parser.sections()}


def test_creds_writes_the_bundle(sim_cloud: RunningCloud, bundle: tuple[str, Path]) -> None:
    name, out = bundle
    files = {p.name for p in out.iterdir()}
    assert files == {f"{name}.crt", f"{name}.key", "cloud-ca.crt", "config", "credentials", "eucarc"}
    assert stat.S_IMODE((out / f"{name}.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((out / "credentials").stat().st_mode) == 0o600
    assert stat.S_IMODE(out.stat().st_mode) == 0o700

    ca = x509.load_pem_x509_certificate((out / "cloud-ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((out / f"{name}.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "user"
    key = serialization.load_pem_private_key((out / f"{name}.key").read_bytes(), password=None)
    assert key.public_key() == cert.public_key()
    assert (out / "cloud-ca.crt").read_bytes() == (sim_cloud.layout.pki / "ca.crt").read_bytes()

    config = read_ini(out / "config")
    profile = config[f"profile cloudlab-{name}"]
    assert profile["region"] == sim_cloud.info["region"] and profile["endpoint_url"] == sim_cloud.url
    assert profile["services"] == f"cloudlab-{name}-services"
    assert sim_cloud.url in config[f"services cloudlab-{name}-services"]["ec2"]
    creds = read_ini(out / "credentials")[f"cloudlab-{name}"]
    keys = json.loads(cli(sim_cloud.layout.root, "user", "keys", "list", name, "--json").out)
    assert creds["aws_access_key_id"] == keys[0]["access_key"] and len(keys) == 1  # reuses the first key

    default = cli(sim_cloud.layout.root, "creds", name)  # default folder: <state>/credentials/NAME/
    assert default.code == 0
    assert (sim_cloud.layout.credentials / name / "eucarc").exists()
    assert "aws --profile cloudlab-" in default.out and "boto3.Session(profile_name=" in default.out
    assert "AWS_CONFIG_FILE=" in default.out and "AWS_SHARED_CREDENTIALS_FILE=" in default.out


def test_creds_creates_a_key_for_a_user_without_one(sim_cloud: RunningCloud, tmp_path: Path) -> None:
    name = unique("keyless")
    state = sim_cloud.layout.root
    cli(state, "user", "add", name)
    [key] = json.loads(cli(state, "user", "keys", "list", name, "--json").out)
    cli(state, "user", "keys", "delete", name, key["access_key"])
    assert cli(state, "creds", name, "--out", str(tmp_path / "b")).code == 0
    fresh = read_ini(tmp_path / "b" / "credentials")[f"cloudlab-{name}"]["aws_access_key_id"]
    assert fresh != key["access_key"]
    assert [k["access_key"] for k in json.loads(cli(state, "user", "keys", "list", name, "--json").out)][-1] == fresh


def test_bundle_works_with_a_boto3_profile(
    sim_cloud: RunningCloud, bundle: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    name, out = bundle
    for variable in list(os.environ):
        if variable.startswith(("AWS_", "EC2_")):
            monkeypatch.delenv(variable)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(out / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(out / "credentials"))
    ec2 = boto3.Session(profile_name=f"cloudlab-{name}").client("ec2", config=NO_RETRY)
    assert ec2.meta.endpoint_url.rstrip("/") == sim_cloud.url.rstrip("/")
    assert [r["RegionName"] for r in ec2.describe_regions()["Regions"]] == [sim_cloud.info["region"]]
    admin = sim_cloud.ec2()
    before = snapshot(admin)
    assert instance_ids(ec2) == []  # a new user sees none of the others' instances
    ids = [i["InstanceId"] for i in ec2.run_instances(ImageId=default_image(ec2), MinCount=1, MaxCount=1)["Instances"]]
    try:
        assert instance_ids(ec2) == ids
        owner = json.loads(cli(sim_cloud.layout.root, "user", "list", "--json").out)
        account = {u["name"]: u["account_id"] for u in owner}[name]
        [reservation] = admin.describe_instances(InstanceIds=ids)["Reservations"]
        assert reservation["OwnerId"] == account
    finally:
        ec2.terminate_instances(InstanceIds=ids)
    assert {i for i, _ in snapshot(admin)} == {i for i, _ in before} | set(ids)


@needs_awscli
def test_bundle_works_with_the_aws_cli(sim_cloud: RunningCloud, bundle: tuple[str, Path]) -> None:
    name, out = bundle
    env = clean_env(AWS_CONFIG_FILE=str(out / "config"), AWS_SHARED_CREDENTIALS_FILE=str(out / "credentials"))
    done = subprocess.run(
        [str(AWS), "--profile", f"cloudlab-{name}", "ec2", "describe-regions"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert [r["RegionName"] for r in json.loads(done.stdout)["Regions"]] == [sim_cloud.info["region"]]


@needs_awscli
def test_eucarc_exports_work(sim_cloud: RunningCloud, bundle: tuple[str, Path]) -> None:
    _, out = bundle
    script = (
        f". {out / 'eucarc'} && "
        'test -r "$EC2_CERT" && test -r "$EC2_PRIVATE_KEY" && test -r "$EUCALYPTUS_CERT" && '
        'test "$EC2_URL" = "$AWS_ENDPOINT_URL_EC2" && test "$EC2_ACCESS_KEY" = "$AWS_ACCESS_KEY_ID" && '
        f"{AWS} ec2 describe-availability-zones --output json"
    )
    done = subprocess.run(
        ["sh", "-c", script], capture_output=True, text=True, env=clean_env(), timeout=60, check=False, cwd="/"
    )
    assert done.returncode == 0, done.stderr
    zones = json.loads(done.stdout)["AvailabilityZones"]
    assert [z["RegionName"] for z in zones] == [sim_cloud.info["region"]]


def test_a_disabled_user_gets_auth_failure_and_changes_nothing(sim_cloud: RunningCloud) -> None:
    name = unique("disabled")
    state = sim_cloud.layout.root
    cli(state, "user", "add", name)
    key = json.loads(cli(state, "user", "keys", "create", name, "--json").out)
    ec2 = client(sim_cloud, key["access_key"], key["secret_key"])
    admin = sim_cloud.ec2()
    image = default_image(admin)
    assert instance_ids(ec2) == []  # works while enabled

    assert cli(state, "user", "disable", name).code == 0
    before = snapshot(admin)
    for call in (
        lambda: ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1),
        lambda: ec2.describe_instances(),
        lambda: ec2.describe_regions(),
    ):
        with pytest.raises(ClientError) as excinfo:
            call()
        assert excinfo.value.response["Error"]["Code"] == "AuthFailure"
    assert snapshot(admin) == before

    assert cli(state, "user", "enable", name).code == 0
    assert instance_ids(ec2) == []


def test_a_revoked_key_gets_auth_failure_and_changes_nothing(sim_cloud: RunningCloud) -> None:
    name = unique("revoked")
    state = sim_cloud.layout.root
    cli(state, "user", "add", name)
    doomed = json.loads(cli(state, "user", "keys", "create", name, "--json").out)
    kept = json.loads(cli(state, "user", "keys", "create", name, "--json").out)
    ec2 = client(sim_cloud, doomed["access_key"], doomed["secret_key"])
    admin = sim_cloud.ec2()
    image = default_image(admin)
    assert instance_ids(ec2) == []

    assert cli(state, "user", "keys", "delete", name, doomed["access_key"]).code == 0
    before = snapshot(admin)
    with pytest.raises(ClientError) as excinfo:
        ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)
    assert excinfo.value.response["Error"]["Code"] == "AuthFailure"
    assert snapshot(admin) == before
    assert instance_ids(client(sim_cloud, kept["access_key"], kept["secret_key"])) == []  # the other key still works
