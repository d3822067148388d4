"""Signed messages between controllers (the WS-Security role of Eucalyptus).

Every message CLC→CC→NC, and every reply, is a JSON envelope::

    {"v": 2, "action": "RunInstance", "body": {...},
     "sender_cert": "-----BEGIN CERTIFICATE-----...", "timestamp": 1700000000.25,
     "nonce": "<32 hex>", "digest": "<sha256 hex of the canonical body>",
     "reply_to": null | "<nonce of the request>", "to": null | "<receiver's certificate name>",
     "signature": "<base64 ECDSA/SHA-256>"}

The canonical body is ``json.dumps(body, sort_keys=True, separators=(",", ":"))``. The signature covers
the JSON list ``["cloudlab-signed-message", v, action, digest, timestamp, nonce, fingerprint,
reply_to, to]`` where ``fingerprint`` is the SHA-256 of the attached certificate: encoding the fields as a
JSON list makes the signed bytes unambiguous whatever the action string contains, the constant
prefix keeps these signatures from being valid anywhere else, and the fingerprint binds the signature
to the one certificate that carries the sender's role. ``to`` binds the message to one receiver: a
message for node-01 is refused by node-02, one for cluster A by cluster B.

The receiver (:class:`MessageVerifier`) checks, in this order, and refuses with
:class:`MessageRejected` naming the first failure: the envelope parses (``malformed``); it is signed
(``unsigned``); the certificate was issued by the cloud CA and is within its validity period
(``untrusted-certificate``); the body matches the digest (``digest-mismatch``); the signature is good
(``bad-signature``); the sender's role is one the receiver accepts (``role-not-allowed``); the
timestamp is within the window, past or future (``expired``); it is addressed to this receiver
(``wrong-receiver``); it was sent after this receiver started (``before-restart``); a reply answers
the request it was expected to answer (``unexpected-reply``); the nonce is new (``replayed``). The
nonce is recorded only when everything else passed, so a refused message never burns a nonce.

Replay protection needs memory only for the window: a nonce can be replayed only while its timestamp
is still inside the window, so it is forgotten after ``timestamp + window_s``. A restarted receiver
has forgotten every nonce, so it refuses everything stamped before it started (``not_before``): a
message captured before a restart can never be replayed after it. (Senders whose clock lags the
receiver's are refused for that lag after a restart, and retry; on one machine there is no lag.)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import json
import logging
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from cloudlab.security.ca import ROLES, Identity, fingerprint_of, subject_identity

__all__ = [
    "ENVELOPE_VERSION",
    "REASONS",
    "MessageRejected",
    "MessageSigner",
    "MessageVerifier",
    "SignedMessage",
    "VerifiedMessage",
    "canonical_body",
    "controller_keys",
]

log = logging.getLogger(__name__)

ENVELOPE_VERSION = 2
REASONS: frozenset[str] = frozenset(
    {
        "malformed",
        "unsigned",
        "untrusted-certificate",
        "bad-signature",
        "digest-mismatch",
        "role-not-allowed",
        "expired",
        "wrong-receiver",
        "before-restart",
        "unexpected-reply",
        "replayed",
    }
)
REPLY_SUFFIX = ".reply"

_SIGNING_CONTEXT = "cloudlab-signed-message"
_ECDSA = ec.ECDSA(hashes.SHA256())
_NONCE_RE = re.compile(r"[0-9a-f]{32}")
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_MAX_ACTION = 256
_MAX_SIGNATURE_B64 = 256  # a P-256 DER signature is at most 72 bytes
_MAX_CERT_PEM = 16 * 1024
_MAX_NAME = 64  # as a certificate's CN


class MessageRejected(Exception):
    """A message was refused. ``reason`` is one of :data:`REASONS`; ``str()`` is one line for the log.

    ``sender``/``role`` are filled in as far as they are known. ``authenticated`` says whether they
    were proven by a good signature, or only claimed by a certificate that someone attached (a
    certificate is public, so before the signature check it proves nothing about who sent it).
    """

    def __init__(
        self,
        reason: str,
        detail: str = "",
        *,
        action: str | None = None,
        sender: str | None = None,
        role: str | None = None,
        authenticated: bool = False,
    ) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail
        self.action = action
        self.sender = sender
        self.role = role
        self.authenticated = authenticated

    def __str__(self) -> str:
        action = _short(self.action) if self.action is not None else "(unknown action)"
        if self.sender is None:
            who = "an unknown sender"
        else:
            who = f"{self.role} {self.sender!r}" if self.role else repr(self.sender)
            if not self.authenticated:
                who = f"a sender claiming to be {who}"
        detail = f": {_one_line(self.detail)}" if self.detail else ""
        return f"refused message {action} from {who}: {self.reason}{detail}"


@dataclass(frozen=True)
class VerifiedMessage:
    """A message whose sender, role, body and freshness have all been checked."""

    sender: str
    role: str
    action: str
    body: dict[str, Any]
    nonce: str
    timestamp: float
    fingerprint: str
    reply_to: str | None = None
    to: str | None = None


@dataclass(frozen=True)
class SignedMessage:
    """What :meth:`MessageSigner.seal` returns: the bytes to send, plus the nonce a reply must quote."""

    data: bytes
    action: str
    nonce: str


def canonical_body(body: Mapping[str, Any]) -> bytes:
    """The exact bytes the digest covers: sorted keys, no spaces, ASCII, no NaN/Infinity."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return text.encode()


