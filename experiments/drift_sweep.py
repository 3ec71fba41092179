"""Kernel drift of one network (one job of the drift sweep; beyond the paper, Theorem 2 measured).

A job trains one NTK MLP (width, depth, seed) by full-batch gradient descent on the Figure 1 task
(f*(x) = x1 x2 at data.n_train Gaussian inputs) and logs, at `drift_points` times t, the loss, the
relative kernel drift ||Theta_t - Theta_0||_F / ||Theta_0||_F on the training inputs and on
`n_probe` points of the unit circle, and the relative weight change (`experiments.training.train`
with `ntk.drift.DriftLogger`; any other experiment logs the same with drift_points > 0).
It also keeps Theta_0(x0, probe) with x0 = (1, 0), for the spread of the initial kernel across seeds.

Every job writes results/<name>/jobs/<key>.csv (+ .theta0.csv, .config.yaml) where <key> hashes its
resolved config: a job whose files exist is skipped unless overwrite=true, so an interrupted sweep
resumes by running the same command. `aggregate` merges the jobs (also a partial set) into
table.csv without duplicates, fits the width exponents and draws the figures; `AggregateOnEnd` runs
it when a Hydra multirun ends, `python -m scripts.aggregate_drift` by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from hydra.experimental.callback import Callback
from omegaconf import MISSING, DictConfig

from experiments.figures import render
from experiments.fits import fit_exponent
from experiments.launching import finish_sweep_job, start_sweep_job, sweep_job_paths
from experiments.persistence import atomic_write_json, atomic_write_text, provenance
from experiments.runner import Experiment
from experiments.training import build_model, train
from experiments.validation import check_int, check_model_and_training, check_odd_grid
from ntk.data import circle_grid, gaussian_inputs, product_target
from ntk.empirical import empirical_ntk
from ntk.utils import resolve_device, resolve_dtype


@dataclass
class DriftSweepSchema:
    width: int = MISSING
    n_probe: int = MISSING
    overwrite: bool = MISSING
    threads: int | None = MISSING


QUANTITIES = ("ntk_drift_train", "ntk_drift_probe", "weight_drift")  # drifts whose width exponent is fitted


def check_config(cfg: DictConfig) -> None:
    check_model_and_training(cfg)
    if len(cfg.model.widths) != 1:
        raise ValueError(f"a drift job trains one network: model.widths must hold one width, got {list(cfg.model.widths)}")
    check_int("data.n_train", cfg.data.n_train)
    check_int("drift_points", cfg.drift_points, low=2)
    check_odd_grid("n_probe", cfg.n_probe)
    if cfg.threads is not None:
        check_int("threads", cfg.threads)


def run(cfg: DictConfig) -> pd.DataFrame | None:
    """Run one drift job; return its table, or None when it was already done."""
    check_config(cfg)
    paths = sweep_job_paths(cfg, "theta0")
    start = start_sweep_job(cfg, paths)
    if start is None:
        return None
    device, dtype, kernel_dtype = resolve_device(cfg.device), resolve_dtype(cfg.dtype), resolve_dtype(cfg.kernel_dtype)
    width, depth = cfg.model.widths[0], cfg.model.depth

    x = gaussian_inputs(cfg.data.n_train, 2, torch.Generator().manual_seed(cfg.data.seed))
    y = product_target(x).to(device, dtype)
    x = x.to(device, dtype)
    gamma, probe = circle_grid(cfg.n_probe)
    probe = probe.to(device, kernel_dtype)
    model = build_model(cfg, 2, width, cfg.seed, device, dtype)
    x0 = torch.tensor([[1.0, 0.0]], dtype=kernel_dtype, device=device)  # the paper's x0 (Figure 1)
    theta0 = empirical_ntk(model, x0, probe, dtype=kernel_dtype)[0]  # Theta_0(x0, x(gamma)), (n_probe,)
    result, rows = train(cfg, model, x, y, [], None, probe=probe)
    key = dict(width=width, depth=depth, seed=cfg.seed)
    table = pd.DataFrame([key | row | dict(lr_max=result.lr_max) for row in rows])

    # Written in this order: the table marks the job as done, so it goes last.
    atomic_write_text(paths["theta0"], pd.DataFrame(key | dict(gamma=gamma.numpy(), theta0=theta0.cpu().numpy())).to_csv(index=False))
    finish_sweep_job(cfg, paths, table, start, device)
    return table


def load_jobs(jobs: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All finished jobs; if one (width, depth, seed) was run under several configs, the newest wins."""
    files = sorted((p for p in jobs.glob("*.csv") if not p.name.endswith(".theta0.csv")), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no finished jobs in {jobs}/; run `python -m experiments.run -m +exp=drift_sweep` first")
    tables, thetas = [], []
    for path in files:
        key = path.name[: -len(".csv")]
        tables.append(pd.read_csv(path).assign(job=key))
        theta = path.with_name(f"{key}.theta0.csv")
        if theta.exists():
            thetas.append(pd.read_csv(theta).assign(job=key))
    table = pd.concat(tables, ignore_index=True)
    newest = table.drop_duplicates(["width", "depth", "seed"], keep="last")[["width", "depth", "seed", "job"]]
    if len(newest) < table.job.nunique():
        print(f"note: {table.job.nunique() - len(newest)} older job(s) with the same width, depth and seed are ignored")
    table = table.merge(newest, on=["width", "depth", "seed", "job"]).drop_duplicates(["job", "t"])
    theta0 = pd.concat(thetas, ignore_index=True).merge(newest, on=["width", "depth", "seed", "job"]) if thetas else pd.DataFrame()
    return table.sort_values(["depth", "width", "seed", "t"], ignore_index=True), theta0


def aggregate(run_dir: Path) -> dict[str, pd.DataFrame]:
    run_dir = Path(run_dir)
    table, theta0 = load_jobs(run_dir / "jobs")
    last = table[table.t == table.groupby("job").t.transform("max")]
    fits = [dict(quantity=q, depth=d) | fit_exponent(g.width, g[q]) for q in QUANTITIES for d, g in last.groupby("depth")]
    spread = pd.DataFrame()
    if len(theta0):
        per = theta0.groupby(["depth", "width", "gamma"]).theta0.agg(["mean", "var", "count"]).reset_index()
        per = per[per["count"] >= 2]
        if len(per):
            per["mean2"] = per["mean"] ** 2
            spread = per.groupby(["depth", "width"]).agg(var=("var", "mean"), mean2=("mean2", "mean"), seeds=("count", "min")).reset_index()
            spread["spread"] = np.sqrt(spread["var"] / spread["mean2"])  # RMS sd over the probe / RMS mean kernel
            spread = spread[["depth", "width", "spread", "seeds"]]
            fits += [dict(quantity="theta0_spread", depth=d) | fit_exponent(g.width, g.spread) for d, g in spread.groupby("depth")]
    fits = pd.DataFrame(fits)
    out = {"table": table, "fits": fits, "spread": spread}
    for name, frame in out.items():
        atomic_write_text(run_dir / f"{name}.csv", frame.to_csv(index=False, float_format="%.8g"))
    atomic_write_json(
        run_dir / "provenance.json",
        provenance(command=["python", "-m", "scripts.aggregate_drift", f"dir={run_dir}"], jobs=int(table.job.nunique())),
    )
    render("drift_sweep", run_dir)
    return out


EXPERIMENT = Experiment(
    name="drift_sweep",
    check=check_config,
    entry=run,
    schema=DriftSweepSchema,
    tiny=("width=24", "model.depth=3", "train.steps=4", "drift_points=3", "n_probe=9", "data.n_train=6"),
)


class AggregateOnEnd(Callback):
    """Hydra callback: merge the jobs and draw the figures when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:  # noqa: D102
        aggregate(Path(config.out_dir))
