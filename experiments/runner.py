"""The one path from a config to tables and figures, shared by every figure experiment.

An experiment declares what it computes (`Experiment`): how its config is checked, what its jobs
share (data, limiting kernels), its jobs (one network, one kernel, ...) and how their tables are
assembled into the final ones. `run_experiment` does the rest, the same way for all of them:

  1. check the config (every range, before any work or any write);
  2. prepare the shared state; run every job whose parts are missing (`Parts`: each finished job
     is saved atomically under out_dir/.parts/<config key>/, so a rerun resumes), timing each;
  3. assemble the final tables; write them, the resolved config and the provenance (command, git
     revision, device, dtypes, wall time, per-job times, the GEMM rate at start and end);
  4. render the figures with the experiment's registered renderer (`experiments.figures`);
  5. remove the parts.

The drift sweep is the exception: each of its jobs is a separate Hydra process (possibly on another
node), so it writes one file per job and its tables are assembled when the multirun ends
(`experiments.drift`), with the same atomic writes, provenance and renderer registry.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from experiments.common import Parts, network_jobs, run_start, write_outputs
from experiments.figures import render
from experiments.provenance import gemm_gflops
from ntk.utils import resolve_device

Tables = dict[str, pd.DataFrame]


@dataclass(frozen=True)
class Experiment:
    """What one experiment computes.

    Attributes:
        name: the experiment name (configs/exp/<name>.yaml, and its renderer's key).
        check: raises a one-line ValueError for any value out of range.
        prepare: cfg -> state shared by all jobs (data, limits, ...).
        jobs: (cfg, shared) -> [(job name, function(checkpoint=...) -> {table: DataFrame})], in run
            order; `checkpoint` is the job's `Checkpoint` (None unless cfg has checkpoint_minutes).
        tables: the tables every job returns; the first one marks the job as done.
        assemble: (cfg, shared, job tables) -> the final tables (default: the job tables).
        provenance: (cfg, shared) -> extra provenance fields.
        desc: progress-bar label.
    """

    name: str
    check: Callable[[DictConfig], None]
    prepare: Callable[[DictConfig], Any]
    jobs: Callable[[DictConfig, Any], list[tuple[str, Callable[..., Tables]]]]
    tables: tuple[str, ...]
    assemble: Callable[[DictConfig, Any, Tables], Tables] | None = None
    provenance: Callable[[DictConfig, Any], dict] = field(default=lambda cfg, shared: {})
    desc: str = "networks (width, seed)"


def per_network(job: Callable[..., Tables]) -> Callable[[DictConfig, Any], list[tuple[str, Callable[..., Tables]]]]:
    """The jobs of an experiment that trains one network per (width, seed): job(cfg, shared, width, seed, checkpoint=)."""
    return lambda cfg, shared: [(name, partial(job, cfg, shared, w, s)) for name, w, s in network_jobs(cfg)]


def run_experiment(exp: Experiment, cfg: DictConfig) -> Tables:
    """Run `exp` as configured (the steps of the module docstring); return its final tables."""
    exp.check(cfg)
    start = run_start()
    device = resolve_device(cfg.device)
    gemm_start = gemm_gflops(device=device, rounds=3)
    shared = exp.prepare(cfg)
    parts = Parts(cfg)
    timings: dict[str, float] = {}

    def timed(name: str, fn: Callable[..., Tables]) -> Tables:
        begin = time.time()
        minutes = cfg.get("checkpoint_minutes")  # experiments with long networks checkpoint them mid-training
        out = fn(checkpoint=parts.checkpoint(name, minutes) if minutes is not None else None)
        timings[name] = round(time.time() - begin, 1)
        return out

    jobs = {name: partial(timed, name, fn) for name, fn in exp.jobs(cfg, shared)}
    tables = parts.run(jobs, exp.tables, exp.desc, cfg.progress)
    if exp.assemble is not None:
        tables = exp.assemble(cfg, shared, tables)
    out = write_outputs(
        cfg,
        tables,
        start,
        device=str(device),
        dtype=cfg.dtype,
        kernel_dtype=cfg.kernel_dtype,
        jobs=len(jobs),
        resumed_jobs=parts.resumed,
        job_wall_time_s=timings,
        gemm_gflops_float32=dict(start=gemm_start, end=gemm_gflops(device=device, rounds=3)),
        **exp.provenance(cfg, shared),
    )
    render(exp.name, out)
    parts.clear()
    return tables
