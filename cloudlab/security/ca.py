"""The cloud's own certificate authority and the identities it issues.

Every controller (the CLC, each CC, each NC) and every user holds an X.509 certificate issued by the
cloud CA. The certificate is what makes a controller unspoofable: a receiver trusts a message only if
its certificate chains to the CA, and it takes the sender's *role* only from that signed certificate.

How the role is encoded, and why it cannot be confused: the CA writes exactly one subject
``OU`` (the role, one of :class:`Role`) and exactly one ``CN`` (the name), and marks the certificate as
a leaf (``BasicConstraints(ca=False)``). :func:`subject_identity` refuses anything else, so a name that
looks like a role (``CN=cc``) or a certificate with two OUs never yields a role. The CA validates names
against ``[A-Za-z0-9._-]`` before issuing, so no name can smuggle in separators either.

Keys are ECDSA P-256 with SHA-256: signatures are small and signing/verifying takes tens of
microseconds, which matters because the scheduler exchanges thousands of messages.

Files (all in ``pki_dir``, created with mode 0700)::

    ca.crt, ca.key                  the CA (key mode 0600)
    <role>-<name>.crt, .key         one identity (key mode 0600)

A node on another host needs only ``ca.crt`` and its own ``.crt``/``.key``
(:func:`load_ca_certificate`, :meth:`Identity.load`); the CA key never leaves the CLC host.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import os
import re
import ssl
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cloudlab.files import write_atomic

__all__ = [
    "CertificateAuthority",
    "Identity",
    "Role",
    "ROLES",
    "fingerprint_of",
    "load_ca_certificate",
    "subject_identity",
    "tls_context",
    "validate_name",
]

log = logging.getLogger(__name__)


class Role(StrEnum):
    """What a certificate holder is allowed to be. A ``StrEnum`` so plain strings compare equal."""

    CLC = "clc"
    CC = "cc"
    NC = "nc"
    SC = "sc"  # a storage controller (volumes, snapshots, their NBD exports)
    USER = "user"


ROLES: frozenset[str] = frozenset(r.value for r in Role)

_NAME_RE = re.compile(r"[A-Za-z0-9._-]+")
_NAME_MAX = 64  # the X.509 upper bound for a CN
_CA_FILE = "ca.crt"
_CA_KEY_FILE = "ca.key"
_LOCK_FILE = ".lock"
_CURVE = ec.SECP256R1()


def validate_name(name: str) -> str:
    """Return ``name`` if it can be a certificate name and part of a file name; raise ValueError otherwise.

    Names end up in file names (``<role>-<name>.crt``) and in the certificate subject, so anything
    outside ``[A-Za-z0-9._-]`` (slashes, spaces, commas, ``=``) is refused rather than escaped.
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name in {".", ".."}:
        raise ValueError(f"invalid identity name {name!r}: use 1-{_NAME_MAX} characters from [A-Za-z0-9._-]")
    if len(name) > _NAME_MAX:
        raise ValueError(f"invalid identity name {name!r}: longer than {_NAME_MAX} characters")
    return name


