"""Instant launch of cloudlab-debian on real VMs (issue 13): an instance restored from a booted template of
the Debian image (systemd, cloud-init) runs its user data for its own instance-id, answers SSH with python3,
and shares no identity or secret with a sibling restored from the same template -- SSH host keys, machine-id,
random bytes, MAC, clock. One cloud (direct network): a cold boot (whose launch has the template built), then
two restored siblings.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest

from cloudlab import servicectl
from cloudlab.guest import CLOUD_INIT_DONE_MARKER, DEBIAN_IMAGE_NAME
from cloudlab.images.cached import BuiltImage, default_cache_dir
from cloudlab.nc.templates import find_template
from cloudlab.waiting import wait_until
from tests.clouds import RunningCloud, network_requirements, no_leftovers, ssh, start_cloud

pytestmark = [pytest.mark.vm, pytest.mark.slow]

USER_DATA = """#cloud-config
write_files:
  - path: /etc/cloudlab-test/hello.txt
    content: written by cloud-init's write_files
runcmd:
  - [sh, -c, "echo runcmd ran as $(id -un) > /var/tmp/runcmd.txt"]
"""
#: What each instance tells about itself over SSH, one "name value" line each (its first NIC: lowest ifindex).
FACTS = (
    "nic=$(for d in /sys/class/net/*; do [ -e $d/device ] && echo $(cat $d/ifindex) ${d##*/}; done | sort -n"
    " | head -1 | cut -d' ' -f2);"
    " echo hostname $(hostname);"
    " echo machine-id $(cat /etc/machine-id);"
    " echo boot-id $(cat /proc/sys/kernel/random/boot_id);"
    " echo mac $(cat /sys/class/net/$nic/address);"
    " echo random $(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' ');"
    " echo hostkey $(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub | cut -d' ' -f2);"
    " echo instance $(cloud-init query v1.instance_id);"
    " echo clock $(date +%s)"
)
BOOT_S = 420  # a cold boot of cloudlab-debian under TCG on a busy 2-core host: a minute or more


@pytest.fixture(scope="module")
def image() -> BuiltImage:
    if shutil.which("mmdebstrap") is None:
        pytest.skip("cloudlab-debian is built with mmdebstrap (apt-get install mmdebstrap)")
    from cloudlab.images.debian import build_debian_image

    return build_debian_image(progress=lambda msg: print(f"[debian] {msg}"))


@pytest.fixture(scope="module")
def cloud(image: BuiltImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCloud]:
    reason = network_requirements()
    if reason:
        pytest.skip(reason)
    cloud = start_cloud(
        tmp_path_factory.mktemp("instant-debian") / "state", network="direct", node_vcpus=4, node_memory_mb=1536
    )
    yield cloud
    servicectl.down(cloud.layout)
    no_leftovers(cloud)


def _console(ec2: Any, instance_id: str) -> str:
    return ec2.get_console_output(InstanceId=instance_id).get("Output") or ""


def _wait_ready(ec2: Any, instance_ids: list[str]) -> None:
    """Until every console shows cloud-init's last line (after the boot marker: SSH answers, user data ran)."""
    wait_until(
        lambda: all(CLOUD_INIT_DONE_MARKER in _console(ec2, i) for i in instance_ids),
        BOOT_S,
        what=f"cloud-init done on {instance_ids}",
        interval_s=1,
    )


def _template(image: BuiltImage) -> dict[str, Any] | None:
    assert image.disk is not None and image.ramdisk is not None
    root = default_cache_dir() / "templates"
    return find_template(root, image.kernel, image.ramdisk, nic=True, memory_mb=256, disk=image.disk)


