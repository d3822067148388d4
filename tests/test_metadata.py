"""The EC2 metadata service on 127.0.0.1, asked through real HTTP clients: urllib, http.client and
botocore's own IMDS fetcher (what boto3 and the AWS CLI use on an instance)."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from dataclasses import replace

import pytest
from botocore.utils import InstanceMetadataRegionFetcher

from cloudlab.net.metadata import InstanceMetadata, MetadataServer, listen_socket
from cloudlab.net.metadata_tree import VERSIONS

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDx5yFAKEKEYFAKEKEYFAKEKEYFAKEKEYFAKEKEYFAKE alice@example"
TTL = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN = "X-aws-ec2-metadata-token"

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
    reservation_id="r-0123456789abcdef0",
    ami_launch_index=2,
    security_group_ids=("sg-00000001", "sg-00000002"),
    subnet_cidr="10.77.0.0/24",
    account_id="123456789012",
    kernel_id="aki-00000001",
    launch_time=1700000000.0,
    block_devices=(("ami", "/dev/vda"), ("root", "/dev/vda"), ("ephemeral0", "vdb")),
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def serve(clock):
    """Start a server on 127.0.0.1 with the given metadata for 127.0.0.1; yield its base URL."""
    servers = []

    def start(md: InstanceMetadata | None = MD, lookup=None) -> str:
        lookup = lookup or (lambda ip: md if ip == "127.0.0.1" else None)
        server = MetadataServer(lookup, listen_socket("127.0.0.1", 0), clock=clock)
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


def token_for(base: str, ttl: str = "21600") -> str:
    status, body, headers = get(base + "/latest/api/token", "PUT", {TTL: ttl})
    assert status == 200 and headers[TTL] == ttl
    return body.decode()


# -------------------------------------------------------------------------------------------------
# the trees


def test_root_lists_the_dated_versions_and_latest(serve):
    status, body, _ = get(serve() + "/")
    assert status == 200
    lines = body.decode().split()
    assert lines[-1] == "latest"
    assert {"1.0", "2009-04-04", "2016-09-02", "2018-09-24", "2021-03-23"} <= set(lines)
    assert lines[:-1] == sorted(lines[:-1])  # oldest first, as EC2


@pytest.mark.parametrize("version", ["2009-04-04", "2016-09-02", "2021-03-23", "latest"])
def test_every_dated_tree_serves_the_same_instance(serve, version):
    base = f"{serve()}/{version}"
    assert get(base + "/")[:2] == (200, b"dynamic\nmeta-data\nuser-data\n")
    assert get(base)[:2] == (200, b"dynamic\nmeta-data\nuser-data\n")
    assert get(base + "/meta-data/instance-id")[:2] == (200, b"i-0123456789abcdef0")
    assert get(base + "/user-data")[1] == MD.user_data
    document = json.loads(get(base + "/dynamic/instance-identity/document")[1])
    assert document["instanceId"] == MD.instance_id


def test_unknown_version_is_404(serve):
    base = serve()
    for version in ("2030-01-01", "latest2", "meta-data"):
        assert get(f"{base}/{version}/meta-data/instance-id")[0] == 404, version


def test_leaves(serve):
    base = serve() + "/latest/meta-data/"
    expected = {
        "ami-id": b"ami-00000001",
        "ami-launch-index": b"2",
        "ami-manifest-path": b"(unknown)",
        "block-device-mapping/ami": b"/dev/vda",
        "block-device-mapping/root": b"/dev/vda",
        "block-device-mapping/ephemeral0": b"vdb",
        "hostname": b"ip-10-77-0-5",
        "instance-action": b"none",
        "instance-id": b"i-0123456789abcdef0",
        "instance-type": b"m1.small",
        "kernel-id": b"aki-00000001",
        "local-hostname": b"ip-10-77-0-5",
        "local-ipv4": b"10.77.0.5",
        "mac": b"52:54:00:12:34:56",
        "placement/availability-zone": b"cloudlab-1a",
        "placement/region": b"cloudlab-1",
        "reservation-id": b"r-0123456789abcdef0",
        "security-groups": b"default\nweb",
        "services/domain": b"cloudlab.internal",
        "services/partition": b"aws",
    }
    for path, body in expected.items():
        assert get(base + path)[:2] == (200, body), path
    for absent in ("public-ipv4", "ramdisk-id", "block-device-mapping/ephemeral1"):
        assert get(base + absent)[0] == 404, absent


def test_network_interface_tree(serve):
    base = serve() + "/latest/meta-data/network/interfaces/macs/"
    assert get(base)[:2] == (200, b"52:54:00:12:34:56/")
    nic = base + "52:54:00:12:34:56/"
    listing = get(nic)[1].decode().split("\n")
    assert "public-ipv4s" not in listing  # no public address
    expected = {
        "device-number": b"0",
        "local-hostname": b"ip-10-77-0-5",
        "local-ipv4s": b"10.77.0.5",
        "mac": b"52:54:00:12:34:56",
        "owner-id": b"123456789012",
        "security-group-ids": b"sg-00000001\nsg-00000002",
        "security-groups": b"default\nweb",
        "subnet-ipv4-cidr-block": b"10.77.0.0/24",
    }
    assert sorted(listing) == sorted(expected)
    for leaf, body in expected.items():
        assert get(nic + leaf)[:2] == (200, body), leaf


def test_listing(serve):
    status, body, _ = get(serve() + "/latest/meta-data/")
    assert status == 200
    names = body.decode().split("\n")
    for name in (
        "ami-id",
        "ami-launch-index",
        "block-device-mapping/",
        "instance-id",
        "local-ipv4",
        "mac",
        "network/",
        "placement/",
        "public-keys/",
        "reservation-id",
        "security-groups",
        "services/",
    ):
        assert name in names
    assert "public-ipv4" not in names  # no public address: not listed (and 404)
    status, body, _ = get(serve() + "/latest/meta-data")  # without the slash, as some clients ask
    assert status == 200 and b"instance-id" in body
    assert get(serve() + "/latest/meta-data/placement/")[:2] == (200, b"availability-zone\nregion")
    assert get(serve() + "/latest/meta-data/block-device-mapping/")[:2] == (200, b"ami\nephemeral0\nroot")


def test_every_listed_entry_answers(serve):
    """Walk the tree from its listings alone, as cloud-init's crawler does: nothing listed is a 404."""
    base = serve() + "/2021-03-23/meta-data/"
    seen: dict[str, bytes] = {}

    def crawl(path: str) -> None:
        status, body, _ = get(base + path)
        assert status == 200, path
        for line in body.decode().split("\n"):
            name = line.split("=", 1)[0] if path == "public-keys/" else line
            if name.endswith("/") or path == "public-keys/":
                crawl(path + name.rstrip("/") + "/")
            else:
                status, leaf, _ = get(base + path + name)
                assert status == 200, path + name
                seen[path + name] = leaf

    crawl("")
    assert seen["public-keys/0/openssh-key"] == KEY.encode() + b"\n"
    assert seen["network/interfaces/macs/52:54:00:12:34:56/local-ipv4s"] == b"10.77.0.5"
    assert len(seen) >= 30


