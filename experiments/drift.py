"""Kernel drift of one network (one job of the drift sweep; beyond the paper, Theorem 2 measured).

A job trains one NTK MLP (width, depth, seed) by full-batch gradient descent on the Figure 1 task
(f*(x) = x1 x2 at data.n_train Gaussian inputs) and logs, at `drift_points` times t, the loss, the
relative kernel drift ||Theta_t - Theta_0||_F / ||Theta_0||_F on the training inputs and on
`n_probe` points of the unit circle, and the relative weight change (`experiments.common.train`
with `ntk.drift.DriftLogger`; any other experiment logs the same with drift_points > 0).
It also keeps Theta_0(x0, probe) with x0 = (1, 0), for the spread of the initial kernel across seeds.

Every job writes results/<name>/jobs/<key>.csv (+ .theta0.csv, .config.yaml) where <key> hashes its
resolved config: a job whose files exist is skipped unless overwrite=true, so an interrupted sweep
resumes by running the same command. `scripts.aggregate_drift` merges the jobs (also a partial set)
into table.csv without duplicates and draws the figures; `AggregateOnEnd` runs it when a Hydra
multirun ends.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd
import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from experiments.common import build_model, check_int, check_model_and_training, config_key, run_start, train
from experiments.provenance import atomic_write_text, provenance
from ntk.data import circle_grid, gaussian_inputs, product_target
from ntk.empirical import empirical_ntk
from ntk.utils import resolve_device, resolve_dtype


def check_config(cfg: DictConfig) -> None:
    check_model_and_training(cfg)
    if len(cfg.model.widths) != 1:
        raise ValueError(f"a drift job trains one network: model.widths must hold one width, got {list(cfg.model.widths)}")
    check_int("data.n_train", cfg.data.n_train)
    check_int("drift_points", cfg.drift_points, low=2)
    circle_grid(cfg.n_probe)
    if cfg.threads is not None:
        check_int("threads", cfg.threads)


def threads_per_job() -> int | None:
    """CPU threads for one job when a launcher runs n_jobs > 1 jobs at once on this machine.

    With `hydra/launcher=joblib hydra.launcher.n_jobs=k`, each of the k jobs gets cores // k
    threads, so they do not oversubscribe the cores; None (torch's default) otherwise.
    """
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    jobs = OmegaConf.select(HydraConfig.get(), "launcher.n_jobs", default=None)
    if not isinstance(jobs, int) or jobs == 1:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // (jobs if jobs > 0 else cores))


def job_paths(cfg: DictConfig) -> dict[str, Path]:
    stem = Path(cfg.out_dir) / "jobs" / config_key(cfg)
    return {"table": stem.with_suffix(".csv"), "theta0": stem.with_suffix(".theta0.csv"), "config": stem.with_suffix(".config.yaml")}


def run(cfg: DictConfig) -> pd.DataFrame | None:
    """Run one drift job; return its table, or None when it was already done."""
    check_config(cfg)
    paths = job_paths(cfg)
    if paths["table"].exists() and not cfg.overwrite:
        print(f"skip: {paths['table']} exists (overwrite=true to redo)")
        return None
    threads = cfg.threads if cfg.threads is not None else threads_per_job()
    if threads is not None:
        torch.set_num_threads(threads)
    device, dtype, kernel_dtype = resolve_device(cfg.device), resolve_dtype(cfg.dtype), resolve_dtype(cfg.kernel_dtype)
    start = run_start()
    width, depth = cfg.model.widths[0], cfg.model.depth

    x = gaussian_inputs(cfg.data.n_train, 2, torch.Generator().manual_seed(cfg.data.seed))
    y = product_target(x).to(device, dtype)
    x = x.to(device, dtype)
    gamma, probe = circle_grid(cfg.n_probe)
    probe = probe.to(device, kernel_dtype)
    model = build_model(cfg, 2, width, cfg.seed, device, dtype)
    theta0 = empirical_ntk(model, probe[cfg.n_probe // 2 : cfg.n_probe // 2 + 1], probe, dtype=kernel_dtype)[0]  # x0 = (1, 0)
    result, rows = train(cfg, model, x, y, [], None, probe=probe)
    key = dict(width=width, depth=depth, seed=cfg.seed)
    table = pd.DataFrame([key | row | dict(lr_max=result.lr_max) for row in rows])

    # Written in this order: the table marks the job as done, so it goes last.
    atomic_write_text(paths["theta0"], pd.DataFrame(key | dict(gamma=gamma.numpy(), theta0=theta0.cpu().numpy())).to_csv(index=False))
    prov = provenance(
        git_revision=start["git_revision"],
        device=str(device),
        dtype=cfg.dtype,
        kernel_dtype=cfg.kernel_dtype,
        config_key=config_key(cfg),
        wall_time_s=round(time.time() - start["started"], 2),
    )
    atomic_write_text(
        paths["config"], OmegaConf.to_yaml(OmegaConf.create({"config": OmegaConf.to_container(cfg, resolve=True), "provenance": prov}))
    )
    atomic_write_text(paths["table"], table.to_csv(index=False))
    return table


class AggregateOnEnd(Callback):
    """Hydra callback: merge the jobs and draw the figures when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:  # noqa: D102
        from scripts.aggregate_drift import aggregate

        aggregate(Path(config.out_dir))
