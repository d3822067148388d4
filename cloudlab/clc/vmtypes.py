"""The cloud's VM types (EC2 instance types): vCPUs and memory an instance gets.

Sized for the small kernel + initramfs guests cloudlab boots under TCG; the names are EC2's so that
tools and tutorials that say ``t2.micro`` just work.
"""

from __future__ import annotations

from dataclasses import dataclass

from cloudlab.clc.store import Store
from cloudlab.errors import CloudError

DEFAULT_TYPE = "t2.micro"

BUILTIN_TYPES: dict[str, tuple[int, int]] = {
    "t2.nano": (1, 128),
    "t2.micro": (1, 256),
    "m1.small": (1, 256),
    "t2.small": (1, 512),
    "c1.medium": (2, 512),
    "t2.medium": (2, 1024),
    "m1.large": (2, 2048),
    "m1.xlarge": (4, 4096),
    "c1.xlarge": (8, 2048),
}


@dataclass(frozen=True)
class VmType:
    name: str
    vcpus: int
    memory_mb: int


def seed_vm_types(store: Store) -> None:
    with store.transaction() as db:
        for name, (vcpus, memory) in BUILTIN_TYPES.items():
            db.execute("INSERT OR IGNORE INTO vm_types (name, vcpus, memory_mb) VALUES (?,?,?)", (name, vcpus, memory))


def get_vm_type(store: Store, name: str) -> VmType:
    row = store.one("SELECT * FROM vm_types WHERE name=?", (name,))
    if row is None:
        known = ", ".join(r["name"] for r in store.query("SELECT name FROM vm_types ORDER BY vcpus, memory_mb"))
        raise CloudError("InvalidParameterValue", f"Invalid value '{name}' for InstanceType. Known types: {known}")
    return VmType(row["name"], row["vcpus"], row["memory_mb"])


def list_vm_types(store: Store) -> list[VmType]:
    return [
        VmType(r["name"], r["vcpus"], r["memory_mb"])
        for r in store.query("SELECT * FROM vm_types ORDER BY vcpus, memory_mb, name")
    ]
