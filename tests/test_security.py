"""The cloud CA, identities and signed messages: what is accepted, and every way of being refused."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import socket
import ssl
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudlab.security.ca import (
    CertificateAuthority,
    Identity,
    Role,
    load_ca_certificate,
    subject_identity,
    tls_context,
)
from cloudlab.security.messages import (
    REASONS,
    MessageRejected,
    MessageSigner,
    MessageVerifier,
    VerifiedMessage,
    canonical_body,
)

BODY: dict[str, Any] = {
    "instance_id": "i-0123456789abcdef0",
    "vcpus": 2,
    "memory_mb": 512,
    "ratio": 0.25,
    "tags": {"Name": "web", "é": "ünïcode"},
    "nets": [{"mac": "d0:0d:01:02:03:04", "vlan": 10}],
    "flag": True,
    "none": None,
}


class FakeClock:
    """A settable clock, so time windows are tested without sleeping."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pki")


@pytest.fixture(scope="module")
def ca(pki: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(pki)


@pytest.fixture(scope="module")
def clc(ca: CertificateAuthority) -> Identity:
    return ca.identity("clc", "clc")


@pytest.fixture(scope="module")
def cc(ca: CertificateAuthority) -> Identity:
    return ca.identity("cluster1", "cc")


@pytest.fixture(scope="module")
def nc(ca: CertificateAuthority) -> Identity:
    return ca.identity("node1", "nc")


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> Identity:
    """A CC identity from another CA with the same cloud name: looks right, is not ours."""
    other = CertificateAuthority.load_or_create(tmp_path_factory.mktemp("foreign-pki"))
    return other.identity("cluster1", "cc")


@pytest.fixture
def verifier(ca: CertificateAuthority) -> MessageVerifier:
    return MessageVerifier(ca.ca_certificate)


def envelope(data: bytes) -> dict[str, Any]:
    return json.loads(data)


def encode(env: dict[str, Any]) -> bytes:
    return json.dumps(env).encode()


def refused(verifier: MessageVerifier, data: Any, roles: Any = ("cc",), **kw: Any) -> MessageRejected:
    with pytest.raises(MessageRejected) as info:
        verifier.verify(data, roles, **kw)
    assert info.value.reason in REASONS
    return info.value


# -- the CA ------------------------------------------------------------------------------------------


def test_ca_is_created_once_and_reloaded(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    first = CertificateAuthority.load_or_create(pki, cloud_name="lab1")
    assert mode_of(pki / "ca.key") == 0o600
    assert mode_of(pki) == 0o700
    ca_pem_on_disk = (pki / "ca.crt").read_bytes()

    again = CertificateAuthority.load_or_create(pki, cloud_name="ignored-on-reload")
    assert again.ca_pem == first.ca_pem == ca_pem_on_disk
    assert again.ca_certificate == first.ca_certificate
    assert again.cloud_name == "lab1"
    basic = again.ca_certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca
    # A certificate issued before the reload is still valid for the reloaded CA.
    ident = first.issue("n1", "nc")
    assert again.check(ident.certificate) is None


def test_ca_key_permissions_are_tightened_on_load(tmp_path: Path) -> None:
    CertificateAuthority.load_or_create(tmp_path)
    os.chmod(tmp_path / "ca.key", 0o644)
    CertificateAuthority.load_or_create(tmp_path)
    assert mode_of(tmp_path / "ca.key") == 0o600


def test_incomplete_ca_is_refused_not_replaced(tmp_path: Path) -> None:
    CertificateAuthority.load_or_create(tmp_path)
    crt_before = (tmp_path / "ca.crt").read_bytes()
    (tmp_path / "ca.key").unlink()
    with pytest.raises(FileNotFoundError, match="ca.key"):
        CertificateAuthority.load_or_create(tmp_path)
    assert (tmp_path / "ca.crt").read_bytes() == crt_before


def test_concurrent_creation_yields_one_ca(tmp_path: Path) -> None:
    results: list[bytes] = []

    def create() -> None:
        results.append(CertificateAuthority.load_or_create(tmp_path).ca_pem)

    threads = [threading.Thread(target=create) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(results) == 6


def test_issue_writes_files_and_encodes_role(ca: CertificateAuthority, pki: Path) -> None:
    ident = ca.issue("host-7.lab", "nc")
    crt, key = pki / "nc-host-7.lab.crt", pki / "nc-host-7.lab.key"
    assert crt.exists() and key.exists()
    assert mode_of(key) == 0o600
    assert (ident.name, ident.role) == ("host-7.lab", "nc")
    assert subject_identity(ident.certificate) == ("host-7.lab", Role.NC)
    assert len(ident.fingerprint) == 64 and int(ident.fingerprint, 16) >= 0
    assert ident.certificate_pem == crt.read_bytes()
    assert ca.check(ident.certificate) is None

    loaded = Identity.load(crt, key)
    assert loaded.fingerprint == ident.fingerprint
    assert loaded.private_key.public_key() == ident.private_key.public_key()


def test_identity_is_idempotent_and_reissues_only_when_needed(ca: CertificateAuthority, pki: Path) -> None:
    first = ca.identity("cluster9", "cc")
    assert ca.identity("cluster9", Role.CC).fingerprint == first.fingerprint

    # Missing key: re-issued.
    (pki / "cc-cluster9.key").unlink()
    second = ca.identity("cluster9", "cc")
    assert second.fingerprint != first.fingerprint
    assert ca.identity("cluster9", "cc").fingerprint == second.fingerprint

    # Expired: re-issued.
    now = dt.datetime.now(dt.UTC)
    ca.issue("cluster9", "cc", not_before=now - dt.timedelta(days=10), not_after=now - dt.timedelta(days=1))
    third = ca.identity("cluster9", "cc")
    assert third.fingerprint != second.fingerprint
    assert ca.check(third.certificate) is None

    # Garbage in the certificate file: re-issued.
    (pki / "cc-cluster9.crt").write_text("not a certificate")
    assert ca.check(ca.identity("cluster9", "cc").certificate) is None


def test_identity_from_another_ca_is_reissued(ca: CertificateAuthority, pki: Path, foreign: Identity) -> None:
    assert ca.check(foreign.certificate) == "not issued by this CA"
    assert foreign.certificate_path is not None and foreign.key_path is not None
    (pki / "cc-stolen.crt").write_bytes(foreign.certificate_path.read_bytes())
    (pki / "cc-stolen.key").write_bytes(foreign.key_path.read_bytes())
    replaced = ca.identity("stolen", "cc")
    assert ca.check(replaced.certificate) is None
    assert replaced.fingerprint != foreign.fingerprint


@pytest.mark.parametrize(
    "name", ["", "a/b", "../etc", "..", "a b", "nc,OU=clc", "x=y", "naïve", "tab\t", "x" * 65, "a\nb"]
)
def test_bad_names_are_refused(ca: CertificateAuthority, name: str) -> None:
    with pytest.raises(ValueError, match="invalid identity name"):
        ca.issue(name, "nc")
    with pytest.raises(ValueError, match="invalid identity name"):
        ca.identity(name, "nc")


def test_bad_roles_are_refused(ca: CertificateAuthority) -> None:
    for role in ("admin", "CC", "", "cc "):
        with pytest.raises(ValueError, match="unknown role"):
            ca.issue("ok-name", role)


def test_subject_identity_refuses_the_ca_certificate(ca: CertificateAuthority) -> None:
    with pytest.raises(ValueError):
        subject_identity(ca.ca_certificate)


def test_identity_load_refuses_a_mismatched_key(cc: Identity, nc: Identity) -> None:
    assert cc.certificate_path is not None and nc.key_path is not None
    with pytest.raises(ValueError, match="does not match"):
        Identity.load(cc.certificate_path, nc.key_path)


def test_a_remote_node_needs_only_its_files(ca: CertificateAuthority, nc: Identity, tmp_path: Path) -> None:
    """Multi-host: the node gets ca.crt plus its own cert and key, never the CA key."""
    (tmp_path / "ca.crt").write_bytes(ca.ca_pem)
    assert nc.certificate_path is not None and nc.key_path is not None
    (tmp_path / "nc.crt").write_bytes(nc.certificate_path.read_bytes())
    (tmp_path / "nc.key").write_bytes(nc.key_path.read_bytes())

    ca_cert = load_ca_certificate(tmp_path / "ca.crt")
    node = Identity.load(tmp_path / "nc.crt", tmp_path / "nc.key")
    verified = MessageVerifier(ca_cert).verify(MessageSigner(node).sign("Report", {"ok": 1}), ["nc"])
    assert verified.sender == "node1"
    with pytest.raises(ValueError, match="not a CA"):
        load_ca_certificate(tmp_path / "nc.crt")


# -- signed messages: acceptance ---------------------------------------------------------------------


def test_signed_message_verifies(cc: Identity, verifier: MessageVerifier) -> None:
    before = time.time()
    data = MessageSigner(cc).sign("RunInstance", BODY)
    msg = verifier.verify(data, ["clc", "cc"])
    assert isinstance(msg, VerifiedMessage)
    assert (msg.sender, msg.role, msg.action) == ("cluster1", "cc", "RunInstance")
    assert msg.body == BODY
    assert msg.fingerprint == cc.fingerprint
    assert len(msg.nonce) == 32
    assert before <= msg.timestamp <= time.time()
    assert msg.reply_to is None
    env = envelope(data)
    assert set(env) >= {"v", "action", "body", "sender_cert", "timestamp", "nonce", "digest", "signature"}
    assert env["v"] == 2
    assert env["sender_cert"] == cc.certificate_pem.decode()
    assert env["digest"] == hashlib.sha256(canonical_body(BODY)).hexdigest()


def test_a_single_role_string_means_that_role(cc: Identity, verifier: MessageVerifier) -> None:
    assert verifier.verify(MessageSigner(cc).sign("A", {}), "cc").role == "cc"
    # "c" is a substring of "cc" but not a role.
    with pytest.raises(ValueError, match="unknown roles"):
        verifier.verify(MessageSigner(cc).sign("A", {}), ["c"])


def test_signer_refuses_bodies_that_would_not_round_trip(cc: Identity) -> None:
    signer = MessageSigner(cc)
    for bad in ({"x": float("nan")}, {"x": {1, 2}}, {"x": b"raw"}, {1: "int key"}, {"x": [object()]}):
        with pytest.raises((TypeError, ValueError)):
            signer.sign("A", bad)
    with pytest.raises(TypeError):
        signer.sign("A", ["not", "an", "object"])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        signer.sign("", {})


# -- signed messages: each refusal ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "strip",
    [("signature",), ("sender_cert",), ("signature", "sender_cert")],
)
def test_unsigned_messages_are_refused(cc: Identity, verifier: MessageVerifier, strip: tuple[str, ...]) -> None:
    env = envelope(MessageSigner(cc).sign("RunInstance", BODY))
    for key in strip:
        del env[key]
    exc = refused(verifier, encode(env))
    assert exc.reason == "unsigned"
    env2 = envelope(MessageSigner(cc).sign("RunInstance", BODY))
    env2["signature"] = ""
    assert refused(verifier, encode(env2)).reason == "unsigned"
    env3 = envelope(MessageSigner(cc).sign("RunInstance", BODY))
    env3["sender_cert"] = None
    assert refused(verifier, encode(env3)).reason == "unsigned"


def test_a_plain_unsigned_request_is_called_unsigned(verifier: MessageVerifier) -> None:
    exc = refused(verifier, b'{"action": "RunInstance", "body": {}}')
    assert exc.reason == "unsigned"
    assert "RunInstance" in str(exc)


def test_tampered_body_is_refused(cc: Identity, verifier: MessageVerifier) -> None:
    env = envelope(MessageSigner(cc).sign("RunInstance", BODY))
    env["body"]["vcpus"] = 64
    exc = refused(verifier, encode(env))
    assert exc.reason == "digest-mismatch"
    assert not exc.authenticated


def test_tampered_body_with_recomputed_digest_is_refused(cc: Identity, verifier: MessageVerifier) -> None:
    env = envelope(MessageSigner(cc).sign("RunInstance", BODY))
    env["body"]["vcpus"] = 64
    env["digest"] = hashlib.sha256(canonical_body(env["body"])).hexdigest()
    assert refused(verifier, encode(env)).reason == "bad-signature"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("action", "TerminateInstances"),
        ("timestamp", 1.0),
        ("nonce", "0" * 32),
        ("reply_to", "f" * 32),
    ],
)
def test_tampered_signed_fields_are_refused(cc: Identity, verifier: MessageVerifier, field: str, value: Any) -> None:
    env = envelope(MessageSigner(cc).sign("RunInstance", BODY))
    env[field] = value
    assert refused(verifier, encode(env)).reason == "bad-signature"


