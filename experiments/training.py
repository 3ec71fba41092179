"""Training glue shared by the experiments: the network of a job, gradient descent as configured
(with drift logging and checkpoints), the time grids of recorded times, and the loss table."""

from __future__ import annotations

import copy

import pandas as pd
import torch
from omegaconf import DictConfig

from experiments.persistence import Checkpoint, show_progress
from experiments.validation import check_positive
from ntk.drift import DriftLogger
from ntk.model import NTKMLP
from ntk.train import TrainResult, TrainState, gradient_descent, record_steps
from ntk.utils import resolve_dtype


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
    lr_max: float | None = None,
    batch_rows: int | None = None,
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
    and training continues from its step, giving what an uninterrupted run gives. `lr_max`, when
    given, is the stability bound reported instead of computing it, and `batch_rows` forms each
    full-batch gradient from chunks of that many inputs (both `ntk.train.gradient_descent`).
    """
    lr = cfg.train.lr
    steps = cfg.train.steps
    wanted = set(record_steps(record_t, lr, steps))
    logged = set(drift_steps(cfg))
    logger = DriftLogger(model, x, probe, resolve_dtype(cfg.kernel_dtype)) if logged else None
    drift: list[dict] = []
    job_state = job_state or {}
    start, history = 0, None  # the step training continues at, and the TrainResult of the steps before it
    saved_at = checkpoint.steps(steps) if checkpoint is not None else set()
    saved = checkpoint.load() if checkpoint is not None else None
    if checkpoint is not None:
        checkpoint.restart()  # the clock runs from the start of training
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
        progress=show_progress(cfg),
        resume=history,
        lr_max=lr_max,
        batch_rows=batch_rows,
    )
    return result, drift


def time_grid(name: str, dt: float, lr: float, steps: int) -> list[float]:
    """t = 0, dt, 2 dt, ... up to lr * steps, and lr * steps itself; dt must be a multiple of lr."""
    check_positive(name, dt)
    per = dt / lr
    if abs(per - round(per)) > 1e-9 * max(1.0, per) or round(per) < 1:
        raise ValueError(f"{name}={dt:g} must be a positive multiple of train.lr={lr:g}, so that it falls on gradient-descent steps")
    every = round(per)
    return [lr * k for k in sorted(set(range(0, steps + 1, every)) | {steps})]


def with_lr(cfg: DictConfig, lr: float, t_end: float) -> DictConfig:
    """A copy of cfg training at learning rate lr to the same time: train.lr = lr, train.steps = t_end / lr."""
    sub = copy.deepcopy(cfg)
    sub.train.lr = float(lr)
    sub.train.steps = round(t_end / lr)
    return sub
