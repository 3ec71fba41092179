"""Figures 3b and 3c: convergence along a kernel principal component on MNIST (Section 6.3).

The eigenfunctions f(i) of the exact infinite-width NTK on the batch (`ntk.spectrum.kernel_pca`,
(1/N) sum f(i)^2 = 1) define the target of every network: f* = f0 + A sum_{i in S} f(i), with f0
the network's own output at initialisation, A = target_amplitude and S = target_components (the
paper: A = 0.5, S = {2}). The residual f_t - f* on the batch is split into
    g_t = <f_t - f*, f(2)> f(2)  (along the second component)  and  h_t = f_t - f* - g_t,
with RMS norms over the batch. The n = infinity theory predicts ||g_t|| = A exp(-lambda_2 t) and
h_t = 0; more generally the amplitude c_i(t) = <f_t - f*, f(i)> / N of every component decays as
c_i(0) exp(-lambda_i t), lambda_i the eigenvalues of Theta_inf(X, X) / N.

Outputs (cfg.out_dir): table.csv (width, seed, t, loss, g_norm, h_norm), components.csv (width,
seed, t, component, amplitude, predicted), spectrum.csv (component, lambda), config.yaml,
provenance.json, mnist_convergence.png/.pdf (3b, 3c) and mnist_components.png/.pdf.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from experiments.common import (Parts, build_model, check_int, check_mnist, check_model_and_training, check_positive, loss_table,
                                network_jobs, run_start, train, write_outputs)
from ntk.analytic import limiting_kernels
from ntk.data import mnist_batch
from ntk.spectrum import kernel_pca
from ntk.train import TrainState
from ntk.utils import resolve_device, resolve_dtype
from scripts.plot_mnist_convergence import render

TABLES = ("table", "components", "loss")


def check_config(cfg: DictConfig) -> None:
    check_model_and_training(cfg)
    check_int("record_every", cfg.record_every)
    check_int("k", cfg.k, low=2)
    check_mnist(cfg, min_batch=cfg.k)
    check_positive("target_amplitude", cfg.target_amplitude)
    if not cfg.target_components or any(not 1 <= i <= cfg.k for i in cfg.target_components):
        raise ValueError(f"target_components must list components in [1, k={cfg.k}], got {list(cfg.target_components)}")


def run(cfg: DictConfig) -> pd.DataFrame:
    """Run Figures 3b/3c as configured; return the (width, seed, t) table."""
    check_config(cfg)
    device, dtype = resolve_device(cfg.device), resolve_dtype(cfg.dtype)
    start = run_start()
    x, _ = mnist_batch(cfg.data.batch_size, cfg.data.batch_seed, cfg.data.source, cfg.data.root, cfg.data.download)
    n = x.shape[0]
    _, kernel = limiting_kernels(x, None, cfg.model.depth, cfg.model.beta, cfg.model.activation)
    lambdas, funcs = kernel_pca(kernel, cfg.k)  # (k,), (N, k)
    shift = cfg.target_amplitude * funcs[:, [i - 1 for i in cfg.target_components]].sum(1, keepdim=True)  # (N, 1)
    c0 = (-shift[:, 0] @ funcs / n).numpy()  # amplitudes of f0 - f* = -shift, (k,)
    times = [cfg.train.lr * s for s in range(0, cfg.train.steps + 1, cfg.record_every)]
    if times[-1] != cfg.train.lr * cfg.train.steps:
        times.append(cfg.train.lr * cfg.train.steps)
    funcs_dev = funcs.to(device)
    x_dev = x.to(device, dtype)

    def job(width: int, seed: int) -> dict[str, pd.DataFrame]:
        model = build_model(cfg, x.shape[1], width, seed, device, dtype)
        with torch.no_grad():
            target = model(x_dev).double() + shift.to(device)  # f* = f0 + A sum f(i), (N, 1)
        rows, comps = [], []

        def record(state: TrainState) -> None:
            r = state.f.double()[:, 0] - target[:, 0]  # f_t - f*, (N,)
            amp = funcs_dev.T @ r / n  # (k,)
            h = r - amp[1] * funcs_dev[:, 1]
            rows.append(dict(width=width, seed=seed, t=state.t, loss=state.loss, g_norm=abs(amp[1].item()),
                             h_norm=h.square().mean().sqrt().item()))
            comps.append(pd.DataFrame(dict(width=width, seed=seed, t=state.t, component=np.arange(1, cfg.k + 1),
                                           amplitude=amp.cpu().numpy(), predicted=c0 * np.exp(-lambdas.numpy() * state.t))))

        result, drift = train(cfg, model, x_dev, target.to(dtype), times, record)
        return {"table": pd.DataFrame(rows), "components": pd.concat(comps, ignore_index=True),
                "loss": loss_table(result, drift, width=width, seed=seed)}

    parts = Parts(cfg)
    jobs = {name: partial(job, w, s) for name, w, s in network_jobs(cfg)}
    tables = parts.run(jobs, TABLES, "networks (width, seed)", cfg.progress)
    tables["spectrum"] = pd.DataFrame(dict(component=np.arange(1, cfg.k + 1), **{"lambda": lambdas.numpy()}))
    out = write_outputs(cfg, tables, start, device=str(device), dtype=cfg.dtype, kernel_dtype="float64",
                        jobs=len(jobs), resumed_jobs=parts.resumed, mnist_digits=n)
    render(out)
    parts.clear()
    return tables["table"]