def test_public_keys(serve):
    base = serve() + "/latest/meta-data/public-keys/"
    assert get(base)[:2] == (200, b"0=alice")
    assert get(base + "0/")[:2] == (200, b"openssh-key")
    assert get(base + "0/openssh-key")[:2] == (200, KEY.encode() + b"\n")
    assert get(base + "1/openssh-key")[0] == 404
    assert get(base + "x/openssh-key")[0] == 404


def test_no_keys_and_public_ip(serve):
    base = serve(replace(MD, public_keys=(), public_ipv4="192.0.2.7", user_data=None, mac=None, block_devices=()))
    assert get(base + "/latest/meta-data/public-keys/")[0] == 404
    assert get(base + "/latest/meta-data/public-ipv4")[:2] == (200, b"192.0.2.7")
    assert get(base + "/latest/meta-data/mac")[0] == 404
    assert get(base + "/latest/meta-data/network/")[0] == 404
    assert get(base + "/latest/meta-data/block-device-mapping/")[0] == 404
    assert get(base + "/latest/user-data")[0] == 404
    assert get(base + "/latest/")[:2] == (200, b"dynamic\nmeta-data\n")
    names = get(base + "/latest/meta-data/")[1].decode().split("\n")
    assert "public-ipv4" in names and "public-keys/" not in names and "mac" not in names


