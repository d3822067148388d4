"""Whole clouds with real networks: instances boot on a direct or VDE network, fetch their key and user
data from the metadata service, answer SSH, and the security groups, elastic addresses, supervision
and teardown behave as EC2 users expect.

Every address used here belongs to the cloud's own namespaces; before sending, each test checks that
the route to it from the outside namespace is one of cloudlab's interfaces, never a default route.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudlab import servicectl
from cloudlab.client import connect
from cloudlab.config import CloudConfig
from cloudlab.net import NetError, links, netns
from cloudlab.waiting import wait_until
from tests.clouds import (
    USER_DATA,
    RunningCloud,
    cli,
    default_image,
    described,
    launch,
    network_requirements,
    no_leftovers,
    ssh,
    start_cloud,
)

pytestmark = pytest.mark.vm


def outside(cloud: RunningCloud) -> str:
    return cloud.layout.outside_namespace


def assert_cloudlab_route(cloud: RunningCloud, address: str) -> None:
    """The outside namespace reaches ``address`` through cloudlab's own links, never a default route."""
    route = links.route_get(outside(cloud), address)
    assert route.get("gateway") is None, route
    assert route["dev"] == "lo" or re.fullmatch(r"g\d+", route["dev"]), route


def route_dev(cloud: RunningCloud, address: str) -> str | None:
    """The outside namespace's device towards ``address``, or None while there is no route."""
    try:
        return links.route_get(outside(cloud), address)["dev"]
    except NetError:
        return None


def tcp_open(cloud: RunningCloud, client_id: str, address: str, port: int) -> bool:
    """Whether a TCP connection from instance ``client_id`` to ``address:port`` is accepted (bounded: 2 s)."""
    result = ssh(cloud, client_id, f"echo probe | nc -w 2 {address} {port} >/dev/null 2>&1 && echo OPEN || echo SHUT")
    return "OPEN" in result.stdout


# -- the direct flavour ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def direct_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCloud]:
    reason = network_requirements()
    if reason:
        pytest.skip(reason)
    # Eucalyptus' managed mode, asked for by name (the default model is vpc): a VLAN and a /24 per group,
    # the groups' rules on the router, elastic addresses on its lo
    cloud = start_cloud(
        tmp_path_factory.mktemp("direct") / "state",
        network="direct",
        network_model="classic",
        node_vcpus=4,
        node_memory_mb=1024,
    )
    yield cloud
    servicectl.down(cloud.layout)
    no_leftovers(cloud)


@pytest.fixture(scope="module")
def direct_instances(direct_cloud: RunningCloud) -> dict[str, Any]:
    """Two instances in group "web" and one in group "db", each with a key pair and user data."""
    ec2 = direct_cloud.ec2()
    ec2.create_key_pair(KeyName="netkey", KeyType="ed25519")
    web = ec2.create_security_group(GroupName="web", Description="web tier")["GroupId"]
    db = ec2.create_security_group(GroupName="db", Description="database tier")["GroupId"]
    for group in (web, db):
        ec2.authorize_security_group_ingress(
            GroupId=group, IpProtocol="tcp", FromPort=22, ToPort=22, CidrIp="0.0.0.0/0"
        )
    image = default_image(ec2)
    a, b = launch(ec2, image, 2, [web], "netkey")
    (c,) = launch(ec2, image, 1, [db], "netkey")
    ids = [a["InstanceId"], b["InstanceId"], c["InstanceId"]]
    connect(str(direct_cloud.layout.root)).wait_booted(ids, timeout=180)
    return {"ids": ids, "web": web, "db": db, "ec2": ec2}


def test_instances_get_addresses_in_their_groups_subnets(direct_cloud: RunningCloud, direct_instances: dict) -> None:
    ec2 = direct_instances["ec2"]
    a, b, c = direct_instances["ids"]
    found = described(ec2, [a, b, c])
    addresses = {i: ipaddress.ip_address(found[i]["PrivateIpAddress"]) for i in (a, b, c)}
    subnet = ipaddress.ip_network("10.211.0.0/16")
    assert all(addr in subnet for addr in addresses.values())
    assert len(set(addresses.values())) == 3
    # Same group, same /24; other group, another /24 (Eucalyptus' managed mode).
    web_net = ipaddress.ip_network(f"{addresses[a]}/24", strict=False)
    assert addresses[b] in web_net
    assert addresses[c] not in web_net
    filtered = ec2.describe_instances(Filters=[{"Name": "private-ip-address", "Values": [str(addresses[c])]}])
    assert [i["InstanceId"] for r in filtered["Reservations"] for i in r["Instances"]] == [c]


