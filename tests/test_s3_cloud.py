"""Walrus as part of the cloud: ``cloudlab up`` starts the S3 endpoint beside EC2, with the same users and
keys; ``cloudlab env`` names it (AWS_ENDPOINT_URL_S3); the credential bundle's AWS config and eucarc
(S3_URL) reach it; storage shows in the usage report; ``cloudlab down`` stops it."""

from __future__ import annotations

import io
import os
import subprocess
from contextlib import redirect_stderr, redirect_stdout
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from cloudlab import cli
from cloudlab.waiting import wait_until
from tests.clouds import RunningCloud

AWS = str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "aws")


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def s3_client(cloud: RunningCloud, access_key: str, secret_key: str) -> Any:
    return boto3.client("s3", endpoint_url=cloud.info["s3_url"], region_name=cloud.info["region"],
                        aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                        config=Config(retries={"max_attempts": 1}))  # fmt: skip


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from cloudlab import servicectl
    from tests.clouds import start_cloud

    running = start_cloud(tmp_path_factory.mktemp("s3cloud") / "state", hypervisor="test:///default", nodes=1,
                          extra={"s3_ledger_s": 0.2})  # fmt: skip
    yield running
    servicectl.down(running.layout)
    assert not (running.layout.endpoint_file).exists()


def test_same_users_and_keys_as_ec2(cloud: RunningCloud) -> None:
    admin = cloud.credentials()
    assert cloud.info["s3_url"].startswith("http://127.0.0.1:")
    s3 = s3_client(cloud, admin["access_key"], admin["secret_key"])
    s3.create_bucket(Bucket="admin-results")
    s3.put_object(Bucket="admin-results", Key="run-1.csv", Body=b"a,b\n")
    user, key = cloud.add_user("s3user")
    theirs = s3_client(cloud, key.access_key, key.secret_key)
    assert cloud.ec2(aws_access_key_id=key.access_key, aws_secret_access_key=key.secret_key).describe_regions()
    theirs.create_bucket(Bucket=f"{user.name.lower()}-data")
    assert [b["Name"] for b in theirs.list_buckets()["Buckets"]] == [f"{user.name.lower()}-data"]
    assert {"admin-results", f"{user.name.lower()}-data"} <= {b["Name"] for b in s3.list_buckets()["Buckets"]}
    with pytest.raises(ClientError) as excinfo:
        theirs.get_object(Bucket="admin-results", Key="run-1.csv")
    assert excinfo.value.response["Error"]["Code"] == "AccessDenied"
    assert run_cli("user", "disable", user.name, "--state", str(cloud.layout.root))[0] == 0
    with pytest.raises(ClientError) as excinfo:
        theirs.list_buckets()
    assert excinfo.value.response["Error"]["Code"] == "InvalidAccessKeyId"


