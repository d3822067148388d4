"""cloudlab-debian booted BY HAND (``cloudlab.bench.handboot``): Debian's cloud-init finds the
metadata service through its EC2 datasource and applies #cloud-config, shell-script and MIME
multipart user data; the launch key logs in as root; the console carries cloudlab's boot lines.

Each guest runs under QEMU/TCG in a network namespace of its own (bridge, tap, a metadata server
on 169.254.169.254:80 with a fixed lookup), on a qcow2 overlay of the image's disk; everything is
removed afterwards. A boot takes a minute or more under TCG (cloud-init is four Python runs).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

import pytest

from cloudlab.bench.handboot import HandBoot, debian_by_hand
from cloudlab.images.cached import BuiltImage
from cloudlab.net import netns
from cloudlab.reach import SshRemote

pytestmark = [
    pytest.mark.vm,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86_64"),
]


@pytest.fixture(scope="module")
def image() -> BuiltImage:
    if shutil.which("mmdebstrap") is None:
        pytest.skip("cloudlab-debian is built with mmdebstrap (apt-get install mmdebstrap)")
    from cloudlab.images.debian import build_debian_image

    return build_debian_image(progress=lambda msg: print(f"[debian] {msg}"))


@pytest.fixture
def second_key(tmp_path: Path) -> tuple[Path, str]:
    """A key pair that is NOT the launch key: only #cloud-config's ssh_authorized_keys grants it."""
    key = tmp_path / "alice_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "alice", "-f", str(key)], check=True)
    return key, key.with_suffix(".pub").read_text().strip()


def run(boot: HandBoot, command: str, remote: SshRemote | None = None) -> str:
    done = (remote or boot.ssh).run(command, timeout=120)
    assert done.returncode == 0, f"{command!r} failed ({done.returncode}): {done.stderr}\n{boot.console()[-2000:]}"
    return done.stdout


def test_cloud_config_is_applied_and_ssh_runs_python(image: BuiltImage, second_key: tuple[Path, str]) -> None:
    key, public = second_key
    user_data = f"""#cloud-config
users:
  - default
  - name: alice
    shell: /bin/bash
    ssh_authorized_keys:
      - {public}
write_files:
  - path: /etc/cloudlab-test/hello.txt
    content: written by cloud-init's write_files
    permissions: "0640"
runcmd:
  - [sh, -c, "echo runcmd ran as $(id -un) > /var/tmp/runcmd.txt"]
""".encode()
    with debian_by_hand(image, user_data=user_data) as boot:
        assert run(boot, "python3 -c 'print(6*7)'").strip() == "42"
        assert run(boot, "cat /etc/cloudlab-test/hello.txt") == "written by cloud-init's write_files"
        assert run(boot, "stat -c %a /etc/cloudlab-test/hello.txt").strip() == "640"
        assert run(boot, "cat /var/tmp/runcmd.txt").strip() == "runcmd ran as root"
        alice = SshRemote(boot.address, key, boot.namespace, user="alice")
        assert run(boot, "id -un; echo $SHELL", alice).split() == ["alice", "/bin/bash"]
        # The launch key pair (public-keys/0 in the metadata) logs in as root and as the default user.
        assert boot.public_key in run(boot, "cat /root/.ssh/authorized_keys")
        debian_user = SshRemote(boot.address, boot.key, boot.namespace, user="debian")
        assert run(boot, "id -un", debian_user).strip() == "debian"

        status = json.loads(run(boot, "cloud-init status --format json"))
        assert status["status"] == "done" and not status.get("errors"), status
        assert status["datasource"] == "ec2"
        # cloud-init read the fixed metadata: instance id, zone and hostname come from it.
        assert run(boot, "cloud-init query v1.instance_id").strip() == boot.instance_id
        assert run(boot, "cloud-init query v1.availability_zone").strip() == "hand-1a"
        assert run(boot, "hostname").strip() == boot.instance_id
        print(f"[debian] by hand: {boot.times}")


def test_console_lines_the_cloud_waits_for(image: BuiltImage) -> None:
    """The default image's boot marker, printed once SSH answers; how the guest was started; the
    host keys cloud-init made for this instance (none came with the image); a root disk larger than
    the image, grown by cloud-init to the overlay's size."""
    with debian_by_hand(image, disk_size_mb=4096) as boot:
        console = boot.console()
        launch = console.index("cloudlab-launch: cold boot")
        marker = re.search(r"^cloudlab-boot: ok host=(\S+) uptime=(\d+\.\d+)\r?$", console, re.M)
        assert marker, [line for line in console.splitlines() if "cloudlab-boot" in line]
        assert marker.group(1) == boot.instance_id
        assert launch < console.index("cloudlab-boot: ok") < console.index("cloudlab-cloud-init: done")
        assert "datasource=DataSourceEc2" in console
        # The marker means "ready for SSH": the first attempt after it must log in.
        assert boot.ssh.run("true", timeout=60).returncode == 0
        assert boot.times["launch_s"] <= boot.times["marker_s"] <= boot.times["cloud_init_s"]
        host_key = run(boot, "cat /etc/ssh/ssh_host_ed25519_key.pub").split()[1]
        assert host_key in console  # cloud-init prints the new host keys on the console, as EC2 shows them
        size = int(run(boot, "df --output=size -B1M / | tail -1"))
        assert 3800 < size <= 4096, f"/ is {size} MiB on a 4096 MiB disk: resizefs did not grow it"
        print(f"[debian] by hand: {boot.times}")
    # Torn down: the namespace (with its bridge and tap), QEMU and the overlay are gone.
    assert not netns.exists(boot.namespace)
    assert not boot.overlay.exists()
    assert subprocess.run(["pgrep", "-f", str(boot.overlay)], capture_output=True).returncode == 1


def _multipart(parts: list[tuple[str, str]]) -> bytes:
    message = MIMEMultipart()
    for subtype, body in parts:
        message.attach(MIMEText(body, subtype))
    return message.as_bytes()


def test_shell_script_and_mime_multipart_user_data(image: BuiltImage) -> None:
    """Two guests at once: one with a plain "#!" script, one with a multipart of a script and a cloud-config."""
    script = b'#!/bin/sh\necho "script ran as $(id -un) in $(pwd)" > /var/tmp/script.txt\n'
    multipart = _multipart(
        [
            ("x-shellscript", "#!/bin/sh\necho part-one > /var/tmp/part-script.txt\n"),
            ("cloud-config", "#cloud-config\nwrite_files:\n- {path: /var/tmp/part-config.txt, content: part-two}\n"),
        ]
    )

    def boot_and_read(user_data: bytes, command: str) -> tuple[str, int, str]:
        with debian_by_hand(image, user_data=user_data) as boot:
            out = run(boot, command)
            # The ACPI power button (libvirt's shutdown): systemd stops the guest and QEMU exits.
            return out, boot.powerdown(), boot.console()

    with ThreadPoolExecutor(max_workers=2) as pool:
        plain = pool.submit(boot_and_read, script, "cat /var/tmp/script.txt")
        mixed = pool.submit(boot_and_read, multipart, "cat /var/tmp/part-script.txt /var/tmp/part-config.txt")
        out, exit_status, console = plain.result()
        assert out.strip() == "script ran as root in /"
        assert mixed.result()[0].split() == ["part-one", "part-two"]
    assert exit_status == 0 and "reboot: Power down" in console