def test_guests_fetch_key_and_user_data_from_the_metadata_service(
    direct_cloud: RunningCloud, direct_instances: dict
) -> None:
    ec2 = direct_instances["ec2"]
    for instance_id in direct_instances["ids"]:
        console = ec2.get_console_output(InstanceId=instance_id).get("Output") or ""
        assert f"cloudlab-metadata: instance-id={instance_id} key=yes user-data=yes" in console, console[-2000:]


def test_ssh_with_the_created_key_runs_commands_and_returns_their_status(
    direct_cloud: RunningCloud, direct_instances: dict
) -> None:
    a = direct_instances["ids"][0]
    address = described(direct_instances["ec2"], [a])[a]["PrivateIpAddress"]
    assert_cloudlab_route(direct_cloud, address)
    # (user data runs in the background after the boot marker: wait for its output, bounded)
    wait_until(
        lambda: f"user-data-ran-{a}" in ssh(direct_cloud, a, "cat /var/log/user-data.log").stdout,
        60,
        what="the user data's output over SSH with the launch key",
        interval_s=0.5,
    )
    assert ssh(direct_cloud, a, "exit 7").returncode == 7
    # Plain OpenSSH from `cloudlab exec`, with the private key as CreateKeyPair returned it.
    key = next((direct_cloud.layout.root / "keys").glob("*/netkey.pem"))
    plain = cli(
        direct_cloud,
        "exec",
        "--",
        "ssh",
        "-i",
        str(key),
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        f"root@{address}",
        "hostname",
    )
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.strip() == a


def test_ssh_runs_the_command_after_dashdash_whatever_the_order_of_options(
    direct_cloud: RunningCloud, direct_instances: dict
) -> None:
    """The documented ``cloudlab ssh INSTANCE_ID -i KEY -- CMD`` (issue 10 item 17): the command runs remotely in
    both orders of the options, a word starting with ``-`` stays the command's, and its exit status is ours."""
    a = direct_instances["ids"][0]
    key = str(next((direct_cloud.layout.root / "keys").glob("*/netkey.pem")))
    for form in (["ssh", a, "-i", key], ["ssh", "-i", key, a], ["ssh", "--user", "root", a, "-i", key]):
        result = cli(direct_cloud, *form, "--", "echo", "-n", "ran-on-$(hostname)")
        assert result.returncode == 0, (form, result.stderr)
        assert result.stdout == f"ran-on-{a}", form  # `-n` reached the remote echo; $(...) expanded there
    failed = cli(direct_cloud, "ssh", a, "-i", key, "--", "echo before; exit 3")
    assert (failed.returncode, failed.stdout) == (3, "before\n")
    dash = cli(direct_cloud, "ssh", a, "-i", key, "--", "-V")  # ssh's own -V would print its version, status 0
    assert dash.returncode != 0 and dash.stderr.startswith("sh: ") and "OpenSSH" not in dash.stderr, dash.stderr


def test_same_group_talks_on_its_vlan(direct_cloud: RunningCloud, direct_instances: dict) -> None:
    a, b, _c = direct_instances["ids"]
    b_address = described(direct_instances["ec2"], [b])[b]["PrivateIpAddress"]
    result = ssh(direct_cloud, a, f"ping -c 2 -W 2 {b_address}")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ingress_rules_take_effect_on_running_instances_and_stop_when_revoked(
    direct_cloud: RunningCloud, direct_instances: dict
) -> None:
    ec2 = direct_instances["ec2"]
    a, _b, c = direct_instances["ids"]
    c_address = described(ec2, [c])[c]["PrivateIpAddress"]
    assert ssh(direct_cloud, c, "iperf3 -s -D -p 5201").returncode == 0
    assert not tcp_open(direct_cloud, a, c_address, 5201), "db must not accept 5201 before a rule allows it"
    permission = {
        "IpProtocol": "tcp",
        "FromPort": 5201,
        "ToPort": 5201,
        "UserIdGroupPairs": [{"GroupId": direct_instances["web"]}],
    }
    ec2.authorize_security_group_ingress(GroupId=direct_instances["db"], IpPermissions=[permission])
    wait_until(lambda: tcp_open(direct_cloud, a, c_address, 5201), 20, what="the authorised rule", interval_s=0.5)
    ec2.revoke_security_group_ingress(GroupId=direct_instances["db"], IpPermissions=[permission])
    wait_until(lambda: not tcp_open(direct_cloud, a, c_address, 5201), 20, what="the revoked rule", interval_s=0.5)