def test_someone_elses_certificate_cannot_be_borrowed(cc: Identity, clc: Identity, verifier: MessageVerifier) -> None:
    """An NC cannot pass itself off as the CLC by attaching the CLC's (public) certificate."""
    env = envelope(MessageSigner(cc).sign("RunInstance", BODY))
    env["sender_cert"] = clc.certificate_pem.decode()
    exc = refused(verifier, encode(env), ["clc"])
    assert exc.reason == "bad-signature"
    assert "claiming to be clc 'clc'" in str(exc)


def test_wrong_role_is_refused_without_burning_the_nonce(nc: Identity, verifier: MessageVerifier) -> None:
    data = MessageSigner(nc).sign("RunInstance", BODY)
    exc = refused(verifier, data, ["cc"])
    assert exc.reason == "role-not-allowed"
    assert exc.authenticated and exc.sender == "node1" and exc.role == "nc"
    # The refusal did not record the nonce: the same bytes are accepted where an NC may send them ...
    assert verifier.verify(data, ["nc"]).sender == "node1"
    # ... exactly once.
    assert refused(verifier, data, ["nc"]).reason == "replayed"


def test_expired_timestamps_are_refused_past_and_future(cc: Identity, ca: CertificateAuthority) -> None:
    clock = FakeClock()
    verifier = MessageVerifier(ca.ca_certificate, window_s=60, clock=clock)
    signer_clock = FakeClock(clock.now)
    signer = MessageSigner(cc, clock=signer_clock)

    signer_clock.now = clock.now - 61
    old = signer.sign("RunInstance", BODY)
    exc = refused(verifier, old)
    assert exc.reason == "expired" and "61.0 s old" in str(exc)

    signer_clock.now = clock.now + 61
    future = signer.sign("RunInstance", BODY)
    exc = refused(verifier, future)
    assert exc.reason == "expired" and "in the future" in str(exc)

    # On the edge of the window both are still fine.
    for offset in (-60, 60):
        signer_clock.now = clock.now + offset
        assert verifier.verify(signer.sign("RunInstance", BODY), ["cc"]).action == "RunInstance"

    # The expired refusal did not burn the nonce: once the receiver's clock agrees, it is accepted.
    clock.now += 61
    assert verifier.verify(future, ["cc"]).action == "RunInstance"


