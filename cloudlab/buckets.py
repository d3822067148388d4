"""Walrus (S3) from a notebook: a boto3 S3 client for the notebook's user and listings as DataFrames.

``cloud.s3`` is an ordinary boto3 S3 client (the same user and keys as ``cloud.ec2``) pointed at the
cloud's S3 endpoint; ``cloud.buckets()`` and ``cloud.objects(bucket)`` are its listings as tables, and
:func:`upload_results` puts a benchmark's output files into a bucket (the notebooks'
``results_bucket`` parameter).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import pandas as pd
from botocore.config import Config

from cloudlab import servicectl
from cloudlab.paths import StateLayout, find_state_dir

_CLIENTS: dict[tuple[str, str], Any] = {}


def s3_client(cloud: Any) -> Any:
    """The boto3 S3 client of ``cloud`` (a :class:`cloudlab.client.Cloud`), made once per endpoint and key."""
    info = servicectl.endpoint(cloud.layout) or {}
    if not info.get("s3_url"):
        raise RuntimeError(f"the cloud of {cloud.layout.root} has no S3 endpoint (start it again with cloudlab up)")
    return _s3(info["s3_url"], cloud.region, cloud.access_key, cloud.secret_key)


def _s3(url: str, region: str, access_key: str, secret_key: str) -> Any:
    key = (url, access_key)
    if key not in _CLIENTS:
        _CLIENTS[key] = boto3.client(
            "s3", endpoint_url=url, region_name=region, aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=Config(retries={"max_attempts": 2, "mode": "standard"}, s3={"addressing_style": "path"}),
        )  # fmt: skip
    return _CLIENTS[key]


def buckets_frame(s3: Any) -> pd.DataFrame:
    """One row per bucket the user sees: name, created, region."""
    rows = [
        {"bucket": b["Name"], "created": b["CreationDate"], "region": b.get("BucketRegion")}
        for b in s3.list_buckets().get("Buckets", [])
    ]
    return pd.DataFrame(rows, columns=["bucket", "created", "region"])


def objects_frame(s3: Any, bucket: str, prefix: str = "", limit: int | None = None) -> pd.DataFrame:
    """One row per object under ``prefix`` (all pages, or the first ``limit``): key, size, modified, etag."""
    rows = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            rows.append({"key": item["Key"], "size": item["Size"], "modified": item["LastModified"],
                         "etag": item["ETag"].strip('"')})  # fmt: skip
            if limit is not None and len(rows) >= limit:
                return pd.DataFrame(rows)
    return pd.DataFrame(rows, columns=["key", "size", "modified", "etag"])


def upload_results(s3: Any, bucket: str, folder: str | Path, prefix: str = "") -> list[str]:
    """Put every file under ``folder`` into ``bucket`` (created if missing) as ``prefix`` + relative path."""
    from botocore.exceptions import ClientError

    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError:
        s3.create_bucket(Bucket=bucket)
    keys = []
    root = Path(folder)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        key = f"{prefix}{path.relative_to(root).as_posix()}"
        s3.upload_file(str(path), bucket, key)
        keys.append(key)
    return keys


def publish_results(bucket: str, folder: str | Path, name: str, state: str | None = None) -> str:
    """A notebook's ``results_bucket``: upload ``folder`` to the running cloud's ``bucket`` under
    ``name/<time>/`` as the admin, and return its ``s3://`` address (the cloud found through its state
    folder, as :func:`cloudlab.connect` finds it: this module sits below the client, not on it)."""
    import time

    layout = StateLayout(find_state_dir(state))
    try:
        info, creds = servicectl.connection(layout, "admin")
    except servicectl.ControlError as exc:
        raise RuntimeError(str(exc)) from None
    if not info.get("s3_url"):
        raise RuntimeError(f"the cloud of {layout.root} has no S3 endpoint (start it again with cloudlab up)")
    s3 = _s3(info["s3_url"], info["region"], creds["access_key"], creds["secret_key"])
    prefix = f"{name}/{time.strftime('%Y%m%d-%H%M%S')}/"
    keys = upload_results(s3, bucket, folder, prefix)
    print(f"uploaded {len(keys)} file(s) to s3://{bucket}/{prefix}")
    return f"s3://{bucket}/{prefix}"


def upload_image(cloud: Any, name: str, bucket: str, files: dict[str, Path], description: str = "") -> str:
    """Put an image's files (role -> path: kernel, ramdisk, disk) into ``bucket`` under ``name/`` with a
    manifest, and register the image from there (``RegisterImage ImageLocation=bucket/name/manifest.json``,
    as Eucalyptus registered from Walrus). The bucket is made if it does not exist. Returns the AMI id."""
    import hashlib
    import json

    from cloudlab.clc.bucket_images import MANIFEST_NAME, manifest

    s3 = cloud.s3
    try:
        s3.head_bucket(Bucket=bucket)
    except s3.exceptions.ClientError as exc:
        if exc.response["Error"]["Code"] not in ("404", "NoSuchBucket"):
            raise
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": cloud.region})
    entries: dict[str, dict[str, Any]] = {}
    for role, path in files.items():
        key = f"{name}/{path.name}"
        with path.open("rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        s3.upload_file(str(path), bucket, key)
        entries[role] = {"key": key, "size": path.stat().st_size, "sha256": digest}
    location = f"{bucket}/{name}/{MANIFEST_NAME}"
    body = json.dumps(manifest(name, entries), indent=2).encode()
    s3.put_object(Bucket=bucket, Key=f"{name}/{MANIFEST_NAME}", Body=body, ContentType="application/json")
    reply = cloud.ec2.register_image(Name=name, ImageLocation=location, Description=description)
    return str(reply["ImageId"])
