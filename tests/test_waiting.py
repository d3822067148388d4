"""The one wait helper: returns the condition's answer, times out with what it saw, never over-waits."""

from __future__ import annotations

import pytest

from cloudlab.waiting import WaitTimeout, wait_until


class FakeClock:
    """Sleeps that only move a counter, so the test never waits and never depends on speed."""

    def __init__(self) -> None:
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


def test_returns_the_first_truthy_answer() -> None:
    answers = iter([None, 0, "", "ready"])
    clock = FakeClock()
    assert wait_until(lambda: next(answers), 10, sleep=clock.sleep) == "ready"
    assert len(clock.slept) == 3


def test_times_out_with_the_last_answer() -> None:
    states = iter(["pending", "pending", "stopping"])
    clock = FakeClock()
    with pytest.raises(WaitTimeout) as excinfo:
        wait_until(lambda: next(states) == "running" and "running", 0, what="running", sleep=clock.sleep)
    assert excinfo.value.what == "running"
    assert excinfo.value.last is False
    assert clock.slept == []  # a zero timeout asks once and does not sleep


def test_timeout_message_names_what_and_last_value() -> None:
    with pytest.raises(WaitTimeout, match=r"instance running did not happen within 0 s \(last seen: \[\]\)"):
        wait_until(list, 0, what="instance running")


def test_ignored_errors_count_as_misses() -> None:
    calls = {"n": 0}

    def flaky() -> int:
        calls["n"] += 1
        if calls["n"] < 3:
            raise ConnectionRefusedError("not yet")
        return calls["n"]

    assert wait_until(flaky, 10, ignore=(OSError,), sleep=FakeClock().sleep) == 3


def test_unexpected_errors_propagate() -> None:
    def broken() -> None:
        raise ValueError("bug")

    with pytest.raises(ValueError, match="bug"):
        wait_until(broken, 10, ignore=(OSError,), sleep=FakeClock().sleep)


def test_backoff_doubles_up_to_the_bound() -> None:
    answers = iter([False] * 5 + [True])
    clock = FakeClock()
    wait_until(lambda: next(answers), 100, interval_s=0.1, max_interval_s=0.5, sleep=clock.sleep)
    assert clock.slept == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])


def test_last_error_is_reported_on_timeout() -> None:
    def refused() -> None:
        raise ConnectionRefusedError("refused")

    with pytest.raises(WaitTimeout) as excinfo:
        wait_until(refused, 0, ignore=(OSError,))
    assert isinstance(excinfo.value.last, ConnectionRefusedError)
