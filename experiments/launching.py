"""Sweeps seen from the submitting command: the whole grid checked before anything runs, and
submitit jobs (SLURM or local) watched until each one has finished or failed.

Hydra's launchers take the grid from the sweeper and start the jobs. `install()` wraps them:

- Every launcher (basic, joblib, submitit) first composes the config of every job of the grid and
  runs the checks that need no work (`experiments.cli.precheck`). A bad value anywhere gives one
  line naming the job, exit 2, and nothing runs or is queued. For SLURM the partition must exist
  (`sinfo`) and `hydra.launcher.timeout_min` must leave room for a job's first checkpoint.
- The submitit launcher submits as before (one job array) and prints one line with the job ids.
  Instead of submitit's wait, which asks `sacct` and never sees a job that died without a result on
  a cluster without accounting, the jobs are watched here every `POLL_S` seconds: a job is done when
  its result file exists, failed when it left the queue (`squeue`; for local jobs, its process ended)
  and no result appeared within `GRACE_S` seconds (NTK_RESULT_GRACE_S overrides it). On the first failure the sweep's end-of-run
  callbacks (the drift sweep's aggregation) run on the jobs that finished, one warning line names the
  missing jobs, and the command ends with one line quoting the failed job's own error line, exit 2.
- Ctrl-C or SIGTERM after submission ends the command with one line: the jobs keep running, how to
  cancel them (`scancel <array id>`), and that rerunning the command skips the jobs that finished.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig, OmegaConf

from experiments import cli
from experiments.persistence import atomic_write_text, config_key, provenance, run_start

if TYPE_CHECKING:
    import pandas as pd

POLL_S = 2.0  # seconds between looks at the jobs
GRACE_S = 10.0  # a job that left the queue without a result file: how long the file may lag (shared file systems)


def grace_s() -> float:
    """GRACE_S, or the seconds the environment's NTK_RESULT_GRACE_S gives (the test suite's cluster writes
    results on a local disk and sets 1); one line for a value that is not a number >= 0."""
    raw = os.environ.get("NTK_RESULT_GRACE_S")
    if raw is None:
        return GRACE_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"NTK_RESULT_GRACE_S={raw!r} must be a number of seconds >= 0")
    return value


class SweepJobFailed(ValueError):
    """A job of a submitted sweep failed (a user-facing error: one line, exit 2)."""


class SubmittedInterrupt(KeyboardInterrupt):
    """Ctrl-C or SIGTERM after jobs were submitted: `message` says what runs on and how to cancel it."""

    def __init__(self, message: str, signal_name: str, status: int) -> None:
        super().__init__(message)
        self.message, self.signal_name, self.status = message, signal_name, status


def install() -> None:
    """Wrap the launch method of Hydra's basic, joblib and submitit launchers (idempotent). Hydra's
    plugin scan executes the plugin modules again, defining their classes anew, so it runs first."""
    from hydra.core.plugins import Plugins

    Plugins.instance()  # the scan, once per process; the classes it defines are the ones Hydra uses
    from hydra._internal.core_plugins.basic_launcher import BasicLauncher

    launchers = [BasicLauncher]
    try:
        from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher

        launchers.append(JoblibLauncher)
    except ImportError:  # the plugin is optional
        pass
    try:
        from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher

        launchers.append(BaseSubmititLauncher)
    except ImportError:
        pass
    for cls in launchers:
        if not getattr(cls.launch, "_ntk_wrapped", False):
            cls.launch = _wrap(cls.launch, submitit=cls.__name__ == "BaseSubmititLauncher")


def _wrap(launch, submitit: bool):
    @functools.wraps(launch)
    def checked_launch(self, job_overrides, initial_job_idx):
        configs = check_grid(self, job_overrides)
        if not submitit:
            return launch(self, job_overrides, initial_job_idx)
        if self._EXECUTOR == "slurm":
            check_slurm(self.params, configs)
        try:
            grace_s()  # read again while watching; a bad value ends the command before anything is queued
        except ValueError as exc:
            raise ValueError(f"{exc}; nothing was run or queued") from None
        return _watched_launch(launch, self, job_overrides, initial_job_idx)

    checked_launch._ntk_wrapped = True
    return checked_launch


def job_label(overrides, common=()) -> str:
    """A job's overrides, less those every job of the sweep shares."""
    return " ".join(str(o) for o in overrides if o not in common) or "(no overrides)"


