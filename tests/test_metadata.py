"""The EC2 metadata service, served on 127.0.0.1 and asked through urllib."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from cloudlab.net.metadata import InstanceMetadata, MetadataServer, listen_socket

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDx5yFAKEKEYFAKEKEYFAKEKEYFAKEKEYFAKEKEYFAKE alice@example"

MD = InstanceMetadata(
    instance_id="i-0123456789abcdef0",
    local_ipv4="10.77.0.5",
    public_ipv4=None,
    instance_type="m1.small",
    ami_id="ami-00000001",
    availability_zone="cloudlab-1a",
    hostname="ip-10-77-0-5",
    security_groups=("default", "web"),
    public_keys=(("alice", KEY),),
    user_data=b"#!/bin/sh\necho hi\n\x00\xff",
    mac="52:54:00:12:34:56",
)


@pytest.fixture
def serve():
    """Start a server on 127.0.0.1 with the given metadata for 127.0.0.1; yield its base URL."""
    servers = []

    def start(md: InstanceMetadata | None = MD, lookup=None) -> str:
        server = MetadataServer(lookup or (lambda ip: md if ip == "127.0.0.1" else None), listen_socket("127.0.0.1", 0))
        server.start()
        servers.append(server)
        host, port = server.address
        return f"http://{host}:{port}"

    yield start
    for server in servers:
        server.stop()


def get(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def test_leaves(serve):
    base = serve() + "/latest/meta-data/"
    expected = {
        "instance-id": b"i-0123456789abcdef0",
        "local-ipv4": b"10.77.0.5",
        "instance-type": b"m1.small",
        "ami-id": b"ami-00000001",
        "hostname": b"ip-10-77-0-5",
        "local-hostname": b"ip-10-77-0-5",
        "placement/availability-zone": b"cloudlab-1a",
        "security-groups": b"default\nweb",
        "mac": b"52:54:00:12:34:56",
    }
    for path, body in expected.items():
        assert get(base + path)[:2] == (200, body), path
    assert get(base + "public-ipv4")[0] == 404


def test_listing(serve):
    status, body, _ = get(serve() + "/latest/meta-data/")
    assert status == 200
    names = body.decode().split("\n")
    for name in ("instance-id", "local-ipv4", "ami-id", "placement/", "public-keys/", "security-groups", "mac"):
        assert name in names
    assert "public-ipv4" not in names  # no public address: not listed (and 404)
    status, body, _ = get(serve() + "/latest/meta-data")  # without the slash, as some clients ask
    assert status == 200 and b"instance-id" in body


def test_public_keys(serve):
    base = serve() + "/latest/meta-data/public-keys/"
    assert get(base)[:2] == (200, b"0=alice")
    assert get(base + "0/")[:2] == (200, b"openssh-key")
    assert get(base + "0/openssh-key")[:2] == (200, KEY.encode() + b"\n")
    assert get(base + "1/openssh-key")[0] == 404
    assert get(base + "x/openssh-key")[0] == 404


def test_no_keys_and_public_ip(serve):
    from dataclasses import replace

    base = serve(replace(MD, public_keys=(), public_ipv4="192.0.2.7", user_data=None, mac=None))
    assert get(base + "/latest/meta-data/public-keys/")[0] == 404
    assert get(base + "/latest/meta-data/public-ipv4")[:2] == (200, b"192.0.2.7")
    assert get(base + "/latest/meta-data/mac")[0] == 404
    assert get(base + "/latest/user-data")[0] == 404
    names = get(base + "/latest/meta-data/")[1].decode().split("\n")
    assert "public-ipv4" in names and "public-keys/" not in names and "mac" not in names


def test_user_data_is_raw_bytes(serve):
    status, body, headers = get(serve() + "/latest/user-data")
    assert status == 200 and body == MD.user_data
    assert headers["Content-Length"] == str(len(MD.user_data))


def test_identity_document(serve):
    status, body, headers = get(serve() + "/latest/dynamic/instance-identity/document")
    assert status == 200 and headers["Content-Type"] == "application/json"
    document = json.loads(body)
    assert document["instanceId"] == MD.instance_id
    assert document["privateIp"] == MD.local_ipv4
    assert document["imageId"] == MD.ami_id
    assert document["availabilityZone"] == "cloudlab-1a"
    assert document["region"] == "cloudlab-1"
    assert document["instanceType"] == "m1.small"


def test_unknown_source_and_path(serve):
    base = serve(lookup=lambda ip: None)
    status, body, _ = get(base + "/latest/meta-data/instance-id")
    assert status == 404 and body == b"no instance has address 127.0.0.1\n"
    base = serve()
    for path in ("/", "/latest/meta-data/nonsense", "/latest/meta-data/placement/region-x", "/other"):
        assert get(base + path)[0] == 404, path


def test_lookup_sees_source_address_and_failures_are_404(serve):
    seen = []

    def lookup(ip):
        seen.append(ip)
        raise RuntimeError("database down")

    base = serve(lookup=lookup)
    assert get(base + "/latest/meta-data/instance-id")[0] == 404
    assert seen == ["127.0.0.1"]
    assert get(base + "/latest/meta-data/instance-id")[0] == 404  # still serving


def test_imdsv2_token(serve):
    base = serve()
    status, token, headers = get(base + "/latest/api/token", "PUT", {"X-aws-ec2-metadata-token-ttl-seconds": "21600"})
    assert status == 200 and len(token) >= 20
    assert headers["X-aws-ec2-metadata-token-ttl-seconds"] == "21600"
    with_token = get(base + "/latest/meta-data/instance-id", headers={"X-aws-ec2-metadata-token": token.decode()})
    assert with_token[:2] == (200, b"i-0123456789abcdef0")
    assert get(base + "/latest/api/token", "PUT")[0] == 400  # the TTL header is required
    assert get(base + "/latest/api/token", "PUT", {"X-aws-ec2-metadata-token-ttl-seconds": "0"})[0] == 400


def test_stop_closes_the_socket():
    sock = listen_socket("127.0.0.1", 0)
    server = MetadataServer(lambda ip: MD, sock)
    server.start()
    host, port = server.address
    assert get(f"http://{host}:{port}/latest/meta-data/instance-id")[0] == 200
    server.stop()
    assert sock.fileno() == -1
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://{host}:{port}/latest/meta-data/instance-id", timeout=2)
