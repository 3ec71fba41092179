"""Shared helpers for scripts: key=value arguments and benchmark tables."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from experiments.persistence import atomic_write_json, atomic_write_text, provenance
from ntk.utils import synchronize
from scripts.arguments import parse_kv  # noqa: F401  (re-exported: the scripts import it from here)

BENCH_DIR = Path("results/bench")


class Worker:
    """A benchmark worker in another environment (`python script --worker`) that answers one JSON line
    per request line; `request(*fields)` sends the fields and returns the reply (exits with one line
    if the worker has stopped)."""

    def __init__(self, python: str, script: str, what: str) -> None:
        self.python, self.what = python, what
        self.proc = subprocess.Popen([python, script, "--worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/")

    def request(self, *fields: object) -> dict:
        self.proc.stdin.write(" ".join(map(str, fields)) + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        if not reply:
            sys.exit(f"error: the {self.what} worker ({self.python}) stopped; is {self.what} installed there?")
        return json.loads(reply)

    def close(self, timeout: float = 120) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=timeout)


def write_bench(table: pd.DataFrame, name: str, argv: list[str], out_dir: Path = BENCH_DIR) -> None:
    """Print `table`, write it as CSV and markdown under results/bench with provenance beside it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = table.to_markdown(index=False, floatfmt=".4g")
    print(md)
    atomic_write_text(out_dir / f"{name}.csv", table.to_csv(index=False))
    atomic_write_text(out_dir / f"{name}.md", md + "\n")
    module = sys.modules["__main__"].__spec__.name if getattr(sys.modules["__main__"], "__spec__", None) else f"scripts.bench_{name}"
    prov = provenance(command=["python", "-m", module, *argv])
    atomic_write_json(out_dir / f"{name}.provenance.json", prov)


def interleaved(
    contenders: dict[str, Callable[[], object]], rounds: int, device: torch.device, min_time: float = 0.25
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Wall time per call of every contender over `rounds` rounds, alternating them within each
    round: on a shared machine whose speed drifts, every contender sees the same conditions. Each
    round takes its own order (a seeded shuffle, rotated by the round's number), so that no
    contender always follows the same one: a heavy contender (a first call that allocates and frees
    a lot) would otherwise leave its wake on the same neighbour in every round.

    After a warm-up call, one timed call per contender sets its calls per round, enough to last
    `min_time` seconds (`calls_per_round`), so that a round of a 20 ms kernel is not one sample of
    the scheduler's noise; a round's time is the mean over its calls.

    Returns:
        The times per contender (one per round) and the calls per round of each.
    """
    names = list(contenders)
    calls = {}
    for name in names:
        contenders[name]()
        synchronize(device)
        start = time.perf_counter()
        contenders[name]()
        synchronize(device)
        calls[name] = calls_per_round(min_time, time.perf_counter() - start)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = random.Random(r).sample(names, len(names))
        for name in order[r % len(names) :] + order[: r % len(names)]:
            start = time.perf_counter()
            for _ in range(calls[name]):
                contenders[name]()
            synchronize(device)
            times[name].append((time.perf_counter() - start) / calls[name])
    return times, calls


def calls_per_round(min_time: float, seconds: float) -> int:
    """Calls that make a round of a `seconds`-long call last at least `min_time` seconds."""
    return max(1, math.ceil(min_time / max(seconds, 1e-9)))


def spread(times: list[float]) -> dict[str, float]:
    """Median, min and max of a list of times (the columns every comparing benchmark reports)."""
    return dict(median_s=float(np.median(times)), min_s=float(min(times)), max_s=float(max(times)), rounds=len(times))


def aggregate_sweep(aggregate, default_dir: str, argv: list[str]) -> None:
    """`python -m scripts.aggregate_<sweep> [dir=...]`: run a sweep's `aggregate(run_dir)` on its
    finished jobs (also a half-finished sweep) and print its fits; a directory without jobs is a
    one-line error."""
    args = parse_kv(argv, dict(dir=default_dir))
    try:
        out = aggregate(Path(args["dir"]))
    except FileNotFoundError as err:
        sys.exit(f"error: {err}")
    print(out["fits"].to_string(index=False))
