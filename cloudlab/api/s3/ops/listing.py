"""Listing operations: ListObjects (v1, v2), ListObjectVersions, ListMultipartUploads.

``EncodingType=url`` percent-encodes every key, prefix, delimiter and marker in the answer (boto3
asks for it by default and decodes it); a v2 continuation token is the last key, base64url-encoded.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any
from urllib.parse import quote

from cloudlab.api.s3.ops import S3Call, operation
from cloudlab.walrus import WalrusError
from cloudlab.walrus.records import Listed


def _encoder(call: S3Call) -> Any:
    kind = call.params.get("EncodingType")
    if kind is None:
        return lambda text: text
    if kind != "url":
        raise WalrusError(
            "InvalidArgument", "Invalid Encoding Method specified in Request", ArgumentName="encoding-type"
        )
    return lambda text: None if text is None else quote(text, safe="/")


def _entry(call: S3Call, v: Listed, enc: Any, owner: bool = True) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "Key": enc(v.key),
        "LastModified": v.modified,
        "ETag": f'"{v.etag}"',
        "Size": v.size,
        "StorageClass": "STANDARD",
    }
    if v.checksum_algorithm:
        entry["ChecksumAlgorithm"] = [v.checksum_algorithm]
    if owner:
        entry["Owner"] = call.owner(v.owner)
    return entry


def _max_keys(call: S3Call, name: str = "MaxKeys") -> int | None:
    return call.params.get(name)


@operation("ListObjects")
def list_objects(call: S3Call) -> dict[str, Any]:
    p, enc = call.params, _encoder(call)
    prefix, delimiter = p.get("Prefix") or "", p.get("Delimiter") or None
    page = call.walrus.list_objects(call.principal, p["Bucket"], prefix, delimiter, p.get("Marker"), _max_keys(call))
    out: dict[str, Any] = {
        "IsTruncated": page.truncated,
        "Marker": enc(p.get("Marker") or ""),
        "Contents": [_entry(call, v, enc) for v in page.entries] or None,
        "Name": p["Bucket"],
        "Prefix": enc(prefix),
        "Delimiter": enc(delimiter) if delimiter else None,
        "MaxKeys": p.get("MaxKeys", 1000),
        "CommonPrefixes": [{"Prefix": enc(cp)} for cp in page.prefixes] or None,
        "EncodingType": p.get("EncodingType"),
    }
    if page.truncated and delimiter:
        out["NextMarker"] = enc(page.next_marker)
    return out


def _token(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        return base64.urlsafe_b64decode(text.encode() + b"=" * (-len(text) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise WalrusError("InvalidArgument", "The continuation token provided is incorrect",
                          ArgumentName="continuation-token") from None  # fmt: skip


@operation("ListObjectsV2")
def list_objects_v2(call: S3Call) -> dict[str, Any]:
    p, enc = call.params, _encoder(call)
    prefix, delimiter = p.get("Prefix") or "", p.get("Delimiter") or None
    after = _token(p.get("ContinuationToken")) if p.get("ContinuationToken") else p.get("StartAfter")
    page = call.walrus.list_objects(call.principal, p["Bucket"], prefix, delimiter, after, _max_keys(call))
    fetch_owner = bool(p.get("FetchOwner"))
    out: dict[str, Any] = {
        "IsTruncated": page.truncated,
        "Contents": [_entry(call, v, enc, fetch_owner) for v in page.entries] or None,
        "Name": p["Bucket"],
        "Prefix": enc(prefix),
        "Delimiter": enc(delimiter) if delimiter else None,
        "MaxKeys": p.get("MaxKeys", 1000),
        "CommonPrefixes": [{"Prefix": enc(cp)} for cp in page.prefixes] or None,
        "EncodingType": p.get("EncodingType"),
        "KeyCount": len(page.entries) + len(page.prefixes),
        "ContinuationToken": p.get("ContinuationToken"),
        "StartAfter": enc(p.get("StartAfter")) if p.get("StartAfter") else None,
    }
    if page.truncated and page.next_marker is not None:
        out["NextContinuationToken"] = base64.urlsafe_b64encode(page.next_marker.encode()).decode().rstrip("=")
    return out


@operation("ListObjectVersions")
def list_object_versions(call: S3Call) -> dict[str, Any]:
    p, enc = call.params, _encoder(call)
    prefix, delimiter = p.get("Prefix") or "", p.get("Delimiter") or None
    page = call.walrus.list_versions(
        call.principal, p["Bucket"], prefix, delimiter, p.get("KeyMarker"), p.get("VersionIdMarker"), _max_keys(call)
    )
    versions, markers = [], []
    for v in page.entries:
        common = {"Key": enc(v.key), "VersionId": v.version_id, "IsLatest": v.is_latest, "LastModified": v.modified,
                  "Owner": call.owner(v.owner)}  # fmt: skip
        if v.delete_marker:
            markers.append(common)
        else:
            versions.append(common | {"ETag": f'"{v.etag}"', "Size": v.size, "StorageClass": "STANDARD"})
    out: dict[str, Any] = {
        "IsTruncated": page.truncated,
        "KeyMarker": enc(p.get("KeyMarker") or ""),
        "VersionIdMarker": p.get("VersionIdMarker") or "",
        "Versions": versions or None,
        "DeleteMarkers": markers or None,
        "Name": p["Bucket"],
        "Prefix": enc(prefix),
        "Delimiter": enc(delimiter) if delimiter else None,
        "MaxKeys": p.get("MaxKeys", 1000),
        "CommonPrefixes": [{"Prefix": enc(cp)} for cp in page.prefixes] or None,
        "EncodingType": p.get("EncodingType"),
    }
    if page.truncated:
        out["NextKeyMarker"] = enc(page.next_marker)
        out["NextVersionIdMarker"] = page.next_version_marker
    return out


@operation("ListMultipartUploads")
def list_multipart_uploads(call: S3Call) -> dict[str, Any]:
    p, enc = call.params, _encoder(call)
    prefix, delimiter = p.get("Prefix") or "", p.get("Delimiter") or None
    page = call.walrus.list_uploads(
        call.principal, p["Bucket"], prefix, delimiter, p.get("KeyMarker"), p.get("UploadIdMarker"),
        p.get("MaxUploads"),
    )  # fmt: skip
    out: dict[str, Any] = {
        "Bucket": p["Bucket"],
        "KeyMarker": enc(p.get("KeyMarker") or ""),
        "UploadIdMarker": p.get("UploadIdMarker") or "",
        "Prefix": enc(prefix),
        "Delimiter": enc(delimiter) if delimiter else None,
        "MaxUploads": p.get("MaxUploads", 1000),
        "IsTruncated": page.truncated,
        "Uploads": [
            {
                "UploadId": u.upload_id,
                "Key": enc(u.key),
                "Initiated": u.initiated,
                "StorageClass": "STANDARD",
                "Owner": call.owner(u.owner),
                "Initiator": call.owner(u.owner),
            }  # fmt: skip
            for u in page.entries
        ]
        or None,
        "CommonPrefixes": [{"Prefix": enc(cp)} for cp in page.prefixes] or None,
        "EncodingType": p.get("EncodingType"),
    }
    if page.truncated:
        out["NextKeyMarker"] = enc(page.next_marker)
        out["NextUploadIdMarker"] = page.next_version_marker
    return out
