"""EC2 key pairs: real SSH keys, created by the cloud or imported by their owner.

``CreateKeyPair`` makes a real key with ``cryptography`` (RSA 2048 or Ed25519) and hands its private
half to the caller in the form EC2 uses: a traditional PEM (``BEGIN RSA PRIVATE KEY``) for RSA, an
OpenSSH private key (``BEGIN OPENSSH PRIVATE KEY``) for Ed25519. ``ImportKeyPair`` takes the formats
EC2 takes: an OpenSSH public key line (``ssh-rsa ...`` or ``ssh-ed25519 ...``), an RFC 4716 SSH2 public
key file, or a base64-encoded DER public key (and the DER bytes themselves); the cloud never sees the
private key.

The cloud stores the public key (one OpenSSH line, without comment) for the metadata service, and the
fingerprint computed exactly as EC2 computes it, so that a fingerprint can be checked against AWS
documentation and tools:

- a created RSA key: SHA-1 of the private key as DER PKCS#8, colon-separated hex;
- an imported RSA key: MD5 of the public key as DER SubjectPublicKeyInfo, colon-separated hex;
- Ed25519 (created or imported): base64 of the SHA-256 of the OpenSSH public key blob, with its
  padding (``ssh-keygen -l`` prints the same digest as ``SHA256:...`` without the trailing ``=``).

The private key of a *created* key pair is also kept in the state folder, at
``<state>/keys/<owner>/<name>.pem`` (folders 0700, file 0600; see :func:`private_key_path` for names
that are not plain file names), so that ``cloudlab ssh`` can log in to an instance launched with it
without the user saving the key material. Deleting the key pair deletes that copy. Imported key
pairs have no copy: their private key stays with the user.

Users see only their own key pairs; an admin sees (and may delete by id) everyone's.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from cloudlab.clc.tags import Tags
from cloudlab.clc.users import User
from cloudlab.errors import CloudError
from cloudlab.files import write_atomic
from cloudlab.ids import new_id

SCHEMA = """
CREATE TABLE IF NOT EXISTS key_pairs (
    key_pair_id TEXT PRIMARY KEY, owner TEXT NOT NULL, name TEXT NOT NULL, key_type TEXT NOT NULL,
    fingerprint TEXT NOT NULL, public_key TEXT NOT NULL, created REAL NOT NULL, UNIQUE (owner, name));
"""

KEY_TYPES = ("rsa", "ed25519")
RSA_BITS = 2048
#: RSA sizes accepted on import (EC2 takes 1024, 2048 and 4096 bits; smaller keys are not keys).
RSA_IMPORT_BITS = (1024, 16384)
MAX_NAME = 255
_SSH_TYPES = {"ssh-rsa": "rsa", "ssh-ed25519": "ed25519"}


@dataclass(frozen=True)
class KeyPair:
    key_pair_id: str
    owner: str
    name: str
    key_type: str  # rsa or ed25519
    fingerprint: str
    public_key: str  # one OpenSSH line: "ssh-rsa AAAA..." (no comment)
    created: float


def _row_to_key(row: Any) -> KeyPair:
    return KeyPair(**{name: row[name] for name in KeyPair.__dataclass_fields__})


# -- fingerprints, as EC2 computes them --------------------------------------------------------------------


def _colon_hex(digest: bytes) -> str:
    return ":".join(f"{b:02x}" for b in digest)


def openssh_public_key(public_key: rsa.RSAPublicKey | ed25519.Ed25519PublicKey) -> str:
    """The one-line OpenSSH form (``ssh-ed25519 AAAA...``), without comment."""
    return public_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def created_rsa_fingerprint(private_key: rsa.RSAPrivateKey) -> str:
    """EC2's fingerprint of an RSA key it created: SHA-1 of the DER PKCS#8 private key."""
    der = private_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return _colon_hex(hashlib.sha1(der, usedforsecurity=False).digest())