def test_elastic_address_is_nated_to_the_instance(direct_cloud: RunningCloud, direct_instances: dict) -> None:
    ec2 = direct_instances["ec2"]
    c = direct_instances["ids"][2]
    allocation = ec2.allocate_address(Domain="vpc")
    public_ip = allocation["PublicIp"]
    association = ec2.associate_address(AllocationId=allocation["AllocationId"], InstanceId=c)
    try:
        assert described(ec2, [c])[c]["PublicIpAddress"] == public_ip
        wait_until(
            lambda: route_dev(direct_cloud, public_ip) == "lo",
            10,
            what="the public address on the router",
            interval_s=0.5,
        )
        assert_cloudlab_route(direct_cloud, public_ip)
        result = wait_until(
            lambda: (r := cli(direct_cloud, "ssh", "--public", c, "--", "hostname")).returncode == 0 and r,
            30,
            what="SSH to the elastic address",
            interval_s=0.5,
        )
        assert result.stdout.strip() == c
        metadata = ssh(direct_cloud, c, "wget -q -O - http://169.254.169.254/latest/meta-data/public-ipv4")
        assert metadata.stdout.strip() == public_ip
    finally:
        ec2.disassociate_address(AssociationId=association["AssociationId"])
    wait_until(
        lambda: all(not a.startswith(public_ip + "/") for a in links.addresses(outside(direct_cloud), "lo")),
        10,
        what="the router to drop the disassociated address",
        interval_s=0.5,
    )
    probe = f"busybox nc -w 2 {public_ip} 22 </dev/null >/dev/null 2>&1 && echo ANSWERS || echo GONE"
    result = cli(direct_cloud, "exec", "--", "sh", "-c", probe)
    assert result.stdout.strip() == "GONE"
    ec2.release_address(AllocationId=allocation["AllocationId"])


def test_status_json_lists_the_network(direct_cloud: RunningCloud, direct_instances: dict) -> None:
    status = json.loads(cli(direct_cloud, "status", "--json").stdout)
    network = status["clusters"][0]["network_detail"]
    assert status["clusters"][0]["network"] == "direct"
    assert network["flavour"] == "direct"
    assert network["namespaces"]["outside"] == outside(direct_cloud)
    assert all(netns.exists(ns) for ns in network["namespaces"].values())
    assert network["vlans"]  # the two groups in use


def test_user_data_metadata_endpoints_answer_from_inside(direct_cloud: RunningCloud, direct_instances: dict) -> None:
    a = direct_instances["ids"][0]
    out = ssh(
        direct_cloud,
        a,
        "wget -q -O - http://169.254.169.254/latest/meta-data/instance-id; echo;"
        " wget -q -O - http://169.254.169.254/latest/user-data | base64",
    ).stdout.split()
    assert out[0] == a
    assert base64.b64decode("".join(out[1:])).decode() == USER_DATA


def test_metadata_matches_describe_instances(direct_cloud: RunningCloud, direct_instances: dict) -> None:
    """What the cloud controller fills in for the metadata service is what DescribeInstances says."""
    ec2 = direct_instances["ec2"]
    b = direct_instances["ids"][1]
    reservation = ec2.describe_instances(InstanceIds=[b])["Reservations"][0]
    instance = reservation["Instances"][0]
    base = "http://169.254.169.254/2009-04-04"
    leaves = ("reservation-id", "ami-launch-index", "kernel-id", "mac")
    command = "; echo; ".join(f"wget -q -O - {base}/meta-data/{leaf}" for leaf in leaves)
    out = ssh(direct_cloud, b, command).stdout.split()
    assert out[:3] == [reservation["ReservationId"], str(instance["AmiLaunchIndex"]), instance["KernelId"]]
    mac = out[3]
    subnet = ssh(direct_cloud, b, f"wget -q -O - {base}/meta-data/network/interfaces/macs/{mac}/subnet-ipv4-cidr-block")
    assert ipaddress.ip_address(instance["PrivateIpAddress"]) in ipaddress.ip_network(subnet.stdout.strip())
    document = json.loads(ssh(direct_cloud, b, f"wget -q -O - {base}/dynamic/instance-identity/document").stdout)
    assert document["accountId"] == reservation["OwnerId"]
    assert document["instanceId"] == b and document["privateIp"] == instance["PrivateIpAddress"]


# -- the VDE flavour across two hosts, one behind a NAT ----------------------------------------------------------


@pytest.fixture(scope="module", params=["fast", "classic"])
def vde_cloud(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCloud]:
    reason = network_requirements()
    if reason:
        pytest.skip(reason)
    cloud = start_cloud(
        tmp_path_factory.mktemp(f"vde-{request.param}") / "state",
        network="vde",
        vde_profile=request.param,
        nodes=2,
        nat_nodes=["node-02"],
        scheduler="ROUNDROBIN",
        node_vcpus=2,
        node_memory_mb=512,
    )
    yield cloud
    servicectl.down(cloud.layout)
    no_leftovers(cloud)