def test_replayed_message_is_refused(cc: Identity, verifier: MessageVerifier) -> None:
    data = MessageSigner(cc).sign("RunInstance", BODY)
    verifier.verify(data, ["cc"])
    exc = refused(verifier, data)
    assert exc.reason == "replayed"
    # Re-encoding the same envelope (whitespace, key order) is still the same message.
    env = envelope(data)
    assert refused(verifier, json.dumps(env, indent=2, sort_keys=True).encode()).reason == "replayed"
    # So is a different signature over the same content (ECDSA is randomised; the nonce is what counts).
    assert MessageSigner(cc).sign("RunInstance", BODY) != data


def test_nonces_are_forgotten_after_the_window(cc: Identity, ca: CertificateAuthority) -> None:
    clock = FakeClock()
    verifier = MessageVerifier(ca.ca_certificate, window_s=10, clock=clock)
    signer = MessageSigner(cc, clock=clock)
    first = signer.sign("Ping", {})
    for _ in range(50):
        verifier.verify(signer.sign("Ping", {}), "cc")
    verifier.verify(first, "cc")
    assert verifier.remembered_nonces == 51
    clock.now += 11
    verifier.verify(signer.sign("Ping", {}), "cc")
    assert verifier.remembered_nonces == 1
    # The forgotten message cannot come back: it has expired.
    assert refused(verifier, first).reason == "expired"


