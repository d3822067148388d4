"""The benchmark's cloudlab-built paths: two instances of one security group on a cloud started
with ``--network direct`` or ``--network vde``, measured VM to VM exactly like the hand-built pairs
in ``cloudlab.bench.handmade`` (same image, same vCPU and memory, iperf3 and ping over SSH), so that
the ratio of the two is cloudlab's own overhead.
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
INSTANCE_TYPE = "t2.micro"  # 1 vCPU, like the hand-built VMs


@contextlib.contextmanager
def cloud_vms(flavour: str, boot_timeout: float = 180, instance_type: str = INSTANCE_TYPE) -> Iterator[PathUnderTest]:
    """Start a cloud with ``flavour``, launch two instances in one group, yield the pair; stop the cloud."""
    from cloudlab.client import connect

    with tempfile.TemporaryDirectory(prefix="cloudlab-netbench-") as tmp:
        layout = StateLayout(Path(tmp) / "state")
        started = time.monotonic()
        servicectl.up(layout, CloudConfig(api_port=0, network=flavour), timeout_s=120)
        try:
            cloud = connect(str(layout.root))
            ec2 = cloud.ec2
            ec2.create_key_pair(KeyName="bench", KeyType="ed25519")
            group = ec2.create_security_group(GroupName="bench", Description="network benchmark pair")["GroupId"]
            ec2.authorize_security_group_ingress(
                GroupId=group, IpProtocol="tcp", FromPort=22, ToPort=22, CidrIp="0.0.0.0/0"
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
            yield PathUnderTest(
                kind=KIND_OF_FLAVOUR[flavour],
                label=f"cloudlab --network {flavour}: two instances, one security group",
                built_by="cloudlab",
                server=server,
                client=client,
                server_address=server.address,
                extra={"instances": ids, "ready_s": round(time.monotonic() - started, 2), "boot_s": round(booted_s, 2)},
            )
        finally:
            servicectl.down(layout)


def _default_image(ec2: Any) -> str:
    images = ec2.describe_images(Filters=[{"Name": "name", "Values": ["cloudlab-default"]}])["Images"]
    if not images:
        raise RuntimeError("the cloud has no default image: run cloudlab image build")
    return images[0]["ImageId"]
