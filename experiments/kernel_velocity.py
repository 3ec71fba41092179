"""How fast does a finite network's NTK move at initialisation? Dyer & Gur-Ari (2019, "Asymptotics of
wide networks from Feynman diagrams", Table 1) predict that the velocity d Theta / dt under gradient
flow scales as 1/width; they measured exponents -0.98 (linear), -1.03 (ReLU) and -1.01 (tanh) for
networks with 3 hidden layers, input dimension 4 and widths 2^7 ... 2^13. (Beyond the paper: its
Theorem 2 has the velocity vanish at infinite width.)

For every activation, width n and seed: draw an NTK MLP (`ntk.model.NTKMLP`, the paper's
parameterisation), and on a fixed training set of `n_train` inputs uniform on the unit sphere of
dimension `in_dim` with N(0, 1) targets compute Theta_0 and its velocity d Theta / dt at t = 0 under
gradient flow on C = 1/(2N) sum (f - y)^2, exactly (`ntk.finite.kernel_velocity`, forward mode).

Outputs (cfg.out_dir): velocity.csv (activation, width, seed, i, j, ntk, velocity), summary.csv (per
activation and width: `mean`, the RMS over input pairs of the seed-mean velocity; `spread`, the RMS
of the seeds' standard deviation; `relative`, the mean over seeds of ||dTheta/dt||_F / ||Theta||_F),
fits.csv (exponent of each against width with its 95% interval, next to Dyer & Gur-Ari's measured
exponent), config.yaml, provenance.json and kernel_velocity.png/.pdf.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
import torch
from omegaconf import MISSING, DictConfig

from experiments.fits import fit_exponent
from experiments.runner import Experiment
from experiments.validation import check_choice, check_depth_and_beta, check_int, check_run, check_seeds
from ntk.activations import ACTIVATIONS
from ntk.empirical import empirical_ntk
from ntk.finite import kernel_velocity
from ntk.model import NTKMLP
from ntk.utils import resolve_device, resolve_dtype

TABLES = ("velocity",)
# Dyer & Gur-Ari (2019), Table 1: measured exponent of d Theta / dt against width (prediction -1)
DYER_GUR_ARI = {"identity": -0.98, "relu": -1.03, "tanh": -1.01}


@dataclass
class KernelVelocitySchema:
    activations: list[str] = MISSING
    in_dim: int = MISSING
    n_train: int = MISSING
    data_seed: int = MISSING


def check_config(cfg: DictConfig) -> None:
    if not cfg.activations:
        raise ValueError("activations must list at least one activation")
    for name in cfg.activations:
        check_choice("activation", name, sorted(ACTIVATIONS))
    if not cfg.model.widths:
        raise ValueError("model.widths must list at least one width")
    for w in cfg.model.widths:
        check_int("model.widths entries", w)
    check_depth_and_beta(cfg)
    check_int("in_dim", cfg.in_dim)
    check_int("n_train", cfg.n_train, low=2)
    check_int("data_seed", cfg.data_seed, low=0)
    check_seeds(cfg)
    check_run(cfg)


@dataclass
class Shared:
    """The training set every network's kernel and velocity are taken on."""

    x: torch.Tensor  # (n_train, in_dim), rows of unit norm, float64
    y: torch.Tensor  # (n_train, 1), N(0, 1)


def prepare(cfg: DictConfig) -> Shared:
    g = torch.Generator().manual_seed(cfg.data_seed)
    x = torch.randn(cfg.n_train, cfg.in_dim, generator=g, dtype=torch.float64)
    return Shared(x / x.norm(dim=1, keepdim=True), torch.randn(cfg.n_train, 1, generator=g, dtype=torch.float64))


def job(cfg: DictConfig, shared: Shared, activation: str, width: int, seed: int, checkpoint=None) -> dict[str, pd.DataFrame]:
    device, dtype, kernel_dtype = resolve_device(cfg.device), resolve_dtype(cfg.dtype), resolve_dtype(cfg.kernel_dtype)
    model = NTKMLP(
        cfg.in_dim, width, cfg.model.depth, beta=cfg.model.beta, activation=activation,
        generator=torch.Generator().manual_seed(seed), device=device, dtype=dtype,
    )  # fmt: skip
    x, y = shared.x.to(device), shared.y.to(device)
    ntk = empirical_ntk(model, x, dtype=kernel_dtype).cpu().numpy()
    velocity = kernel_velocity(model, x, y, dtype=kernel_dtype).cpu().numpy()
    n = x.shape[0]
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    table = pd.DataFrame(
        dict(activation=activation, width=width, seed=seed, i=i.ravel(), j=j.ravel(), ntk=ntk.ravel(), velocity=velocity.ravel())
    )
    return {"velocity": table}


def jobs(cfg: DictConfig, shared: Shared) -> list:
    seeds = range(cfg.seed, cfg.seed + cfg.n_seeds)
    return [(f"{a}_w{w}_s{s}", partial(job, cfg, shared, a, w, s)) for a in cfg.activations for w in cfg.model.widths for s in seeds]


def summarise(velocity: pd.DataFrame) -> pd.DataFrame:
    """Per activation and width: the seed-mean velocity's RMS over pairs, the RMS of its seed standard
    deviation, and the mean relative velocity ||dTheta/dt||_F / ||Theta||_F."""
    rows = []
    for (activation, width), group in velocity.groupby(["activation", "width"], sort=False):
        v = group.pivot_table(index=["i", "j"], columns="seed", values="velocity")  # (pairs, seeds)
        per_seed = group.groupby("seed").apply(lambda s: np.linalg.norm(s.velocity) / np.linalg.norm(s.ntk), include_groups=False)
        rows.append(
            dict(
                activation=activation,
                width=width,
                seeds=v.shape[1],
                mean=float(np.sqrt((v.mean(axis=1) ** 2).mean())),
                spread=float(np.sqrt(v.var(axis=1, ddof=1).mean())) if v.shape[1] > 1 else np.nan,
                relative=float(per_seed.mean()),
            )
        )
    return pd.DataFrame(rows)


def assemble(cfg: DictConfig, shared: Shared, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    summary = summarise(tables["velocity"])
    fits = []
    for activation, group in summary.groupby("activation", sort=False):
        for quantity in ("mean", "spread", "relative"):
            fit = fit_exponent(group.width, group[quantity])
            fits.append(
                dict(activation=activation, quantity=quantity)
                | fit
                | dict(predicted=-1.0, dyer_gur_ari=DYER_GUR_ARI.get(activation, np.nan))
            )
    return dict(tables) | {"summary": summary, "fits": pd.DataFrame(fits)}


EXPERIMENT = Experiment(
    name="kernel_velocity",
    check=check_config,
    prepare=prepare,
    jobs=jobs,
    tables=TABLES,
    assemble=assemble,
    provenance=lambda cfg, shared: dict(n_train=cfg.n_train, in_dim=cfg.in_dim),
    desc="networks (activation, width, seed)",
    schema=KernelVelocitySchema,
    tiny=("model.widths=[16,32,64]", "n_seeds=3", "n_train=4"),
    result="fits",
)
run = EXPERIMENT.run  # the exponents of the NTK's velocity against width: fits.csv's table
