"""Figure 1: convergence of the NTK with width, before and after training (paper, Section 6.1).

For every width and seed: draw an NTK MLP, train it by full-batch gradient descent on
f*(x) = x1 x2 at `data.n_train` Gaussian inputs, and record Theta(x0, x(gamma)) on the unit circle
at the times `kernel_t` (default t = 0 and t = lr * steps). One job per (width, seed); finished
jobs are saved as they complete, and a rerun of the same config skips them.

Outputs (in cfg.out_dir): table.csv (width, seed, t, gamma, ntk, loss, limit = the analytic
infinite-width Theta(x0, x(gamma)) of `ntk.analytic`), loss.csv (width, seed, t,
loss at every step), config.yaml, provenance.json, circle_width.png/.pdf.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from omegaconf import MISSING, DictConfig

from experiments.persistence import Checkpoint
from experiments.runner import Experiment, per_network
from experiments.training import build_model, loss_table, train
from experiments.validation import check_int, check_model_and_training, check_odd_grid
from ntk.analytic import limiting_kernels
from ntk.data import circle_grid, gaussian_inputs, product_target
from ntk.empirical import empirical_ntk
from ntk.train import TrainState, record_steps
from ntk.utils import resolve_device, resolve_dtype

TABLES = ("table", "loss")


def kernel_times(cfg: DictConfig) -> list[float]:
    """The times t at which kernels are recorded (default: start and end of training)."""
    end = cfg.train.lr * cfg.train.steps
    times = [0.0, end] if cfg.kernel_t is None else [float(t) for t in cfg.kernel_t]
    if not times or any(b <= a for a, b in zip(times, times[1:])):
        raise ValueError(f"kernel_t must be a strictly increasing list of times, got {times}")
    record_steps(times, cfg.train.lr, cfg.train.steps)  # validates
    return times


@dataclass
class CircleWidthSchema:
    kernel_t: list[float] | None = MISSING


def check_config(cfg: DictConfig) -> None:
    """Raise a one-line ValueError for any value out of range, before anything runs."""
    check_model_and_training(cfg)
    check_int("data.n_train", cfg.data.n_train)
    check_odd_grid("data.n_gamma", cfg.data.n_gamma)
    kernel_times(cfg)


@dataclass
class Shared:
    """What every network of Figure 1 shares."""

    x_train: torch.Tensor  # (n_train, 2), training dtype and device
    y_train: torch.Tensor  # (n_train, 1)
    gamma: torch.Tensor  # (n_gamma,)
    x0: torch.Tensor  # (1, 2), kernel dtype
    grid: torch.Tensor  # (n_gamma, 2), kernel dtype
    limit: object  # Theta_inf(x0, x(gamma)), (n_gamma,) numpy


def prepare(cfg: DictConfig) -> Shared:
    device, dtype, kernel_dtype = resolve_device(cfg.device), resolve_dtype(cfg.dtype), resolve_dtype(cfg.kernel_dtype)
    x_train = gaussian_inputs(cfg.data.n_train, 2, torch.Generator().manual_seed(cfg.data.seed))
    y_train = product_target(x_train)
    gamma, grid = circle_grid(cfg.data.n_gamma)
    x0, grid = torch.tensor([[1.0, 0.0]], dtype=kernel_dtype), grid.to(kernel_dtype)
    _, limit = limiting_kernels(x0, grid, cfg.model.depth, cfg.model.beta, cfg.model.activation)
    return Shared(x_train.to(device, dtype), y_train.to(device, dtype), gamma, x0.to(device), grid.to(device), limit[0].numpy())


def job(cfg: DictConfig, shared: Shared, width: int, seed: int, checkpoint: Checkpoint | None = None) -> dict[str, pd.DataFrame]:
    """Train one network; Theta(x0, x(gamma)) at every kernel time."""
    device, dtype, kernel_dtype = resolve_device(cfg.device), resolve_dtype(cfg.dtype), resolve_dtype(cfg.kernel_dtype)
    model = build_model(cfg, 2, width, seed, device, dtype)
    rows = []

    def record(state: TrainState) -> None:
        theta = empirical_ntk(state.model, shared.x0, shared.grid, dtype=kernel_dtype)[0]  # (n_gamma,)
        rows.append(
            pd.DataFrame(
                dict(
                    width=width,
                    seed=seed,
                    t=state.t,
                    gamma=shared.gamma.numpy(),
                    ntk=theta.cpu().numpy(),
                    loss=state.loss,
                    limit=shared.limit,
                )
            )
        )

    result, drift = train(
        cfg, model, shared.x_train, shared.y_train, kernel_times(cfg), record, checkpoint=checkpoint, job_state={"rows": rows}
    )
    return {"table": pd.concat(rows, ignore_index=True), "loss": loss_table(result, drift, width=width, seed=seed)}


EXPERIMENT = Experiment(
    name="circle_width",
    check=check_config,
    prepare=prepare,
    jobs=per_network(job),
    tables=TABLES,
    schema=CircleWidthSchema,
    tiny=("model.widths=[20]", "n_seeds=2", "train.steps=3", "data.n_gamma=11", "data.n_train=5"),
)
run = EXPERIMENT.run  # Figure 1 as configured: the kernel table (all tables are written to cfg.out_dir)