def test_certificate_from_a_foreign_ca_is_refused(foreign: Identity, verifier: MessageVerifier) -> None:
    exc = refused(verifier, MessageSigner(foreign).sign("RunInstance", BODY))
    assert exc.reason == "untrusted-certificate"
    assert "not issued by the cloud CA" in str(exc)


def test_expired_and_future_certificates_are_refused(ca: CertificateAuthority) -> None:
    now = dt.datetime.now(dt.UTC)
    verifier = MessageVerifier(ca.ca_certificate)
    expired = ca.issue("old-node", "nc", not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1))
    exc = refused(verifier, MessageSigner(expired).sign("Report", {}), ["nc"])
    assert exc.reason == "untrusted-certificate" and "expired" in str(exc)
    early = ca.issue("new-node", "nc", not_before=now + dt.timedelta(days=1), not_after=now + dt.timedelta(days=30))
    exc = refused(verifier, MessageSigner(early).sign("Report", {}), ["nc"])
    assert exc.reason == "untrusted-certificate" and "not valid yet" in str(exc)


def test_a_cached_certificate_still_expires(ca: CertificateAuthority) -> None:
    now = dt.datetime.now(dt.UTC)
    ident = ca.issue("short-lived", "nc", not_before=now - dt.timedelta(hours=1), not_after=now + dt.timedelta(hours=1))
    clock = FakeClock(now.timestamp())
    verifier = MessageVerifier(ca.ca_certificate, clock=clock)
    signer = MessageSigner(ident, clock=clock)
    verifier.verify(signer.sign("Report", {}), "nc")  # now cached
    clock.now += 2 * 3600
    assert refused(verifier, signer.sign("Report", {}), "nc").reason == "untrusted-certificate"


