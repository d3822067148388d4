"""EC2's instance state machine, as the cloud controller enforces it."""

from __future__ import annotations

from cloudlab.errors import CloudError

STATE_CODES = {"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48, "stopping": 64, "stopped": 80}

TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"running", "shutting-down", "terminated"}),
    "running": frozenset({"shutting-down", "terminated", "stopping"}),
    "shutting-down": frozenset({"terminated"}),
    "stopping": frozenset({"stopped", "terminated"}),
    "stopped": frozenset({"pending", "shutting-down", "terminated"}),
    "terminated": frozenset(),
}

LIVE_STATES = ("pending", "running", "shutting-down", "stopping")

# EC2's state reasons (StateReason.Code / Message)
REASON_USER_TERMINATED = "Client.UserInitiatedShutdown: User initiated shutdown"
REASON_GUEST_SHUTDOWN = "Client.InstanceInitiatedShutdown: Instance initiated shutdown"


def check_transition(instance_id: str, current: str, new: str) -> None:
    """Raise ``IncorrectInstanceState`` for a move EC2 would not make."""
    if new not in TRANSITIONS.get(current, frozenset()):
        raise CloudError(
            "IncorrectInstanceState",
            f"The instance '{instance_id}' is not in a state from which it can move to {new} (it is {current})",
        )