def _signed_bytes(
    v: int,
    action: str,
    digest: str,
    timestamp: float,
    nonce: str,
    fingerprint: str,
    reply_to: str | None,
    to: str | None,
) -> bytes:
    return json.dumps(
        [_SIGNING_CONTEXT, v, action, digest, timestamp, nonce, fingerprint, reply_to, to],
        separators=(",", ":"),
        ensure_ascii=True,
        allow_nan=False,
    ).encode()


def _check_json_value(value: Any, path: str = "body") -> None:
    """Refuse what would not survive a JSON round trip unchanged (and so would break the digest):
    non-string keys, sets, bytes, objects, NaN."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{path}: key {key!r} is not a string")
            _check_json_value(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_json_value(item, f"{path}[{i}]")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path}: {value!r} is not valid JSON")
    elif not (value is None or isinstance(value, str | int)):
        raise TypeError(f"{path}: {type(value).__name__} is not JSON")


class MessageSigner:
    """Signs outgoing messages (and replies) with one identity.

    Thread-safe: it holds no mutable state; nonces come from ``secrets``.
    """

    def __init__(self, identity: Identity, *, clock: Callable[[], float] = time.time) -> None:
        self._identity = identity
        self._clock = clock
        self._cert_pem = identity.certificate_pem.decode("ascii")

    @property
    def identity(self) -> Identity:
        """The identity messages are signed with."""
        return self._identity

    def sign(
        self, action: str, body: Mapping[str, Any], *, reply_to: str | None = None, to: str | None = None
    ) -> bytes:
        """Return the signed envelope for ``action`` with ``body`` (a JSON object), addressed ``to`` a receiver."""
        return self.seal(action, body, reply_to=reply_to, to=to).data

    def reply(self, request: VerifiedMessage, body: Mapping[str, Any]) -> bytes:
        """Sign the answer to a verified request: action ``<action>.reply``, bound to the request's nonce
        and addressed to its sender, so the requester can check both that the receiver answered and
        that it answered *this* request."""
        return self.seal(request.action + REPLY_SUFFIX, body, reply_to=request.nonce, to=request.sender).data

    def seal(
        self, action: str, body: Mapping[str, Any], *, reply_to: str | None = None, to: str | None = None
    ) -> SignedMessage:
        """Like :meth:`sign`, also returning the nonce (what a reply to this message must quote)."""
        if not isinstance(action, str) or not 0 < len(action) <= _MAX_ACTION:
            raise ValueError(f"action must be a non-empty string of at most {_MAX_ACTION} characters")
        if not isinstance(body, Mapping):
            raise TypeError(f"body must be a JSON object (a dict), not {type(body).__name__}")
        if reply_to is not None and not (isinstance(reply_to, str) and _NONCE_RE.fullmatch(reply_to)):
            raise ValueError("reply_to must be the nonce (32 hex digits) of the message being answered")
        if to is not None and not (isinstance(to, str) and 0 < len(to) <= _MAX_NAME):
            raise ValueError(f"to must be a receiver's name of at most {_MAX_NAME} characters")
        body = dict(body)
        _check_json_value(body)
        canonical = canonical_body(body)
        digest = hashlib.sha256(canonical).hexdigest()
        timestamp = float(self._clock())
        nonce = secrets.token_hex(16)
        ident = self._identity
        signature = ident.private_key.sign(
            _signed_bytes(ENVELOPE_VERSION, action, digest, timestamp, nonce, ident.fingerprint, reply_to, to),
            _ECDSA,
        )
        rest = json.dumps(
            {
                "v": ENVELOPE_VERSION,
                "action": action,
                "sender_cert": self._cert_pem,
                "timestamp": timestamp,
                "nonce": nonce,
                "digest": digest,
                "reply_to": reply_to,
                "to": to,
                "signature": base64.b64encode(signature).decode("ascii"),
            },
            separators=(",", ":"),
        ).encode()
        # The canonical body is already valid JSON: splice it in rather than serialise the body twice.
        data = b'{"body":' + canonical + b"," + rest[1:]
        return SignedMessage(data=data, action=action, nonce=nonce)


@dataclass(frozen=True)
class _TrustedCertificate:
    name: str
    role: str
    fingerprint: str
    public_key: ec.EllipticCurvePublicKey
    not_before: float
    not_after: float


class _NonceMemory:
    """Nonces seen within the window; each is forgotten once its message could no longer be accepted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def add(self, nonce: str, expires: float, now: float) -> bool:
        """Record ``nonce``; False if it is already remembered (a replay)."""
        with self._lock:
            self._purge(now)
            if nonce in self._expiry:
                return False
            self._expiry[nonce] = expires
            heapq.heappush(self._heap, (expires, nonce))
            return True

    def _purge(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] < now:
            expires, nonce = heapq.heappop(heap)
            if self._expiry.get(nonce) == expires:
                del self._expiry[nonce]

    def __len__(self) -> int:
        with self._lock:
            return len(self._expiry)


