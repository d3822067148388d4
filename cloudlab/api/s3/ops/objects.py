"""Object operations (names as in S3's model)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, unquote

from cloudlab.api.s3.ops import S3Call, operation
from cloudlab.api.s3.ops.common import (
    acl_document,
    header_grants,
    policy_grants,
    tag_list,
    tag_set,
    tags_of,
    version_header,
    write_spec,
)
from cloudlab.walrus import WalrusError, WriteSpec
from cloudlab.walrus.objects import Conditions, resolve_range
from cloudlab.walrus.records import ObjectVersion

STATUS = "_status"  # an output key the server turns into the HTTP status (S3's 204s and 206)
_OVERRIDES = {
    "ResponseCacheControl": "CacheControl",
    "ResponseContentDisposition": "ContentDisposition",
    "ResponseContentEncoding": "ContentEncoding",
    "ResponseContentLanguage": "ContentLanguage",
    "ResponseContentType": "ContentType",
    "ResponseExpires": "Expires",
}
_STORED_HEADERS = {
    "Cache-Control": "CacheControl",
    "Content-Disposition": "ContentDisposition",
    "Content-Encoding": "ContentEncoding",
    "Content-Language": "ContentLanguage",
    "Expires": "ExpiresString",
    "x-amz-website-redirect-location": "WebsiteRedirectLocation",
}


def checksum_fields(version: ObjectVersion) -> dict[str, Any]:
    if not version.checksum_algorithm or not version.checksum:
        return {}
    kind = "COMPOSITE" if version.parts else "FULL_OBJECT"
    return {f"Checksum{version.checksum_algorithm}": version.checksum, "ChecksumType": kind}


def _versioning(call: S3Call, bucket: str) -> str:
    return call.bucket(bucket).versioning


def _conditions(p: dict[str, Any], prefix: str = "") -> Conditions | None:
    values = [p.get(f"{prefix}{name}") for name in ("IfMatch", "IfNoneMatch", "IfModifiedSince", "IfUnmodifiedSince")]
    return Conditions(*values) if any(v is not None for v in values) else None


@operation("PutObject")
def put_object(call: S3Call) -> dict[str, Any]:
    p = call.params
    version = call.walrus.put_object(
        call.principal, p["Bucket"], p["Key"], call.body, write_spec(call), call.integrity, call.declared_size
    )
    return {
        "ETag": f'"{version.etag}"',
        "VersionId": version_header(version.version_id, _versioning(call, p["Bucket"])),
        **checksum_fields(version),
    }


def describe(call: S3Call, version: ObjectVersion) -> dict[str, Any]:
    """HeadObject's and GetObject's headers for one version."""
    out: dict[str, Any] = {
        "AcceptRanges": "bytes",
        "LastModified": version.modified,
        "ContentLength": version.size,
        "ETag": f'"{version.etag}"',
        "ContentType": version.content_type or "binary/octet-stream",
        "Metadata": version.metadata or None,
        "VersionId": version_header(version.version_id, _versioning(call, version.bucket)),
        "TagCount": len(version.tags) or None,
        "PartsCount": version.parts,
    }
    for header, name in _STORED_HEADERS.items():
        if header in version.headers:
            out[name] = version.headers[header]
    if call.params.get("ChecksumMode") == "ENABLED":
        out.update(checksum_fields(version))
    for param, name in _OVERRIDES.items():
        if call.params.get(param) is not None:
            out[name] = call.params[param]
    if "ExpiresString" in out and "Expires" not in out:
        out["Expires"] = out.pop("ExpiresString")
    return out


@operation("GetObject")
def get_object(call: S3Call) -> dict[str, Any]:
    p = call.params
    data = call.walrus.open_object(call.principal, p["Bucket"], p["Key"], p.get("VersionId"), _conditions(p))
    version = data.version
    out = describe(call, version)
    first, last = 0, version.size - 1
    if p.get("Range"):
        try:
            chosen = resolve_range(p["Range"], version.size)
        except WalrusError:
            data.close()
            raise
        if chosen is not None:
            first, last = chosen
            out["ContentRange"] = f"bytes {first}-{last}/{version.size}"
            out["ContentLength"] = last - first + 1
            out[STATUS] = 206
            for name in list(out):
                if name.startswith("Checksum"):
                    del out[name]
    call.stream = (data, first, last)
    call.walrus.count_out(call.bucket(version.bucket).owner, last - first + 1)
    return out


@operation("HeadObject")
def head_object(call: S3Call) -> dict[str, Any]:
    p = call.params
    from cloudlab.walrus.objects import check_conditions

    version = call.walrus.lookup(call.principal, p["Bucket"], p["Key"], p.get("VersionId"))
    check_conditions(version, _conditions(p))
    out = describe(call, version)
    if p.get("Range"):
        chosen = resolve_range(p["Range"], version.size)
        if chosen is not None:
            out["ContentRange"] = f"bytes {chosen[0]}-{chosen[1]}/{version.size}"
            out["ContentLength"] = chosen[1] - chosen[0] + 1
            out[STATUS] = 206
    return out


@operation("DeleteObject")
def delete_object(call: S3Call) -> dict[str, Any]:
    p = call.params
    version_id, marker = call.walrus.delete_object(call.principal, p["Bucket"], p["Key"], p.get("VersionId"))
    versioning = _versioning(call, p["Bucket"])
    return {"DeleteMarker": marker or None, "VersionId": version_header(version_id, versioning), STATUS: 204}


@operation("DeleteObjects")
def delete_objects(call: S3Call) -> dict[str, Any]:
    p = call.params
    request = p.get("Delete") or {}
    objects = request.get("Objects") or []
    if not objects or len(objects) > 1000:
        raise WalrusError("MalformedXML", "The XML you provided was not well-formed or did not validate against our "
                          "published schema")  # fmt: skip
    deleted, errors = [], []
    for item in objects:
        key = item.get("Key", "")
        try:
            version_id, marker = call.walrus.delete_object(call.principal, p["Bucket"], key, item.get("VersionId"))
        except WalrusError as exc:
            errors.append({"Key": key, "VersionId": item.get("VersionId"), "Code": exc.code, "Message": exc.message})
            continue
        entry: dict[str, Any] = {"Key": key}
        if item.get("VersionId"):
            entry["VersionId"] = item["VersionId"]
            if marker:
                entry |= {"DeleteMarker": True, "DeleteMarkerVersionId": version_id}
        elif marker:
            entry |= {"DeleteMarker": True, "DeleteMarkerVersionId": version_id}
        deleted.append(entry)
    return {"Deleted": None if request.get("Quiet") else deleted or None, "Errors": errors or None}


def copy_source(text: str) -> tuple[str, str, str | None]:
    """``x-amz-copy-source: /bucket/key?versionId=V`` (URL-encoded) as (bucket, key, version)."""
    path, _, query = text.partition("?")
    path = unquote(path).lstrip("/")
    bucket, _, key = path.partition("/")
    if not bucket or not key:
        raise WalrusError("InvalidArgument", "Copy Source must mention the source bucket and key: sourcebucket/"
                          "sourcekey", ArgumentName="x-amz-copy-source")  # fmt: skip
    version = dict(parse_qsl(query)).get("versionId") if query else None
    return bucket, key, version


@operation("CopyObject")
def copy_object(call: S3Call) -> dict[str, Any]:
    p = call.params
    directive = p.get("MetadataDirective", "COPY")
    if directive not in ("COPY", "REPLACE"):
        raise WalrusError("InvalidArgument", "Unknown metadata directive.", ArgumentName="x-amz-metadata-directive")
    spec = write_spec(call) if directive == "REPLACE" else None
    tags = tag_set(p.get("Tagging")) if p.get("TaggingDirective") == "REPLACE" else None
    acl = WriteSpec(canned_acl=p.get("ACL"), grants=header_grants(call))  # ACLs are never copied: the request's
    source = copy_source(p["CopySource"])
    old, new = call.walrus.copy_object(
        call.principal,
        source,
        p["Bucket"],
        p["Key"],
        spec,
        _conditions(p, "CopySource"),
        tags,
        acl,
    )
    versioning = _versioning(call, p["Bucket"])
    return {
        "CopyObjectResult": {"ETag": f'"{new.etag}"', "LastModified": new.modified, **checksum_fields(new)},
        "CopySourceVersionId": version_header(old.version_id, _versioning(call, old.bucket)),
        "VersionId": version_header(new.version_id, versioning),
    }


@operation("GetObjectTagging")
def get_object_tagging(call: S3Call) -> dict[str, Any]:
    p = call.params
    version = call.walrus.get_object_tags(call.principal, p["Bucket"], p["Key"], p.get("VersionId"))
    return {
        "TagSet": tag_list(version.tags),
        "VersionId": version_header(version.version_id, _versioning(call, p["Bucket"])),
    }


@operation("PutObjectTagging")
def put_object_tagging(call: S3Call) -> dict[str, Any]:
    p = call.params
    version_id = call.walrus.put_object_tags(call.principal, p["Bucket"], p["Key"], p.get("VersionId"),
                                             tags_of(p.get("Tagging")))  # fmt: skip
    return {"VersionId": version_header(version_id, _versioning(call, p["Bucket"]))}


@operation("DeleteObjectTagging")
def delete_object_tagging(call: S3Call) -> dict[str, Any]:
    p = call.params
    version_id = call.walrus.put_object_tags(call.principal, p["Bucket"], p["Key"], p.get("VersionId"), {})
    return {"VersionId": version_header(version_id, _versioning(call, p["Bucket"])), STATUS: 204}


@operation("GetObjectAcl")
def get_object_acl(call: S3Call) -> dict[str, Any]:
    p = call.params
    version = call.walrus.get_object_acl(call.principal, p["Bucket"], p["Key"], p.get("VersionId"))
    return acl_document(call, version.acl)


@operation("PutObjectAcl")
def put_object_acl(call: S3Call) -> dict[str, Any]:
    p = call.params
    if call.principal is None:
        raise WalrusError("AccessDenied", "Access Denied")
    spec = WriteSpec(canned_acl=p.get("ACL"), grants=header_grants(call))
    if p.get("AccessControlPolicy"):
        spec.grants = policy_grants(call, p["AccessControlPolicy"])
    call.walrus.put_object_acl(call.principal, p["Bucket"], p["Key"], p.get("VersionId"), spec)
    return {}
