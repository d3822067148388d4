"""What EC2's instance metadata service tells one instance, as the tree of paths EC2 serves.

Pure data, no HTTP: :class:`InstanceMetadata` holds the facts the cloud knows about an instance,
and :func:`resolve` answers a request path with the body EC2 would send (or None for a 404), so the
layout can be tested without a server and the server (``metadata.py``) stays protocol only.

The layout follows EC2's (docs.aws.amazon.com, "Instance metadata categories")::

    /                                      the API versions, one per line, then "latest"
    /VERSION/                              dynamic, meta-data, user-data (when there is some)
    /VERSION/meta-data/                    the categories; a directory ends with "/"
        ami-id ami-launch-index ami-manifest-path hostname instance-action instance-id
        instance-type kernel-id ramdisk-id local-hostname local-ipv4 mac public-ipv4
        reservation-id security-groups profile
        block-device-mapping/{ami,root,ephemeral0,...}
        network/interfaces/macs/MAC/{device-number,local-hostname,local-ipv4s,mac,owner-id,
                                    public-ipv4s,security-group-ids,security-groups,
                                    subnet-ipv4-cidr-block}
        placement/{availability-zone,region}
        public-keys/          "0=keyname" per key; public-keys/0/openssh-key
        services/{domain,partition}
    /VERSION/user-data                     the raw bytes given to RunInstances
    /VERSION/dynamic/instance-identity/document   the identity document (JSON, EC2's fields)

Every listed version serves the same tree: cloud-init asks for the newest version it knows
(2021-03-23, then older ones) and falls back to 2009-04-04, and both must answer. A category that
does not apply (no public address, no key, no kernel image) is absent from its listing and a 404,
as on EC2.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

#: The API versions EC2 lists at ``/`` (oldest first); ``latest`` is appended.
VERSIONS = (
    "1.0",
    "2007-01-19",
    "2007-03-01",
    "2007-08-29",
    "2007-10-10",
    "2007-12-15",
    "2008-02-01",
    "2008-09-01",
    "2009-04-04",
    "2011-01-01",
    "2011-05-01",
    "2012-01-12",
    "2014-02-25",
    "2014-11-05",
    "2015-10-20",
    "2016-04-19",
    "2016-06-30",
    "2016-09-02",
    "2018-03-28",
    "2018-08-17",
    "2018-09-24",
    "2019-10-01",
    "2020-10-27",
    "2021-01-03",
    "2021-03-23",
    "2021-07-15",
    "2022-07-09",
    "2022-09-24",
)
#: services/domain: cloudlab's own names are not under amazonaws.com (``.internal`` is reserved for
#: private use), and services/partition stays "aws": it names the ARN and API flavour tools expect.
SERVICES_DOMAIN = "cloudlab.internal"
PARTITION = "aws"


@dataclass(frozen=True)
class InstanceMetadata:
    """One instance's facts, filled by the cloud controller (the server knows nothing of it)."""

    instance_id: str
    local_ipv4: str
    public_ipv4: str | None
    instance_type: str
    ami_id: str
    availability_zone: str
    hostname: str
    security_groups: tuple[str, ...]
    public_keys: tuple[tuple[str, str], ...]  # (key name, OpenSSH public key line)
    user_data: bytes | None
    mac: str | None = None
    reservation_id: str | None = None
    ami_launch_index: int = 0
    local_hostname: str | None = None  # None: the same as hostname
    security_group_ids: tuple[str, ...] = ()
    subnet_cidr: str | None = None  # the NIC's subnet, e.g. 10.211.0.0/24
    account_id: str | None = None  # the owner's 12-digit account number
    kernel_id: str | None = None
    ramdisk_id: str | None = None
    launch_time: float | None = None  # epoch seconds (the identity document's pendingTime)
    #: (name, device) as EC2 lists them: ("ami", "/dev/vda"), ("root", "/dev/vda"), ("ephemeral0", "vdb")
    block_devices: tuple[tuple[str, str], ...] = ()
    #: EC2's HttpTokens: "optional" (IMDSv1 and v2) or "required" (a session token on every request)
    http_tokens: str = "optional"

    @property
    def region(self) -> str:
        """The zone's region: the zone name without its trailing letter(s) (cloudlab-1a -> cloudlab-1)."""
        return self.availability_zone.rstrip("abcdefghijklmnopqrstuvwxyz") or self.availability_zone


# A directory is a dict; its listing is its keys, with "/" after subdirectories. public-keys/ is
# EC2's one odd directory: it lists "0=name" but is entered as "0/".
_Tree = dict[str, "str | _Tree"]
_PUBLIC_KEYS = "public-keys"


