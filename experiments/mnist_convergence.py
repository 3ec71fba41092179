"""Figures 3b and 3c: convergence along a kernel principal component on MNIST (Section 6.3).

The eigenfunctions f(i) of the exact infinite-width NTK on the batch (`ntk.spectrum.kernel_pca`,
(1/N) sum f(i)^2 = 1) define the target of every network: f* = f0 + A sum_{i in S} f(i), with f0
the network's own output at initialisation, A = target_amplitude and S = target_components (the
paper: A = 0.5, S = {2}). The residual f_t - f* on the batch is split into
    g_t = <f_t - f*, f(j)> f(j)  (along the tracked component j, the paper's j = 2)  and  h_t = f_t - f* - g_t,
with RMS norms over the batch. The n = infinity theory predicts ||g_t|| = A exp(-lambda_j t) and
h_t = 0; more generally the amplitude c_i(t) = <f_t - f*, f(i)> / N of every component decays as
c_i(0) exp(-lambda_i t), lambda_i the eigenvalues of Theta_inf(X, X) / N.

Why finite networks leave that curve is measured, not assumed: every `kernel_dt` of time the
network's own NTK Theta_t on the batch is computed (layer-wise, exact) and logged through
  rayleigh_i(t) = f(i)^T Theta_t f(i) / N^2   (= lambda_i for the limiting kernel),
the rate at which the current kernel learns direction i, its relative drift
||Theta_t - Theta_0||_F / ||Theta_0||_F, and the stability bound 2 / lambda_max(Theta_t / N).
Integrating the measured rate gives the kernel's own prediction A exp(-int_0^t rayleigh_j(s) ds).

Gradient descent runs at train.lr to t = train.lr x train.steps; networks narrower than
`narrow_width` run at `narrow_lr` to the same t (narrow networks need smaller steps to follow the
gradient flow: `experiments.mnist_lr_equivalence` measures which lr agrees at which width).

Outputs (cfg.out_dir): table.csv (width, seed, lr, t, loss, g_norm, h_norm), components.csv (width,
seed, t, component, amplitude, predicted), kernel.csv (width, seed, t, component, rayleigh,
lambda_inf, rate_ratio, kernel_drift, lr_max_t), loss.csv, spectrum.csv (component, lambda),
deviation.csv (per network: max_t | ||g_t|| - A exp(-lambda_j t) |, max_t ||h_t||, the kernel-rate
prediction's error, the largest rate ratio), fits.csv (exponent of each deviation against width,
95% interval), config.yaml, provenance.json and the figures (`experiments.figures.mnist_convergence`).
Networks are checkpointed every `checkpoint_minutes` of training, so an interrupted run resumes mid-network.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from experiments.common import Checkpoint, build_model, loss_table, train
from experiments.fits import fit_exponent
from experiments.runner import Experiment, per_network, run_experiment
from experiments.validation import check_int, check_mnist, check_model_and_training, check_nonnegative, check_positive
from ntk.analytic import limiting_kernels
from ntk.data import mnist_batch
from ntk.drift import kernel_drift
from ntk.empirical import empirical_ntk
from ntk.spectrum import kernel_pca, rayleigh_quotients
from ntk.train import TrainState
from ntk.utils import resolve_device, resolve_dtype

TABLES = ("table", "components", "kernel", "loss")
DEVIATIONS = ("g_deviation", "h_max")  # quantities whose width exponent is fitted


def check_config(cfg: DictConfig) -> None:
    check_model_and_training(cfg)
    check_int("k", cfg.k, low=2)
    check_mnist(cfg, min_batch=cfg.k)
    check_positive("target_amplitude", cfg.target_amplitude)
    if not cfg.target_components or any(not 1 <= i <= cfg.k for i in cfg.target_components):
        raise ValueError(f"target_components must list components in [1, k={cfg.k}], got {list(cfg.target_components)}")
    if not 1 <= cfg.tracked_component <= cfg.k:
        raise ValueError(f"tracked_component must be in [1, k={cfg.k}], got {cfg.tracked_component}")
    check_nonnegative("checkpoint_minutes", cfg.checkpoint_minutes)
    if "narrow_width" in cfg:  # (the lr check trains every width at each of its lrs instead)
        check_int("narrow_width", cfg.narrow_width, low=0)
        check_positive("narrow_lr", cfg.narrow_lr)
        t_end = cfg.train.lr * cfg.train.steps
        if abs(t_end / cfg.narrow_lr - round(t_end / cfg.narrow_lr)) > 1e-9 * t_end / cfg.narrow_lr:
            raise ValueError(f"narrow_lr={cfg.narrow_lr:g} must divide the training time t = train.lr x train.steps = {t_end:g}")
    for width in cfg.model.widths:
        sub = config_for_width(cfg, width)
        time_grid("record_dt", cfg.record_dt, sub.train.lr, sub.train.steps)
        if cfg.kernel_dt != 0:
            time_grid("kernel_dt", cfg.kernel_dt, sub.train.lr, sub.train.steps)


def with_lr(cfg: DictConfig, lr: float, t_end: float) -> DictConfig:
    """A copy of cfg training at learning rate lr to the same time: train.lr = lr, train.steps = t_end / lr."""
    sub = copy.deepcopy(cfg)
    sub.train.lr = float(lr)
    sub.train.steps = round(t_end / lr)
    return sub


def config_for_width(cfg: DictConfig, width: int) -> DictConfig:
    """The config one network of this width trains with: below `narrow_width`, narrow_lr to the same t."""
    if width >= cfg.get("narrow_width", 0):
        return cfg
    return with_lr(cfg, cfg.narrow_lr, cfg.train.lr * cfg.train.steps)


def time_grid(name: str, dt: float, lr: float, steps: int) -> list[float]:
    """t = 0, dt, 2 dt, ... up to lr * steps, and lr * steps itself; dt must be a multiple of lr."""
    check_positive(name, dt)
    per = dt / lr
    if abs(per - round(per)) > 1e-9 * max(1.0, per) or round(per) < 1:
        raise ValueError(f"{name}={dt:g} must be a positive multiple of train.lr={lr:g}, so that it falls on gradient-descent steps")
    every = round(per)
    return [lr * k for k in sorted(set(range(0, steps + 1, every)) | {steps})]


@dataclass
class Batch:
    """What every network of a run shares: the digits and the limiting kernel's components."""

    x: torch.Tensor  # (N, 784), float64, CPU
    lambdas: torch.Tensor  # (k,) eigenvalues of Theta_inf / N
    funcs: torch.Tensor  # (N, k) eigenfunctions, (1/N) sum f^2 = 1
    shift: torch.Tensor  # (N, 1) f* - f0 = A sum_{i in S} f(i)
    c0: np.ndarray  # (k,) amplitudes of f0 - f* = -shift


