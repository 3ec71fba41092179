"""How wide is wide enough at depth L? Hanin & Nica (2019, "Finite depth and width corrections to the
neural tangent kernel", Theorem 1): for the He-scaled ReLU network of their Section 2, the on-diagonal
NTK K = K(x, x) has E[K] = L (1/2 + ||x||^2 / n_0) at every width, while its relative second moment
E[K^2] / E[K]^2 grows like exp(5 beta), beta = sum of 1/n_i over the hidden layers ((L - 1) / n for
equal widths): the kernel is deterministic only where depth / width is small. (Beyond the paper, whose
Theorem 1 takes every width to infinity at fixed depth.)

Settings (`ntk.finite.ntk_diagonal_ensemble`, `n_networks` initialisations per cell, derivatives with
respect to the N(0, 1) parameters):
  he_relu   z = sqrt(2) W a / sqrt(n_in) + b, biases 0 at initialisation (trainable): Hanin & Nica's.
            Its K is twice their normalisation's (derivatives with respect to N(0, 1) weights; their
            E[K] formula reads L (1 + 2 ||x||^2 / n_0) here), so E[K] / formula is 2, exactly, if the
            theorem holds; the relative moments do not depend on the normalisation.
  ntk_relu  the paper's NTKMLP: z = W a / sqrt(n_in) + 0.1 b, b ~ N(0, 1), ReLU (reported as measured).
  ntk_tanh  the same with tanh.

Outputs (cfg.out_dir): cells.csv (per setting, depth, width: beta, E[K] with its standard error,
E[K] / Hanin & Nica's formula (he_relu), the relative standard deviation sd(K) / E[K], and
log(E[K^2]/E[K]^2) with a 95% bootstrap interval), fits.csv (per setting: the slope of
log(E[K^2]/E[K]^2) against beta over the cells with beta <= fit_beta_max, its 95% interval, and the
width per hidden layer past which sd(K) / E[K] < 10%), wide_enough.csv (per setting and depth: the
exponent of sd(K) / E[K] against width and the width where it reaches 10%, `wide_enough`), config.yaml,
provenance.json, depth_width.png/.pdf.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
import torch
from omegaconf import MISSING, DictConfig
from scipy import stats

from experiments.fits import fit_exponent
from experiments.runner import Experiment
from experiments.validation import check_choice, check_int, check_nonnegative, check_positive, check_run, check_seeds
from ntk.finite import ntk_diagonal_ensemble
from ntk.utils import resolve_device, resolve_dtype

SETTINGS = {  # activation, weight_std, beta, random_bias
    "he_relu": ("relu", math.sqrt(2.0), 1.0, False),
    "ntk_relu": ("relu", 1.0, 0.1, True),
    "ntk_tanh": ("tanh", 1.0, 0.1, True),
}
TEN_PERCENT = math.log(1.01)  # sd(K) / E[K] < 0.1  <=>  E[K^2] / E[K]^2 < 1.01


@dataclass
class DepthWidthSchema:
    depths: list[int] = MISSING
    settings: list[str] = MISSING
    n_networks: int = MISSING
    in_dim: int = MISSING
    fit_beta_max: float = MISSING
    bootstrap: int = MISSING


def check_config(cfg: DictConfig) -> None:
    for name, values in (("depths", cfg.depths), ("model.widths", cfg.model.widths)):
        if not values:
            raise ValueError(f"{name} must list at least one value")
        for v in values:
            check_int(f"{name} entries", v)
    if not cfg.settings:
        raise ValueError(f"settings must list at least one of {', '.join(SETTINGS)}")
    for s in cfg.settings:
        check_choice("setting", s, SETTINGS)
    check_int("n_networks", cfg.n_networks, low=2)
    check_int("in_dim", cfg.in_dim)
    check_positive("fit_beta_max", cfg.fit_beta_max)
    check_nonnegative("bootstrap", cfg.bootstrap)
    check_seeds(cfg)
    check_run(cfg)


def prepare(cfg: DictConfig) -> torch.Tensor:
    """The input: a fixed direction with ||x||^2 = n_0."""
    x = torch.randn(cfg.in_dim, generator=torch.Generator().manual_seed(cfg.seed), dtype=torch.float64)
    return x / x.norm() * math.sqrt(cfg.in_dim)


def job(cfg: DictConfig, x: torch.Tensor, setting: str, depth: int, width: int, checkpoint=None) -> dict[str, pd.DataFrame]:
    device, dtype = resolve_device(cfg.device), resolve_dtype(cfg.dtype)
    activation, weight_std, beta, random_bias = SETTINGS[setting]
    cell = list(SETTINGS).index(setting) * 10**6 + depth * 10**3 + width
    generator = torch.Generator().manual_seed(cfg.seed * 10**8 + cell)  # one stream per cell: cells resume independently
    widths = [cfg.in_dim] + [width] * (depth - 1) + [1]
    k = (
        ntk_diagonal_ensemble(x.to(device), widths, cfg.n_networks, activation, weight_std, beta, random_bias, generator, dtype)
        .double()
        .cpu()
        .numpy()
    )
    return {"cells": pd.DataFrame([dict(setting=setting, depth=depth, width=width) | cell_statistics(k, cfg.bootstrap, cell)])}


def cell_statistics(k: np.ndarray, bootstrap: int, seed: int) -> dict[str, float]:
    """E[K], its standard error, sd(K) / E[K], and log(E[K^2] / E[K]^2) with a 95% bootstrap interval."""
    mean = k.mean()
    log_moment = float(np.log(np.mean(k**2) / mean**2))
    row = dict(
        networks=len(k),
        mean_k=float(mean),
        mean_k_se=float(k.std(ddof=1) / np.sqrt(len(k))),
        rel_sd=float(k.std() / mean),
        log_moment2=log_moment,
    )
    if bootstrap:
        idx = np.random.default_rng(seed).integers(0, len(k), (bootstrap, len(k)))
        boot = np.log(np.mean(k[idx] ** 2, axis=1) / np.mean(k[idx], axis=1) ** 2)
        row |= dict(log_moment2_low=float(np.quantile(boot, 0.025)), log_moment2_high=float(np.quantile(boot, 0.975)))
    return row


def jobs(cfg: DictConfig, x: torch.Tensor) -> list:
    return [(f"{s}_L{d}_n{w}", partial(job, cfg, x, s, d, w)) for s in cfg.settings for d in cfg.depths for w in cfg.model.widths]


def assemble(cfg: DictConfig, x: torch.Tensor, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    cells = tables["cells"].copy()
    cells.insert(3, "beta", (cells.depth - 1) / cells.width)
    formula = cells.depth * (0.5 + float(x.square().sum()) / cfg.in_dim)  # Hanin & Nica, Theorem 1
    cells["hanin_nica_mean"] = np.where(cells.setting == "he_relu", formula, np.nan)
    cells["mean_over_formula"] = cells.mean_k / cells.hanin_nica_mean
    fits = []
    for setting, group in cells.groupby("setting", sort=False):
        used = group[(group.beta <= cfg.fit_beta_max) & (group.beta > 0)]
        row = dict(setting=setting, cells=len(used), beta_max=cfg.fit_beta_max, predicted=5.0 if setting == "he_relu" else np.nan)
        if len(used) >= 3:
            fit = stats.linregress(used.beta, used.log_moment2)
            half = stats.t.ppf(0.975, len(used) - 2) * fit.stderr
            row |= dict(slope=fit.slope, ci_low=fit.slope - half, ci_high=fit.slope + half, intercept=fit.intercept)
            # sd / mean < 10% where slope * (L - 1) / n < log(1.01): n > (L - 1) x this
            row["width_per_layer_for_10pct"] = fit.slope / TEN_PERCENT
        fits.append(row)
    return {"cells": cells, "fits": pd.DataFrame(fits), "wide_enough": wide_enough(cells)}


def wide_enough(cells: pd.DataFrame) -> pd.DataFrame:
    """Per setting and depth: the exponent b of sd(K) / E[K] ~ n^b over the widths (95% interval), and
    the width where sd(K) / E[K] reaches 10%, from the widest cell with sd ~ n^(-1/2), the law of small
    beta (sd^2 ~ c beta): n_10 = n_widest (sd_widest / 0.1)^2. (The fitted b bends below -1/2 where the
    narrow cells have large beta, so the fit itself would extrapolate too optimistically.)"""
    rows = []
    for (setting, depth), group in cells.groupby(["setting", "depth"], sort=False):
        widest = group.loc[group.width.idxmax()]
        row = dict(setting=setting, depth=depth, widest=widest.width, rel_sd_widest=widest.rel_sd)
        row |= fit_exponent(group.width, group.rel_sd) | dict(width_for_10pct=widest.width * (widest.rel_sd / 0.1) ** 2)
        rows.append(row)
    return pd.DataFrame(rows)


EXPERIMENT = Experiment(
    name="depth_width",
    check=check_config,
    prepare=prepare,
    jobs=jobs,
    tables=("cells",),
    assemble=assemble,
    provenance=lambda cfg, x: dict(input_norm_squared=float(x.square().sum())),
    desc="cells (setting, depth, width)",
    schema=DepthWidthSchema,
    tiny=("depths=[2,3,4]", "model.widths=[4,8]", "n_networks=64", "bootstrap=20", "fit_beta_max=1.0"),
    result="fits",
)
run = EXPERIMENT.run  # the fitted growth of the NTK's relative second moment with depth / width: fits.csv's table