def shared_overrides(job_overrides) -> set[str]:
    lists = [set(map(str, o)) for o in job_overrides]
    return set.intersection(*lists) if len(lists) > 1 else set()


def check_grid(launcher, job_overrides) -> list[DictConfig]:
    """Compose every job's config and run its pre-checks; the first bad one raises one line."""
    configs, common = [], shared_overrides(job_overrides)
    for idx, overrides in enumerate(job_overrides):
        cfg = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
        try:
            cli.precheck(cfg)
        except ValueError as exc:
            raise ValueError(f"job #{idx} ({job_label(overrides, common)}): {exc}; nothing was run or queued") from None
        configs.append(cfg)
    return configs


def check_slurm(params: dict, configs: list[DictConfig]) -> None:
    """SLURM is there, the partition exists, and the time limit leaves room for a checkpoint."""
    for tool in ("sbatch", "squeue", "sinfo"):
        if shutil.which(tool) is None:
            raise ValueError(
                f"hydra/launcher=submitit_slurm needs SLURM's {tool}, which is not on PATH here; run the sweep from a cluster login node"
            )
    partition = params.get("partition")
    if partition:
        found = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True)
        allowed = sorted({p.strip() for p in found.stdout.split()}) if found.returncode == 0 else []
        if found.returncode != 0:
            raise ValueError(f"sinfo could not list the partitions ({found.stderr.strip() or 'no output'}): is the cluster reachable?")
        if partition not in allowed:
            raise ValueError(f"unknown hydra.launcher.partition {partition!r}; allowed: {', '.join(allowed)}")
    timeout = params.get("timeout_min")
    for cfg in configs:
        minutes = cfg.get("checkpoint_minutes")
        if timeout is not None and minutes and timeout < minutes:
            raise ValueError(
                f"hydra.launcher.timeout_min={timeout} is below checkpoint_minutes={minutes:g}: a job would be stopped before its "
                f"first checkpoint; allowed: timeout_min >= {minutes:g} (or a smaller checkpoint_minutes)"
            )


def _watched_launch(launch, launcher, job_overrides, initial_job_idx):
    """Run submitit's launch with its map_array replaced by one whose jobs we watch."""
    import submitit

    real = submitit.AutoExecutor.map_array
    watches: list[Watch] = []

    def map_array(executor, fn, *iterables):
        jobs = real(executor, fn, *iterables)
        watches.append(Watch(jobs, launcher, job_overrides))
        watches[-1].announce()
        return [Watched(watches[-1], i) for i in range(len(jobs))]

    submitit.AutoExecutor.map_array = map_array
    try:
        return launch(launcher, job_overrides, initial_job_idx)
    except KeyboardInterrupt as exc:  # a signal between the submission and the wait, or during it
        if watches and not isinstance(exc, SubmittedInterrupt):
            raise watches[-1].interrupted(exc) from None
        raise
    finally:
        submitit.AutoExecutor.map_array = real


class Watched:
    """Stands in for a submitit job in the launcher: `results()` waits for the whole sweep."""

    def __init__(self, watch: Watch, index: int) -> None:
        self.watch, self.index = watch, index

    def results(self) -> list:
        self.watch.wait()
        return self.watch.jobs[self.index].results()  # its result file exists: returns at once


