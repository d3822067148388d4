"""Bucket operations (names as in S3's model)."""

from __future__ import annotations

from typing import Any

from cloudlab.api.s3.ops import S3Call, operation
from cloudlab.api.s3.ops.common import acl_document, policy_grants, tag_list, tags_of
from cloudlab.walrus import WalrusError, WriteSpec

_CORS_FIELDS = ("ID", "AllowedHeaders", "AllowedMethods", "AllowedOrigins", "ExposeHeaders", "MaxAgeSeconds")


def _principal(call: S3Call) -> Any:
    if call.principal is None:
        raise WalrusError("AccessDenied", "Access Denied")
    return call.principal


@operation("ListBuckets")
def list_buckets(call: S3Call) -> dict[str, Any]:
    principal = _principal(call)
    buckets = call.walrus.list_buckets(principal)
    return {
        "Buckets": [{"Name": b.name, "CreationDate": b.created, "BucketRegion": b.region} for b in buckets],
        "Owner": call.owner(principal.name),
    }


@operation("CreateBucket")
def create_bucket(call: S3Call) -> dict[str, Any]:
    p = call.params
    location = (p.get("CreateBucketConfiguration") or {}).get("LocationConstraint")
    spec = WriteSpec(canned_acl=p.get("ACL"))
    from cloudlab.api.s3.ops.common import header_grants

    spec.grants = header_grants(call)
    bucket = call.walrus.create_bucket(_principal(call), p["Bucket"], location, spec)
    return {"Location": f"/{bucket.name}"}


@operation("HeadBucket")
def head_bucket(call: S3Call) -> dict[str, Any]:
    bucket = call.walrus.head_bucket(call.principal, call.params["Bucket"])
    return {"BucketRegion": bucket.region}


@operation("DeleteBucket")
def delete_bucket(call: S3Call) -> dict[str, Any]:
    call.walrus.delete_bucket(_principal(call), call.params["Bucket"])
    return {"ResponseMetadata": {}, "_status": 204}


@operation("GetBucketLocation")
def get_bucket_location(call: S3Call) -> dict[str, Any]:
    return {"LocationConstraint": call.walrus.bucket_location(_principal(call), call.params["Bucket"])}


@operation("GetBucketAcl")
def get_bucket_acl(call: S3Call) -> dict[str, Any]:
    return acl_document(call, call.walrus.get_bucket_acl(call.principal, call.params["Bucket"]))


@operation("PutBucketAcl")
def put_bucket_acl(call: S3Call) -> dict[str, Any]:
    from cloudlab.api.s3.ops.common import header_grants

    p = call.params
    spec = WriteSpec(canned_acl=p.get("ACL"), grants=header_grants(call))
    if p.get("AccessControlPolicy"):
        spec.grants = policy_grants(call, p["AccessControlPolicy"])
    call.walrus.put_bucket_acl(_principal(call), p["Bucket"], spec)
    return {}


@operation("GetBucketTagging")
def get_bucket_tagging(call: S3Call) -> dict[str, Any]:
    return {"TagSet": tag_list(call.walrus.get_bucket_tags(_principal(call), call.params["Bucket"]))}


@operation("PutBucketTagging")
def put_bucket_tagging(call: S3Call) -> dict[str, Any]:
    call.walrus.put_bucket_tags(_principal(call), call.params["Bucket"], tags_of(call.params.get("Tagging")))
    return {}


@operation("DeleteBucketTagging")
def delete_bucket_tagging(call: S3Call) -> dict[str, Any]:
    call.walrus.put_bucket_tags(_principal(call), call.params["Bucket"], None)
    return {"_status": 204}


@operation("GetBucketVersioning")
def get_bucket_versioning(call: S3Call) -> dict[str, Any]:
    status = call.walrus.get_versioning(_principal(call), call.params["Bucket"])
    return {"Status": status or None}


@operation("PutBucketVersioning")
def put_bucket_versioning(call: S3Call) -> dict[str, Any]:
    config = call.params.get("VersioningConfiguration") or {}
    call.walrus.put_versioning(_principal(call), call.params["Bucket"], config.get("Status", ""))
    return {}


@operation("GetBucketCors")
def get_bucket_cors(call: S3Call) -> dict[str, Any]:
    return {"CORSRules": call.walrus.get_cors(_principal(call), call.params["Bucket"])}


@operation("PutBucketCors")
def put_bucket_cors(call: S3Call) -> dict[str, Any]:
    rules = (call.params.get("CORSConfiguration") or {}).get("CORSRules") or []
    clean = [{k: rule[k] for k in _CORS_FIELDS if k in rule} for rule in rules]
    if not clean:
        raise WalrusError("MalformedXML", "The XML you provided was not well-formed or did not validate against our "
                          "published schema")  # fmt: skip
    call.walrus.put_cors(_principal(call), call.params["Bucket"], clean)
    return {}


@operation("DeleteBucketCors")
def delete_bucket_cors(call: S3Call) -> dict[str, Any]:
    call.walrus.put_cors(_principal(call), call.params["Bucket"], None)
    return {"_status": 204}