def _put(tree: _Tree, path: str, value: str | None) -> None:
    """Set ``a/b/c`` in the nested dicts; a None value leaves the path out (EC2 omits what does not apply)."""
    if value is None:
        return
    *dirs, leaf = path.split("/")
    for name in dirs:
        tree = tree.setdefault(name, {})  # type: ignore[assignment]
    tree[leaf] = value


def meta_data(md: InstanceMetadata) -> _Tree:
    """The tree under ``/VERSION/meta-data/``."""
    tree: _Tree = {}
    local_hostname = md.local_hostname or md.hostname
    leaves = {
        "ami-id": md.ami_id,
        "ami-launch-index": str(md.ami_launch_index),
        "ami-manifest-path": "(unknown)",  # what EC2 says for images not bundled to S3
        "hostname": md.hostname,
        "instance-action": "none",
        "instance-id": md.instance_id,
        "instance-type": md.instance_type,
        "kernel-id": md.kernel_id,
        "ramdisk-id": md.ramdisk_id,
        "local-hostname": local_hostname,
        "local-ipv4": md.local_ipv4,
        "mac": md.mac,
        "profile": "default-hvm",
        "public-ipv4": md.public_ipv4,
        "reservation-id": md.reservation_id,
        "security-groups": "\n".join(md.security_groups) if md.security_groups else None,
        "placement/availability-zone": md.availability_zone,
        "placement/region": md.region,
        "services/domain": SERVICES_DOMAIN,
        "services/partition": PARTITION,
    }
    for path, value in leaves.items():
        _put(tree, path, value)
    for name, device in md.block_devices:
        _put(tree, f"block-device-mapping/{name}", device)
    if md.mac:
        nic = f"network/interfaces/macs/{md.mac}"
        for path, value in {
            "device-number": "0",
            "local-hostname": local_hostname,
            "local-ipv4s": md.local_ipv4,
            "mac": md.mac,
            "owner-id": md.account_id,
            "public-ipv4s": md.public_ipv4,
            "security-group-ids": "\n".join(md.security_group_ids) if md.security_group_ids else None,
            "security-groups": "\n".join(md.security_groups) if md.security_groups else None,
            "subnet-ipv4-cidr-block": md.subnet_cidr,
        }.items():
            _put(tree, f"{nic}/{path}", value)
    if md.public_keys:
        tree[_PUBLIC_KEYS] = {str(i): {"openssh-key": key.strip() + "\n"} for i, (_n, key) in enumerate(md.public_keys)}
    return tree


def identity_document(md: InstanceMetadata) -> dict[str, object]:
    """``dynamic/instance-identity/document``, with the fields and nulls EC2 has."""
    pending = md.launch_time if md.launch_time is not None else time.time()
    return {
        "accountId": md.account_id or "000000000000",
        "architecture": "x86_64",
        "availabilityZone": md.availability_zone,
        "billingProducts": None,
        "devpayProductCodes": None,
        "marketplaceProductCodes": None,
        "imageId": md.ami_id,
        "instanceId": md.instance_id,
        "instanceType": md.instance_type,
        "kernelId": md.kernel_id,
        "pendingTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(pending)),
        "privateIp": md.local_ipv4,
        "ramdiskId": md.ramdisk_id,
        "region": md.region,
        "version": "2017-09-30",
    }


def _listing(tree: _Tree) -> bytes:
    return "\n".join(k + ("/" if isinstance(v, dict) else "") for k, v in sorted(tree.items())).encode()


def _walk(tree: _Tree, parts: list[str], names: tuple[str, ...]) -> bytes | None:
    node: str | _Tree = tree
    parent = ""
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return None
        parent, node = part, node[part]
    if isinstance(node, dict):
        if parent == _PUBLIC_KEYS:
            return "\n".join(f"{i}={name}" for i, name in enumerate(names)).encode()
        return _listing(node)
    return node.encode()


def resolve(md: InstanceMetadata, path: str) -> bytes | None:
    """The body EC2 sends for ``path`` (query string already removed), or None for a 404.

    A directory answers with its listing whether or not the path ends with "/" (clients differ).
    """
    parts = [p for p in path.split("/") if p]
    if not parts:
        return ("\n".join((*VERSIONS, "latest")) + "\n").encode()
    version, rest = parts[0], parts[1:]
    if version != "latest" and version not in VERSIONS:
        return None
    if not rest:
        return b"dynamic\nmeta-data\n" + (b"user-data\n" if md.user_data is not None else b"")
    category, rest = rest[0], rest[1:]
    if category == "user-data":
        return md.user_data if not rest else None
    if category == "dynamic":
        dynamic: _Tree = {"instance-identity": {"document": ""}}
        if rest == ["instance-identity", "document"]:
            return (json.dumps(identity_document(md), indent=2) + "\n").encode()
        return _walk(dynamic, rest, ())
    if category == "meta-data":
        return _walk(meta_data(md), rest, tuple(name for name, _key in md.public_keys))
    return None