def _roles(network: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
    return [p for p in network["processes"] if p["role"].startswith(prefix)]


def test_vde_instances_on_two_hosts_reach_each_other_through_the_cable(vde_cloud: RunningCloud) -> None:
    """Both profiles: instances on two hosts (one behind a NAT) reach each other, run their user data, survive a
    killed cable and a killed switch. fast: a vdeplug4 switch per segment and host, a cable per segment, jumbo
    frames on every link (the guest's NIC at MTU 9000, a 8900-byte ping crosses the cable unfragmented); classic:
    exactly the 2008-style path (one vde_switch per host with VLANs, one cable per host, MTU 1500)."""
    fast = CloudConfig.load(vde_cloud.layout.config).vde_profile == "fast"
    ec2 = vde_cloud.ec2()
    ec2.create_key_pair(KeyName="vdekey")
    group = ec2.describe_security_groups(GroupNames=["default"])["SecurityGroups"][0]["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=group, IpProtocol="tcp", FromPort=22, ToPort=22, CidrIp="0.0.0.0/0")
    instances = launch(ec2, default_image(ec2), 2, [group], "vdekey")
    ids = [i["InstanceId"] for i in instances]
    connect(str(vde_cloud.layout.root)).wait_booted(ids, timeout=180)
    found = described(ec2, ids)
    assert {found[i]["Placement"]["HostId"] for i in ids} == {"node-01", "node-02"}
    behind_nat = next(i for i in ids if found[i]["Placement"]["HostId"] == "node-02")
    other = next(i for i in ids if i != behind_nat)
    # SSH to the instance on the NATed host goes router -> switch 1 -> cable -> switch 2.
    result = wait_until(
        lambda: (r := ssh(vde_cloud, behind_nat, "hostname")).returncode == 0 and r,
        60,
        what="SSH across the cable",
        interval_s=0.5,
    )
    assert result.stdout.strip() == behind_nat
    ping = ssh(vde_cloud, behind_nat, f"ping -c 2 -W 2 {found[other]['PrivateIpAddress']}")
    assert ping.returncode == 0, ping.stdout
    for instance_id in ids:  # the user data ran (it fetched it from the metadata service through the router)
        wait_until(
            lambda i=instance_id: f"user-data-ran-{i}" in ssh(vde_cloud, i, "cat /var/log/user-data.log").stdout,
            30,
            what=f"{instance_id}'s user data",
            interval_s=0.5,
        )
    mtu = ssh(vde_cloud, behind_nat, "cat /sys/class/net/eth0/mtu").stdout.strip()
    assert mtu == ("9000" if fast else "1500")
    if fast:  # a jumbo frame crosses host, cable and host unfragmented (vde_switch would drop it)
        jumbo = ssh(vde_cloud, behind_nat, f"ping -c 2 -W 2 -s 8900 {found[other]['PrivateIpAddress']}")
        assert jumbo.returncode == 0 and "8908 bytes from" in jumbo.stdout, jumbo.stdout

    status = json.loads(cli(vde_cloud, "status", "--json").stdout)
    network = status["clusters"][0]["network_detail"]
    assert network["flavour"] == "vde"
    assert network["vde_profile"] == ("fast" if fast else "classic")
    roles = {p["role"] for p in network["processes"]}
    [vid] = network["vlans"]
    # the segment's gateway: on the outside router (classic model) or on the VPC's own router (vpc, the default)
    [router] = [ns for ns in [outside(vde_cloud), *network["vpc_routers"].values()] if links.exists(ns, f"g{vid}")]
    gateway_mtu = links.mtu(router, f"g{vid}")
    if fast:
        assert {f"segment switch node-01 vlan {vid}", f"segment switch node-02 vlan {vid}"} <= roles
        assert f"segment cable node-02 vlan {vid}" in roles
        assert not any(role.startswith(("switch ", "cable ")) for role in roles)
        assert gateway_mtu == 9000
        cable_role, switch_role = f"segment cable node-02 vlan {vid}", f"segment switch node-02 vlan {vid}"
    else:
        assert {"switch node-01", "switch node-02", "cable node-02"} <= roles
        assert not any(role.startswith("segment") for role in roles)
        assert gateway_mtu == 1500
        cable_role, switch_role = "cable node-02", "switch node-02"
    assert any(role.startswith("gateway plug ") for role in roles)
    assert any(h["behind_nat"] for h in network["hosts"])
    assert network["healthy"]

    # Kill the cable the NATed host dialled: the supervisor notices, dials again, traffic flows again.
    cable = next(p for p in _roles(network, cable_role) if p["kind"] in ("tcp-dialer", "unix-cable"))
    os.kill(cable["pid"], signal.SIGKILL)

    def repaired() -> bool:
        detail = json.loads(cli(vde_cloud, "status", "--json").stdout)["clusters"][0]["network_detail"]
        return detail["healthy"] and any(cable_role in h for h in detail["history"])

    wait_until(repaired, 20, what="the cable's restart", interval_s=0.5)
    wait_until(
        lambda: ssh(vde_cloud, behind_nat, "true").returncode == 0,
        30,
        what="SSH after the cable came back",
        interval_s=0.5,
    )
    assert set(described(ec2, ids)) == set(ids)  # the records are intact

    # Kill a switch: it is restarted (classic: with its VLANs), its cables dial again, and the node plugs the
    # instance's NIC (a tap joined to the switch by a supervised vde_plug) in again: no restart of the guest.
    boot_id = ssh(vde_cloud, behind_nat, "cat /proc/sys/kernel/random/boot_id").stdout.strip()
    [switch] = _roles(network, switch_role)
    os.kill(switch["pid"], signal.SIGKILL)

    def switch_back() -> list[str] | None:
        detail = json.loads(cli(vde_cloud, "status", "--json").stdout)["clusters"][0]["network_detail"]
        events = [h for h in detail["history"] if f"{switch_role} died; restarted" in h]
        return events if detail["healthy"] and events else None

    wait_until(switch_back, 20, what="the switch's restart", interval_s=0.5)
    result = wait_until(
        lambda: (
            (r := ssh(vde_cloud, behind_nat, "hostname; cat /proc/sys/kernel/random/boot_id")).returncode == 0 and r
        ),
        60,
        what="SSH to the instance on the restarted switch",
        interval_s=0.5,
    )
    assert result.stdout.split() == [behind_nat, boot_id]  # the same guest, never rebooted
    ping = ssh(vde_cloud, behind_nat, f"ping -c 2 -W 2 {found[other]['PrivateIpAddress']}")
    assert ping.returncode == 0, ping.stdout
    states = {i: found["State"]["Name"] for i, found in described(ec2, ids).items()}
    assert states == {i: "running" for i in ids}


# -- bad input: a clear one-line error, and nothing built ----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--network", "direct", "--nodes", "2"], "direct network cannot span hosts"),
        (["--network", "vde", "--subnet", "198.51.100.0/25"], "overlaps public pool"),
        (["--network", "vde", "--subnet", "10.253.0.0/16", "--underlay", "10.253.7.0/24"], "overlaps --underlay"),
        (["--network", "vde", "--nodes", "2", "--nat-node", "node-01"], "cannot sit behind a NAT"),
        (["--network", "vde", "--nat-node", "node-07"], "not a node of this cloud"),
        (["--network", "vde", "--subnet", "10.0.0.300/16"], "10.0.0.300"),
    ],
)
def test_bad_network_options_are_refused_before_anything_is_built(
    tmp_path: Path, args: list[str], message: str
) -> None:
    if os.geteuid() != 0:
        pytest.skip("network clouds need root (CI runs as root)")
    state = tmp_path / "state"
    result = subprocess.run(
        [sys.executable, "-m", "cloudlab.cli", "--state", str(state), "up", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    from cloudlab.paths import StateLayout

    layout = StateLayout(state)
    assert netns.names(layout.network_prefix + "-") == []
    assert servicectl.endpoint(layout) is None


def test_workloads_run_in_instances_and_return_dataframes(direct_cloud: RunningCloud, direct_instances: dict) -> None:
    from cloudlab.bench.workloads import cpu_burn_on, iperf_between, ping_between

    a, b, _c = direct_instances["ids"]
    cloud = connect(str(direct_cloud.layout.root))
    throughput = iperf_between(cloud, server_id=b, client_id=a, duration_s=1, progress=False)
    assert list(throughput["client"]) == [a]
    assert throughput["gbit_s"].iloc[0] > 0
    assert throughput["retransmits"].iloc[0] >= 0
    rtt = ping_between(cloud, a, b, count=3)
    assert rtt["loss_pct"].iloc[0] == 0 and rtt["rtt_ms"].iloc[0] > 0
    burn = cpu_burn_on(cloud, [a], seconds=1, progress=False)
    assert burn.columns[0] == "instance_id" and len(burn) == 1