class Watch:
    def __init__(self, jobs, launcher, job_overrides) -> None:
        self.jobs, self.launcher, self.overrides = list(jobs), launcher, [list(o) for o in job_overrides]
        self.common = shared_overrides(job_overrides)
        self.slurm = launcher._EXECUTOR == "slurm"
        self.done: set[int] = set()
        self.gone_since: dict[int, float] = {}
        self.finished = False

    def ids(self) -> str:
        return ", ".join(str(j.job_id) for j in self.jobs)

    def cancel_hint(self) -> str:
        if self.slurm:
            arrays = sorted({str(j.job_id).split("_")[0] for j in self.jobs})
            return f"cancel them with `scancel {' '.join(arrays)}`"
        return "they stop with this machine's processes (submitit_local)"

    def announce(self) -> None:
        kind = "SLURM job(s)" if self.slurm else "local submitit job(s)"
        cli.say(f"submitted {len(self.jobs)} {kind}: {self.ids()} (logs in {self.jobs[0].paths.folder.parent})")

    def running(self) -> set[str]:
        """Job ids that SLURM still lists (pending, running, completing)."""
        ids = ",".join(str(j.job_id) for i, j in enumerate(self.jobs) if i not in self.done)
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i", "-j", ids], capture_output=True, text=True)
        if out.returncode != 0:  # squeue refuses ids it no longer knows: ask for everything of ours
            out = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True)
        return {line.strip() for line in out.stdout.split()}

    def wait(self) -> None:
        """Until every job has a result; raises SweepJobFailed on the first failure."""
        if self.finished:
            return
        grace = grace_s()
        try:
            while len(self.done) < len(self.jobs):
                listed = self.running() if self.slurm else set()
                now = time.time()
                for i, job in enumerate(self.jobs):
                    if i in self.done:
                        continue
                    if job.paths.result_pickle.exists():
                        self.done.add(i)
                        continue
                    alive = str(job.job_id) in listed if self.slurm else not job.done()
                    if alive:
                        self.gone_since.pop(i, None)
                    elif now - self.gone_since.setdefault(i, now) > grace:
                        self.failed(i)
                if len(self.done) < len(self.jobs):
                    time.sleep(POLL_S)
        except KeyboardInterrupt as exc:
            raise self.interrupted(exc) from None
        self.finished = True

    def interrupted(self, exc: KeyboardInterrupt) -> SubmittedInterrupt:
        """What Ctrl-C or SIGTERM after the submission ends the command with."""
        name, status = ("SIGTERM", 143) if isinstance(exc, cli.Interrupted) else ("SIGINT", 130)
        left = [str(j.job_id) for i, j in enumerate(self.jobs) if i not in self.done]
        return SubmittedInterrupt(
            f"interrupted ({name}) after submitting {len(self.jobs)} job(s) ({self.ids()}): the {len(left)} unfinished one(s) "
            f"keep running; {self.cancel_hint()}; run the same command again to resume (finished jobs are skipped)",
            name,
            status,
        )

    def failed(self, i: int) -> None:
        """Aggregate what finished, then end the sweep with the failed job's own error line."""
        job = self.jobs[i]
        line = error_line(job.paths.stderr) or error_line(job.paths.stdout)
        if line is None:
            state = slurm_state(str(job.job_id)) if self.slurm else None
            line = (
                f"it left SLURM's queue{' as ' + state if state else ''} without a result or a log (no {job.paths.stderr}): cancelled before it started?"
                if self.slurm
                else f"it ended without a result or a log (no {job.paths.stderr})"
            )
        missing = [j for j in range(len(self.jobs)) if j not in self.done]
        listed = self.running() if self.slurm else None  # asked again: a cancelled array leaves the queue at once
        still = [
            str(self.jobs[j].job_id)
            for j in missing
            if j != i and (str(self.jobs[j].job_id) in listed if self.slurm else not self.jobs[j].done())
        ]
        if self.done:
            run_end_callbacks(self.launcher.config)
            names = "; ".join(job_label(self.overrides[j], self.common) for j in missing)
            cli.say(f"warning: {len(self.done)} of {len(self.jobs)} job(s) finished and were aggregated; missing: {names}")
        more = f"; {len(still)} other job(s) still running ({', '.join(still)}): {self.cancel_hint()}" if still else ""
        raise SweepJobFailed(
            f"job #{i} ({job_label(self.overrides[i], self.common)}, {'SLURM job ' if self.slurm else 'job '}{job.job_id}) failed: "
            f"{line.removeprefix('error: ')}{more}; fix it and run the same command again (finished jobs are skipped)"
        )