@pytest.fixture(scope="module")
def siblings(cloud: RunningCloud, image: BuiltImage) -> dict[str, Any]:
    ec2 = cloud.ec2()
    ec2.create_key_pair(KeyName="instant", KeyType="ed25519")
    group = ec2.create_security_group(GroupName="instant", Description="ssh")["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=group, IpProtocol="tcp", FromPort=22, ToPort=22, CidrIp="0.0.0.0/0")
    found = ec2.describe_images(Filters=[{"Name": "name", "Values": [DEBIAN_IMAGE_NAME]}])["Images"]
    assert found, f"the cloud registered no {DEBIAN_IMAGE_NAME}"
    common = {
        "ImageId": found[0]["ImageId"],
        "KeyName": "instant",
        "SecurityGroupIds": [group],
        "UserData": USER_DATA,
        "InstanceType": "t2.micro",
    }
    # an earlier run's template is removed, so the first launch boots cold and has one built
    while (old := _template(image)) is not None:
        shutil.rmtree(default_cache_dir() / "templates" / old["name"], ignore_errors=True)
    cold = ec2.run_instances(MinCount=1, MaxCount=1, **common)["Instances"][0]["InstanceId"]
    template = wait_until(lambda: _template(image), BOOT_S, what="the cloudlab-debian template", interval_s=1)
    _wait_ready(ec2, [cold])
    restored = [i["InstanceId"] for i in ec2.run_instances(MinCount=2, MaxCount=2, **common)["Instances"]]
    started = time.monotonic()
    _wait_ready(ec2, restored)
    print(f"[debian] template {template['name']} built in {template['build_s']} s; two restored instances ready"
          f" (cloud-init done) {time.monotonic() - started:.1f} s after RunInstances returned")  # fmt: skip
    return {"ec2": ec2, "cold": cold, "restored": restored, "template": template}


def _facts(cloud: RunningCloud, instance_id: str) -> dict[str, str]:
    done = ssh(cloud, instance_id, FACTS, timeout=120)
    assert done.returncode == 0, done.stderr
    return dict(line.split(" ", 1) for line in done.stdout.strip().splitlines() if " " in line)


def test_consoles_say_how_each_instance_started(siblings: dict[str, Any]) -> None:
    ec2, name = siblings["ec2"], siblings["template"]["name"]
    for instance_id in siblings["restored"]:
        console = _console(ec2, instance_id)
        assert f"cloudlab-launch: restored from template {name}" in console, console[-3000:]
        assert "cloudlab-launch: cold boot" not in console
        assert "cloudlab-identity:" not in console, console  # no step of the restore went wrong
        assert f"cloudlab-boot: ok host={instance_id}" in console, console[-3000:]
        assert "datasource=DataSourceEc2" in console
    console = _console(ec2, siblings["cold"])
    assert "cloudlab-launch: cold boot" in console and "restored from template" not in console


def test_a_restored_instance_runs_python_and_its_own_user_data(cloud: RunningCloud, siblings: dict[str, Any]) -> None:
    for instance_id in siblings["restored"]:
        assert ssh(cloud, instance_id, "python3 -c 'print(6*7)'").stdout.strip() == "42"
        hello = ssh(cloud, instance_id, "cat /etc/cloudlab-test/hello.txt").stdout
        assert hello == "written by cloud-init's write_files"
        assert ssh(cloud, instance_id, "cat /var/tmp/runcmd.txt").stdout.strip() == "runcmd ran as root"
        # the root volume is the instance's own, writable, and its file system sound after the restore
        done = ssh(cloud, instance_id, "echo kept >/var/tmp/mine && sync && cat /var/tmp/mine && findmnt -no OPTIONS /")
        assert done.stdout.split()[0] == "kept" and done.stdout.split()[1].startswith("rw"), done.stdout
        assert "EXT4-fs error" not in ssh(cloud, instance_id, "dmesg").stdout


def test_siblings_of_one_template_share_no_identity_and_no_secret(
    cloud: RunningCloud, siblings: dict[str, Any]
) -> None:
    ec2 = siblings["ec2"]
    a, b = siblings["restored"]
    facts = {}
    for instance_id in (a, b):
        before = time.time()
        facts[instance_id] = got = _facts(cloud, instance_id)
        after = time.time()
        described = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
        assert got["instance"] == instance_id, got  # cloud-init ran for this instance-id, not the template's
        assert got["hostname"] == instance_id, got
        assert got["mac"] == described["NetworkInterfaces"][0]["MacAddress"] != "52:54:00:ff:ff:fe", got
        assert re.fullmatch(r"[0-9a-f]{32}", got["machine-id"]), got
        assert got["hostkey"].startswith("SHA256:"), got
        assert before - 2 <= int(got["clock"]) <= after + 1, (got["clock"], before, after)
    for fact in ("hostname", "machine-id", "mac", "random", "hostkey"):
        assert facts[a][fact] != facts[b][fact], (fact, facts[a][fact])
    # the kernel's boot id is drawn once, by systemd, before the template waits: siblings share it
    print(f"[debian] boot ids: {facts[a]['boot-id']} {facts[b]['boot-id']}")