def test_the_ca_certificate_is_not_a_sender(ca: CertificateAuthority, cc: Identity, verifier: MessageVerifier) -> None:
    """Even signed by the CA key itself, a message from the CA certificate carries no role."""
    ca_identity = Identity(
        name="ca",
        role="clc",
        certificate=ca.ca_certificate,
        private_key=ca._private_key,
        certificate_pem=ca.ca_pem,
        fingerprint=ca.ca_certificate.fingerprint(hashes.SHA256()).hex(),
    )
    exc = refused(verifier, MessageSigner(ca_identity).sign("RunInstance", {}), ["clc"])
    assert exc.reason == "untrusted-certificate"


def _valid_env(cc: Identity) -> dict[str, Any]:
    return envelope(MessageSigner(cc).sign("RunInstance", BODY))


MALFORMED_MUTATIONS: list[tuple[str, Any]] = [
    ("v", "1"),
    ("v", True),
    ("v", 1),
    ("v", None),
    ("action", 7),
    ("action", ""),
    ("action", "x" * 300),
    ("body", ["list"]),
    ("body", "string"),
    ("timestamp", "1700000000"),
    ("timestamp", None),
    ("timestamp", True),
    ("nonce", "abc"),
    ("nonce", "G" * 32),
    ("nonce", 5),
    ("digest", "A" * 64),
    ("digest", None),
    ("reply_to", "nope"),
    ("signature", "!!!not base64!!!"),
    ("signature", 12345),
    ("signature", "QUJD" * 100),
    ("sender_cert", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
    ("sender_cert", ["pem"]),
]


@pytest.mark.parametrize(("field", "value"), MALFORMED_MUTATIONS)
def test_wrong_types_are_malformed(cc: Identity, verifier: MessageVerifier, field: str, value: Any) -> None:
    env = _valid_env(cc)
    env[field] = value
    assert refused(verifier, encode(env)).reason == "malformed"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\xff\xfe garbage",
        b"not json",
        b"[]",
        b"null",
        b"42",
        b'"string"',
        b"{",
        b'{"v": NaN}',
        b"[" * 100_000,
        "a str, not bytes",
        None,
        12345,
    ],
)
def test_garbage_is_malformed(verifier: MessageVerifier, data: Any) -> None:
    assert refused(verifier, data).reason == "malformed"