def prepare(cfg: DictConfig) -> Batch:
    """Load the batch, compute the exact limiting NTK and its top-k components, and the target shift."""
    x, _ = mnist_batch(cfg.data.batch_size, cfg.data.batch_seed, cfg.data.source, cfg.data.root, cfg.data.download)
    _, kernel = limiting_kernels(x, None, cfg.model.depth, cfg.model.beta, cfg.model.activation)
    lambdas, funcs = kernel_pca(kernel, cfg.k)  # (k,), (N, k)
    shift = cfg.target_amplitude * funcs[:, [i - 1 for i in cfg.target_components]].sum(1, keepdim=True)  # (N, 1)
    c0 = (-shift[:, 0] @ funcs / x.shape[0]).numpy()
    return Batch(x, lambdas, funcs, shift, c0)


def network_job(cfg: DictConfig, batch: Batch, width: int, seed: int, checkpoint: Checkpoint | None = None) -> dict[str, pd.DataFrame]:
    """Train one network as configured (cfg.train.lr, cfg.train.steps) and return its tables."""
    device, dtype, kernel_dtype = resolve_device(cfg.device), resolve_dtype(cfg.dtype), resolve_dtype(cfg.kernel_dtype)
    n, j = batch.x.shape[0], cfg.tracked_component - 1
    x = batch.x.to(device, dtype)
    funcs = batch.funcs.to(device)
    model = build_model(cfg, x.shape[1], width, seed, device, dtype)
    with torch.no_grad():
        target = model(x).double() + batch.shift.to(device)  # f* = f0 + A sum f(i), (N, 1)
    record_t = time_grid("record_dt", cfg.record_dt, cfg.train.lr, cfg.train.steps)
    kernel_t = set(time_grid("kernel_dt", cfg.kernel_dt, cfg.train.lr, cfg.train.steps)) if cfg.kernel_dt else set()
    kernel0 = empirical_ntk(model, x, dtype=kernel_dtype) if kernel_t else None  # Theta_0 of the initial network
    lambdas = batch.lambdas.numpy()
    rows: dict[str, list] = {"table": [], "components": [], "kernel": []}

    def record(state: TrainState) -> None:
        r = state.f.double()[:, 0] - target[:, 0]  # f_t - f*, (N,)
        amp = funcs.T @ r / n  # (k,)
        h = r - amp[j] * funcs[:, j]
        rows["table"].append(
            dict(
                width=width,
                seed=seed,
                lr=cfg.train.lr,
                t=state.t,
                loss=state.loss,
                g_norm=abs(amp[j].item()),
                h_norm=h.square().mean().sqrt().item(),
            )
        )
        key = dict(width=width, seed=seed, t=state.t, component=np.arange(1, cfg.k + 1))  # one row per component
        rows["components"].append(
            pd.DataFrame(
                dict(
                    **key,
                    amplitude=amp.cpu().numpy(),
                    predicted=batch.c0 * np.exp(-lambdas * state.t),
                )
            )
        )
        if state.t in kernel_t:
            kernel = kernel0 if state.step == 0 else empirical_ntk(state.model, x, dtype=kernel_dtype)  # (N, N)
            quotients = rayleigh_quotients(kernel, funcs).cpu().numpy()
            lam_max = torch.linalg.eigvalsh(kernel / n)[-1].item()
            rows["kernel"].append(
                pd.DataFrame(
                    dict(
                        **key,
                        rayleigh=quotients,
                        lambda_inf=lambdas,
                        rate_ratio=quotients / lambdas,
                        kernel_drift=kernel_drift(kernel, kernel0),
                        lr_max_t=2.0 / lam_max,
                    )
                )
            )

    result, drift = train(cfg, model, x, target.to(dtype), record_t, record, checkpoint=checkpoint, job_state=rows)
    kernel_rows = (
        pd.concat(rows["kernel"], ignore_index=True)
        if rows["kernel"]
        else pd.DataFrame(columns=["width", "seed", "t", "component", "rayleigh", "lambda_inf", "rate_ratio", "kernel_drift", "lr_max_t"])
    )
    return {
        "table": pd.DataFrame(rows["table"]),
        "components": pd.concat(rows["components"], ignore_index=True),
        "kernel": kernel_rows,
        "loss": loss_table(result, drift, width=width, seed=seed),
    }


