"""Following instances through their phases: the one loop behind every wait of the client.

A launch goes pending → running → booted (the console shows the guest's boot marker); an instance that
is stopped or terminated goes through EC2's own states. :func:`watch` asks EC2 (one DescribeInstances
for the instances whose state it still needs, then the console of those running) until each has reached
``until``, on ``cloudlab.waiting.wait_until``: the client's ``wait``, ``wait_booted``, ``wait_state``
the launcher's progress bars and the boot benchmark are all this loop. It takes a plain boto3 EC2 client, so it knows
nothing of the client's classes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from cloudlab.guest import BOOT_MARKER, has_booted
from cloudlab.waiting import WaitTimeout, wait_until

#: How an instance's launch progresses, as the launcher's progress bars count it.
PHASES = ("pending", "running", "booted")
#: The states an instance reaches when it ends or stops, from which it does not come back by itself.
ENDED = ("shutting-down", "terminated", "stopping", "stopped")

OnChange = Callable[[str, str, float], None]


def cannot_reach(state: str, until: str) -> bool:
    """Whether an instance in ``state`` will not reach ``until`` by waiting (it ended or stopped first)."""
    if until in PHASES:
        return state in ENDED
    if until in ("stopping", "stopped"):
        return state in ("shutting-down", "terminated")
    return False


def boot_uptime(console: str) -> float | None:
    """The guest's uptime in seconds as its boot-marker line states it (``uptime=3.21``), if it does."""
    for line in console.splitlines():
        if line.startswith(BOOT_MARKER):
            for word in line.split():
                if word.startswith("uptime="):
                    try:
                        return float(word.split("=", 1)[1])
                    except ValueError:
                        return None
    return None


def console(ec2: Any, instance_id: str) -> str:
    """The instance's console output so far (empty when there is none yet)."""
    return ec2.get_console_output(InstanceId=instance_id).get("Output") or ""


def states(ec2: Any, instance_ids: Iterable[str]) -> dict[str, str]:
    """Instance id → its EC2 state name, in one DescribeInstances (nothing asked for: nothing)."""
    ids = list(instance_ids)
    if not ids:
        return {}
    found = ec2.describe_instances(InstanceIds=ids)
    return {i["InstanceId"]: i["State"]["Name"] for r in found["Reservations"] for i in r["Instances"]}


def watch(
    ec2: Any,
    instance_ids: Iterable[str],
    until: str = "booted",
    timeout: float = 180.0,
    poll: float = 0.5,
    on_change: OnChange | None = None,
    stop: threading.Event | None = None,
) -> dict[str, dict[str, float]]:
    """Follow instances until each has reached ``until``: ``"booted"`` or an EC2 state name.

    ``on_change(instance_id, phase, seconds)`` is called as each one reaches a phase: those of
    :data:`PHASES`, any other state it is seen in on the way to a state outside them, or ``"failed"``
    when it ends before (then RuntimeError). Returns per instance the seconds from this call to each
    phase reached. Raises TimeoutError naming the laggards; returns early (what was reached) once
    ``stop`` is set.
    """
    ids = [str.__str__(i) for i in instance_ids]
    started = time.monotonic()
    reached: dict[str, dict[str, float]] = {i: {} for i in ids}

    def note(instance_id: str, phase: str) -> None:
        if phase not in reached[instance_id]:
            seconds = round(time.monotonic() - started, 2)
            reached[instance_id][phase] = seconds
            if on_change is not None:
                on_change(instance_id, phase, seconds)

    def laggards() -> list[str]:
        return sorted(i for i in ids if until not in reached[i])

    def all_there() -> bool:
        if stop is not None and stop.is_set():
            return True
        # once running, a guest on its way to "booted" is followed on its console alone (one call fewer)
        asked = [i for i in laggards() if until != "booted" or "running" not in reached[i]]
        for instance_id, state in states(ec2, asked).items():
            if cannot_reach(state, until):
                note(instance_id, "failed")
                raise RuntimeError(f"{instance_id} is {state} before it was {until}")
            if state in ("pending", "running") and until in PHASES:
                note(instance_id, "pending")
            note(instance_id, state)
        if until == "booted":
            for instance_id in [i for i in laggards() if "running" in reached[i]]:
                if has_booted(console(ec2, instance_id)):
                    note(instance_id, "booted")
        return not laggards()

    try:
        wait_until(all_there, timeout, what=f"{until}", interval_s=poll, sleep=stop.wait if stop else time.sleep)
    except WaitTimeout:
        raise TimeoutError(f"not {until} within {timeout:.0f} s: {laggards()}") from None
    return reached
