"""Everything a run keeps on disk: resumable parts, checkpoints, atomic outputs and provenance.

A run of experiment <name> writes to `out_dir` (default results/<name>):
  <table>.csv       the tidy tables behind the figures
  config.yaml       the resolved config
  provenance.json   command, git revision, torch version, device, dtype, wall time
  <name>.png/.pdf   the figures, rendered from the tables (`experiments.figures`)
While it runs, every finished job (one network, say) is saved under out_dir/.parts/<config key>/
(`Parts`), and a network in training is checkpointed there (`Checkpoint`), so that an interrupted
run resumes where it stopped; the parts are removed once the tables are final. Every file is
written through a temporary file and a rename, so none is ever left half written.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from ntk.utils import resolve_device, synchronize

# Keys that change where or how verbosely a run writes, not what it computes.
NOT_IN_KEY = ("out_dir", "progress", "resume", "overwrite", "threads", "checkpoint_minutes")
# Steps at which a network in training may be checkpointed (when `checkpoint_minutes` have passed since
# the last save): a coarse grid, so that a GPU is not made to wait for the loss at every step.
CHECKPOINT_GRID = 8
clock = time.monotonic  # the wall clock that spaces checkpoints


def git_revision() -> str:
    """Current commit, with '+dirty' when tracked code differs from it; 'unknown' outside git.

    Files under results/ do not count: rerunning an experiment rewrites them.
    """
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def slurm_job_id() -> str:
    """This SLURM job's id as sbatch and squeue show it: <array>_<task> for an array task."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ["SLURM_JOB_ID"]


def show_progress(cfg) -> bool:
    """Progress bars: progress=true always, false never, auto when stderr is a terminal (not a job's log file)."""
    setting = str(cfg.get("progress", "auto")).lower()
    if setting not in ("auto", "true", "false"):
        raise ValueError(f"progress must be auto, true or false, got {cfg.get('progress')!r}")
    return setting == "true" or (setting == "auto" and sys.stderr.isatty())


def provenance(command: list[str] | None = None, **extra: object) -> dict:
    """Who made a result: command, git revision, versions, machine, time; plus `extra` fields."""
    return {
        "command": " ".join(command if command is not None else ["python", "-m", "experiments.run", *sys.argv[1:]]),
        "git_revision": extra.pop("git_revision", None) or git_revision(),
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "cuda_version": torch.version.cuda,
        "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **({"slurm_job_id": slurm_job_id()} if "SLURM_JOB_ID" in os.environ else {}),
        **extra,
    }


