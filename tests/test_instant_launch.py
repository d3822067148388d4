"""Instant launch on real VMs (issue 13): instances restored from one booted template are whole instances
of their own -- their own MAC, hostname, machine-id, SSH host key, random bytes and clock -- and a launch
with no template ready boots cold. One cloud (direct network), three instances and one reboot.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest

from cloudlab import servicectl
from cloudlab.client import connect
from cloudlab.images.cached import default_cache_dir, find_built_image
from cloudlab.nc.templates import find_template
from cloudlab.waiting import wait_until
from tests.clouds import RunningCloud, default_image, network_requirements, no_leftovers, ssh, start_cloud

pytestmark = [pytest.mark.vm, pytest.mark.slow]

USER_DATA = "#!/bin/sh\necho user-data-ran-$(hostname)\n"
#: What each instance tells about itself over SSH, one "name value" line each.
FACTS = (
    "echo hostname $(hostname);"
    " echo machine-id $(cat /etc/machine-id);"
    " echo boot-id $(cat /proc/sys/kernel/random/boot_id);"
    " echo mac $(cat /sys/class/net/eth0/address);"
    " echo cloud-mac $(wget -q -O - http://169.254.169.254/latest/meta-data/mac);"
    " echo random $(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' ');"
    " echo hostkey $(dropbearkey -y -f /etc/dropbear/dropbear_ed25519_host_key | grep -o 'SHA256:[^ ]*');"
    " echo clock $(date +%s)"
)


def _ready_template(memory_mb: int) -> dict[str, Any] | None:
    """The template of the default image with a NIC at ``memory_mb``, once it is built (the machine's cache)."""
    built = find_built_image()
    assert built is not None
    return find_template(default_cache_dir() / "templates", built.kernel, built.ramdisk, nic=True, memory_mb=memory_mb)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCloud]:
    reason = network_requirements()
    if reason:
        pytest.skip(reason)
    cloud = start_cloud(
        tmp_path_factory.mktemp("instant") / "state", network="direct", node_vcpus=4, node_memory_mb=1536
    )
    yield cloud
    servicectl.down(cloud.layout)
    no_leftovers(cloud)


@pytest.fixture(scope="module")
def siblings(cloud: RunningCloud) -> dict[str, Any]:
    """Two t2.micro instances restored from the template the node built at start, and one t2.small (no template
    of that size yet: a cold boot)."""
    template = wait_until(lambda: _ready_template(256), 240, what="the node's start-up template", interval_s=1)
    ec2 = cloud.ec2()
    ec2.create_key_pair(KeyName="instant", KeyType="ed25519")
    group = ec2.create_security_group(GroupName="instant", Description="ssh")["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=group, IpProtocol="tcp", FromPort=22, ToPort=22, CidrIp="0.0.0.0/0")
    image = default_image(ec2)
    common = {"ImageId": image, "KeyName": "instant", "SecurityGroupIds": [group], "UserData": USER_DATA}
    # no t2.small template may be ready (an earlier run built one in the machine's cache): removed first
    # (a node restoring from it meanwhile falls back to a cold boot, so this is safe)
    while (small := _ready_template(512)) is not None:
        shutil.rmtree(default_cache_dir() / "templates" / small["name"], ignore_errors=True)
    restored = ec2.run_instances(MinCount=2, MaxCount=2, InstanceType="t2.micro", **common)["Instances"]
    cold = ec2.run_instances(MinCount=1, MaxCount=1, InstanceType="t2.small", **common)["Instances"]
    ids = [i["InstanceId"] for i in restored + cold]
    connect(str(cloud.layout.root)).wait_booted(ids, timeout=240)
    return {"ec2": ec2, "restored": ids[:2], "cold": ids[2], "template": template}


def _console(ec2: Any, instance_id: str) -> str:
    return ec2.get_console_output(InstanceId=instance_id).get("Output") or ""


def _facts(cloud: RunningCloud, instance_id: str) -> dict[str, str]:
    done = ssh(cloud, instance_id, FACTS)
    assert done.returncode == 0, done.stderr
    return dict(line.split(" ", 1) for line in done.stdout.strip().splitlines())


def test_each_console_says_how_the_instance_started(siblings: dict[str, Any]) -> None:
    ec2 = siblings["ec2"]
    name = siblings["template"]["name"]
    for instance_id in siblings["restored"]:
        console = _console(ec2, instance_id)
        assert f"cloudlab-launch: restored from template {name}" in console, console
        assert "cloudlab-launch: cold boot" not in console
        assert "cloudlab-init:" not in console, console  # no step of the restore went wrong (the reseed ...)
        # after the identity the guest carries on as a cold-booted one: metadata, key, user data, SSH
        assert f"cloudlab-metadata: instance-id={instance_id} key=yes user-data=yes" in console, console
        assert f"cloudlab-boot: ok host={instance_id}" in console
    console = _console(ec2, siblings["cold"])
    assert "cloudlab-launch: cold boot" in console and "restored from template" not in console, console


def test_siblings_of_one_template_share_no_identity_and_no_secret(
    cloud: RunningCloud, siblings: dict[str, Any]
) -> None:
    a, b = siblings["restored"]
    facts = {}
    for instance_id in (a, b):
        before = time.time()
        facts[instance_id] = got = _facts(cloud, instance_id)
        after = time.time()
        assert got["hostname"] == instance_id
        assert got["mac"] == got["cloud-mac"] and got["mac"] != "52:54:00:ff:ff:fe", got  # its own, not the template's
        assert re.fullmatch(r"[0-9a-f]{32}", got["machine-id"]), got
        assert got["hostkey"].startswith("SHA256:"), got
        # the clock was set at resume: not where the template's stopped (it was saved minutes ago at most)
        assert before - 2 <= int(got["clock"]) <= after + 1, (got["clock"], before, after)
        user_data = ssh(cloud, instance_id, "cat /var/log/user-data.log").stdout
        assert f"user-data-ran-{instance_id}" in user_data
    for fact in ("hostname", "machine-id", "boot-id", "mac", "random", "hostkey"):
        assert facts[a][fact] != facts[b][fact], (fact, facts[a][fact])


def test_a_restored_instance_reboots_cold_as_itself(cloud: RunningCloud, siblings: dict[str, Any]) -> None:
    ec2 = siblings["ec2"]
    instance_id = siblings["restored"][0]
    ec2.reboot_instances(InstanceIds=[instance_id])
    wait_until(
        lambda: (
            "cloudlab-launch: cold boot" in _console(ec2, instance_id)
            and _console(ec2, instance_id).count(f"cloudlab-boot: ok host={instance_id}") == 2
        ),
        120,
        what="the restored instance booted again",
        interval_s=0.5,
    )
    assert f"cloudlab-metadata: instance-id={instance_id} key=yes" in _console(ec2, instance_id).split("cold boot")[1]
