"""The fixed window counted in this process (ratelimit.FixedWindows), on a clock the test moves."""

import limits
import pytest

from baywheels.ratelimit import FixedWindows


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr("baywheels.ratelimit.time.time", lambda: now[0])
    return now


def test_a_window_refuses_past_its_amount_until_it_ends(clock: list[float]) -> None:
    windows, item = FixedWindows(), limits.parse("3/second")
    assert [windows.hit(item, "worker", 0, "k")[0] for _ in range(3)] == [True, True, True]
    # Refused requests count too: the remaining goes below zero, the end stays.
    assert windows.hit(item, "worker", 0, "k") == (False, 1001.0, -1)
    assert windows.hit(item, "worker", 0, "other") == (True, 1001.0, 2)  # each caller has its own window
    clock[0] = 1000.5
    assert windows.hit(item, "worker", 0, "k")[0] is False
    clock[0] = 1001.0
    assert windows.hit(item, "worker", 0, "k") == (True, 1002.0, 2)


def test_the_windows_of_callers_gone_quiet_are_forgotten(clock: list[float]) -> None:
    windows, item = FixedWindows(), limits.parse("1/minute")
    windows.PRUNE_ABOVE = 10
    for caller in range(11):
        windows.hit(item, "anonymous", 0, f"10.0.0.{caller}")
    clock[0] += 61
    assert windows.hit(item, "anonymous", 0, "10.0.0.99")[0]
    # Their windows had ended: each of them may come back at once, and only the new caller is remembered.
    assert len(windows._windows) == 1
    assert windows.hit(item, "anonymous", 0, "10.0.0.1")[0]
