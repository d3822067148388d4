"""Shared fixtures.

- ``tests/clouds.py`` (loaded as a plugin), the one home of clouds and helpers: real clouds started as
  ``cloudlab up`` does — ``sim_cloud`` (libvirt's test driver), ``vm_cloud`` (embedded QEMU),
  ``cloud_factory``, the ``ec2``/``raw_ec2`` clients — an in-process ``LocalCloud``, and the shared helpers.
- here: a cloud CA in a temporary folder and signed identities for controller-level tests, and
  ``node``, a node controller on a test-driver host of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cloudlab.nc.hypervisor import test_driver_uri
from cloudlab.nc.node import NodeController
from cloudlab.security.ca import CertificateAuthority
from cloudlab.security.messages import MessageSigner, MessageVerifier

pytest_plugins = ["tests.clouds", "tests.scheduling"]


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


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeController]:
    """A 4-vCPU, 2 GiB node controller on its own test-driver host (the node tests' and the race tests')."""
    nc = NodeController("node-01", test_driver_uri(tmp_path / "node-01", 4, 2048), tmp_path / "node-01", accel="test")
    try:
        yield nc
    finally:
        nc.close()
