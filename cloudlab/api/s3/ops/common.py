"""Translations shared by the S3 operations: write specs from headers, ACL documents, tag sets."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from cloudlab.api.s3.ops import S3Call
from cloudlab.api.s3.restxml import http_date
from cloudlab.walrus import WalrusError, WriteSpec
from cloudlab.walrus.access import ALL_USERS, AUTHENTICATED_USERS

_HEADER_PARAMS = {
    "CacheControl": "Cache-Control",
    "ContentDisposition": "Content-Disposition",
    "ContentEncoding": "Content-Encoding",
    "ContentLanguage": "Content-Language",
    "Expires": "Expires",
    "WebsiteRedirectLocation": "x-amz-website-redirect-location",
}
_GRANTS = {
    "GrantFullControl": "FULL_CONTROL",
    "GrantRead": "READ",
    "GrantReadACP": "READ_ACP",
    "GrantWrite": "WRITE",
    "GrantWriteACP": "WRITE_ACP",
}
_GROUPS = {ALL_USERS, AUTHENTICATED_USERS}


def tag_set(text: str | None) -> dict[str, str]:
    """``x-amz-tagging: k1=v1&k2=v2`` as a dict."""
    if not text:
        return {}
    try:
        return dict(parse_qsl(text, keep_blank_values=True, strict_parsing=True))
    except ValueError:
        raise WalrusError("InvalidArgument", "The header 'x-amz-tagging' shall be encoded as UTF-8 then URLEncoded "
                          "URL query parameters without tag name duplicates.") from None  # fmt: skip


def tags_of(tagging: dict[str, Any] | None) -> dict[str, str]:
    tags: dict[str, str] = {}
    for tag in (tagging or {}).get("TagSet", []):
        if tag.get("Key") in tags:
            raise WalrusError("InvalidTag", "Cannot provide multiple Tags with the same key")
        tags[tag.get("Key", "")] = tag.get("Value", "")
    return tags


def tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def header_grants(call: S3Call) -> list[dict[str, Any]] | None:
    """``x-amz-grant-read: id="...", uri="..."`` headers as engine grants (None when there are none)."""
    grants: list[dict[str, Any]] = []
    for param, permission in _GRANTS.items():
        for item in (call.params.get(param) or "").split(","):
            kind, _, value = item.strip().partition("=")
            value = value.strip().strip('"')
            if not kind:
                continue
            grants.append(_grant(call, kind.strip(), value, permission))
    return grants or None


def _grant(call: S3Call, kind: str, value: str, permission: str) -> dict[str, Any]:
    if kind == "uri" and value in _GROUPS:
        return {"type": "Group", "uri": value, "permission": permission}
    if kind == "id":
        principal = call.by_canonical_id(value)
        if principal is not None:
            return {"type": "CanonicalUser", "id": value, "name": principal.name, "permission": permission}
    raise WalrusError("InvalidArgument", f"Invalid grantee {kind}={value!r}", ArgumentName=kind)


def write_spec(call: S3Call) -> WriteSpec:
    """What PutObject, CopyObject (REPLACE) and CreateMultipartUpload say about the object they write."""
    params = call.params
    headers: dict[str, str] = {}
    for param, header in _HEADER_PARAMS.items():
        value = params.get(param)
        if value is None:
            continue
        if param == "Expires":
            value = http_date(value)
        if param == "ContentEncoding":
            value = ",".join(v for v in (p.strip() for p in value.split(",")) if v and v != "aws-chunked")
            if not value:
                continue
        headers[header] = value
    return WriteSpec(
        content_type=params.get("ContentType"),
        headers=headers,
        metadata=dict(params.get("Metadata") or {}),
        tags=tag_set(params.get("Tagging")),
        canned_acl=params.get("ACL"),
        grants=header_grants(call),
    )


def acl_document(call: S3Call, acl: dict[str, Any]) -> dict[str, Any]:
    """An engine ACL as GetBucketAcl/GetObjectAcl's output."""
    grants = []
    for grant in acl.get("grants", []):
        if grant["type"] == "Group":
            grantee = {"Type": "Group", "URI": grant["uri"]}
        else:
            grantee = {"Type": "CanonicalUser", "ID": grant["id"], "DisplayName": grant.get("name", "")}
        grants.append({"Grantee": grantee, "Permission": grant["permission"]})
    return {"Owner": call.owner(acl.get("owner", "")), "Grants": grants}


def policy_grants(call: S3Call, policy: dict[str, Any]) -> list[dict[str, Any]]:
    """An AccessControlPolicy document's grants as engine grants."""
    grants = []
    for grant in policy.get("Grants", []):
        grantee = grant.get("Grantee", {})
        if grantee.get("Type") == "Group" or grantee.get("URI"):
            grants.append(_grant(call, "uri", grantee.get("URI", ""), grant.get("Permission", "")))
        else:
            grants.append(_grant(call, "id", grantee.get("ID", ""), grant.get("Permission", "")))
    return grants


def version_header(version_id: str | None, versioning: str) -> str | None:
    """S3 shows x-amz-version-id only for buckets that have had versioning."""
    return version_id if versioning and version_id else None