def test_nonfinite_timestamp_is_malformed(cc: Identity, verifier: MessageVerifier) -> None:
    text = MessageSigner(cc).sign("RunInstance", BODY).decode()
    env = envelope(text.encode())
    text = text.replace(json.dumps(env["timestamp"]), "1e999")
    assert refused(verifier, text.encode()).reason == "malformed"


def test_oversized_messages_are_malformed(cc: Identity, ca: CertificateAuthority) -> None:
    verifier = MessageVerifier(ca.ca_certificate, max_message_bytes=4096)
    data = MessageSigner(cc).sign("Big", {"blob": "x" * 5000})
    assert refused(verifier, data).reason == "malformed"


def test_refusals_are_one_clear_line(nc: Identity, verifier: MessageVerifier, caplog: pytest.LogCaptureFixture) -> None:
    exc = refused(verifier, MessageSigner(nc).sign("RunInstance\nInjected: yes", BODY), ["cc"])
    text = str(exc)
    assert "\n" not in text
    assert "nc 'node1'" in text and "RunInstance" in text and "role-not-allowed" in text
    assert any("role-not-allowed" in r.getMessage() for r in caplog.records), "refusals are logged"


# -- replies -------------------------------------------------------------------------------------------


def test_reply_signed_by_receiver_verifies_at_sender(cc: Identity, nc: Identity, ca: CertificateAuthority) -> None:
    at_cc, at_nc = MessageVerifier(ca.ca_certificate), MessageVerifier(ca.ca_certificate)
    request = MessageSigner(cc).seal("RunInstance", BODY)
    verified = at_nc.verify(request.data, ["cc"])
    reply = MessageSigner(nc).reply(verified, {"state": "pending"})

    answer = at_cc.verify(reply, ["nc"], in_reply_to=request.nonce)
    assert (answer.sender, answer.role, answer.action) == ("node1", "nc", "RunInstance.reply")
    assert answer.body == {"state": "pending"}
    assert answer.reply_to == request.nonce


def test_reply_to_another_request_is_refused(cc: Identity, nc: Identity, ca: CertificateAuthority) -> None:
    at_cc, at_nc = MessageVerifier(ca.ca_certificate), MessageVerifier(ca.ca_certificate)
    first = MessageSigner(cc).seal("RunInstance", BODY)
    second = MessageSigner(cc).seal("RunInstance", BODY)
    reply_to_first = MessageSigner(nc).reply(at_nc.verify(first.data, ["cc"]), {"state": "pending"})
    exc = refused(at_cc, reply_to_first, ["nc"], in_reply_to=second.nonce)
    assert exc.reason == "unexpected-reply"
    # Not consumed by the refusal: it still answers the first request.
    assert at_cc.verify(reply_to_first, ["nc"], in_reply_to=first.nonce).body == {"state": "pending"}


def test_reply_from_the_wrong_role_is_refused(cc: Identity, clc: Identity, ca: CertificateAuthority) -> None:
    at_cc = MessageVerifier(ca.ca_certificate)
    request = MessageSigner(cc).seal("RunInstance", BODY)
    forged = MessageSigner(clc).sign("RunInstance.reply", {"state": "running"}, reply_to=request.nonce)
    assert refused(at_cc, forged, ["nc"], in_reply_to=request.nonce).reason == "role-not-allowed"


# -- concurrency and speed -----------------------------------------------------------------------------


def test_concurrent_replays_are_accepted_once(cc: Identity, verifier: MessageVerifier) -> None:
    data = MessageSigner(cc).sign("RunInstance", BODY)
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def attempt() -> None:
        barrier.wait()
        try:
            verifier.verify(data, ["cc"])
            outcomes.append("ok")
        except MessageRejected as exc:
            outcomes.append(exc.reason)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["ok"] + ["replayed"] * 7


# -- fuzzing: nothing but MessageRejected escapes ------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
FIELDS = [
    "v",
    "action",
    "body",
    "sender_cert",
    "timestamp",
    "nonce",
    "digest",
    "reply_to",
    "signature",
    "extra",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2048))
