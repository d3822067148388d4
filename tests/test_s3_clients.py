"""Walrus with the unmodified command-line clients people use: the AWS CLI (``aws s3``, ``aws s3api``),
s3cmd (SigV4 and SigV2) and rclone, each against a real endpoint on loopback."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.s3_fixtures import REGION, S3Endpoint, s3  # noqa: F401

AWS = str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "aws")


def _run(argv: list[str], env: dict[str, str] | None = None, timeout: float = 120) -> str:
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{argv[:4]} exited {done.returncode}: {done.stderr[-2000:]}"
    return done.stdout


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def files(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.txt").write_text("alpha\n")
    (root / "sub" / "b with space.csv").write_text("x,y\n1,2\n")
    (root / "sub" / "deeper" / "c.bin").write_bytes(os.urandom(300_000))
    (root / "big.bin").write_bytes(os.urandom(12 * 1024 * 1024))  # multipart for every client below
    return root


def _aws_env(s3: S3Endpoint, tmp_path: Path) -> dict[str, str]:  # noqa: F811
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "AWS_ACCESS_KEY_ID": s3.admin.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.admin.secret_key,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL_S3": s3.url,
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
    }


def test_aws_cli_s3_and_s3api(s3: S3Endpoint, files: Path, tmp_path: Path) -> None:  # noqa: F811
    env = _aws_env(s3, tmp_path)
    bucket = "awscli-bucket"
    _run([AWS, "s3", "mb", f"s3://{bucket}"], env)
    assert bucket in _run([AWS, "s3", "ls"], env)
    _run([AWS, "s3", "sync", str(files), f"s3://{bucket}/set/"], env)
    listing = _run([AWS, "s3", "ls", "--recursive", f"s3://{bucket}/set/"], env)
    assert "set/sub/b with space.csv" in listing and "set/big.bin" in listing
    head = json.loads(_run([AWS, "s3api", "head-object", "--bucket", bucket, "--key", "set/big.bin"], env))
    assert head["ContentLength"] == 12 * 1024 * 1024 and head["ETag"].rstrip('"').split("-")[1] == "2"
    back = tmp_path / "back"
    _run([AWS, "s3", "cp", "--recursive", f"s3://{bucket}/set/", str(back)], env)
    assert _tree(back) == _tree(files)
    _run([AWS, "s3api", "put-bucket-versioning", "--bucket", bucket, "--versioning-configuration",
          "Status=Enabled"], env)  # fmt: skip
    (tmp_path / "v.txt").write_text("one")
    _run([AWS, "s3", "cp", str(tmp_path / "v.txt"), f"s3://{bucket}/v.txt"], env)
    (tmp_path / "v.txt").write_text("two")
    _run([AWS, "s3", "cp", str(tmp_path / "v.txt"), f"s3://{bucket}/v.txt"], env)
    versions = json.loads(_run([AWS, "s3api", "list-object-versions", "--bucket", bucket, "--prefix", "v.txt"], env))
    assert [v["Size"] for v in versions["Versions"]] == [3, 3] and versions["Versions"][0]["IsLatest"]
    url = _run([AWS, "s3", "presign", f"s3://{bucket}/set/a.txt", "--expires-in", "60"], env).strip()
    assert urllib.request.urlopen(url, timeout=10).read() == b"alpha\n"
    _run([AWS, "s3", "rm", "--recursive", f"s3://{bucket}/set/"], env)
    assert "set/" not in _run([AWS, "s3", "ls", f"s3://{bucket}/"], env)


def _s3cmd_config(s3: S3Endpoint, tmp_path: Path, v2: bool) -> Path:  # noqa: F811
    config = tmp_path / f"s3cmd-{'v2' if v2 else 'v4'}.cfg"
    host = f"127.0.0.1:{s3.port}"
    config.write_text(
        "[default]\n"
        f"access_key = {s3.admin.access_key}\nsecret_key = {s3.admin.secret_key}\n"
        f"host_base = {host}\nhost_bucket = {host}\nuse_https = False\nbucket_location = {REGION}\n"
        f"signature_v2 = {'True' if v2 else 'False'}\nmultipart_chunk_size_mb = 5\ncheck_ssl_certificate = False\n"
    )
    return config


@pytest.mark.skipif(shutil.which("s3cmd") is None, reason="s3cmd is not installed (bootstrap installs it)")
@pytest.mark.parametrize("v2", [False, True], ids=["sigv4", "sigv2"])
def test_s3cmd(s3: S3Endpoint, files: Path, tmp_path: Path, v2: bool) -> None:  # noqa: F811
    config = _s3cmd_config(s3, tmp_path, v2)
    base = ["s3cmd", "-c", str(config), "--no-progress"]
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}
    bucket = f"s3cmd-{'v2' if v2 else 'v4'}"
    _run([*base, "mb", f"s3://{bucket}"], env)
    assert f"s3://{bucket}" in _run([*base, "ls"], env)
    _run([*base, "put", "--recursive", str(files) + "/", f"s3://{bucket}/up/"], env)
    listing = _run([*base, "ls", "--recursive", f"s3://{bucket}"], env)
    assert "up/sub/b with space.csv" in listing and "up/big.bin" in listing
    info = _run([*base, "info", f"s3://{bucket}/up/big.bin"], env)
    assert "12582912" in info
    back = tmp_path / "back"
    back.mkdir()
    _run([*base, "get", "--recursive", f"s3://{bucket}/up/", str(back) + "/"], env)
    assert _tree(back) == _tree(files)
    _run([*base, "setacl", "--acl-public", f"s3://{bucket}/up/a.txt"], env)
    assert urllib.request.urlopen(f"{s3.url}/{bucket}/up/a.txt", timeout=10).read() == b"alpha\n"  # anonymous
    _run([*base, "del", "--recursive", "--force", f"s3://{bucket}/up/"], env)
    _run([*base, "rb", f"s3://{bucket}"], env)
    assert f"s3://{bucket}" not in _run([*base, "ls"], env)


def _rclone_env(s3: S3Endpoint, tmp_path: Path) -> dict[str, Any]:  # noqa: F811
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "RCLONE_CONFIG": str(tmp_path / "rclone.conf"),
        "RCLONE_CONFIG_WALRUS_TYPE": "s3",
        "RCLONE_CONFIG_WALRUS_PROVIDER": "Other",
        "RCLONE_CONFIG_WALRUS_ACCESS_KEY_ID": s3.admin.access_key,
        "RCLONE_CONFIG_WALRUS_SECRET_ACCESS_KEY": s3.admin.secret_key,
        "RCLONE_CONFIG_WALRUS_ENDPOINT": s3.url,
        "RCLONE_CONFIG_WALRUS_REGION": REGION,
        "RCLONE_CONFIG_WALRUS_FORCE_PATH_STYLE": "true",
    }


@pytest.mark.skipif(shutil.which("rclone") is None, reason="rclone is not installed (bootstrap installs it)")
def test_rclone(s3: S3Endpoint, files: Path, tmp_path: Path) -> None:  # noqa: F811
    env = _rclone_env(s3, tmp_path)
    flags = ["--s3-upload-cutoff", "5M", "--s3-chunk-size", "5M", "--retries", "1", "--low-level-retries", "1"]
    _run(["rclone", "mkdir", "walrus:rclone-bucket"], env)
    _run(["rclone", "copy", *flags, str(files), "walrus:rclone-bucket/copy"], env)
    listing = _run(["rclone", "ls", "walrus:rclone-bucket/copy"], env)
    assert "sub/b with space.csv" in listing and "12582912 big.bin" in listing
    _run(["rclone", "check", str(files), "walrus:rclone-bucket/copy"], env)  # sizes and MD5s agree
    assert _run(["rclone", "cat", "walrus:rclone-bucket/copy/a.txt"], env) == "alpha\n"
    back = tmp_path / "back"
    _run(["rclone", "copy", *flags, "walrus:rclone-bucket/copy", str(back)], env)
    assert _tree(back) == _tree(files)
    _run(["rclone", "purge", "walrus:rclone-bucket"], env)
    assert "rclone-bucket" not in _run(["rclone", "lsd", "walrus:"], env)