def test_public_address_on_the_interface(serve):
    base = serve(replace(MD, public_ipv4="192.0.2.7"))
    assert get(base + "/latest/meta-data/network/interfaces/macs/52:54:00:12:34:56/public-ipv4s")[:2] == (
        200,
        b"192.0.2.7",
    )


def test_user_data_is_raw_bytes(serve):
    status, body, headers = get(serve() + "/latest/user-data")
    assert status == 200 and body == MD.user_data
    assert headers["Content-Length"] == str(len(MD.user_data))
    assert headers["Content-Type"] == "application/octet-stream"


def test_identity_document(serve):
    base = serve()
    assert get(base + "/latest/dynamic/")[:2] == (200, b"instance-identity/")
    assert get(base + "/latest/dynamic/instance-identity/")[:2] == (200, b"document")
    status, body, headers = get(base + "/latest/dynamic/instance-identity/document")
    assert status == 200 and headers["Content-Type"] == "application/json"
    document = json.loads(body)
    assert set(document) == {
        "accountId",
        "architecture",
        "availabilityZone",
        "billingProducts",
        "devpayProductCodes",
        "marketplaceProductCodes",
        "imageId",
        "instanceId",
        "instanceType",
        "kernelId",
        "pendingTime",
        "privateIp",
        "ramdiskId",
        "region",
        "version",
    }
    assert document["accountId"] == "123456789012"
    assert document["instanceId"] == MD.instance_id
    assert document["privateIp"] == MD.local_ipv4
    assert document["imageId"] == MD.ami_id
    assert document["availabilityZone"] == "cloudlab-1a"
    assert document["region"] == "cloudlab-1"
    assert document["instanceType"] == "m1.small"
    assert document["kernelId"] == "aki-00000001" and document["ramdiskId"] is None
    assert document["pendingTime"] == "2023-11-14T22:13:20Z"
    assert document["version"] == "2017-09-30"


def test_head_answers_like_get_without_a_body(serve):
    connection = http.client.HTTPConnection(serve().removeprefix("http://"), timeout=5)
    connection.request("HEAD", "/latest/meta-data/instance-id")
    response = connection.getresponse()
    assert response.status == 200 and response.getheader("Content-Length") == str(len(MD.instance_id))
    assert response.read() == b""
    connection.close()


def test_unknown_source_and_path(serve):
    base = serve(lookup=lambda ip: None)
    status, body, _ = get(base + "/latest/meta-data/instance-id")
    assert status == 404 and body == b"no instance has address 127.0.0.1\n"
    assert get(base + "/")[0] == 404  # not even the version list for an address that is no instance
    base = serve()
    for path in ("/latest/meta-data/nonsense", "/latest/meta-data/placement/region-x", "/other", "/latest/foo"):
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


def test_versions_constant_has_no_duplicates():
    assert len(set(VERSIONS)) == len(VERSIONS) and "latest" not in VERSIONS


# -------------------------------------------------------------------------------------------------
# IMDSv2


def test_imdsv2_token(serve):
    base = serve()
    token = token_for(base)
    assert len(token) >= 20
    with_token = get(base + "/latest/meta-data/instance-id", headers={TOKEN: token})
    assert with_token[:2] == (200, b"i-0123456789abcdef0")
    assert get(base + "/2009-04-04/user-data", headers={TOKEN: token})[1] == MD.user_data
    assert token_for(base, "1") != token_for(base, "1")  # every PUT makes a new one


