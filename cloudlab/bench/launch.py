"""Launch time (issue 13): RunInstances → boot marker and → SSH answering, for instances restored from a
booted template against cold boots of the same image and size, measured side by side in one run.

Two clouds run at once, each with one node and a direct network, one started ``--launch restore`` and
one ``--launch boot``; after one uncounted launch each, launches alternate between them (restore, boot,
restore, ...), one instance at a time, so a busy host slows both alike. Each instance's console says how
it started; a "restored" launch that was booted cold (no template yet) is counted as what it was. The
figures are medians of ``repeats`` and the ratio cold ÷ restored, and each idle instance's QEMU memory
(RSS and PSS), and in the burst the PSS summed over all its QEMUs per instance: a restored guest maps the
template's RAM file copy-on-write, so pages it only reads are shared with its siblings (and counted once in
that sum); nothing here asserts a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cloudlab import servicectl
from cloudlab.bench.stats import summarise
from cloudlab.config import CloudConfig
from cloudlab.guest import DEBIAN_IMAGE_NAME, DEFAULT_IMAGE_NAME, LAUNCH_MARKER, has_booted
from cloudlab.images.cached import default_cache_dir, find_built_image
from cloudlab.nc.templates import find_template
from cloudlab.paths import StateLayout
from cloudlab.reach import Unreachable, instance_remote
from cloudlab.waiting import WaitTimeout, wait_until

MODES = ("restore", "boot")
KEY_NAME = "bench-launch"
GROUP_NAME = "bench-launch"
IDLE_S = 1.0  # after SSH answered, before the instance's memory is read


#: The images the benchmark launches (``--launch-image``): the cached image's name, the cloud's image name,
#: and the target RunInstances → SSH answering of a restored launch (issue 13).
IMAGES = {"default": ("default", DEFAULT_IMAGE_NAME, 1.0), "debian": ("debian", DEBIAN_IMAGE_NAME, 2.0)}


def _prepare(cloud: Any, image_name: str = DEFAULT_IMAGE_NAME) -> tuple[str, str]:
    """A key pair and a group that lets SSH in: what every measured launch uses; the image's id."""
    ec2 = cloud.ec2
    ec2.create_key_pair(KeyName=KEY_NAME, KeyType="ed25519")
    group = ec2.create_security_group(GroupName=GROUP_NAME, Description="ssh for the launch benchmark")["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=group, IpProtocol="tcp", FromPort=22, ToPort=22, CidrIp="0.0.0.0/0")
    found = ec2.describe_images(Filters=[{"Name": "name", "Values": [image_name]}])["Images"]
    if not found:
        raise RuntimeError(f"the cloud has no {image_name}: build it first ('cloudlab image build debian')")
    return found[0]["ImageId"], group


def qemu_memory_kib(instance_id: str) -> dict[str, int]:
    """Resident and proportional memory (KiB) of the QEMU that runs ``instance_id`` (``smaps_rollup``;
    PSS counts pages shared with other processes once overall, so shared template pages would show)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if f"guest={instance_id},".encode() not in (entry / "cmdline").read_bytes():
                continue
            fields = dict(line.split(":", 1) for line in (entry / "smaps_rollup").read_text().splitlines()[1:])
        except (OSError, ValueError):
            continue
        return {"rss_kib": int(fields["Rss"].split()[0]), "pss_kib": int(fields["Pss"].split()[0])}
    return {}


def launch_once(cloud: Any, image: str, group: str, timeout_s: float = 120) -> dict[str, Any]:
    """One instance: seconds from the RunInstances call to the boot marker and to ``ssh true`` succeeding."""
    ec2 = cloud.ec2
    started = time.monotonic()
    reply = ec2.run_instances(
        ImageId=image, MinCount=1, MaxCount=1, InstanceType="t2.micro", KeyName=KEY_NAME, SecurityGroupIds=[group]
    )
    instance_id = reply["Instances"][0]["InstanceId"]
    try:
        console = wait_until(
            lambda: (
                (text := ec2.get_console_output(InstanceId=instance_id).get("Output") or "")
                and has_booted(text)
                and text
            ),
            timeout_s,
            what=f"{instance_id}'s boot marker",
            interval_s=0.05,
        )
        marker_s = time.monotonic() - started
        remote = wait_until(
            lambda: instance_remote(cloud, instance_id), 30, what=f"{instance_id} running", ignore=(Unreachable,)
        )
        remote.connect_timeout = 2
        wait_until(
            lambda: remote.run("true", timeout=10).returncode == 0,
            timeout_s,
            what=f"SSH answering on {instance_id}",
            interval_s=0.05,
        )
        ssh_s = time.monotonic() - started
        time.sleep(IDLE_S)
        memory = qemu_memory_kib(instance_id)
    finally:
        ec2.terminate_instances(InstanceIds=[instance_id])
        cloud.wait_state([instance_id], "terminated", timeout=60)
    line = next((ln for ln in console.splitlines() if ln.startswith(LAUNCH_MARKER)), "")
    return {
        "instance": instance_id,
        "marker_s": round(marker_s, 4),
        "ssh_s": round(ssh_s, 4),
        "started_by": "restore" if "restored from template" in line else "boot",
        **memory,
        "launch_line": line.strip(),
    }


def launch_burst(cloud: Any, image: str, group: str, count: int, timeout_s: float = 300) -> dict[str, Any]:
    """``count`` instances in one RunInstances: seconds until every boot marker, and until every SSH answers."""
    ec2 = cloud.ec2
    started = time.monotonic()
    reply = ec2.run_instances(
        ImageId=image,
        MinCount=count,
        MaxCount=count,
        InstanceType="t2.micro",
        KeyName=KEY_NAME,
        SecurityGroupIds=[group],
    )
    ids = [i["InstanceId"] for i in reply["Instances"]]
    booted: set[str] = set()
    consoles: dict[str, str] = {}

    def all_booted() -> bool:
        for instance_id in set(ids) - booted:
            text = ec2.get_console_output(InstanceId=instance_id).get("Output") or ""
            if has_booted(text):
                booted.add(instance_id)
                consoles[instance_id] = text
        return len(booted) == count

    def answers(instance_id: str) -> bool:
        try:
            remote = instance_remote(cloud, instance_id)
        except Unreachable:
            return False
        remote.connect_timeout = 2
        return remote.run("true", timeout=10).returncode == 0

    try:
        wait_until(all_booted, timeout_s, what=f"{count} boot markers", interval_s=0.1)
        marker_s = time.monotonic() - started
        for instance_id in ids:  # one after the other: the last to answer ends the wait
            wait_until(lambda i=instance_id: answers(i), timeout_s, what=f"SSH on {instance_id}", interval_s=0.1)
        ssh_s = time.monotonic() - started
        time.sleep(IDLE_S)
        memory = [qemu_memory_kib(instance_id) for instance_id in ids]
    finally:
        ec2.terminate_instances(InstanceIds=ids)
        cloud.wait_state(ids, "terminated", timeout=120)
    restored = sum("restored from template" in text for text in consoles.values())
    read = [m for m in memory if m]
    return {
        "count": count,
        "all_marker_s": round(marker_s, 3),
        "all_ssh_s": round(ssh_s, 3),
        "restored": restored,
        # PSS divides each shared page among the processes that map it, so the sum over all the burst's
        # QEMUs counts the template's pages once: the sum over the count is the cost of one more instance
        "idle_pss_mib_per_instance": round(sum(m["pss_kib"] for m in read) / 1024 / max(1, len(read)), 1),
        "idle_rss_mib_per_instance": round(sum(m["rss_kib"] for m in read) / 1024 / max(1, len(read)), 1),
    }


def run_launch_benchmark(
    workdir: Path,
    repeats: int = 10,
    progress: Callable[[str], None] | None = None,
    burst: int = 20,
    image: str = "default",
) -> dict:
    """Restore against cold boot of ``image`` (default or debian), interleaved; per-launch rows and the
    medians' ratio. A node builds the default image's template when it starts, cloudlab-debian's after its
    first launch (uncounted, as each cloud's first is anyway)."""
    from cloudlab.client import connect

    say = progress or (lambda _m: None)
    cache_name, image_name, target_s = IMAGES[image]
    built = find_built_image(name=cache_name)
    if built is None or built.ramdisk is None:
        raise RuntimeError(f"the {cache_name} image is not built: run 'cloudlab image build {cache_name}'")
    layouts = {mode: StateLayout(workdir / f"launch-{mode}") for mode in MODES}
    clouds: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    try:
        for mode, layout in layouts.items():
            # room for the burst: each idle instance holds its t2.micro's 256 MiB and 1 vCPU
            config = CloudConfig(
                api_port=0,
                network="direct",
                launch=mode,
                node_vcpus=max(4, burst),
                node_memory_mb=max(1024, 256 * burst),
            )
            servicectl.up(layout, config, timeout_s=180)
            clouds[mode] = connect(str(layout.root), progress=False)
        prepared = {mode: _prepare(cloud, image_name) for mode, cloud in clouds.items()}
        if built.disk is not None:  # no template at start: the first launch has it built
            for mode in MODES:
                launch_once(clouds[mode], *prepared[mode], timeout_s=600)
        say("launch: waiting for the restore cloud's node to build its template")
        started = time.monotonic()
        template = wait_until(
            lambda: find_template(
                default_cache_dir() / "templates", built.kernel, built.ramdisk, nic=True, memory_mb=256, disk=built.disk
            ),
            600,
            what="the template",
            interval_s=0.5,
        )
        say(f"launch: template {template['name']} ready ({time.monotonic() - started:.1f} s waited)")
        for mode in MODES if built.disk is None else ():  # each cloud's first launch also sets up its
            launch_once(clouds[mode], *prepared[mode], timeout_s=300)  # network's gateway: not counted
        for repeat in range(repeats):
            for mode in MODES:
                image, group = prepared[mode]
                try:
                    row = launch_once(clouds[mode], image, group, timeout_s=300)
                except WaitTimeout as exc:  # a busy host: one launch missing, not the whole run
                    say(f"launch {mode} {repeat + 1}/{repeats}: {exc}")
                    continue
                rows.append({"mode": mode, "repeat": repeat, **row})
                say(
                    f"launch {mode} {repeat + 1}/{repeats}: marker {row['marker_s']:.2f} s, ssh {row['ssh_s']:.2f} s"
                    f" ({row['started_by']})"
                )
        bursts = {}
        for mode in MODES if burst else ():
            try:
                bursts[mode] = launch_burst(clouds[mode], *prepared[mode], burst)
            except WaitTimeout as exc:  # a busy host: the launches' figures are kept, the burst says why not
                bursts[mode] = {"count": burst, "error": str(exc)}
                say(f"launch {mode}: {burst} at once did not finish: {exc}")
                continue
            say(
                f"launch {mode}: {burst} at once, all markers {bursts[mode]['all_marker_s']:.1f} s, all SSH "
                f"{bursts[mode]['all_ssh_s']:.1f} s ({bursts[mode]['restored']} restored)"
            )
    finally:
        for layout in layouts.values():
            servicectl.down(layout)
    result: dict[str, Any] = {"repeats": repeats, "template": template["name"], "template_build_s": template["build_s"]}
    result |= {"image": image_name, "target_restored_ssh_s": target_s}
    result["burst"] = bursts
    for mode in MODES:
        mine = [r for r in rows if r["mode"] == mode]
        result[mode] = {
            "marker_s": summarise([r["marker_s"] for r in mine]),
            "ssh_s": summarise([r["ssh_s"] for r in mine]),
            "started_as_asked": sum(r["started_by"] == mode for r in mine),
            "idle_rss_mib": summarise([r["rss_kib"] / 1024 for r in mine if "rss_kib" in r]),
            "idle_pss_mib": summarise([r["pss_kib"] / 1024 for r in mine if "pss_kib" in r]),
        }
    for what in ("marker_s", "ssh_s"):
        medians = [result[mode][what].get("median") for mode in ("boot", "restore")]
        result[f"ratio_boot_to_restore_{what[:-2]}"] = round(medians[0] / medians[1], 3) if all(medians) else None
    result["rows"] = rows
    return result


def report_lines(result: dict[str, Any]) -> list[str]:
    restore, boot = result["restore"], result["boot"]
    n = result["repeats"]
    bursts = result.get("burst") or {}
    extra = []
    if all(mode in bursts and "error" not in bursts[mode] for mode in MODES):
        r, b = bursts["restore"], bursts["boot"]
        extra.append(
            f"{r['count']} launched at once, all SSH-ready      {r['all_ssh_s']:7.2f} s  {b['all_ssh_s']:7.2f} s"
            f" (cold boot)   x{b['all_ssh_s'] / r['all_ssh_s']:<6.3f} < 15 s ({r['restored']} restored)"
        )
        if "idle_pss_mib_per_instance" in r:
            extra.append(
                f"  idle memory per instance of the {r['count']} (PSS summed / count, shared pages once)"
                f" {r['idle_pss_mib_per_instance']:6.1f} MiB restored, {b['idle_pss_mib_per_instance']:.1f} MiB cold"
                f" (RSS {r['idle_rss_mib_per_instance']:.0f} / {b['idle_rss_mib_per_instance']:.0f} MiB)"
            )
    target = result.get("target_restored_ssh_s", 1.0)
    return [
        f"{result.get('image', DEFAULT_IMAGE_NAME)}: RunInstances→SSH answering, restored (median)"
        f"  {restore['ssh_s']['median']:7.2f} s  {boot['ssh_s']['median']:7.2f} s (cold boot)"
        f"   x{result['ratio_boot_to_restore_ssh']!s:<6} < {target:g} s, ≥ 4×",
        f"RunInstances→boot marker, restored (median)    {restore['marker_s']['median']:7.2f} s"
        f"  {boot['marker_s']['median']:7.2f} s (cold boot)   x{result['ratio_boot_to_restore_marker']!s:<6}",
        f"  launches started as asked: restore {restore['started_as_asked']}/{n}, boot {boot['started_as_asked']}/{n}",
        f"idle instance's QEMU, restored (median RSS/PSS) {restore['idle_rss_mib'].get('median', 0):6.0f}/"
        f"{restore['idle_pss_mib'].get('median', 0):.0f} MiB, cold boot {boot['idle_rss_mib'].get('median', 0):.0f}/"
        f"{boot['idle_pss_mib'].get('median', 0):.0f} MiB",
        *extra,
    ]