def _role_set(allowed_roles: Collection[str]) -> frozenset[str]:
    # A bare string is a Collection[str] too: "cc" must mean {"cc"}, not {"c"}.
    roles = frozenset((allowed_roles,)) if isinstance(allowed_roles, str) else frozenset(allowed_roles)
    unknown = roles - ROLES
    if unknown:
        raise ValueError(f"unknown roles in allowed_roles: {sorted(unknown)}; known: {sorted(ROLES)}")
    return roles


class MessageVerifier:
    """Checks incoming envelopes against the cloud CA and refuses anything doubtful.

    One verifier per receiving controller (the nonce memory is what stops replays, so it must be
    shared by everything that receives for that controller). Thread-safe. Certificates that passed
    the CA check are cached by their PEM text, so a steady sender costs one ECDSA verification per
    message; validity periods are still checked against the clock every time.
    """

    def __init__(
        self,
        ca_certificate: x509.Certificate,
        *,
        receiver: str | None = None,
        not_before: float | None = None,
        window_s: float = 300.0,
        clock: Callable[[], float] = time.time,
        max_message_bytes: int = 16 * 1024 * 1024,
        certificate_cache_size: int = 4096,
    ) -> None:
        """``receiver``: this side's certificate name; messages must be addressed to it (None: any).
        ``not_before``: refuse messages stamped before this time (a receiver passes its start time)."""
        if not window_s > 0:
            raise ValueError(f"window_s must be positive, got {window_s}")
        self.receiver = receiver
        self.not_before = not_before
        self._ca = ca_certificate
        self.window_s = float(window_s)
        self._clock = clock
        self.max_message_bytes = max_message_bytes
        self._cache_size = certificate_cache_size
        self._certs: dict[str, _TrustedCertificate] = {}
        self._certs_lock = threading.Lock()
        self._nonces = _NonceMemory()

    @property
    def ca_certificate(self) -> x509.Certificate:
        """The trust anchor."""
        return self._ca

    @property
    def remembered_nonces(self) -> int:
        """How many nonces are held for replay detection (bounded by the message rate × the window)."""
        return len(self._nonces)

    def verify(
        self,
        data: bytes,
        allowed_roles: Collection[str],
        *,
        in_reply_to: str | None = None,
        unaddressed_ok: bool = False,
    ) -> VerifiedMessage:
        """Return the verified message, or raise :class:`MessageRejected` (and log it).

        ``allowed_roles`` are the roles that may send this message (a single role string is accepted).
        With ``in_reply_to`` (the nonce of a request this side sent, see :meth:`MessageSigner.seal`)
        the message must be the reply to that request. With ``unaddressed_ok`` a message that names no
        receiver is accepted (only for actions that are harmless to replay, such as learning who the
        receiver is). Whatever bytes arrive, nothing but :class:`MessageRejected` is raised; a
        ValueError means ``allowed_roles`` names unknown roles.
        """
        roles = _role_set(allowed_roles)
        try:
            return self._verify(data, roles, in_reply_to, unaddressed_ok)
        except MessageRejected as exc:
            log.warning("%s", exc)
            raise
        except Exception as exc:  # defensive: hostile input must never escape as another exception
            rejected = MessageRejected("malformed", f"cannot be processed ({type(exc).__name__})")
            log.warning("%s", rejected)
            raise rejected from exc

    # -- the checks, in order ----------------------------------------------------------------------

    def _verify(
        self, data: Any, roles: frozenset[str], in_reply_to: str | None, unaddressed_ok: bool = False
    ) -> VerifiedMessage:
        env = self._parse(data)
        raw_action = env.get("action")
        action = raw_action if isinstance(raw_action, str) else None

        signature_b64, cert_pem = env.get("signature"), env.get("sender_cert")
        if signature_b64 in (None, "") or cert_pem in (None, ""):
            missing = "signature" if signature_b64 in (None, "") else "sender certificate"
            raise MessageRejected("unsigned", f"no {missing}", action=action)

        def malformed(detail: str) -> MessageRejected:
            return MessageRejected("malformed", detail, action=action)

        v = env.get("v")
        if type(v) is not int or v != ENVELOPE_VERSION:
            raise malformed(f"unsupported envelope version {_short(v)}")
        if action is None or not 0 < len(action) <= _MAX_ACTION:
            raise malformed(f"action must be a non-empty string of at most {_MAX_ACTION} characters")
        body = env.get("body")
        if not isinstance(body, dict):
            raise malformed("body must be a JSON object")
        timestamp = env.get("timestamp")
        if type(timestamp) not in (int, float) or not math.isfinite(timestamp):
            raise malformed("timestamp must be a finite number")
        nonce = env.get("nonce")
        if not isinstance(nonce, str) or not _NONCE_RE.fullmatch(nonce):
            raise malformed("nonce must be 32 lower-case hex digits")
        digest = env.get("digest")
        if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
            raise malformed("digest must be 64 lower-case hex digits")
        reply_to = env.get("reply_to")
        if reply_to is not None and not (isinstance(reply_to, str) and _NONCE_RE.fullmatch(reply_to)):
            raise malformed("reply_to must be null or a nonce")
        to = env.get("to")
        if to is not None and not (isinstance(to, str) and 0 < len(to) <= _MAX_NAME):
            raise malformed("to must be null or a receiver's name")
        if not isinstance(signature_b64, str) or len(signature_b64) > _MAX_SIGNATURE_B64:
            raise malformed("signature must be a short base64 string")
        try:
            signature = base64.b64decode(signature_b64, validate=True)
        except (binascii.Error, ValueError):
            raise malformed("signature is not base64") from None
        if not isinstance(cert_pem, str) or len(cert_pem) > _MAX_CERT_PEM:
            raise malformed("sender_cert must be a PEM string")

        now = self._clock()
        cert = self._trusted_certificate(cert_pem, now, action)

        def rejected(reason: str, detail: str, authenticated: bool = True) -> MessageRejected:
            return MessageRejected(
                reason, detail, action=action, sender=cert.name, role=cert.role, authenticated=authenticated
            )

        if hashlib.sha256(canonical_body(body)).hexdigest() != digest:
            raise rejected("digest-mismatch", "the body does not match its digest", authenticated=False)
        try:
            cert.public_key.verify(
                signature,
                _signed_bytes(v, action, digest, timestamp, nonce, cert.fingerprint, reply_to, to),
                _ECDSA,
            )
        except InvalidSignature:
            raise rejected("bad-signature", "signature does not match", authenticated=False) from None
        if cert.role not in roles:
            raise rejected("role-not-allowed", f"only {'/'.join(sorted(roles)) or 'no role'} may send this")
        skew = now - timestamp
        if abs(skew) > self.window_s:
            when = f"{skew:.1f} s old" if skew > 0 else f"{-skew:.1f} s in the future"
            raise rejected("expired", f"timestamp {when}, window is ±{self.window_s:g} s")
        if self.receiver is not None and to != self.receiver and not (to is None and unaddressed_ok):
            raise rejected("wrong-receiver", f"addressed to {_short(to)}, this is {self.receiver!r}")
        if self.not_before is not None and timestamp < self.not_before:
            early = self.not_before - timestamp
            raise rejected("before-restart", f"stamped {early:.3f} s before this receiver started")
        if in_reply_to is not None and reply_to != in_reply_to:
            raise rejected("unexpected-reply", f"answers {reply_to or 'nothing'}, expected {in_reply_to}")
        if not self._nonces.add(nonce, timestamp + self.window_s, now):
            raise rejected("replayed", f"nonce {nonce} was already used")
        return VerifiedMessage(
            sender=cert.name,
            role=cert.role,
            action=action,
            body=body,
            nonce=nonce,
            timestamp=timestamp,
            fingerprint=cert.fingerprint,
            reply_to=reply_to,
            to=to,
        )

    def _parse(self, data: Any) -> dict[str, Any]:
        if isinstance(data, bytearray | memoryview):
            data = bytes(data)
        if not isinstance(data, bytes | str):
            raise MessageRejected("malformed", f"expected bytes, got {type(data).__name__}")
        if len(data) > self.max_message_bytes:
            raise MessageRejected("malformed", f"{len(data)} bytes exceeds {self.max_message_bytes}")
        try:
            env = json.loads(data, parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as exc:
            raise MessageRejected("malformed", f"not JSON ({type(exc).__name__})") from None
        if not isinstance(env, dict):
            raise MessageRejected("malformed", "not a JSON object")
        return env

    def _trusted_certificate(self, pem: str, now: float, action: str) -> _TrustedCertificate:
        cert = self._certs.get(pem)
        if cert is None:
            cert = self._check_certificate(pem, action)
            with self._certs_lock:
                if len(self._certs) >= self._cache_size:
                    self._certs.pop(next(iter(self._certs)))  # oldest first
                self._certs[pem] = cert
        if not cert.not_before <= now <= cert.not_after:
            state = "expired" if now > cert.not_after else "not valid yet"
            raise MessageRejected(
                "untrusted-certificate",
                f"certificate {state}",
                action=action,
                sender=cert.name,
                role=cert.role,
            )
        return cert

    def _check_certificate(self, pem: str, action: str) -> _TrustedCertificate:
        try:
            certificate = x509.load_pem_x509_certificate(pem.encode("utf-8"))
        except Exception:
            raise MessageRejected("malformed", "sender_cert is not a PEM certificate", action=action) from None
        try:
            certificate.verify_directly_issued_by(self._ca)
        except Exception:
            raise MessageRejected(
                "untrusted-certificate",
                f"certificate of {_claimed_subject(certificate)} was not issued by the cloud CA",
                action=action,
            ) from None
        try:
            name, role = subject_identity(certificate)
        except Exception as exc:
            raise MessageRejected(
                "untrusted-certificate", f"certificate is not an identity: {exc}", action=action
            ) from None
        public_key = certificate.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise MessageRejected(
                "untrusted-certificate", "certificate key is not ECDSA", action=action, sender=name, role=role
            )
        return _TrustedCertificate(
            name=name,
            role=role.value,
            fingerprint=fingerprint_of(certificate),
            public_key=public_key,
            not_before=certificate.not_valid_before_utc.timestamp(),
            not_after=certificate.not_valid_after_utc.timestamp(),
        )


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _claimed_subject(certificate: x509.Certificate) -> str:
    try:
        return repr(certificate.subject.rfc4514_string())[:120]
    except Exception:
        return "an unreadable subject"


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(text: str) -> str:
    return " ".join(text.split())


def controller_keys(identity: Identity, ca_certificate: x509.Certificate) -> tuple[MessageSigner, MessageVerifier]:
    """The signer and verifier a controller needs: its messages signed as ``identity``; what it receives
    addressed to it and sent after this moment (so nothing captured before a restart is taken after it)."""
    verifier = MessageVerifier(ca_certificate, receiver=identity.name, not_before=time.time())
    return MessageSigner(identity), verifier
