"""Who may do what: S3's access control lists, canned or granted, over the cloud's own users.

A principal is a user of the cloud (the same users and keys as EC2) or nobody (an anonymous request).
An ACL is stored as its owner and a list of grants; a canned ACL is expanded into grants when it is
set, as S3 does, so ``GetBucketAcl`` shows what ``public-read`` means. Rules, as S3's:

* the admin may do anything (as the cloud's operator, seeing every user's resources, as in EC2);
* the owner of a bucket or object may do anything to it;
* otherwise a grant must give the permission (FULL_CONTROL gives all), to the principal's canonical
  id, to ``AuthenticatedUsers`` (any user of the cloud) or to ``AllUsers`` (anyone, anonymous too).

Bucket configuration (versioning, CORS, tagging, deletion) is the bucket owner's alone.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cloudlab.walrus.errors import WalrusError

ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"
AUTHENTICATED_USERS = "http://acs.amazonaws.com/groups/global/AuthenticatedUsers"
PERMISSIONS = ("FULL_CONTROL", "WRITE", "WRITE_ACP", "READ", "READ_ACP")
CANNED = ("private", "public-read", "public-read-write", "authenticated-read", "bucket-owner-read",
          "bucket-owner-full-control")  # fmt: skip


@dataclass(frozen=True, slots=True)
class Principal:
    """A signed-in user of the cloud, as the S3 face authenticated them."""

    name: str
    user_id: str
    is_admin: bool = False

    @property
    def canonical_id(self) -> str:
        return canonical_id(self.user_id)


def canonical_id(user_id: str) -> str:
    """S3's 64-hex canonical user id, derived from the cloud's 12-digit account number."""
    return hashlib.sha256(f"cloudlab-walrus:{user_id}".encode()).hexdigest()


def _user_grant(cid: str, name: str, permission: str) -> dict[str, Any]:
    return {"type": "CanonicalUser", "id": cid, "name": name, "permission": permission}


def _group_grant(uri: str, permission: str) -> dict[str, Any]:
    return {"type": "Group", "uri": uri, "permission": permission}


def canned_acl(canned: str, owner: Principal, bucket_owner: tuple[str, str] | None = None) -> dict[str, Any]:
    """The ACL a canned name stands for (S3's table of canned ACLs)."""
    if canned not in CANNED:
        raise WalrusError("InvalidArgument", f"Invalid canned ACL: {canned!r}", ArgumentName="x-amz-acl")
    grants = [_user_grant(owner.canonical_id, owner.name, "FULL_CONTROL")]
    if canned == "public-read":
        grants.append(_group_grant(ALL_USERS, "READ"))
    elif canned == "public-read-write":
        grants += [_group_grant(ALL_USERS, "READ"), _group_grant(ALL_USERS, "WRITE")]
    elif canned == "authenticated-read":
        grants.append(_group_grant(AUTHENTICATED_USERS, "READ"))
    elif canned in ("bucket-owner-read", "bucket-owner-full-control") and bucket_owner is not None:
        name, cid = bucket_owner  # (user name, canonical id) of the bucket's owner
        if name != owner.name:
            permission = "READ" if canned == "bucket-owner-read" else "FULL_CONTROL"
            grants.append(_user_grant(cid, name, permission))
    return {"owner": owner.name, "grants": grants}


def explicit_acl(owner: Principal, grants: list[dict[str, Any]]) -> dict[str, Any]:
    """An ACL from grants a client sent (already resolved to users or groups by the face)."""
    for grant in grants:
        if grant.get("permission") not in PERMISSIONS:
            raise WalrusError("MalformedACLError", "The ACL you provided is not well formed")
        if grant.get("type") == "Group" and grant.get("uri") not in (ALL_USERS, AUTHENTICATED_USERS):
            raise WalrusError("InvalidArgument", f"Invalid group uri {grant.get('uri')!r}")
    return {"owner": owner.name, "grants": list(grants)}


def dump(acl: dict[str, Any]) -> str:
    return json.dumps(acl, separators=(",", ":"))


def load(text: str | None, owner: str) -> dict[str, Any]:
    return json.loads(text) if text else {"owner": owner, "grants": []}


def allowed(acl: dict[str, Any], principal: Principal | None, permission: str) -> bool:
    """Whether ``principal`` (None: anonymous) holds ``permission`` under ``acl``."""
    if principal is not None and (principal.is_admin or principal.name == acl.get("owner")):
        return True
    for grant in acl.get("grants", []):
        if grant["permission"] not in (permission, "FULL_CONTROL"):
            continue
        if grant["type"] == "Group":
            if grant["uri"] == ALL_USERS or (grant["uri"] == AUTHENTICATED_USERS and principal is not None):
                return True
        elif principal is not None and grant.get("id") == principal.canonical_id:
            return True
    return False


def is_public(acl: dict[str, Any], permission: str = "READ") -> bool:
    """Whether anonymous requests hold ``permission`` (the CORS and browser case)."""
    return allowed(acl, None, permission)
