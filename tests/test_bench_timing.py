"""The benchmark timer alternates its contenders and repeats short calls within a round."""

import time

import torch

from scripts.common import calls_per_round, interleaved, spread


def test_interleaved_rotates_and_repeats_short_calls():
    log = []

    def contender(name, seconds):
        def call():
            log.append(name)
            time.sleep(seconds)

        return call

    contenders = {"short": contender("short", 0.002), "long": contender("long", 0.03)}
    times, calls = interleaved(contenders, rounds=4, device=torch.device("cpu"), min_time=0.02)
    assert calls["long"] == 1 and calls["short"] >= 5  # 0.02 s / (0.002 s + overhead)
    assert {k: len(v) for k, v in times.items()} == {"short": 4, "long": 4}
    # per-call means, not per-round totals
    assert all(0.002 <= t < 0.02 for t in times["short"]) and all(t >= 0.03 for t in times["long"])
    k = calls["short"]
    short, long = ["short"] * k, ["long"]
    assert log[4:] == short + long + long + short + short + long + long + short  # the order rotates
    assert spread(times["long"])["rounds"] == 4


def test_calls_per_round():
    assert calls_per_round(0.25, 1.0) == 1
    assert calls_per_round(0.25, 0.05) == 5
    assert calls_per_round(0.25, 0.0) >= 1