def error_line(path: Path) -> str | None:
    """The job's own one-line error (the last line starting with "error:"), else SLURM's line on why it
    ended (`*** JOB 82 ON vm CANCELLED AT ... ***`, a time limit), else its last line."""
    try:
        lines = [line.strip() for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return None
    errors = [line for line in lines if line.startswith("error:")]
    ended = [line[line.index("***") :] for line in lines if line.startswith("slurmstepd") and "***" in line]
    return errors[-1] if errors else ended[-1] if ended else (lines[-1] if lines else None)


def slurm_state(job_id: str) -> str | None:
    """The job's state in SLURM's accounting (CANCELLED, TIMEOUT, OUT_OF_MEMORY, ...), None where
    accounting is off or does not know the job."""
    try:
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    words = out.stdout.split() if out.returncode == 0 else []
    return words[0] if words else None


def run_end_callbacks(config: DictConfig) -> None:
    """The sweep's end-of-multirun callbacks (hydra.callbacks), on the jobs that finished."""
    from hydra.utils import instantiate

    callbacks = OmegaConf.select(config, "hydra.callbacks", default=None) or {}
    for conf in callbacks.values():
        callback = instantiate(conf)
        if hasattr(callback, "on_multirun_end"):
            callback.on_multirun_end(config=config)


def threads_per_job() -> int | None:
    """CPU threads for one job when a launcher runs n_jobs > 1 jobs at once on this machine.

    With `hydra/launcher=joblib hydra.launcher.n_jobs=k`, each of the k jobs gets cores // k threads,
    so they do not oversubscribe the cores; None otherwise (inside a SLURM job `cli.apply_threads`
    has set SLURM_CPUS_PER_TASK threads already).
    """
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    jobs = OmegaConf.select(HydraConfig.get(), "launcher.n_jobs", default=None)
    if not isinstance(jobs, int) or jobs == 1:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // (jobs if jobs > 0 else cores))


def sweep_job_paths(cfg: DictConfig, *extra: str) -> dict[str, Path]:
    """The files of one job of a sweep (drift_sweep, feature_learning): out_dir/jobs/<config key>.csv
    (its table, written last: it marks the job as done), .config.yaml (resolved config and
    provenance), and .<name>.csv for every extra table name."""
    stem = Path(cfg.out_dir) / "jobs" / config_key(cfg)
    paths = {"table": stem.with_suffix(".csv"), "config": stem.with_suffix(".config.yaml")}
    return paths | {name: stem.with_suffix(f".{name}.csv") for name in extra}


def start_sweep_job(cfg: DictConfig, paths: dict[str, Path]) -> dict | None:
    """None (and a line saying so) when the job's table exists and cfg.overwrite is off; else set the
    torch threads (cfg.threads, or cores / n_jobs under the joblib launcher) and return `run_start()`."""
    if paths["table"].exists() and not cfg.overwrite:
        print(f"skip: {paths['table']} exists (overwrite=true to redo)")
        return None
    threads = cfg.threads if cfg.threads is not None else threads_per_job()
    if threads is not None:
        torch.set_num_threads(threads)
    return run_start()


def finish_sweep_job(cfg: DictConfig, paths: dict[str, Path], table: pd.DataFrame, start: dict, device: torch.device) -> None:
    """Write the job's config with its provenance, then its table (the completion mark), atomically."""
    prov = provenance(
        git_revision=start["git_revision"],
        device=str(device),
        dtype=cfg.dtype,
        kernel_dtype=cfg.kernel_dtype,
        config_key=config_key(cfg),
        threads=torch.get_num_threads(),
        started_unix=round(start["started"], 3),
        wall_time_s=round(time.time() - start["started"], 2),
        pid=os.getpid(),
    )
    atomic_write_text(
        paths["config"], OmegaConf.to_yaml(OmegaConf.create({"config": OmegaConf.to_container(cfg, resolve=True), "provenance": prov}))
    )
    atomic_write_text(paths["table"], table.to_csv(index=False))
