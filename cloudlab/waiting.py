"""One way to wait: poll a condition until it holds or a deadline passes.

Controllers, the client, benchmarks and tests all wait for something (a port to answer, a VM to reach a
state, a process to exit). Each hand-rolled deadline loop had its own off-by-one and its own error text;
this one says what it waited for and what it saw last, and never waits past its deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(TimeoutError):
    """The condition did not hold in time; ``last`` is the condition's last answer (or error)."""

    def __init__(self, what: str, timeout_s: float, last: object = None) -> None:
        detail = f" (last seen: {last!r})" if last is not None else ""
        super().__init__(f"{what} did not happen within {timeout_s:g} s{detail}")
        self.what = what
        self.timeout_s = timeout_s
        self.last = last


def wait_until(
    condition: Callable[[], T],
    timeout_s: float,
    *,
    what: str = "the condition",
    interval_s: float = 0.1,
    max_interval_s: float | None = None,
    ignore: tuple[type[BaseException], ...] = (),
    sleep: Callable[[float], object] = time.sleep,
) -> T:
    """Call ``condition`` until it returns something truthy, and return that.

    ``interval_s`` is the pause between calls; with ``max_interval_s`` the pause doubles after each
    miss up to that bound (for conditions that are expensive to ask). Exceptions in ``ignore`` count
    as a miss. The condition is always asked at least once and once more at the deadline, so a
    condition that holds by then is never reported as a timeout. ``sleep`` may be an ``Event.wait``
    to make the wait interruptible.
    """
    deadline = time.monotonic() + timeout_s
    pause = interval_s
    last: object = None
    while True:
        try:
            result = condition()
        except ignore as exc:
            result, last = None, exc  # type: ignore[assignment]
        else:
            if result:
                return result
            last = result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeout(what, timeout_s, last)
        sleep(min(pause, remaining))
        if max_interval_s is not None:
            pause = min(pause * 2, max_interval_s)
