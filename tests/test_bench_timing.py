"""The benchmark timer alternates its contenders and repeats short calls within a round (on a fake
clock: what it computes is checked, never how long anything takes)."""

import pytest
import torch

from scripts import common
from scripts.common import calls_per_round, interleaved, spread


@pytest.fixture
def fake_clock(monkeypatch):
    """A clock that moves only when a contender runs: each call advances it by that contender's cost."""
    now = [0.0]
    monkeypatch.setattr(common.time, "perf_counter", lambda: now[0])
    return now


def test_interleaved_changes_the_order_and_reports_the_mean_per_call(fake_clock):
    log = []

    def contender(name, seconds):
        def call():
            log.append(name)
            fake_clock[0] += seconds

        return call

    contenders = {"short": contender("short", 0.002), "long": contender("long", 0.03)}
    times, calls = interleaved(contenders, rounds=4, device=torch.device("cpu"), min_time=0.02)
    assert calls == {"short": 10, "long": 1}  # ceil(0.02 / 0.002), and one call of 0.03 s fills a round
    assert times == {"short": [pytest.approx(0.002)] * 4, "long": [pytest.approx(0.03)] * 4}  # per call, not per round
    short, long = ["short"] * 10, ["long"]
    assert log[:4] == ["short", "short", "long", "long"]  # a warm-up and a timed call each
    rounds = [log[4:15], log[15:26], log[26:37], log[37:48]]
    assert all(sorted(r) == sorted(short + long) for r in rounds)  # every contender in every round
    firsts = [r[0] for r in rounds]
    assert set(firsts) == {"short", "long"}  # the order changes from round to round
    assert rounds == [long + short, long + short, short + long, long + short]  # seeded: the same in every run
    assert spread(times["long"]) == dict(median_s=pytest.approx(0.03), min_s=pytest.approx(0.03), max_s=pytest.approx(0.03), rounds=4)


def test_calls_per_round():
    assert calls_per_round(0.25, 1.0) == 1
    assert calls_per_round(0.25, 0.05) == 5
    assert calls_per_round(0.25, 0.0) >= 1