def gemm_size(default: int = 2048) -> int:
    """The side of the matrices `gemm_gflops` multiplies: `default`, or less where the environment's
    NTK_GEMM_SIZE says so (the tests set 256: the 2048 products cost about 2 s a run on 2 cores)."""
    value = os.environ.get("NTK_GEMM_SIZE", "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) < 16:
        raise ValueError(f"NTK_GEMM_SIZE must be an integer >= 16 (the side of the timed matrix product), got {value!r}")
    return min(default, int(value))


def gemm_gflops(size: int | None = None, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", rounds: int = 5) -> float:
    """This machine's matrix-product rate now: the median GFLOP/s of `rounds` (size x size) products
    (size: `gemm_size()`, 2048 unless NTK_GEMM_SIZE says less).

    Long runs record it at their start and end, so that their wall times can be compared across
    machines and across runs of one machine (whose speed varies).
    """
    size = gemm_size() if size is None else size
    device = torch.device(device)
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    a @ b  # warm-up (on CUDA: the cuBLAS handle and kernel choice), finished before the clock starts
    synchronize(device)
    times = []
    for _ in range(rounds):
        begin = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - begin)
    return round(2 * size**3 / sorted(times)[rounds // 2] / 1e9, 1)


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same directory and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual mode
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path | str, obj: object) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


class Checkpoint:
    """The state of one network in training, saved once `minutes` of wall-clock time have passed
    since training started or since the last save, so that an interrupted run continues that
    network where it stopped (one file, replaced atomically; removed once the network's tables are
    saved). Spacing by time, not by steps, keeps the cost of writing (1.2 GB at width 10000) a small
    fraction of the run on any machine; minutes=0 saves at every candidate step."""

    def __init__(self, path: Path, minutes: float) -> None:
        self.path, self.minutes = Path(path), float(minutes)
        self.last = clock()

    def steps(self, total: int) -> set[int]:
        """Steps at which a save is considered: every `CHECKPOINT_GRID` steps, not 0 and not the last."""
        return set(range(CHECKPOINT_GRID, total, CHECKPOINT_GRID))

    def restart(self) -> None:
        """Start the clock now (at the start of training)."""
        self.last = clock()

    def due(self) -> bool:
        """Whether `minutes` have passed since the start or the last save."""
        return clock() - self.last >= 60 * self.minutes

    def save(self, state: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            torch.save(state, tmp)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.last = clock()

    def load(self) -> dict | None:
        return torch.load(self.path, map_location="cpu", weights_only=False) if self.path.exists() else None

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def config_key(cfg: DictConfig) -> str:
    """Short hash of the resolved config (keys sorted), without the keys that do not change results.

    The device enters as the type it resolves to here (`device=auto` on a GPU machine is "cuda", on
    a CPU-only one "cpu"), so that parts computed on one kind of device are never mixed with parts
    computed on another: a rerun on another device starts those jobs afresh. (The networks are the
    same on every device, but their float arithmetic is not bitwise the same.)
    """
    data = OmegaConf.to_container(cfg, resolve=True)
    for key in NOT_IN_KEY:
        data.pop(key, None)
    if "device" in data:
        data["device"] = resolve_device(data["device"]).type
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


class Parts:
    """Per-job CSV parts of one run, keyed by the resolved config, written atomically."""

    def __init__(self, cfg: DictConfig) -> None:
        self.dir = Path(cfg.out_dir) / ".parts" / config_key(cfg)
        if not cfg.resume and self.dir.exists():
            shutil.rmtree(self.dir)

    def path(self, job: str, table: str) -> Path:
        return self.dir / f"{job}.{table}.csv"

    def checkpoint(self, job: str, minutes: float) -> Checkpoint:
        """Where job `job` keeps its state during training (`Checkpoint`)."""
        return Checkpoint(self.dir / f"{job}.checkpoint.pt", minutes)

    def done(self, job: str, tables: tuple[str, ...]) -> bool:
        return all(self.path(job, t).exists() for t in tables)

    def save(self, job: str, frames: dict[str, pd.DataFrame]) -> None:
        for table, frame in frames.items():  # the first table is the job's completion mark: write it last
            if table != next(iter(frames)):
                atomic_write_text(self.path(job, table), frame.to_csv(index=False))
        first = next(iter(frames))
        atomic_write_text(self.path(job, first), frames[first].to_csv(index=False))

    def run(
        self, jobs: dict[str, Callable[[], dict[str, pd.DataFrame]]], tables: tuple[str, ...], desc: str, progress: bool
    ) -> dict[str, pd.DataFrame]:
        """Run every job whose parts are missing (in order), save its tables, and return all tables.

        Each job returns {table name: DataFrame} for the names in `tables`; afterwards `resumed`
        says how many jobs were found done and skipped.
        """
        self.resumed = 0
        for name, job in tqdm(jobs.items(), desc=desc, disable=not progress):
            if self.done(name, tables):
                self.resumed += 1
                continue
            self.save(name, job())
            self.checkpoint(name, 0).remove()
        return {table: self.load(list(jobs), table) for table in tables}

    def load(self, jobs: list[str], table: str) -> pd.DataFrame:
        return pd.concat([pd.read_csv(self.path(job, table), float_precision="round_trip") for job in jobs], ignore_index=True)

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        parent = self.dir.parent
        if parent.exists() and not any(parent.iterdir()):
            parent.rmdir()


def run_start() -> dict:
    """Note when a run started and from which revision (before anything can change the tree)."""
    return dict(started=time.time(), git_revision=git_revision())


def write_outputs(cfg: DictConfig, tables: dict[str, pd.DataFrame], start: dict, **extra: object) -> Path:
    """Write the tables, resolved config and provenance of a finished run; return out_dir.

    The wall time covers this invocation only; a resumed run says so with `resumed_jobs`.
    """
    out = Path(cfg.out_dir)
    for name, frame in tables.items():
        buf = io.StringIO()
        frame.to_csv(buf, index=False, float_format="%.10g")
        atomic_write_text(out / f"{name}.csv", buf.getvalue())
    atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    atomic_write_json(
        out / "provenance.json",
        provenance(
            git_revision=start["git_revision"], wall_time_s=round(time.time() - start["started"], 2), config_key=config_key(cfg), **extra
        ),
    )
    return out