def imported_rsa_fingerprint(public_key: rsa.RSAPublicKey) -> str:
    """EC2's fingerprint of an imported RSA key: MD5 of the DER SubjectPublicKeyInfo."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return _colon_hex(hashlib.md5(der, usedforsecurity=False).digest())


def ed25519_fingerprint(public_key: ed25519.Ed25519PublicKey) -> str:
    """EC2's fingerprint of an Ed25519 key: base64 (padded) SHA-256 of the OpenSSH public key blob."""
    blob = base64.b64decode(openssh_public_key(public_key).split()[1])
    return base64.b64encode(hashlib.sha256(blob).digest()).decode()


# -- where the cloud keeps private keys it created -----------------------------------------------------------


def held_private_keys(state_dir: Path, name: str) -> list[Path]:
    """Every private key the cloud holds for key pairs called ``name`` (one per owner that created one)."""
    return sorted((state_dir / "keys").glob(f"*/{private_key_path(state_dir, '-', name).name}"))


def private_key_path(state_dir: Path, owner: str, name: str) -> Path:
    """Where the cloud keeps the private key of ``owner``'s created key pair ``name``.

    ``<state>/keys/<owner>/<name>.pem`` for names that are plain file names; any other character is
    percent-encoded (so ``a/b`` is ``a%2Fb.pem``, never a sub-folder), and a name too long for a
    file name becomes ``sha256-<hex digest of the name>.pem``.
    """
    filename = urllib.parse.quote(name, safe="") + ".pem"
    if len(filename) > 255:
        filename = "sha256-" + hashlib.sha256(name.encode()).hexdigest() + ".pem"
    return state_dir / "keys" / owner / filename


def _write_private(path: Path, material: str) -> None:
    """Write ``material`` to ``path`` atomically, readable by the cloud's user only."""
    for folder in (path.parent.parent, path.parent):
        folder.mkdir(mode=0o700, exist_ok=True)
        os.chmod(folder, 0o700)
    write_atomic(path, material, 0o600)


# -- validation ---------------------------------------------------------------------------------------------


def _check_name(name: str | None) -> str:
    if not name or len(name) > MAX_NAME or not all(" " <= c <= "~" for c in name):
        raise CloudError(
            "InvalidParameterValue",
            f"Value ({(name or '')[:80]}) for parameter KeyName is invalid. "
            f"A key name is 1 to {MAX_NAME} printable ASCII characters.",
        )
    return name


def _not_found(what: str) -> CloudError:
    return CloudError("InvalidKeyPair.NotFound", f"The key pair '{what}' does not exist")


_SSH2_BEGIN = "---- BEGIN SSH2 PUBLIC KEY ----"
_SSH2_END = "---- END SSH2 PUBLIC KEY ----"
_BAD_FORMAT = (
    "Key is not in valid OpenSSH public key format: give one line 'ssh-rsa AAAA...' or 'ssh-ed25519 AAAA...', "
    "an RFC 4716 '---- BEGIN SSH2 PUBLIC KEY ----' block, or a base64-encoded DER public key"
)


def _rfc4716_body(text: str) -> bytes:
    """The key blob of an RFC 4716 (SSH2) public key file: headers (``Name: value``, continued by a
    trailing backslash) are skipped, the base64 body lines joined."""
    lines = [line.strip() for line in text.strip().splitlines()]
    if lines[-1] != _SSH2_END:
        raise ValueError("no END line")
    body, continued = [], False
    for line in lines[1:-1]:
        if continued or (":" in line and not body):
            continued = line.endswith("\\")
            continue
        body.append(line)
    return base64.b64decode("".join(body), validate=True)