def test_token_ttl_must_be_1_to_21600(serve):
    base = serve()
    assert get(base + "/latest/api/token", "PUT")[0] == 400  # the TTL header is required
    for bad in ("0", "21601", "-5", "abc", ""):
        assert get(base + "/latest/api/token", "PUT", {TTL: bad})[0] == 400, bad
    token_for(base, "21600")


def test_a_request_with_a_bad_token_is_401(serve):
    base = serve()
    token = token_for(base)
    for bad in ("nonsense", token[:-2] + "xx", "9999999999.abc.def", ""):
        assert get(base + "/latest/meta-data/instance-id", headers={TOKEN: bad})[0] == 401, bad
    assert get(base + "/latest/meta-data/instance-id")[0] == 200  # IMDSv1 still allowed ("optional")


def test_token_expires_after_its_ttl(serve, clock):
    base = serve()
    token = token_for(base, "60")
    url = base + "/latest/meta-data/instance-id"
    clock.now += 59
    assert get(url, headers={TOKEN: token})[0] == 200
    clock.now += 1
    assert get(url, headers={TOKEN: token})[0] == 401


def test_token_is_bound_to_the_instance_that_asked(clock):
    """A token fetched from 127.0.0.1 is refused from 127.0.0.2 (another instance)."""
    other = replace(MD, instance_id="i-0fedcba9876543210", local_ipv4="10.77.0.6")
    server = MetadataServer(
        lambda ip: {"127.0.0.1": MD, "127.0.0.2": other}.get(ip), listen_socket("127.0.0.1", 0), clock=clock
    )
    with server:
        host, port = server.address

        def ask(source: str, method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
            connection = http.client.HTTPConnection(host, port, timeout=5, source_address=(source, 0))
            connection.request(method, path, headers=headers)
            response = connection.getresponse()
            answer = response.status, response.read()
            connection.close()
            return answer

        status, token = ask("127.0.0.1", "PUT", "/latest/api/token", {TTL: "300"})
        assert status == 200
        assert ask("127.0.0.1", "GET", "/latest/meta-data/instance-id", {TOKEN: token.decode()}) == (
            200,
            b"i-0123456789abcdef0",
        )
        assert ask("127.0.0.2", "GET", "/latest/meta-data/instance-id", {TOKEN: token.decode()})[0] == 401
        assert ask("127.0.0.2", "GET", "/latest/meta-data/instance-id", {}) == (200, b"i-0fedcba9876543210")


def test_required_tokens_refuse_imdsv1(serve):
    base = serve(replace(MD, http_tokens="required"))
    assert get(base + "/latest/meta-data/instance-id")[0] == 401
    assert get(base + "/latest/meta-data/instance-id", headers={TOKEN: token_for(base)})[:2] == (
        200,
        b"i-0123456789abcdef0",
    )


def test_no_token_through_a_proxy_and_wrong_methods(serve):
    base = serve()
    assert get(base + "/latest/api/token", "PUT", {TTL: "60", "X-Forwarded-For": "203.0.113.9"})[0] == 403
    assert get(base + "/latest/api/token")[0] == 405  # GET on the token path
    assert get(base + "/latest/meta-data/instance-id", "PUT", {TTL: "60"})[0] == 405
    status, _, headers = get(base + "/latest/meta-data/instance-id", "POST")
    assert status == 405 and "GET" in headers["Allow"]
    assert get(base + "/latest/meta-data/instance-id", "DELETE")[0] == 405


def test_botocore_reads_the_region_through_imdsv2(serve):
    """botocore's own IMDS client with IMDSv1 switched off must get a token and use it."""
    base = serve(replace(MD, http_tokens="required"))
    fetcher = InstanceMetadataRegionFetcher(
        timeout=5, num_attempts=2, base_url=base + "/", env={}, config={"ec2_metadata_v1_disabled": True}
    )
    assert fetcher.retrieve_region() == "cloudlab-1"


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