def deviations(table: pd.DataFrame, kernel: pd.DataFrame, amplitude: float, lam: float, component: int) -> pd.DataFrame:
    """Per network: how far it strays from the n = inf prediction, and how much of it the kernel explains.

    g_deviation  max_t | ||g_t|| - A exp(-lambda t) |      h_max  max_t ||h_t||
    kernel_prediction_error  max over the kernel times of | ||g_t|| - A exp(-int_0^t rayleigh(s) ds) |
        (the integral by the trapezoidal rule on the kernel times)
    rate_ratio_max  max_t rayleigh(t) / lambda along the tracked component
    """
    out = []
    for (width, seed), run in table.groupby(["width", "seed"]):
        row = dict(
            width=width,
            seed=seed,
            g_deviation=(run.g_norm - amplitude * np.exp(-lam * run.t)).abs().max(),
            h_max=run.h_norm.max(),
            kernel_prediction_error=math.nan,
            rate_ratio_max=math.nan,
        )
        rates = kernel[(kernel.width == width) & (kernel.seed == seed) & (kernel.component == component)].sort_values("t")
        if len(rates) >= 2:
            integral = np.concatenate([[0.0], np.cumsum(np.diff(rates.t) * 0.5 * (rates.rayleigh.values[1:] + rates.rayleigh.values[:-1]))])
            g = run.set_index("t").g_norm.reindex(rates.t.values).values
            row.update(kernel_prediction_error=np.nanmax(np.abs(g - amplitude * np.exp(-integral))), rate_ratio_max=rates.rate_ratio.max())
        out.append(row)
    return pd.DataFrame(out)


def width_fits(deviation: pd.DataFrame) -> pd.DataFrame:
    """Exponent b of quantity ~ width^b, over every network (seeds pooled), with its 95% interval."""
    return pd.DataFrame([dict(quantity=q) | fit_exponent(deviation.width, deviation[q]) for q in DEVIATIONS])


def assemble(cfg: DictConfig, batch: Batch, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The job tables, the limit's spectrum, every network's deviations and their width exponents."""
    j = cfg.tracked_component
    tables = dict(tables)
    tables["spectrum"] = pd.DataFrame(dict(component=np.arange(1, cfg.k + 1), **{"lambda": batch.lambdas.numpy()}))
    tables["deviation"] = deviations(tables["table"], tables["kernel"], abs(batch.c0[j - 1]), batch.lambdas[j - 1].item(), j)
    tables["fits"] = width_fits(tables["deviation"])
    return tables


def width_job(cfg: DictConfig, batch: Batch, width: int, seed: int, checkpoint: Checkpoint | None = None) -> dict[str, pd.DataFrame]:
    """One network of the run, at the learning rate of its width (`config_for_width`)."""
    return network_job(config_for_width(cfg, width), batch, width, seed, checkpoint)


EXPERIMENT = Experiment(
    name="mnist_convergence",
    check=check_config,
    prepare=prepare,
    jobs=per_network(width_job),
    tables=TABLES,
    assemble=assemble,
    provenance=lambda cfg, batch: dict(mnist_digits=batch.x.shape[0]),
)


def run(cfg: DictConfig) -> pd.DataFrame:
    """Run Figures 3b/3c as configured; return the (width, seed, t) table."""
    return run_experiment(EXPERIMENT, cfg)["table"]
