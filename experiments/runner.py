"""Experiments: how one is declared, found, and run from a config to tables and figures.

An experiment is three files and a test, found by their names (no list of experiments exists):
  configs/exp/<name>.yaml          its values (and the command that runs it, on its second line);
  experiments/<name>.py            `EXPERIMENT = Experiment(...)`: its schema, checks, jobs, tiny settings;
  experiments/figures/<name>.py    `render(run_dir)`, its figures from the saved tables;
  tests/test_<name>.py             its tiny run checked against an independent computation.
`experiment_names` lists configs/exp, `load_experiment` imports the module of one, and
`register_schemas` puts every experiment's schema into Hydra's config store (as exp_schema/<name>,
which its YAML file starts from).

An experiment declares what it computes (`Experiment`): how its config is checked, what its jobs
share (data, limiting kernels), its jobs (one network, one kernel, ...) and how their tables are
assembled into the final ones. `run_experiment` does the rest, the same way for all of them:

  1. check the config (every range, before any work or any write);
  2. prepare the shared state; run every job whose parts are missing (`Parts`: each finished job
     is saved atomically under out_dir/.parts/<config key>/, so a rerun resumes), timing each;
  3. assemble the final tables; write them, the resolved config and the provenance (command, git
     revision, device, dtypes, wall time, per-job times, the GEMM rate at start and end);
  4. render the figures with the experiment's renderer (`experiments/figures/<name>.py`);
  5. remove the parts.

The drift sweep is the exception: each of its jobs is a separate Hydra process (possibly on another
node), so it declares its own `entry` (one job), writes one file per job, and its tables are
assembled when the multirun ends (`experiments.drift_sweep`), with the same atomic writes,
provenance and renderers.
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from experiments.figures import render
from experiments.persistence import Parts, gemm_gflops, run_start, show_progress, write_outputs
from experiments.training import network_jobs
from ntk.planning import reproducible_auto
from ntk.utils import resolve_device

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

Tables = dict[str, pd.DataFrame]


@dataclass(frozen=True)
class Experiment:
    """What one experiment computes.

    Attributes:
        name: the experiment name: configs/exp/<name>.yaml, experiments/<name>.py, experiments/figures/<name>.py.
        check: raises a one-line ValueError for any value out of range.
        prepare: cfg -> state shared by all jobs (data, limits, ...).
        jobs: (cfg, shared) -> [(job name, function(checkpoint=...) -> {table: DataFrame})], in run
            order; `checkpoint` is the job's `Checkpoint` (None unless cfg has checkpoint_minutes).
        tables: the tables every job returns; the first one marks the job as done.
        assemble: (cfg, shared, job tables) -> the final tables (default: the job tables).
        provenance: (cfg, shared) -> extra provenance fields.
        desc: progress-bar label.
        schema: the dataclass of the keys the experiment adds to the config (types only: the values
            are in its YAML file), registered as exp_schema/<name>.
        tiny: command-line overrides that make the full run a tiny one (seconds on a CPU, every code
            path): the determinism test and the GPU check run them.
        result: the table `run` returns.
        entry: cfg -> result, for an experiment that does not go through `run_experiment` (the drift
            sweep's one job); prepare, jobs and tables are then unused (check still runs first).
    """

    name: str
    check: Callable[[DictConfig], None] | None = None
    prepare: Callable[[DictConfig], Any] | None = None
    jobs: Callable[[DictConfig, Any], list[tuple[str, Callable[..., Tables]]]] | None = None
    tables: tuple[str, ...] = ("table",)
    assemble: Callable[[DictConfig, Any, Tables], Tables] | None = None
    provenance: Callable[[DictConfig, Any], dict] = field(default=lambda cfg, shared: {})
    desc: str = "networks (width, seed)"
    schema: type | None = None
    tiny: tuple[str, ...] = ()
    result: str = "table"
    entry: Callable[[DictConfig], Any] | None = None

    def run(self, cfg: DictConfig) -> Any:
        """Run the experiment as configured; return its `result` table (all tables are written to cfg.out_dir)."""
        if self.entry is not None:
            return self.entry(cfg)
        return run_experiment(self, cfg)[self.result]


def experiment_names() -> list[str]:
    """Every experiment: the files of configs/exp."""
    return sorted(p.stem for p in (CONFIG_DIR / "exp").glob("*.yaml"))


def load_experiment(name: str) -> Experiment:
    """The `EXPERIMENT` of experiments/<name>.py (ValueError for a name that is not in configs/exp)."""
    if name not in experiment_names():
        raise ValueError(f"no experiment chosen (name={name}); add +exp=<name>, allowed: {', '.join(experiment_names())}")
    module = importlib.import_module(f"experiments.{name}")
    exp = getattr(module, "EXPERIMENT", None)
    if not isinstance(exp, Experiment) or exp.name != name:
        raise TypeError(f"experiments/{name}.py must define EXPERIMENT = Experiment(name={name!r}, ...)")
    return exp


def register_schemas(root: type) -> None:
    """Put every experiment's schema, joined with the `root` keys' schema, into Hydra's config store
    as exp_schema/<name> (the first entry of configs/exp/<name>.yaml's defaults)."""
    store = ConfigStore.instance()
    for name in experiment_names():
        own = load_experiment(name).schema
        bases = (own, root) if own is not None else (root,)
        store.store(group="exp_schema", name=name, node=dataclasses.make_dataclass(f"{name}_schema", [], bases=bases))


def per_network(job: Callable[..., Tables]) -> Callable[[DictConfig, Any], list[tuple[str, Callable[..., Tables]]]]:
    """The jobs of an experiment that trains one network per (width, seed): job(cfg, shared, width, seed, checkpoint=)."""
    return lambda cfg, shared: [(name, partial(job, cfg, shared, w, s)) for name, w, s in network_jobs(cfg)]


def run_experiment(exp: Experiment, cfg: DictConfig) -> Tables:
    """Run `exp` as configured (the steps of the module docstring); return its final tables. Kernels
    of method="auto" are chosen by prediction, not measured time (`ntk.planning.reproducible_auto`):
    the same command and seed give the same tables bit for bit."""
    with reproducible_auto():
        return _run_experiment(exp, cfg)


def _run_experiment(exp: Experiment, cfg: DictConfig) -> Tables:
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
    tables = parts.run(jobs, exp.tables, exp.desc, show_progress(cfg))
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
