"""The cloud's users, keys, quotas and images, administered straight from its state folder.

Why a module of its own: ``cloudlab user ...``, ``cloudlab creds``, ``cloudlab env``, ``cloudlab image
list|build`` and the test fixtures work whether the service runs or not (a running cloud sees every change at
once: it reads the same SQLite database), so they cannot go through the API. They go through here instead of
each opening the database, so the rules of the core (:class:`~cloudlab.clc.users.Users`,
:class:`~cloudlab.clc.quotas.Quotas`, :class:`~cloudlab.clc.images.Images`) apply to them as to the API and
no face runs SQL of its own.
"""

from __future__ import annotations

import contextlib
import json
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudlab.clc.images import Image, Images
from cloudlab.clc.quotas import Quotas
from cloudlab.clc.store import Store
from cloudlab.clc.users import ADMIN, AccessKey, Users
from cloudlab.files import write_atomic
from cloudlab.paths import StateLayout
from cloudlab.security.ca import CertificateAuthority


class StateError(Exception):
    """The state folder holds no cloud (or no CA) to administer: one line saying what to do."""


@dataclass
class StateAdmin:
    """One open state folder: its users (with the CA, so new users get certificates), quotas and images."""

    layout: StateLayout
    store: Store
    ca: CertificateAuthority | None  # None only where asked for (open_state(need_ca=False)) and absent
    users: Users
    quotas: Quotas
    images: Images

    def add_user(self, name: str, *, admin: bool = False) -> tuple[object, AccessKey]:
        """A new user with its certificate and first access key."""
        user = self.users.create(name, admin=admin)
        return user, self.users.create_key(user.name)

    @typing.overload
    def active_key(self, name: str, *, create: typing.Literal[True] = ...) -> AccessKey: ...
    @typing.overload
    def active_key(self, name: str, *, create: bool) -> AccessKey | None: ...

    def active_key(self, name: str, *, create: bool = True) -> AccessKey | None:
        """The key ``cloudlab env``/``creds`` hand out for ``name``: the one in ``credentials/NAME.json`` while it
        is active (the service keeps the admin's there), else the user's oldest active key, else (``create``)
        a new one, or None."""
        self.users.require(name)
        keys = self.users.keys(name)
        written = read_credentials(self.layout, name)
        for key in keys:
            if written and key.access_key == written.get("access_key"):
                return key
        if keys:
            return keys[0]
        return self.users.create_key(name) if create else None

    def revoke_key(self, name: str, access_key: str) -> bool:
        """Revoke one of ``name``'s keys (False: it was revoked already). When it is the admin key the cloud's
        own tools use (``credentials/admin.json``), they move to another active one."""
        revoked = self.users.revoke_key(name, access_key)
        written = read_credentials(self.layout, name)
        if revoked and name == ADMIN and written and written.get("access_key") == access_key:
            replacement = self.users.keys(name)[0]  # the admin always keeps one (Users.revoke_key)
            write_credentials(self.layout, name, replacement.access_key, replacement.secret_key)
        return revoked

    def register_default_image(self, kernel: Path, ramdisk: Path) -> tuple[Image, bool]:
        """The built default image registered as the admin's (True: newly registered)."""
        return self.images.register_default(kernel, ramdisk, ADMIN, "cloudlab default image")

    def register_debian_image(self, name: str, built: Any) -> tuple[Image, bool]:
        """The built Debian image (kernel, initrd and its root disk) registered as the admin's as ``name``."""
        return self.images.register_default(
            built.kernel,
            built.ramdisk,
            ADMIN,
            "cloudlab Debian 12 on a copy-on-write root volume",
            name=name,
            disk=built.disk,
            digests=built.digests,
        )


@contextlib.contextmanager
def open_state(layout: StateLayout, *, need_ca: bool = True) -> Iterator[StateAdmin]:
    """The cloud in ``layout`` for administration, or :class:`StateError` if it was never started.

    ``need_ca``: users are made with certificates, so a folder without the cloud's CA is refused, unless the
    caller only reads images."""
    if not layout.database.exists():
        raise StateError(f"no cloud in {layout.root}: start it once with 'cloudlab up' (users and images live there)")
    has_ca = (layout.pki / "ca.key").exists()
    if need_ca and not has_ca:
        raise StateError(
            f"the cloud in {layout.root} has no CA ({layout.pki}/ca.key): start it once with 'cloudlab up'"
        )
    store = Store(layout.database)
    try:
        ca = CertificateAuthority.load_or_create(layout.pki) if has_ca else None
        yield StateAdmin(layout, store, ca, Users(store, ca), Quotas(store), Images(store, layout.images))
    finally:
        store.close()


def read_credentials(layout: StateLayout, user: str) -> dict[str, str] | None:
    """``credentials/USER.json`` (what the service writes for the admin), or None if absent or unreadable."""
    try:
        data = json.loads((layout.credentials / f"{user}.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_credentials(layout: StateLayout, user: str, access_key: str, secret_key: str) -> Path:
    """Write ``credentials/USER.json`` (0600 from its first byte: it holds a secret)."""
    path = layout.credentials / f"{user}.json"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = {"user": user, "access_key": access_key, "secret_key": secret_key}
    write_atomic(path, json.dumps(data, indent=2) + "\n", mode=0o600)
    return path
