"""Users and their access keys.

A user is an identity with an X.509 certificate from the cloud CA (its identity for accounting) and
access key pairs for the EC2 API. The admin user exists from the first start.
"""

from __future__ import annotations

import re
import secrets
import string
import time
from dataclasses import dataclass

from cloudlab.clc.store import Store
from cloudlab.errors import CloudError
from cloudlab.security.ca import CertificateAuthority

USER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ADMIN = "admin"


@dataclass(frozen=True)
class User:
    name: str
    user_id: str  # a 12-digit account number, as EC2 shows in OwnerId
    is_admin: bool
    enabled: bool


@dataclass(frozen=True)
class AccessKey:
    access_key: str
    secret_key: str
    user_name: str


@dataclass(frozen=True)
class KeyRecord:
    """An access key as an administrator lists it: no secret, but whether it still works."""

    access_key: str
    user_name: str
    active: bool
    created: float


def _new_access_key() -> AccessKey:
    alphabet = string.ascii_uppercase + string.digits
    access = "AKIA" + "".join(secrets.choice(alphabet) for _ in range(16))
    return AccessKey(access, secrets.token_urlsafe(30)[:40], "")


class Users:
    def __init__(self, store: Store, ca: CertificateAuthority | None) -> None:
        self._store = store
        self._ca = ca

    @property
    def store(self) -> Store:
        """The database the users live in (their quotas live there too: ``clc.quotas``)."""
        return self._store

    def get(self, name: str) -> User | None:
        row = self._store.one("SELECT * FROM users WHERE name=?", (name,))
        return User(row["name"], row["user_id"], bool(row["is_admin"]), bool(row["enabled"])) if row else None

    def list(self) -> list[User]:
        return [
            User(r["name"], r["user_id"], bool(r["is_admin"]), bool(r["enabled"]))
            for r in self._store.query("SELECT * FROM users ORDER BY name")
        ]

    def create(self, name: str, *, admin: bool = False) -> User:
        if not USER_NAME_RE.match(name):
            raise CloudError(
                "InvalidParameterValue", f"user name {name!r} must be 1-64 letters, digits, '.', '_' or '-'"
            )
        if self.get(name) is not None:
            raise CloudError("InvalidParameterValue", f"user {name!r} already exists")
        certificate = None
        if self._ca is not None:
            certificate = self._ca.identity(name, "user").certificate_pem.decode()
        user_id = "".join(secrets.choice(string.digits) for _ in range(12))
        with self._store.transaction() as db:
            db.execute(
                "INSERT INTO users (name, user_id, is_admin, enabled, certificate, created) VALUES (?,?,?,?,?,?)",
                (name, user_id, int(admin), 1, certificate, time.time()),
            )
        return User(name, user_id, admin, True)

    def ensure_admin(self) -> tuple[User, AccessKey]:
        """The admin user and its first active key, created on the first start."""
        user = self.get(ADMIN) or self.create(ADMIN, admin=True)
        keys = self.keys(ADMIN)
        return user, (keys[0] if keys else self.create_key(ADMIN))

    def create_key(self, name: str) -> AccessKey:
        if self.get(name) is None:
            raise CloudError("InvalidParameterValue", f"no user {name!r}")
        key = _new_access_key()
        with self._store.transaction() as db:
            db.execute(
                "INSERT INTO access_keys (access_key, secret_key, user_name, active, created) VALUES (?,?,?,1,?)",
                (key.access_key, key.secret_key, name, time.time()),
            )
        return AccessKey(key.access_key, key.secret_key, name)

    def keys(self, name: str) -> list[AccessKey]:
        rows = self._store.query("SELECT * FROM access_keys WHERE user_name=? AND active=1 ORDER BY created", (name,))
        return [AccessKey(r["access_key"], r["secret_key"], r["user_name"]) for r in rows]

    def authenticate(self, access_key: str) -> tuple[User, str] | None:
        """The enabled user and secret behind an active access key, or None."""
        row = self._store.one(
            "SELECT u.name, u.user_id, u.is_admin, u.enabled, k.secret_key FROM access_keys k"
            " JOIN users u ON u.name = k.user_name WHERE k.access_key=? AND k.active=1",
            (access_key,),
        )
        if row is None or not row["enabled"]:
            return None
        return User(row["name"], row["user_id"], bool(row["is_admin"]), True), row["secret_key"]

    # -- administration (the ``cloudlab user`` commands) --------------------------------------------

    def require(self, name: str) -> User:
        """The user called ``name``, or a CloudError naming it."""
        user = self.get(name)
        if user is None:
            raise CloudError("InvalidParameterValue", f"no user {name!r}")
        return user

    def set_enabled(self, name: str, enabled: bool) -> User:
        """Enable or disable a user; a disabled user's keys fail with AuthFailure (the admin stays enabled)."""
        user = self.require(name)
        if name == ADMIN and not enabled:
            raise CloudError(
                "InvalidParameterValue", f"the {ADMIN!r} user cannot be disabled: the cloud's tools use it"
            )
        with self._store.transaction() as db:
            db.execute("UPDATE users SET enabled=? WHERE name=?", (int(enabled), name))
        return User(user.name, user.user_id, user.is_admin, enabled)

    def key_records(self, name: str) -> list[KeyRecord]:
        """Every access key ``name`` ever had, revoked ones included, oldest first."""
        self.require(name)
        rows = self._store.query(
            "SELECT access_key, user_name, active, created FROM access_keys WHERE user_name=? ORDER BY created",
            (name,),
        )
        return [KeyRecord(r["access_key"], r["user_name"], bool(r["active"]), r["created"]) for r in rows]

    def active_key_counts(self) -> dict[str, int]:
        """User name -> number of active access keys (users without any are absent)."""
        rows = self._store.query("SELECT user_name, COUNT(*) AS n FROM access_keys WHERE active=1 GROUP BY user_name")
        return {r["user_name"]: r["n"] for r in rows}

    def revoke_key(self, name: str, access_key: str) -> bool:
        """Deactivate one of ``name``'s keys (kept for the record); False if it was revoked already.

        The admin user keeps at least one active key, or nothing could administer the cloud over the API.
        """
        self.require(name)
        with self._store.transaction() as db:
            row = db.execute(
                "SELECT active FROM access_keys WHERE access_key=? AND user_name=?", (access_key, name)
            ).fetchone()
            if row is None:
                raise CloudError("InvalidParameterValue", f"user {name!r} has no access key {access_key!r}")
            if not row["active"]:
                return False
            if name == ADMIN:
                (active,) = db.execute(
                    "SELECT COUNT(*) FROM access_keys WHERE user_name=? AND active=1", (name,)
                ).fetchone()
                if active <= 1:
                    raise CloudError(
                        "InvalidParameterValue", f"this is the last active key of {ADMIN!r}: create another first"
                    )
            db.execute("UPDATE access_keys SET active=0 WHERE access_key=?", (access_key,))
        return True
