"""What every experiment shares: config checks, resumable per-job parts, and the final write.

A run of experiment <name> writes to `out_dir` (default results/<name>):
  table.csv         the tidy table behind the figure
  config.yaml       the resolved config
  provenance.json   command, git revision, torch version, device, dtype, wall time
  <name>.png/.pdf   the figure, rendered from table.csv by scripts/
While it runs, every finished job (one network, say) is saved under out_dir/.parts/<config key>/,
so that an interrupted run resumes where it stopped; the parts are removed once the table is final.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from experiments.provenance import atomic_write_json, atomic_write_text, git_revision, provenance
from ntk.drift import DriftLogger
from ntk.model import NTKMLP
from ntk.train import TrainResult, TrainState, gradient_descent, record_steps
from ntk.utils import resolve_device, resolve_dtype

# Keys that change where or how verbosely a run writes, not what it computes.
NOT_IN_KEY = ("out_dir", "progress", "resume", "overwrite", "threads", "checkpoint_minutes")
# Steps at which a network in training may be checkpointed (when `checkpoint_minutes` have passed since
# the last save): a coarse grid, so that a GPU is not made to wait for the loss at every step.
CHECKPOINT_GRID = 8
clock = time.monotonic  # the wall clock that spaces checkpoints


def network_jobs(cfg: DictConfig) -> list[tuple[str, int, int]]:
    """(job name, width, seed) for every width of cfg.model.widths and every seed."""
    return [(f"w{w}_s{s}", w, s) for w in cfg.model.widths for s in range(cfg.seed, cfg.seed + cfg.n_seeds)]


def loss_table(result: TrainResult, drift: list[dict], **key: object) -> pd.DataFrame:
    """The loss at every step of one training run, its stability bound lr_max, and the drift columns
    (ntk_drift_train, weight_drift, ...) at the steps where drift was logged (empty elsewhere)."""
    table = pd.DataFrame(dict(key, t=result.t, loss=result.loss, lr_max=result.lr_max))
    if drift:
        table = table.merge(pd.DataFrame(drift).drop(columns="loss"), on="t", how="left")
    return table


def build_model(cfg: DictConfig, in_dim: int, width: int, seed: int, device: torch.device, dtype: torch.dtype, out_dim: int = 1) -> NTKMLP:
    """The network of one job: NTK MLP of cfg.model with the given width, initialised from `seed`."""
    return NTKMLP(
        in_dim,
        width,
        cfg.model.depth,
        out_dim=out_dim,
        beta=cfg.model.beta,
        activation=cfg.model.activation,
        generator=torch.Generator().manual_seed(seed),  # drawn on the CPU: the same network on every device
        device=device,
        dtype=dtype,
    )


def drift_steps(cfg: DictConfig) -> list[int]:
    """Steps at which drift is logged: `drift_points` evenly spaced steps from 0 to train.steps (0: none)."""
    n = cfg.drift_points
    if n == 0:
        return []
    return sorted({round(i * cfg.train.steps / (n - 1)) for i in range(n)}) if n > 1 else [0]


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


def train(
    cfg: DictConfig,
    model: NTKMLP,
    x: torch.Tensor,
    y: torch.Tensor,
    record_t,
    callback,
    probe: torch.Tensor | None = None,
    checkpoint: Checkpoint | None = None,
    job_state: dict[str, list] | None = None,
) -> tuple[TrainResult, list[dict]]:
    """Full-batch gradient descent as configured in cfg.train, with optional drift logging.

    `callback` is called at the times `record_t`. When cfg.drift_points > 0, the kernel drift on
    the training inputs (and on `probe`), the weight drift and the loss are also logged at
    `drift_steps(cfg)` (`ntk.drift.DriftLogger`); they are returned as rows (t, loss, ...).

    With a `checkpoint`, the parameters, the losses so far, the drift rows and the lists of
    `job_state` (where the callback collects its rows) are saved at the first candidate step
    (`Checkpoint.steps`) after every `checkpoint.minutes` of training;
    if the checkpoint exists when training starts, `model` (freshly initialised: anything computed
    from the initial network before this call stays valid) and those lists are restored from it
    and training continues from its step, giving what an uninterrupted run gives.
    """
    lr = cfg.train.lr
    steps = cfg.train.steps
    wanted = set(record_steps(record_t, lr, steps))
    logged = set(drift_steps(cfg))
    logger = DriftLogger(model, x, probe, resolve_dtype(cfg.kernel_dtype)) if logged else None
    drift: list[dict] = []
    job_state = job_state or {}
    start, history = 0, None
    saved_at = checkpoint.steps(steps) if checkpoint is not None else set()
    saved = checkpoint.load() if checkpoint is not None else None
    if checkpoint is not None:
        checkpoint.last = clock()  # the clock runs from the start of training
    if saved is not None:
        model.load_state_dict(saved["model"])  # (saved on the CPU; copied onto the model's device)
        start, history = saved["step"], TrainResult(**saved["history"])
        drift.extend(saved["drift"])
        for key, rows in job_state.items():
            rows[:] = saved["job_state"][key]

    def on_record(state: TrainState) -> None:
        if state.step in saved_at and state.step != start and checkpoint.due():  # before this step's rows: a resumed run records them again
            history_now = state.result.until(state.step)
            checkpoint.save(
                dict(
                    step=state.step,
                    model={k: v.cpu() for k, v in state.model.state_dict().items()},
                    drift=list(drift),
                    history=dict(t=history_now.t, loss=history_now.loss, lr_max=history_now.lr_max),
                    job_state={key: list(rows) for key, rows in job_state.items()},
                )
            )
        if state.step in wanted and callback is not None:
            callback(state)
        if state.step in logged:
            drift.append(logger(state))

    result = gradient_descent(
        model,
        x,
        y,
        lr=lr,
        steps=steps,
        record_t=[lr * k for k in sorted(wanted | logged | saved_at)],
        callback=on_record,
        method=cfg.train.method,
        divergence_factor=cfg.train.divergence_factor,
        progress=cfg.progress,
        start_step=start,
        history=history,
    )
    return result, drift


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