def test_fuzz_random_bytes(verifier: MessageVerifier, data: bytes) -> None:
    with pytest.raises(MessageRejected):
        verifier.verify(data, ["cc"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    edits=st.lists(
        st.tuples(st.sampled_from(FIELDS), st.one_of(st.just("<delete>"), json_values)),
        min_size=1,
        max_size=3,
    )
)
def test_fuzz_field_mutations(cc: Identity, ca: CertificateAuthority, edits: list[tuple[str, Any]]) -> None:
    original = _valid_env(cc)
    env = dict(original)
    for field, value in edits:
        if value == "<delete>":
            env.pop(field, None)
        else:
            env[field] = value
    _only_rejected_or_faithful(MessageVerifier(ca.ca_certificate), json.dumps(env).encode(), original)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    position=st.integers(min_value=0),
    byte=st.integers(min_value=0, max_value=255),
    how=st.sampled_from(["replace", "insert", "delete", "truncate"]),
)
def test_fuzz_byte_mutations(cc: Identity, ca: CertificateAuthority, position: int, byte: int, how: str) -> None:
    data = bytearray(MessageSigner(cc).sign("RunInstance", BODY))
    original = envelope(bytes(data))
    i = position % len(data)
    if how == "replace":
        data[i] = byte
    elif how == "insert":
        data.insert(i, byte)
    elif how == "delete":
        del data[i]
    else:
        del data[i:]
    _only_rejected_or_faithful(MessageVerifier(ca.ca_certificate), bytes(data), original)


def _only_rejected_or_faithful(verifier: MessageVerifier, data: bytes, original: dict[str, Any]) -> None:
    """A mutated envelope is refused with MessageRejected, or, if it still verifies (e.g. whitespace was
    changed), says exactly what the signer said."""
    try:
        msg = verifier.verify(data, ["cc"])
    except MessageRejected as exc:
        assert exc.reason in REASONS
        assert "\n" not in str(exc)
        return
    assert (msg.action, msg.body, msg.nonce, msg.timestamp) == (
        original["action"],
        original["body"],
        original["nonce"],
        original["timestamp"],
    )


# -- mutual TLS ----------------------------------------------------------------------------------------


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> tuple[Any, Exception | None]:
    a, b = socket.socketpair()
    server_error: list[Exception] = []
    peer: list[Any] = []

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(a, server_side=True) as s:
                peer.append(s.getpeercert(binary_form=True))
                s.sendall(b"ok")
        except Exception as exc:  # reported to the test
            server_error.append(exc)

    t = threading.Thread(target=serve)
    t.start()
    client_error: Exception | None = None
    try:
        with client_ctx.wrap_socket(b) as c:
            c.recv(2)
    except Exception as exc:
        client_error = exc
    t.join(5)
    a.close()
    b.close()
    der = peer[0] if peer else None
    return der, client_error or (server_error[0] if server_error else None)


def test_mutual_tls_with_cloud_certificates(ca: CertificateAuthority, cc: Identity, nc: Identity) -> None:
    der, error = _handshake(tls_context(nc, ca, server=True), tls_context(cc, ca.ca_certificate, server=False))
    assert error is None
    peer = x509.load_der_x509_certificate(der)
    assert subject_identity(peer) == ("cluster1", Role.CC)


def test_mutual_tls_refuses_a_foreign_client(ca: CertificateAuthority, nc: Identity, foreign: Identity) -> None:
    assert foreign.key_path is not None
    # An identity without files goes through the temporary-file path.
    key = serialization.load_pem_private_key(foreign.key_path.read_bytes(), None)
    fileless = Identity.from_parts(foreign.certificate, key)  # type: ignore[arg-type]
    der, error = _handshake(tls_context(nc, ca, server=True), tls_context(fileless, ca, server=False))
    assert der is None and isinstance(error, ssl.SSLError | OSError)


def test_reasons_are_plain_strings() -> None:
    assert "replayed" in REASONS and all(isinstance(r, str) for r in REASONS)
    assert (
        str(MessageRejected("malformed", "x"))
        == "refused message (unknown action) from an unknown sender: malformed: x"
    )


def test_concurrent_identity_requests_agree(ca: CertificateAuthority) -> None:
    fingerprints: list[str] = []

    def get() -> None:
        fingerprints.append(ca.identity("busy-node", "nc").fingerprint)

    threads = [threading.Thread(target=get) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(fingerprints) == 6 and len(set(fingerprints)) == 1
