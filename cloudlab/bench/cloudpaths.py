"""The benchmark's cloudlab-built paths: two instances of one security group on a cloud started
with ``--network direct`` or ``--network vde`` (``--vde-profile fast`` or ``classic``), measured VM to VM
exactly like the hand-built pairs in ``cloudlab.bench.handmade`` (same image, same vCPU and memory, iperf3
and ping over SSH), so that the ratio of the two is cloudlab's own overhead.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cloudlab import servicectl
from cloudlab.bench.handmade import PathUnderTest
from cloudlab.config import CloudConfig
from cloudlab.paths import StateLayout
from cloudlab.reach import instance_remote

#: The hand-built pairs' kinds, so that results line up path by path.
KIND_OF_FLAVOUR = {"direct": "vm-bridge", "vde": "vm-vde"}
#: vde's profiles: classic beside QEMU's vde netdev on one vde_switch (the seed's pair); fast beside its hand-built
#: twin (each VM's tap bridged to a vde_plug tap on vdeplug4's switch, MTU 9000 on every link).
KIND_OF_PROFILE = {"classic": "vm-vde", "fast": "vm-vde-tap-vdeplug-switch-mtu9000"}
INSTANCE_TYPE = "t2.micro"  # 1 vCPU, like the hand-built VMs


@contextlib.contextmanager
def cloud_vms(
    flavour: str, boot_timeout: float = 180, instance_type: str = INSTANCE_TYPE, vde_profile: str = "classic"
) -> Iterator[PathUnderTest]:
    """Start a cloud with ``flavour`` (vde: with ``vde_profile``), launch two instances in one group, yield the
    pair; stop the cloud."""
    from cloudlab.client import connect

    if vde_profile not in KIND_OF_PROFILE:
        raise ValueError(f"vde_profile must be one of {', '.join(KIND_OF_PROFILE)}")
    kind = KIND_OF_PROFILE[vde_profile] if flavour == "vde" else KIND_OF_FLAVOUR[flavour]
    label = f"cloudlab --network {flavour}" + (f" --vde-profile {vde_profile}" if flavour == "vde" else "")
    with tempfile.TemporaryDirectory(prefix="cloudlab-netbench-") as tmp:
        layout = StateLayout(Path(tmp) / "state")
        started = time.monotonic()
        # launch=boot: a restore cloud's nodes boot their start-up template in the background right after up,
        # which took a core from the first pair measured (cloudlab direct at 0.06 Gbit/s, 66 ms RTT, in a run
        # at load 8); the hand-built VMs boot cold too, and the network is what is measured here
        config = CloudConfig(api_port=0, network=flavour, vde_profile=vde_profile, launch="boot")
        servicectl.up(layout, config, timeout_s=120)
        try:
            cloud = connect(str(layout.root))
            ec2 = cloud.ec2
            ec2.create_key_pair(KeyName="bench", KeyType="ed25519")
            group = ec2.create_security_group(GroupName="bench", Description="network benchmark pair")["GroupId"]
            ec2.authorize_security_group_ingress(
                GroupId=group, IpProtocol="tcp", FromPort=22, ToPort=22, CidrIp="0.0.0.0/0"
            )
            # iperf3 and ping between the pair: a VPC's group admits its own members only when a rule says so
            # (the classic model's segment per group lets them talk without one)
            ec2.authorize_security_group_ingress(
                GroupId=group, IpPermissions=[{"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group}]}]
            )
            reply = ec2.run_instances(
                ImageId=_default_image(ec2),
                MinCount=2,
                MaxCount=2,
                KeyName="bench",
                SecurityGroupIds=[group],
                InstanceType=instance_type,
            )
            ids = [i["InstanceId"] for i in reply["Instances"]]
            cloud.wait_booted(ids, timeout=boot_timeout)
            booted_s = time.monotonic() - started
            server, client = instance_remote(cloud, ids[0]), instance_remote(cloud, ids[1])
            for remote in (server, client):
                remote.wait_ready(60)
            mtu = client.run("cat $(ls -d /sys/class/net/* | grep -v /lo$ | head -1)/mtu", timeout=20).stdout.strip()
            yield PathUnderTest(
                kind=kind,
                label=f"{label}: two instances, one security group",
                built_by="cloudlab",
                server=server,
                client=client,
                server_address=server.address,
                extra={
                    "instances": ids,
                    "ready_s": round(time.monotonic() - started, 2),
                    "boot_s": round(booted_s, 2),
                    "guest_mtu": int(mtu) if mtu.isdigit() else mtu,
                    **({"vde_profile": vde_profile} if flavour == "vde" else {}),
                },
            )
        finally:
            servicectl.down(layout)


def open_ssh(ec2: Any, vpc: str) -> None:
    """Let SSH into ``vpc``'s default group from anywhere: it admits only its members, as on EC2, and the pair is
    driven over SSH from the VPC's router."""
    [group] = ec2.describe_security_groups(
        Filters=[{"Name": "vpc-id", "Values": [vpc]}, {"Name": "group-name", "Values": ["default"]}]
    )["SecurityGroups"]
    ec2.authorize_security_group_ingress(
        GroupId=group["GroupId"], IpProtocol="tcp", FromPort=22, ToPort=22, CidrIp="0.0.0.0/0"
    )


