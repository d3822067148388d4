"""Multipart upload operations (names as in S3's model)."""

from __future__ import annotations

from typing import Any

from cloudlab.api.s3.ops import S3Call, operation
from cloudlab.api.s3.ops.common import version_header, write_spec
from cloudlab.api.s3.ops.objects import STATUS, _conditions, checksum_fields, copy_source
from cloudlab.walrus import WalrusError


def _part_number(call: S3Call) -> int:
    number = call.params.get("PartNumber")
    if not isinstance(number, int):
        raise WalrusError("InvalidArgument", "Part number must be an integer", ArgumentName="partNumber")
    return number


@operation("CreateMultipartUpload")
def create_multipart_upload(call: S3Call) -> dict[str, Any]:
    p = call.params
    if call.principal is None:
        raise WalrusError("AccessDenied", "Access Denied")
    upload = call.walrus.create_upload(
        call.principal, p["Bucket"], p["Key"], write_spec(call), p.get("ChecksumAlgorithm")
    )
    return {"Bucket": p["Bucket"], "Key": p["Key"], "UploadId": upload.upload_id,
            "ChecksumAlgorithm": upload.checksum_algorithm}  # fmt: skip


@operation("UploadPart")
def upload_part(call: S3Call) -> dict[str, Any]:
    p = call.params
    part = call.walrus.upload_part(
        call.principal, p["Bucket"], p["Key"], p["UploadId"], _part_number(call), call.body, call.integrity,
        call.declared_size,
    )  # fmt: skip
    algorithm = call.integrity.checksum_algorithm
    return {
        "ETag": f'"{part.etag}"',
        **({f"Checksum{algorithm}": part.checksum} if algorithm and part.checksum else {}),
    }


@operation("UploadPartCopy")
def upload_part_copy(call: S3Call) -> dict[str, Any]:
    p = call.params
    if call.principal is None:
        raise WalrusError("AccessDenied", "Access Denied")
    source, part = call.walrus.upload_part_copy(
        call.principal, copy_source(p["CopySource"]), p["Bucket"], p["Key"], p["UploadId"], _part_number(call),
        p.get("CopySourceRange"), _conditions(p, "CopySource"),
    )  # fmt: skip
    return {
        "CopyPartResult": {"ETag": f'"{part.etag}"', "LastModified": part.modified},
        "CopySourceVersionId": version_header(source.version_id, call.walrus.bucket(source.bucket).versioning),
    }


@operation("CompleteMultipartUpload")
def complete_multipart_upload(call: S3Call) -> dict[str, Any]:
    p = call.params
    parts = (p.get("MultipartUpload") or {}).get("Parts") or []
    chosen = []
    for part in parts:
        if "PartNumber" not in part or "ETag" not in part:
            raise WalrusError("MalformedXML", "The XML you provided was not well-formed or did not validate against "
                              "our published schema")  # fmt: skip
        chosen.append((part["PartNumber"], part["ETag"]))
    version = call.walrus.complete_upload(call.principal, p["Bucket"], p["Key"], p["UploadId"], chosen)
    return {
        "Location": f"/{p['Bucket']}/{p['Key']}",
        "Bucket": p["Bucket"],
        "Key": p["Key"],
        "ETag": f'"{version.etag}"',
        "VersionId": version_header(version.version_id, call.walrus.bucket(p["Bucket"]).versioning),
        **checksum_fields(version),
    }


@operation("AbortMultipartUpload")
def abort_multipart_upload(call: S3Call) -> dict[str, Any]:
    p = call.params
    call.walrus.abort_upload(call.principal, p["Bucket"], p["Key"], p["UploadId"])
    return {STATUS: 204}


@operation("ListParts")
def list_parts(call: S3Call) -> dict[str, Any]:
    p = call.params
    marker = int(p.get("PartNumberMarker") or 0)
    upload, parts, truncated = call.walrus.list_parts(
        call.principal, p["Bucket"], p["Key"], p["UploadId"], marker, p.get("MaxParts")
    )
    out: dict[str, Any] = {
        "Bucket": p["Bucket"],
        "Key": p["Key"],
        "UploadId": upload.upload_id,
        "PartNumberMarker": marker,
        "MaxParts": p.get("MaxParts", 1000),
        "IsTruncated": truncated,
        "Parts": [
            {"PartNumber": part.part_number, "LastModified": part.modified, "ETag": f'"{part.etag}"', "Size": part.size}
            | ({f"Checksum{upload.checksum_algorithm}": part.checksum} if part.checksum else {})
            for part in parts
        ]
        or None,
        "Initiator": call.owner(upload.owner),
        "Owner": call.owner(upload.owner),
        "StorageClass": "STANDARD",
        "ChecksumAlgorithm": upload.checksum_algorithm,
    }
    if truncated and parts:
        out["NextPartNumberMarker"] = parts[-1].part_number
    return out
