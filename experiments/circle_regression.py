"""Figure 2: networks trained on 4 points of the circle against the limiting Gaussian (Section 6.2).

For every width and seed, an NTK MLP is trained by full-batch gradient descent up to t = lr * steps
and its output f(cos gamma, sin gamma) recorded on a grid. The infinite-width prediction is the
Gaussian of `ntk.predict.gaussian_prediction` with the exact limiting kernels (`ntk.analytic`),
at t = `limit_t` (default infinity); its 10th, 50th and 90th percentiles are mean -/+ 1.2816 sd.
As a separate series, the paper's approximation: the same Gaussian with Theta and Sigma taken from
one network of width `approx_width` (empirical NTK, and the last-hidden-layer Gram matrix for Sigma).

Outputs (cfg.out_dir): table.csv, long format with columns kind, width, seed, gamma, f; kind is
"network" (one curve per width and seed), "limit_p10/p50/p90", "approx_p10/p50/p90", or "train"
(the training points); summary.csv (per width: fraction of network outputs inside the limiting
P10-P90 band, over the grid points where the band is wider than 1% of its widest, i.e. away from
the training points; fraction of curves entirely inside; RMS error of the seeds' mean against the
limiting mean, absolute and relative to the RMS limiting mean); loss.csv; config.yaml;
provenance.json; circle_regression.png/.pdf.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from omegaconf import MISSING, DictConfig

from experiments.persistence import Checkpoint
from experiments.runner import Experiment, per_network
from experiments.training import build_model, loss_table, train
from experiments.validation import check_int, check_model_and_training, check_odd_grid
from ntk.analytic import limiting_kernels
from ntk.data import circle_grid, circle_points, product_target
from ntk.empirical import empirical_nngp, empirical_ntk
from ntk.predict import gaussian_prediction
from ntk.train import TrainState
from ntk.utils import resolve_device, resolve_dtype

Z90 = 1.2815515655446004  # standard normal 90th percentile
TABLES = ("table", "loss")


@dataclass
class CircleRegressionSchema:
    limit_t: float | None = MISSING
    approx_width: int = MISSING
    approx_seed: int = MISSING


def check_config(cfg: DictConfig) -> None:
    """Raise a one-line ValueError for any value out of range, before anything runs."""
    check_model_and_training(cfg)
    if len(cfg.data.train_gamma_over_pi) < 1 or len(set(cfg.data.train_gamma_over_pi)) != len(cfg.data.train_gamma_over_pi):
        raise ValueError(f"data.train_gamma_over_pi must list distinct angles, got {list(cfg.data.train_gamma_over_pi)}")
    check_odd_grid("data.n_gamma", cfg.data.n_gamma)
    check_int("approx_width", cfg.approx_width, low=0)
    if cfg.limit_t is not None and not cfg.limit_t >= 0:
        raise ValueError(f"limit_t must be >= 0 or null (infinity), got {cfg.limit_t!r}")


def percentiles(kind: str, gamma: np.ndarray, mean: torch.Tensor, cov: torch.Tensor, width: float) -> pd.DataFrame:
    """Rows kind_p10, kind_p50, kind_p90 of a Gaussian with the given mean and covariance."""
    sd = cov.diagonal().clamp_min(0).sqrt()
    frames = [
        pd.DataFrame(dict(kind=f"{kind}_p{p}", width=width, seed=-1, gamma=gamma, f=(mean + z * sd).cpu().numpy()))
        for p, z in ((10, -Z90), (50, 0.0), (90, Z90))
    ]
    return pd.concat(frames, ignore_index=True)


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Per width: fraction of network outputs inside the limiting P10-P90 band, error of the seeds' mean."""
    band = table[table.kind.str.startswith("limit_")].pivot(index="gamma", columns="kind", values="f")
    sd = (band.limit_p90 - band.limit_p50) / Z90
    band = band[sd > 0.01 * sd.max()]  # the band has zero width at the training points: leave them out
    nets = table[table.kind == "network"]
    rows = []
    for width, group in nets.groupby("width"):
        curves = group.pivot(index="gamma", columns="seed", values="f").loc[band.index]
        inside = curves.ge(band.limit_p10, axis=0) & curves.le(band.limit_p90, axis=0)
        mean_err = curves.mean(axis=1) - band.limit_p50
        rows.append(
            dict(
                width=width,
                seeds=curves.shape[1],
                inside_p10_p90=inside.to_numpy().mean(),
                curves_fully_inside=inside.all(axis=0).mean(),
                mean_rms_error=float(np.sqrt((mean_err**2).mean())),
                mean_rms_error_relative=float(np.sqrt((mean_err**2).mean() / (band.limit_p50**2).mean())),
                limit_sd_rms=float(np.sqrt((((band.limit_p90 - band.limit_p50) / Z90) ** 2).mean())),
                grid_points=len(band),
            )
        )
    return pd.DataFrame(rows)


