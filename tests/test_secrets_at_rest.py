"""Secrets at rest (issue 10, finding 6): the state folder is 0700 and every file holding a secret is 0600.

Before: ``clc.db`` and its WAL were created 0644 in a 0755 folder and held every secret access key, the
admin's too (``su nobody -c 'strings STATE/clc.db-wal'`` showed them).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from cloudlab import servicectl
from tests.clouds import RunningCloud, default_image, start_cloud


def secrets_of(cloud: RunningCloud) -> list[bytes]:
    """Every secret the cloud holds: access keys' secrets and private keys."""
    import sqlite3

    db = sqlite3.connect(cloud.layout.database)
    try:
        found = [row[0].encode() for row in db.execute("SELECT secret_key FROM access_keys")]
    finally:
        db.close()
    return found + [b"PRIVATE KEY"]


def test_every_file_with_a_secret_is_private(cloud_factory: Callable[..., RunningCloud]) -> None:
    cloud = cloud_factory(hypervisor="test:///default", nodes=1)
    _, ec2 = cloud.create_user("alice")
    ec2.create_key_pair(KeyName="k1")  # a private key the cloud holds for `cloudlab ssh`
    ec2.run_instances(ImageId=default_image(ec2), MinCount=1, MaxCount=1, KeyName="k1")
    root = cloud.layout.root
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    secrets = secrets_of(cloud)
    assert len(secrets) >= 3
    holding = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        data = path.read_bytes()
        # A registered image's files are public content (the Debian disk holds the words "PRIVATE KEY" in its
        # packages' files): only the cloud's own secrets count there.
        looked_for = secrets[:-1] if path.is_relative_to(cloud.layout.images) else secrets
        if any(secret in data for secret in looked_for):
            holding.append(path.relative_to(root))
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, (
                f"{path} holds a secret and is {path.stat().st_mode:o}"
            )
    assert Path("clc.db") in holding or Path("clc.db-wal") in holding
    for name in ("clc.db", "clc.db-wal", "clc.db-shm"):
        if (root / name).exists():
            assert stat.S_IMODE((root / name).stat().st_mode) == 0o600


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("runuser") is None, reason="needs root and runuser")
def test_another_user_cannot_read_the_database() -> None:
    # a state folder in a place every user can reach (pytest's own temporary folders are 0700)
    parent = Path(tempfile.mkdtemp(prefix="cloudlab-secrets-"))
    parent.chmod(0o755)
    cloud = start_cloud(parent / "state", hypervisor="test:///default", nodes=1)
    try:
        cloud.create_user("bob")
        for name in ("clc.db-wal", "clc.db"):
            target = cloud.layout.root / name
            done = subprocess.run(
                ["runuser", "-u", "nobody", "--", "cat", str(target)], capture_output=True, timeout=30
            )
            assert done.returncode != 0 and b"Permission denied" in done.stderr
            assert cloud.credentials()["secret_key"].encode() not in done.stdout
    finally:
        servicectl.down(cloud.layout)
        shutil.rmtree(parent, ignore_errors=True)


def test_a_loose_state_folder_is_tightened(tmp_path: Path) -> None:
    from cloudlab.clc.store import Store

    root = tmp_path / "state"
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    (root / "clc.db").touch(mode=0o644)
    (root / "clc.db").chmod(0o644)
    Store(root / "clc.db").close()
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "clc.db").stat().st_mode) == 0o600