def _parse_public(material: bytes) -> rsa.RSAPublicKey | ed25519.Ed25519PublicKey:
    """The public key in any of the formats ImportKeyPair takes (EC2: OpenSSH, base64 DER, RFC 4716)."""
    bad = CloudError("InvalidKey.Format", _BAD_FORMAT)
    try:
        text = material.decode("ascii").strip()
    except UnicodeDecodeError:
        text = None
    try:
        if text is not None and text.startswith(_SSH2_BEGIN):
            blob = _rfc4716_body(text)
            kind = blob[4 : 4 + int.from_bytes(blob[:4], "big")].decode("ascii")
            key: Any = serialization.load_ssh_public_key(f"{kind} {base64.b64encode(blob).decode()}".encode())
        elif text is not None and text.split(maxsplit=1)[0:1] and text.split()[0] in _SSH_TYPES:
            parts = text.split()
            if "\n" in text or len(parts) < 2:
                raise bad
            key = serialization.load_ssh_public_key(f"{parts[0]} {parts[1]}".encode())
        elif text is not None:  # base64 of a DER SubjectPublicKeyInfo
            key = serialization.load_der_public_key(base64.b64decode("".join(text.split()), validate=True))
        else:  # the DER bytes themselves
            key = serialization.load_der_public_key(material)
    except (ValueError, UnsupportedAlgorithm, UnicodeDecodeError, IndexError, binascii.Error):
        raise bad from None
    if isinstance(key, rsa.RSAPublicKey):
        low, high = RSA_IMPORT_BITS
        if not low <= key.key_size <= high:
            raise CloudError(
                "InvalidKey.Format", f"RSA keys must have {low} to {high} bits (this one has {key.key_size})"
            )
        return key
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    raise CloudError("InvalidKey.Format", "only RSA and ED25519 keys can be imported")


# -- the service ----------------------------------------------------------------------------------------------