def _validate_role(role: str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise ValueError(f"unknown role {role!r}: expected one of {sorted(ROLES)}") from None


def _single_attribute(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    attrs = name.get_attributes_for_oid(oid)
    if len(attrs) != 1 or not isinstance(attrs[0].value, str):
        return None
    return attrs[0].value


def subject_identity(certificate: x509.Certificate) -> tuple[str, Role]:
    """Return ``(name, role)`` encoded in a certificate the CA issued; raise ValueError if it has none.

    This only *reads* the subject; it does not check who signed the certificate. Callers must first
    check that the CA signed it (the message verifier does), since anyone can write any subject.
    """
    name = _single_attribute(certificate.subject, NameOID.COMMON_NAME)
    role = _single_attribute(certificate.subject, NameOID.ORGANIZATIONAL_UNIT_NAME)
    if name is None or role is None:
        raise ValueError("certificate subject must have exactly one CN and exactly one OU")
    try:
        basic = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise ValueError("certificate has no BasicConstraints extension") from None
    if basic.ca:
        raise ValueError("a CA certificate is not an identity")
    return validate_name(name), _validate_role(role)


def fingerprint_of(certificate: x509.Certificate) -> str:
    """SHA-256 of the DER encoding, lower-case hex: the identity of a certificate in caches and logs."""
    return certificate.fingerprint(hashes.SHA256()).hex()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Atomic, with the final mode from the first byte: a key is never briefly world-readable."""
    write_atomic(path, data, mode)


def _load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path}: expected an EC private key, found {type(key).__name__}")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("%s had mode %o; tightening to 0600", path, mode)
        os.chmod(path, 0o600)
    return key


def load_ca_certificate(path: str | os.PathLike[str]) -> x509.Certificate:
    """Load the cloud CA certificate, e.g. on a node host that holds only ``ca.crt`` and its own identity."""
    cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    try:
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        basic = None
    if basic is None or not basic.ca:
        raise ValueError(f"{path}: not a CA certificate")
    return cert


@dataclass(frozen=True)
class Identity:
    """One certificate holder: who it is (name, role), its certificate and its private key.

    ``certificate_pem`` and ``fingerprint`` are kept precomputed because every signed message carries
    the PEM and every signature covers the fingerprint.
    """

    name: str
    role: str
    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey = field(repr=False)
    certificate_pem: bytes = field(repr=False)
    fingerprint: str
    certificate_path: Path | None = None
    key_path: Path | None = None

    @classmethod
    def from_parts(
        cls,
        certificate: x509.Certificate,
        private_key: ec.EllipticCurvePrivateKey,
        *,
        certificate_path: Path | None = None,
        key_path: Path | None = None,
    ) -> Identity:
        """Build an identity, checking that the key belongs to the certificate and the subject is ours."""
        name, role = subject_identity(certificate)
        if certificate.public_key() != private_key.public_key():
            raise ValueError(f"private key does not match the certificate of {role}/{name}")
        return cls(
            name=name,
            role=role.value,
            certificate=certificate,
            private_key=private_key,
            certificate_pem=certificate.public_bytes(serialization.Encoding.PEM),
            fingerprint=fingerprint_of(certificate),
            certificate_path=certificate_path,
            key_path=key_path,
        )

    @classmethod
    def load(cls, crt_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> Identity:
        """Load an identity from its two files (what a node on another host is given)."""
        crt, key = Path(crt_path), Path(key_path)
        certificate = x509.load_pem_x509_certificate(crt.read_bytes())
        return cls.from_parts(certificate, _load_private_key(key), certificate_path=crt, key_path=key)

    @property
    def not_valid_after(self) -> dt.datetime:
        """End of the certificate's validity (UTC)."""
        return self.certificate.not_valid_after_utc


class CertificateAuthority:
    """The cloud CA: creates itself once, then issues and re-loads identities in ``pki_dir``.

    Use :meth:`load_or_create`; the constructor only wraps already loaded material.
    """

    def __init__(self, pki_dir: Path, certificate: x509.Certificate, private_key: ec.EllipticCurvePrivateKey) -> None:
        self.pki_dir = Path(pki_dir)
        self._certificate = certificate
        self._private_key = private_key
        self._pem = certificate.public_bytes(serialization.Encoding.PEM)

    # -- creation -----------------------------------------------------------------------------------

    @classmethod
    def load_or_create(cls, pki_dir: Path, cloud_name: str = "cloudlab") -> CertificateAuthority:
        """Load the CA from ``pki_dir``, creating it on first use.

        Idempotent and safe against concurrent starts (a file lock serialises creation), because
        ``cloudlab up`` may start several controllers at once. If only one of ``ca.crt``/``ca.key``
        exists it refuses to continue: silently replacing a CA would invalidate every issued identity.
        """
        validate_name(cloud_name)
        pki_dir = Path(pki_dir)
        pki_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        crt, key = pki_dir / _CA_FILE, pki_dir / _CA_KEY_FILE
        with _locked(pki_dir):
            if crt.exists() or key.exists():
                if not (crt.exists() and key.exists()):
                    missing = key if crt.exists() else crt
                    raise FileNotFoundError(
                        f"CA in {pki_dir} is incomplete: {missing.name} is missing; restore it or remove "
                        f"the folder to start a new CA (every issued certificate becomes invalid)"
                    )
                certificate = load_ca_certificate(crt)
                private_key = _load_private_key(key)
                if certificate.public_key() != private_key.public_key():
                    raise ValueError(f"{key} does not match {crt}")
                return cls(pki_dir, certificate, private_key)
            ca = cls._create(pki_dir, cloud_name)
            log.info("created cloud CA %r in %s", cloud_name, pki_dir)
            return ca

    @classmethod
    def _create(cls, pki_dir: Path, cloud_name: str) -> CertificateAuthority:
        private_key = ec.generate_private_key(_CURVE)
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, cloud_name),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{cloud_name} CA"),
            ]
        )
        now = _now()
        public_key = private_key.public_key()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=7300))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .sign(private_key, hashes.SHA256())
        )
        # Key first: a ca.crt without its key is the state load_or_create refuses.
        _write_file(pki_dir / _CA_KEY_FILE, _key_pem(private_key), 0o600)
        _write_file(pki_dir / _CA_FILE, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
        return cls(pki_dir, certificate, private_key)

    # -- accessors ----------------------------------------------------------------------------------

    @property
    def ca_certificate(self) -> x509.Certificate:
        """The CA certificate, the trust anchor every verifier is given."""
        return self._certificate

    @property
    def ca_pem(self) -> bytes:
        """The CA certificate in PEM, to hand to nodes on other hosts."""
        return self._pem

    @property
    def ca_certificate_path(self) -> Path:
        """Where ``ca.crt`` lives (for TLS contexts and for copying to other hosts)."""
        return self.pki_dir / _CA_FILE

    @property
    def cloud_name(self) -> str:
        """The organisation name the CA was created with."""
        value = _single_attribute(self._certificate.subject, NameOID.ORGANIZATION_NAME)
        return value or "cloudlab"

    def paths(self, name: str, role: str) -> tuple[Path, Path]:
        """``(crt, key)`` file paths of an identity, whether or not it exists yet."""
        stem = f"{_validate_role(role).value}-{validate_name(name)}"
        return self.pki_dir / f"{stem}.crt", self.pki_dir / f"{stem}.key"

    # -- issuing ------------------------------------------------------------------------------------

    def issue(
        self,
        name: str,
        role: str,
        *,
        days: int = 3650,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        lock: bool = True,
    ) -> Identity:
        """Issue a fresh certificate and key for ``role``/``name``, replacing any previous files.

        ``not_before``/``not_after`` override ``days``; they exist so tests and experiments can make
        certificates that are expired or not yet valid. ``lock=False`` is for callers that already
        hold the folder lock (a second ``flock`` on the same file would wait for ourselves).
        """
        role_ = _validate_role(role)
        validate_name(name)
        if days <= 0:
            raise ValueError(f"days must be positive, got {days}")
        now = _now()
        start = not_before if not_before is not None else now - dt.timedelta(minutes=5)
        end = not_after if not_after is not None else now + dt.timedelta(days=days)
        if end <= start:
            raise ValueError(f"certificate validity ends ({end}) before it starts ({start})")
        private_key = ec.generate_private_key(_CURVE)
        public_key = private_key.public_key()
        ca_public = self._private_key.public_key()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.cloud_name),
                        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role_.value),
                        x509.NameAttribute(NameOID.COMMON_NAME, name),
                    ]
                )
            )
            .issuer_name(self._certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False,
            )
            # The name as a DNS SAN lets TLS with hostname checking work where names are host names.
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public),
                critical=False,
            )
            .sign(self._private_key, hashes.SHA256())
        )
        crt, key = self.paths(name, role_)
        if lock:
            with _locked(self.pki_dir):
                _write_file(key, _key_pem(private_key), 0o600)
                _write_file(crt, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
        else:
            _write_file(key, _key_pem(private_key), 0o600)
            _write_file(crt, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
        log.info("issued %s certificate for %r (valid until %s)", role_.value, name, end.isoformat())
        return Identity.from_parts(certificate, private_key, certificate_path=crt, key_path=key)

    def identity(self, name: str, role: str) -> Identity:
        """Return the identity for ``role``/``name``, issuing it only if missing, invalid or expired.

        Idempotent so every controller can call it at start-up: restarts keep the same certificate.
        The check and the issue happen under the folder lock, so processes starting together agree
        on one certificate instead of overwriting each other's.
        """
        crt, key = self.paths(name, role)
        with _locked(self.pki_dir):
            if crt.exists() and key.exists():
                try:
                    ident = Identity.load(crt, key)
                    problem = self.check(ident.certificate)
                    if problem is None and (ident.name, ident.role) == (name, str(role)):
                        return ident
                    log.warning("re-issuing %s/%s: %s", role, name, problem or "subject does not match")
                except (ValueError, OSError) as exc:
                    log.warning("re-issuing %s/%s: cannot load the existing files (%s)", role, name, exc)
            return self.issue(name, role, lock=False)

    def check(self, certificate: x509.Certificate, *, at: dt.datetime | None = None) -> str | None:
        """Why ``certificate`` is not a valid identity of this CA right now, or None if it is."""
        try:
            certificate.verify_directly_issued_by(self._certificate)
        except (ValueError, TypeError, InvalidSignature):
            return "not issued by this CA"
        when = at or _now()
        if when < certificate.not_valid_before_utc:
            return "not valid yet"
        if when > certificate.not_valid_after_utc:
            return "expired"
        try:
            subject_identity(certificate)
        except ValueError as exc:
            return str(exc)
        return None


@contextlib.contextmanager
def _locked(pki_dir: Path) -> Iterator[None]:
    """An exclusive lock on the PKI folder, so concurrent processes never interleave CA writes."""
    fd = os.open(pki_dir / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def tls_context(identity: Identity, ca: x509.Certificate | CertificateAuthority, server: bool) -> ssl.SSLContext:
    """An ``SSLContext`` for mutual TLS with the cloud's certificates (TLS 1.2+, peer certificate required).

    Both sides present their identity and accept only peers whose certificate chains to the cloud
    CA. Hostname checking is off on the client because controllers are addressed by IP or URL, not
    by certificate name; who the peer is (and its role) is decided by the signed messages, and TLS
    adds confidentiality. ``ssl`` loads certificate chains only from files, so an identity without
    files is written to a private temporary folder for the duration of the load.
    """
    ca_cert = ca.ca_certificate if isinstance(ca, CertificateAuthority) else ca
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    if not server:
        ctx.check_hostname = False
    ctx.load_verify_locations(cadata=ca_cert.public_bytes(serialization.Encoding.PEM).decode())
    if identity.certificate_path is not None and identity.key_path is not None:
        ctx.load_cert_chain(identity.certificate_path, identity.key_path)
    else:
        with tempfile.TemporaryDirectory(prefix="cloudlab-tls-") as tmp:
            crt, key = Path(tmp) / "id.crt", Path(tmp) / "id.key"
            _write_file(crt, identity.certificate_pem, 0o600)
            _write_file(key, _key_pem(identity.private_key), 0o600)
            ctx.load_cert_chain(crt, key)
    return ctx