@dataclass
class Shared:
    """What every network of Figure 2 shares: the data and the fixed curves (limit, approximation)."""

    x_train: torch.Tensor  # (4, 2), training dtype and device
    y_train: torch.Tensor  # (4, 1)
    gamma: torch.Tensor  # (n_gamma,)
    grid: torch.Tensor  # (n_gamma, 2), training dtype and device
    fixed: list[pd.DataFrame]  # training points, limiting and approximate percentiles


def prepare(cfg: DictConfig) -> Shared:
    device, dtype, kernel_dtype = resolve_device(cfg.device), resolve_dtype(cfg.dtype), resolve_dtype(cfg.kernel_dtype)
    limit_t = math.inf if cfg.limit_t is None else float(cfg.limit_t)
    train_gamma = math.pi * torch.tensor(list(cfg.data.train_gamma_over_pi), dtype=torch.float64)
    x_train = circle_points(train_gamma)  # (4, 2)
    y_train = product_target(x_train)  # (4, 1)
    gamma, grid = circle_grid(cfg.data.n_gamma)
    fixed = [pd.DataFrame(dict(kind="train", width=np.nan, seed=-1, gamma=train_gamma.numpy(), f=y_train[:, 0].numpy()))]

    # Exact infinite-width Gaussian.
    args = (cfg.model.depth, cfg.model.beta, cfg.model.activation)
    s_tt, k_tt = limiting_kernels(x_train, None, *args)
    s_gt, k_gt = limiting_kernels(grid, x_train, *args)
    s_gg, _ = limiting_kernels(grid, None, *args)
    mean, cov = gaussian_prediction(k_gt, k_tt, s_gg, s_gt, s_tt, y_train[:, 0], limit_t)
    fixed.append(percentiles("limit", gamma.numpy(), mean, cov, np.inf))

    # The paper's approximation: kernels of one wide network.
    if cfg.approx_width:
        wide = build_model(cfg, 2, cfg.approx_width, cfg.approx_seed, device, dtype)
        g, xt = grid.to(device), x_train.to(device)
        mean_a, cov_a = gaussian_prediction(
            empirical_ntk(wide, g, xt, dtype=kernel_dtype),
            empirical_ntk(wide, xt, dtype=kernel_dtype),
            empirical_nngp(wide, g, dtype=kernel_dtype),
            empirical_nngp(wide, g, xt, dtype=kernel_dtype),
            empirical_nngp(wide, xt, dtype=kernel_dtype),
            y_train[:, 0].to(device, kernel_dtype),
            limit_t,
        )
        fixed.append(percentiles("approx", gamma.numpy(), mean_a.cpu(), cov_a.cpu(), cfg.approx_width))
        del wide
    return Shared(x_train.to(device, dtype), y_train.to(device, dtype), gamma, grid.to(device, dtype), fixed)


def job(cfg: DictConfig, shared: Shared, width: int, seed: int, checkpoint: Checkpoint | None = None) -> dict[str, pd.DataFrame]:
    """Train one network to t = lr x steps; its output on the circle then."""
    device, dtype = resolve_device(cfg.device), resolve_dtype(cfg.dtype)
    model = build_model(cfg, 2, width, seed, device, dtype)
    curves = []

    def record(state: TrainState) -> None:
        with torch.no_grad():
            f = state.model(shared.grid)[:, 0].to(torch.float64).cpu().numpy()
        curves.append(pd.DataFrame(dict(kind="network", width=width, seed=seed, gamma=shared.gamma.numpy(), f=f)))

    t_end = cfg.train.lr * cfg.train.steps
    result, drift = train(cfg, model, shared.x_train, shared.y_train, [t_end], record, checkpoint=checkpoint, job_state={"curves": curves})
    return {"table": curves[0], "loss": loss_table(result, drift, width=width, seed=seed)}


def assemble(cfg: DictConfig, shared: Shared, nets: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The long table (fixed curves, then every network), the losses, and the band summary."""
    table = pd.concat(shared.fixed + [nets["table"]], ignore_index=True)
    return {"table": table, "loss": nets["loss"], "summary": summarise(table)}


EXPERIMENT = Experiment(
    name="circle_regression",
    check=check_config,
    prepare=prepare,
    jobs=per_network(job),
    tables=TABLES,
    assemble=assemble,
    provenance=lambda cfg, shared: dict(
        t_network=cfg.train.lr * cfg.train.steps, t_limit=str(math.inf if cfg.limit_t is None else float(cfg.limit_t))
    ),
    schema=CircleRegressionSchema,
    tiny=("model.widths=[20]", "n_seeds=2", "train.steps=5", "data.n_gamma=11", "approx_width=40"),
)
run = EXPERIMENT.run  # Figure 2 as configured: the long table (all tables are written to cfg.out_dir)