class KeyPairs:
    """Key pairs of every user, in the CLC's database (one service per CLC: ``clc.service(KeyPairs)``)."""

    def __init__(self, clc: Any) -> None:
        self._clc = clc
        self._store = clc.store
        self._store.ensure_schema(SCHEMA)
        self.state_dir: Path = Path(clc.store.path).parent

    def private_key_path(self, owner: str, name: str) -> Path:
        return private_key_path(self.state_dir, owner, name)

    # -- create / import --------------------------------------------------------------------------------------
    def create(
        self,
        user: User,
        name: str,
        key_type: str | None = "rsa",
        key_format: str | None = "pem",
        tag_specifications: Any = None,
    ) -> tuple[KeyPair, str]:
        """Generate a key pair; returns its record and the private key material (shown once, as EC2 does)."""
        _check_name(name)
        key_type = key_type or "rsa"
        if key_type not in KEY_TYPES:
            raise CloudError(
                "InvalidParameterValue", f"Value ({key_type[:80]}) for parameter KeyType is invalid: use rsa or ed25519"
            )
        if (key_format or "pem") != "pem":
            raise CloudError(
                "InvalidParameterValue",
                f"Value ({key_format[:80]}) for parameter KeyFormat is invalid: cloudlab uses pem",
            )
        if key_type == "rsa":
            rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
            material = rsa_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            ).decode()
            public, fingerprint = openssh_public_key(rsa_key.public_key()), created_rsa_fingerprint(rsa_key)
        else:
            ed_key = ed25519.Ed25519PrivateKey.generate()
            material = ed_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            ).decode()
            public, fingerprint = openssh_public_key(ed_key.public_key()), ed25519_fingerprint(ed_key.public_key())
        record = KeyPair(new_id("key"), user.name, name, key_type, fingerprint, public, time.time())
        path = self.private_key_path(user.name, name)
        tags = self._clc.service(Tags)
        with self._store.transaction() as db:
            self._insert(db, record)
            if tag_specifications:
                tags.apply_specifications(db, user, "key-pair", [record.key_pair_id], tag_specifications)
            _write_private(path, material)  # inside the transaction: no row without its file
        return record, material

    def import_(self, user: User, name: str, public_key_material: bytes, tag_specifications: Any = None) -> KeyPair:
        """Register the public half of a key the user made (OpenSSH line, RFC 4716 block or base64 DER)."""
        _check_name(name)
        key = _parse_public(public_key_material)
        key_type = "rsa" if isinstance(key, rsa.RSAPublicKey) else "ed25519"
        tags = self._clc.service(Tags)
        fingerprint = imported_rsa_fingerprint(key) if isinstance(key, rsa.RSAPublicKey) else ed25519_fingerprint(key)
        record = KeyPair(new_id("key"), user.name, name, key_type, fingerprint, openssh_public_key(key), time.time())
        with self._store.transaction() as db:
            self._insert(db, record)
            if tag_specifications:
                tags.apply_specifications(db, user, "key-pair", [record.key_pair_id], tag_specifications)
            # A created key of the same name was deleted before; never leave its private key behind.
            self.private_key_path(user.name, name).unlink(missing_ok=True)
        return record

    @staticmethod
    def _insert(db: Any, record: KeyPair) -> None:
        if db.execute("SELECT 1 FROM key_pairs WHERE owner=? AND name=?", (record.owner, record.name)).fetchone():
            raise CloudError("InvalidKeyPair.Duplicate", f"The keypair '{record.name}' already exists.")
        db.execute(
            "INSERT INTO key_pairs (key_pair_id, owner, name, key_type, fingerprint, public_key, created)"
            " VALUES (?,?,?,?,?,?,?)",
            (
                record.key_pair_id,
                record.owner,
                record.name,
                record.key_type,
                record.fingerprint,
                record.public_key,
                record.created,
            ),
        )

    # -- delete -------------------------------------------------------------------------------------------------
    def delete(self, user: User, name: str | None = None, key_pair_id: str | None = None) -> str | None:
        """Delete a key pair (and the cloud's copy of its private key); returns its id.

        As in EC2, deleting a missing key pair by name succeeds (and returns None); an unknown id is
        ``InvalidKeyPair.NotFound``. By id, an admin may delete anyone's key pair.
        """
        if not name and not key_pair_id:
            raise CloudError("MissingParameter", "The request must contain the parameter KeyName or KeyPairId")
        with self._store.transaction() as db:
            if key_pair_id:
                row = db.execute("SELECT * FROM key_pairs WHERE key_pair_id=?", (key_pair_id,)).fetchone()
                if row is None or (row["owner"] != user.name and not user.is_admin):
                    raise _not_found(key_pair_id)
            else:
                row = db.execute("SELECT * FROM key_pairs WHERE owner=? AND name=?", (user.name, name)).fetchone()
                if row is None:
                    return None
            db.execute("DELETE FROM key_pairs WHERE key_pair_id=?", (row["key_pair_id"],))
            Tags.remove_resource(db, row["key_pair_id"])
            self.private_key_path(row["owner"], row["name"]).unlink(missing_ok=True)
        return row["key_pair_id"]

    # -- reads --------------------------------------------------------------------------------------------------
    def describe(self, user: User, names: list[str] | None = None, ids: list[str] | None = None) -> list[KeyPair]:
        """The key pairs ``user`` may see, narrowed to ``names`` and ``ids`` (each must exist)."""
        if user.is_admin:
            rows = self._store.query("SELECT * FROM key_pairs ORDER BY created, key_pair_id")
        else:
            rows = self._store.query(
                "SELECT * FROM key_pairs WHERE owner=? ORDER BY created, key_pair_id", (user.name,)
            )
        keys = [_row_to_key(r) for r in rows]
        for wanted, field in ((names, "name"), (ids, "key_pair_id")):
            if not wanted:
                continue
            have = {getattr(k, field) for k in keys}
            missing = [w for w in wanted if w not in have]
            if missing:
                raise (
                    _not_found(missing[0])
                    if len(missing) == 1
                    else CloudError(
                        "InvalidKeyPair.NotFound",
                        "The key pairs " + ", ".join(f"'{m}'" for m in missing) + " do not exist",
                    )
                )
            keys = [k for k in keys if getattr(k, field) in set(wanted)]
        return keys

    def require(self, user: User, name: str) -> KeyPair:
        """The user's own key pair ``name`` (for RunInstances' KeyName), or ``InvalidKeyPair.NotFound``."""
        row = self._store.one("SELECT * FROM key_pairs WHERE owner=? AND name=?", (user.name, name))
        if row is None:
            raise _not_found(name)
        return _row_to_key(row)

    def public_key(self, owner: str, name: str) -> str:
        """The OpenSSH public key line of ``owner``'s key pair ``name`` (for the metadata service)."""
        row = self._store.one("SELECT public_key FROM key_pairs WHERE owner=? AND name=?", (owner, name))
        if row is None:
            raise _not_found(name)
        return row["public_key"]