def _default_image(ec2: Any) -> str:
    images = ec2.describe_images(Filters=[{"Name": "name", "Values": ["cloudlab-default"]}])["Images"]
    if not images:
        raise RuntimeError("the cloud has no default image: run cloudlab image build")
    return images[0]["ImageId"]


def vpc_kind(placement: str, vde_profile: str = "fast") -> str:
    """The kind a VPC pair's results are filed under: its placement and the VDE profile it ran on."""
    return f"vm-vpc-{placement}-{vde_profile}"


#: The placements of a VPC pair (``cloud_vpc_pair``) and the kinds their results are filed under (default profile).
KIND_OF_PLACEMENT = {p: vpc_kind(p) for p in ("same-cluster", "cross-cluster")}


@contextlib.contextmanager
def cloud_vpc_pair(
    placement: str, boot_timeout: float = 180, instance_type: str = INSTANCE_TYPE, vde_profile: str = "fast"
) -> Iterator[PathUnderTest]:
    """Two instances of one VPC on a vde cloud of two clusters, the second behind a NAT (``--nat-cluster``), on
    ``vde_profile`` (fast: a cable per subnet segment and MTU 9000 in the guests; classic: VLANs on one cable).

    ``same-cluster``: both in the first zone, in two subnets; ``cross-cluster``: one in each zone, the server
    behind the NAT. Both pairs are routed once, by the VPC's router on the first cluster, so their ratio is
    what the cable between the clusters (and the NAT it was dialled through) costs.
    """
    from cloudlab.client import connect

    if placement not in KIND_OF_PLACEMENT:
        raise ValueError(f"placement must be one of {', '.join(KIND_OF_PLACEMENT)}")
    if vde_profile not in KIND_OF_PROFILE:
        raise ValueError(f"vde_profile must be one of {', '.join(KIND_OF_PROFILE)}")
    with tempfile.TemporaryDirectory(prefix="cloudlab-netbench-") as tmp:
        layout = StateLayout(Path(tmp) / "state")
        started = time.monotonic()
        # launch=boot, as cloud_vms: no template built in the background while the pair is measured
        config = CloudConfig(api_port=0, network="vde", network_model="vpc", clusters=2, nat_clusters=["cluster2"],
                             vde_profile=vde_profile, launch="boot")  # fmt: skip
        servicectl.up(layout, config, timeout_s=180)
        try:
            cloud = connect(str(layout.root))
            ec2 = cloud.ec2
            ec2.create_key_pair(KeyName="bench", KeyType="ed25519")
            zones = [z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]]
            vpc = ec2.create_vpc(CidrBlock="10.91.0.0/16")["Vpc"]["VpcId"]
            open_ssh(ec2, vpc)
            far = zones[0] if placement == "same-cluster" else zones[1]
            subnets = [
                ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.91.{n}.0/24", AvailabilityZone=zone)["Subnet"]["SubnetId"]
                for n, zone in ((1, zones[0]), (2, far))
            ]
            client_id, server_id = (
                ec2.run_instances(
                    ImageId=_default_image(ec2),
                    MinCount=1,
                    MaxCount=1,
                    KeyName="bench",
                    SubnetId=subnet,
                    InstanceType=instance_type,
                )["Instances"][0]["InstanceId"]
                for subnet in subnets
            )
            ids = [server_id, client_id]
            cloud.wait_booted(ids, timeout=boot_timeout)
            booted_s = time.monotonic() - started
            server, client = instance_remote(cloud, server_id), instance_remote(cloud, client_id)
            for remote in (server, client):
                remote.wait_ready(60)
            mtu = client.run("cat $(ls -d /sys/class/net/* | grep -v /lo$ | head -1)/mtu", timeout=20).stdout.strip()
            yield PathUnderTest(
                kind=vpc_kind(placement, vde_profile),
                label=f"cloudlab vde --vde-profile {vde_profile}, one VPC, {placement} (two clusters, cluster2 behind"
                " a NAT)",
                built_by="cloudlab",
                server=server,
                client=client,
                server_address=server.address,
                extra={
                    "instances": ids,
                    "zones": [zones[0], far],
                    "vde_profile": vde_profile,
                    "guest_mtu": int(mtu) if mtu.isdigit() else mtu,
                    "ready_s": round(time.monotonic() - started, 2),
                    "boot_s": round(booted_s, 2),
                },
            )
        finally:
            servicectl.down(layout)