def test_env_and_credential_bundle_reach_s3(cloud: RunningCloud, tmp_path: Path) -> None:
    state = str(cloud.layout.root)
    code, out, err = run_cli("env", "--state", state)
    assert code == 0, err
    assert f"export AWS_ENDPOINT_URL_S3={cloud.info['s3_url']}" in out
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    for line in out.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = value
    env |= {"AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}
    subprocess.run([AWS, "s3", "mb", "s3://from-env"], env=env, check=True, capture_output=True, timeout=60)
    listed = subprocess.run([AWS, "s3", "ls"], env=env, check=True, capture_output=True, text=True, timeout=60)
    assert "from-env" in listed.stdout

    user, _ = cloud.add_user("bundle")
    code, out, err = run_cli("creds", user.name, "--state", state, "--out", str(tmp_path / "bundle"))
    assert code == 0, err
    eucarc = (tmp_path / "bundle" / "eucarc").read_text()
    assert f"export S3_URL={cloud.info['s3_url']}" in eucarc
    assert f"export AWS_ENDPOINT_URL_S3={cloud.info['s3_url']}" in eucarc
    bundle = tmp_path / "bundle"
    profile = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "AWS_CONFIG_FILE": str(bundle / "config"),
               "AWS_SHARED_CREDENTIALS_FILE": str(bundle / "credentials")}  # fmt: skip
    name = f"{user.name.lower()}-bundle"
    aws = [AWS, "--profile", f"cloudlab-{user.name}"]
    subprocess.run([*aws, "s3", "mb", f"s3://{name}"], env=profile, check=True, capture_output=True, timeout=60)
    (tmp_path / "f.txt").write_text("through the profile")
    subprocess.run([*aws, "s3", "cp", str(tmp_path / "f.txt"), f"s3://{name}/f.txt"], env=profile, check=True,
                   capture_output=True, timeout=60)  # fmt: skip
    got = subprocess.run([*aws, "s3", "cp", f"s3://{name}/f.txt", "-"], env=profile, check=True, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert got.stdout == "through the profile"
    ec2 = subprocess.run([*aws, "ec2", "describe-regions"], env=profile, check=True, capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert cloud.info["region"] in ec2.stdout  # the same profile still reaches EC2


def test_storage_in_the_usage_report(cloud: RunningCloud) -> None:
    user, key = cloud.add_user("billed")
    s3 = s3_client(cloud, key.access_key, key.secret_key)
    bucket = f"{user.name.lower()}-bill"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="blob", Body=b"x" * 100_000)
    assert s3.get_object(Bucket=bucket, Key="blob")["Body"].read()[:1] == b"x"
    state = str(cloud.layout.root)

    def billed() -> dict[str, str] | None:
        code, out, err = run_cli("usage", "--state", state, "--user", user.name, "--csv")
        assert code == 0, err
        lines = out.splitlines()
        if len(lines) < 2:
            return None
        row = dict(zip(lines[0].split(","), lines[1].split(","), strict=True))
        return row if int(row["s3_bytes_in"]) == 100_000 and int(row["s3_bytes_out"]) == 100_000 else None

    row = wait_until(billed, 20, what="the S3 bytes in the usage report", interval_s=0.2)
    assert float(row["storage_gb_hours"]) > 0
    code, out, _ = run_cli("usage", "--state", state, "--by", "user")
    assert user.name in out and "storage_gb_hours" in out


def test_notebook_client_dataframes_widget_and_results_bucket(cloud: RunningCloud, tmp_path: Path) -> None:
    import urllib.request

    from cloudlab.bench.notebooks import notebook_parameters
    from cloudlab.buckets import publish_results
    from cloudlab.client import connect
    from cloudlab.widgets import BucketBrowser

    lab = connect(str(cloud.layout.root), progress=False)
    lab.s3.create_bucket(Bucket="notebook-data")
    lab.s3.put_object(Bucket="notebook-data", Key="inputs/a.csv", Body=b"1,2\n")
    assert "notebook-data" in set(lab.buckets()["bucket"])
    objects = lab.objects("notebook-data")
    assert list(objects["key"]) == ["inputs/a.csv"] and list(objects["size"]) == [4]

    browser = BucketBrowser(lab, bucket="notebook-data")
    assert browser.error is None and list(browser.rows["key"]) == ["inputs/a.csv"]
    browser.new_bucket.value = "widget-made"
    browser.create_button.click()
    assert browser.error is None and browser.bucket.value == "widget-made"
    browser.prefix.value = "uploads/"
    browser.files.value = ({"name": "hello.txt", "type": "text/plain", "size": 5, "content": memoryview(b"hello"),
                            "last_modified": datetime.now(UTC)},)  # fmt: skip
    browser.upload_button.click()
    assert browser.error is None, browser.message.value
    assert list(browser.rows["key"]) == ["uploads/hello.txt"] and "hello.txt" in browser.table.value
    assert urllib.request.urlopen(browser.link("uploads/hello.txt"), timeout=10).read() == b"hello"
    browser.upload_button.click()  # nothing chosen now: a message, not a traceback
    assert browser.error is not None and "choose a file" in browser.message.value

    results = tmp_path / "results"
    (results / "charts").mkdir(parents=True)
    (results / "results.csv").write_text("flavour,gbit_s\ndirect,9\n")
    (results / "charts" / "a.png").write_bytes(b"\x89PNG")
    address = publish_results("bench-results", results, "vde-vs-direct", state=str(cloud.layout.root))
    prefix = address.removeprefix("s3://bench-results/")
    assert set(lab.objects("bench-results")["key"]) == {f"{prefix}results.csv", f"{prefix}charts/a.png"}
    root = Path(__file__).resolve().parents[1] / "notebooks"
    for notebook in ("vde-vs-direct.ipynb", "assignments/network-penalty.ipynb"):
        assert notebook_parameters(root / notebook)["results_bucket"] == '""'  # as written in the cell
