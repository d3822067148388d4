"""Shared fixtures.

- ``tests/clouds.py`` (loaded as a plugin), the one home of clouds and helpers: real clouds started as
  ``cloudlab up`` does — ``sim_cloud`` (libvirt's test driver), ``vm_cloud`` (embedded QEMU),
  ``cloud_factory``, the ``ec2``/``raw_ec2`` clients — an in-process ``LocalCloud``, and the shared helpers.
- here: a cloud CA in a temporary folder and signed identities for controller-level tests.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from cloudlab.security.ca import CertificateAuthority
from cloudlab.security.messages import MessageSigner, MessageVerifier

pytest_plugins = ["tests.clouds"]


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    """A fresh cloud CA, created the way the service creates it."""
    return CertificateAuthority.load_or_create(tmp_path / "pki")


@pytest.fixture
def signer_verifier(ca: CertificateAuthority) -> Callable[[str, str], tuple[MessageSigner, MessageVerifier]]:
    """A factory: ``(name, role) -> (signer, verifier)``, one verifier per call (as each controller has)."""

    def make(name: str, role: str) -> tuple[MessageSigner, MessageVerifier]:
        return MessageSigner(ca.identity(name, role)), MessageVerifier(ca.ca_certificate)

    return make
