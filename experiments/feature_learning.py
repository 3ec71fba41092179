"""Where the NTK stops: the lazy and the feature-learning regimes, against width and Chizat's scale.

One job trains one network: an MLP of `model.depth` weight layers and hidden width `width` in one
parameterisation (`ntk.parameterization`: "ntk", "standard" or "mean_field", muP with base width
`base_width`), scaled as Chizat, Oyallon & Bach 2019 do, f_alpha = alpha (f(w) - f(w_0))
(`ntk.LazyScaled`), trained by full-batch gradient descent on the squared loss of an MNIST parity
task (data.n_train digits, target +1 for even and -1 for odd digits, one output; every image
centred and scaled to |x|^2 = 784) up to the function-space time T = train.lr x train.steps, the
same at every alpha. At the end it measures, on `n_probe` fixed test digits, the kernel change
||Theta_T - Theta_0||_F / ||Theta_0||_F and the centred kernel-target alignment of Theta_T (Cortes,
Mohri & Rostamizadeh 2012), and on all data.n_test test digits the test accuracy (sign of f) and MSE.

Small alpha is stiff: gradient descent at rate lr diverges once alpha sqrt(n) is small (the
Hessian of the cost in u carries a factor 1/alpha). A job that diverges restarts from its
initialisation at half the rate, up to `max_halvings` times, and takes T / lr steps, at most
`max_step_factor` x train.steps: the table says which rate and time each run reached (columns lr, t);
where the cap binds, t < T.

Every job writes results/<name>/jobs/<key>.csv and <key>.config.yaml (resolved config and
provenance), where <key> hashes its resolved config: a rerun skips finished jobs (overwrite=true
redoes them), so an interrupted sweep resumes by running the same command. `aggregate` merges the
jobs into table.csv, fits the exponents (fits.csv: kernel change against width at alpha = 1 and
against alpha in the lazy regime, and the crossover alpha* against width, each with its 95%
interval), writes the crossovers (crossover.csv) and the two regimes' scores (regimes.csv: the runs
that reached T, by kernel change below 0.03 / above 0.3), the lazy regime's n = inf end point
(limit.csv: kernel gradient descent with the limiting NTK on the same digits at t = T and t = inf),
and draws the figures; `AggregateOnEnd` runs it when a Hydra multirun ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from hydra.experimental.callback import Callback
from omegaconf import MISSING, DictConfig, OmegaConf

from experiments.figures import render
from experiments.fits import fit_exponent
from experiments.launching import finish_sweep_job, start_sweep_job, sweep_job_paths
from experiments.persistence import atomic_write_json, atomic_write_text, provenance
from experiments.runner import Experiment
from experiments.validation import check_choice, check_int, check_model_and_training, check_positive
from ntk.analytic import limiting_kernels
from ntk.data import MNIST_SOURCES, mnist_split
from ntk.empirical import empirical_ntk
from ntk.model import NTKMLP
from ntk.parameterization import PARAMETERIZATIONS, LazyScaled
from ntk.predict import flow_matrix
from ntk.train import DivergenceError, gradient_descent, largest_stable_lr
from ntk.utils import resolve_device, resolve_dtype

CROSSOVER = 0.1  # the kernel change that marks the crossover alpha* (Geiger et al. 2020's criterion here)
LAZY, FEATURE = 0.03, 0.3  # runs below / above these kernel changes are counted as lazy / feature learning
KEY = ["parameterization", "width", "alpha", "seed"]


@dataclass
class FeatureLearningSchema:
    width: int = MISSING
    alpha: float = MISSING
    parameterization: str = MISSING
    base_width: int = MISSING
    n_probe: int = MISSING
    max_halvings: int = MISSING
    max_step_factor: int = MISSING
    overwrite: bool = MISSING
    threads: int | None = MISSING


def check_config(cfg: DictConfig) -> None:
    check_model_and_training(cfg)
    if len(cfg.model.widths) != 1:
        raise ValueError(f"a feature_learning job trains one network: model.widths must hold one width, got {list(cfg.model.widths)}")
    check_choice("parameterization", cfg.parameterization, PARAMETERIZATIONS)
    check_positive("alpha", cfg.alpha)
    if not math.isfinite(float(cfg.alpha)):
        raise ValueError(f"alpha must be a positive finite number, got {cfg.alpha!r}")
    check_int("base_width", cfg.base_width)
    check_int("model.depth", cfg.model.depth, low=2)
    check_int("data.n_train", cfg.data.n_train)
    check_int("data.n_test", cfg.data.n_test)
    check_choice("data.source", cfg.data.source, MNIST_SOURCES)
    check_int("n_probe", cfg.n_probe, low=2)
    if cfg.n_probe > cfg.data.n_test:
        raise ValueError(f"n_probe must be at most data.n_test = {cfg.data.n_test} (the probe digits are test digits), got {cfg.n_probe}")
    check_int("max_halvings", cfg.max_halvings, low=0)
    check_int("max_step_factor", cfg.max_step_factor)
    if cfg.threads is not None:
        check_int("threads", cfg.threads)


def parity_task(cfg: DictConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test): centred images scaled to |x|^2 = 784, targets +1 (even) / -1 (odd)."""
    d = cfg.data
    x_train, l_train, x_test, l_test = mnist_split(d.n_train, d.n_test, d.seed, d.source, d.root, d.download)

    def normalise(x: torch.Tensor) -> torch.Tensor:
        x = x - x.mean(1, keepdim=True)
        return x * (math.sqrt(x.shape[1]) / x.norm(dim=1, keepdim=True))

    def target(labels: torch.Tensor) -> torch.Tensor:
        return (1.0 - 2.0 * (labels % 2)).double()[:, None]  # (N, 1)

    return normalise(x_train), target(l_train), normalise(x_test), target(l_test)


def alignment(kernel: torch.Tensor, y: torch.Tensor) -> float:
    """Centred kernel-target alignment <K_c, (y y^T)_c>_F / (||K_c||_F ||(y y^T)_c||_F), K_c = H K H."""
    n = kernel.shape[0]
    h = torch.eye(n, dtype=kernel.dtype) - 1.0 / n
    kc, yc = h @ kernel @ h, h @ (y @ y.T) @ h
    return float((kc * yc).sum() / (kc.norm() * yc.norm()))


def train_scaled(cfg: DictConfig, model: NTKMLP, x: torch.Tensor, y: torch.Tensor, lr_max: float) -> tuple[LazyScaled, dict]:
    """f_alpha trained to T = train.lr x train.steps, halving the rate after a divergence (module docstring)."""
    horizon = cfg.train.lr * cfg.train.steps
    for halving in range(cfg.max_halvings + 1):
        lr = cfg.train.lr / 2**halving
        steps = min(round(horizon / lr), cfg.max_step_factor * cfg.train.steps)
        scaled = LazyScaled(model, cfg.alpha)
        try:
            result = gradient_descent(
                scaled, x, y, lr=lr, steps=steps, method="autograd", divergence_factor=cfg.train.divergence_factor, lr_max=lr_max
            )
        except DivergenceError:
            continue
        return scaled, dict(lr=lr, steps=steps, t=lr * steps, halvings=halving, train_loss=result.loss[-1], diverged=False)
    return scaled, dict(lr=lr, steps=0, t=0.0, halvings=cfg.max_halvings, train_loss=math.nan, diverged=True)


def run(cfg: DictConfig) -> pd.DataFrame | None:
    """Run one job; return its one-row table, or None when it was already done."""
    check_config(cfg)
    paths = sweep_job_paths(cfg)
    start = start_sweep_job(cfg, paths)
    if start is None:
        return None
    device, dtype, kernel_dtype = resolve_device(cfg.device), resolve_dtype(cfg.dtype), resolve_dtype(cfg.kernel_dtype)
    width = cfg.model.widths[0]
    x_train, y_train, x_test, y_test = parity_task(cfg)
    probe, y_probe = x_test[: cfg.n_probe], y_test[: cfg.n_probe]
    x, y = x_train.to(device, dtype), y_train.to(device, dtype)
    model = NTKMLP(
        x.shape[1],
        width,
        cfg.model.depth,
        beta=cfg.model.beta,
        activation=cfg.model.activation,
        generator=torch.Generator().manual_seed(cfg.seed),
        device=device,
        dtype=dtype,
        parameterization=cfg.parameterization,
        base_width=cfg.base_width,
    )
    theta0 = empirical_ntk(model, probe.to(device), dtype=kernel_dtype).cpu()  # Theta_0 on the probe digits, (P, P)
    lr_max = largest_stable_lr(model, x)  # the same for every alpha: f_alpha's kernel at u = 0 is f's
    scaled, fit = train_scaled(cfg, model, x, y, lr_max)
    row = dict(parameterization=cfg.parameterization, width=width, alpha=float(cfg.alpha), seed=cfg.seed, depth=cfg.model.depth) | fit
    if fit["diverged"]:
        row |= dict(kernel_change=math.nan, weight_change=math.nan, test_accuracy=math.nan, test_mse=math.nan, alignment=math.nan)
    else:
        network = scaled.network()  # the network at w = w_0 + u / alpha: its NTK is f_alpha's
        theta = empirical_ntk(network, probe.to(device), dtype=kernel_dtype).cpu()
        shift = torch.cat([u.detach().double().flatten() for u in scaled.shifts]).norm() / cfg.alpha  # ||w_T - w_0||
        w0 = torch.cat([p.detach().double().flatten() for p in scaled.model.parameters()]).norm()
        with torch.no_grad():
            f = scaled(x_test.to(device, dtype)).double().cpu()  # (M, 1)
        row |= dict(
            kernel_change=float((theta - theta0).norm() / theta0.norm()),
            weight_change=float(shift / w0),
            test_accuracy=float((f.sign() == y_test).double().mean()),
            test_mse=float((f - y_test).square().mean()),
            alignment=alignment(theta, y_probe),
        )
    row |= dict(alignment_0=alignment(theta0, y_probe), lr_max=lr_max)
    table = pd.DataFrame([row])  # results only: the job's wall time goes to its provenance
    finish_sweep_job(cfg, paths, table, start, device)
    return table


def load_jobs(jobs: Path) -> pd.DataFrame:
    """All finished jobs; if one (parameterization, width, alpha, seed) ran under several configs, the newest wins."""
    files = sorted(jobs.glob("*.csv"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no finished jobs in {jobs}/; run `python -m experiments.run -m +exp=feature_learning` first")
    table = pd.concat([pd.read_csv(p).assign(job=p.stem) for p in files], ignore_index=True)
    newest = table.drop_duplicates(KEY, keep="last")
    if len(newest) < len(table):
        print(f"note: {len(table) - len(newest)} older job(s) with the same parameterization, width, alpha and seed are ignored")
    return newest.sort_values(KEY, ignore_index=True)


def job_seconds(jobs: Path, keys: set[str]) -> float:
    """The summed wall time of the jobs `keys`, from the provenance in their config files."""
    total = 0.0
    for key in keys:
        path = jobs / f"{key}.config.yaml"
        if path.exists():
            total += float(OmegaConf.load(path).provenance.get("wall_time_s", 0.0))
    return total


def crossover_alpha(alphas: np.ndarray, changes: np.ndarray, level: float = CROSSOVER) -> float:
    """The alpha where the kernel change falls through `level`, interpolated in log-log between the
    grid's last alpha above it and the next one; NaN if it never crosses on the grid.

    >>> round(crossover_alpha(np.array([0.1, 1.0, 10.0]), np.array([3.0, 0.3, 0.03])), 6)  # change = 0.3 / alpha
    3.0
    """
    order = np.argsort(alphas)
    a, c = np.log(alphas[order]), np.log(changes[order])
    above = np.nonzero(c >= math.log(level))[0]
    if len(above) == 0 or above[-1] == len(a) - 1 or not np.all(np.isfinite(c[above[-1] : above[-1] + 2])):
        return math.nan
    i = above[-1]
    return float(np.exp(a[i] + (math.log(level) - c[i]) * (a[i + 1] - a[i]) / (c[i + 1] - c[i])))


def lazy_limit(run_dir: Path, horizon: float) -> pd.DataFrame:
    """The lazy regime's n = inf end point on the same digits: kernel gradient descent with the NTK
    parameterisation's limiting Theta (Jacot et al. 2018, Theorems 1 and 2) from f = 0 (where every
    f_alpha starts), at t = `horizon` by gradient descent at the jobs' rate, and at t = inf (kernel
    regression). The data and network settings are those of the first job's config (every job of a
    sweep shares them); empty when no job config is there."""
    configs = sorted((run_dir / "jobs").glob("*.config.yaml"))
    if not configs:
        return pd.DataFrame()
    cfg = OmegaConf.load(configs[0]).config
    x_train, y_train, x_test, y_test = parity_task(cfg)
    n = len(x_train)
    _, theta = limiting_kernels(
        torch.cat([x_train, x_test]).double(), x_train.double(), cfg.model.depth, cfg.model.beta, cfg.model.activation
    )
    rows = []
    for t, lr in ((horizon, cfg.train.lr), (math.inf, None)):
        gain = flow_matrix(theta[:n], t, lr=lr)  # A_t, (N, N)
        f_train, f_test = theta[:n] @ gain @ y_train, theta[n:] @ gain @ y_train
        rows.append(
            dict(
                predictor="ntk_limit_gd" if lr else "ntk_limit",
                t=t,
                train_loss=float(0.5 * (f_train - y_train).square().sum() / n),
                test_accuracy=float((f_test.sign() == y_test).double().mean()),
                test_mse=float((f_test - y_test).square().mean()),
            )
        )
    return pd.DataFrame(rows)


def aggregate(run_dir: Path) -> dict[str, pd.DataFrame]:
    """table.csv, fits.csv, crossover.csv, regimes.csv and limit.csv from the finished jobs, then the figures."""
    run_dir = Path(run_dir)
    table = load_jobs(run_dir / "jobs")
    ok = table[~table.diverged.astype(bool)]
    fits = []
    for par, g in ok[np.isclose(ok.alpha, 1.0)].groupby("parameterization"):  # (a) against width at alpha = 1
        fits.append(
            dict(quantity="kernel_change_vs_width", parameterization=par, width=np.nan, alpha=1.0) | fit_exponent(g.width, g.kernel_change)
        )
    for (par, width), g in ok.groupby(["parameterization", "width"]):  # (b) against alpha where the run is lazy
        if g.alpha.nunique() < 2:
            continue
        lazy = g[(g.kernel_change < CROSSOVER) & (g.alpha >= 1.0)]
        fits.append(
            dict(quantity="kernel_change_vs_alpha", parameterization=par, width=width, alpha=np.nan)
            | fit_exponent(lazy.alpha, lazy.kernel_change)
        )
    crossings = []
    for (par, width, seed), g in ok.groupby(["parameterization", "width", "seed"]):  # (c) alpha* per network
        if g.alpha.nunique() >= 2:
            crossings.append(
                dict(
                    parameterization=par, width=width, seed=seed, alpha_star=crossover_alpha(g.alpha.to_numpy(), g.kernel_change.to_numpy())
                )
            )
    crossover = pd.DataFrame(crossings, columns=["parameterization", "width", "seed", "alpha_star"])
    for par, g in crossover.groupby("parameterization"):
        fits.append(
            dict(quantity="alpha_star_vs_width", parameterization=par, width=np.nan, alpha=np.nan) | fit_exponent(g.width, g.alpha_star)
        )
    fits = pd.DataFrame(fits)
    full = ok[np.isclose(ok.t, ok.t.max())]  # runs that reached T: the regimes compared at equal time
    regime = np.where(full.kernel_change < LAZY, "lazy", np.where(full.kernel_change > FEATURE, "feature", "between"))
    regimes = (
        full.assign(regime=regime)
        .groupby(["parameterization", "width", "regime"])
        .agg(
            runs=("seed", "size"),
            test_accuracy=("test_accuracy", "mean"),
            test_accuracy_sd=("test_accuracy", "std"),
            alignment=("alignment", "mean"),
            train_loss=("train_loss", "mean"),
            kernel_change=("kernel_change", "median"),
        )
        .reset_index()
    )
    limit = lazy_limit(run_dir, float(ok.t.max()))
    out = {"table": table.drop(columns="job"), "fits": fits, "crossover": crossover, "regimes": regimes, "limit": limit}
    for name, frame in out.items():
        atomic_write_text(run_dir / f"{name}.csv", frame.to_csv(index=False, float_format="%.8g"))
    atomic_write_json(
        run_dir / "provenance.json",
        provenance(
            command=["python", "-m", "scripts.aggregate_feature_learning", f"dir={run_dir}"],
            experiment="feature_learning",
            jobs=int(len(table)),
            wall_time_s_jobs=round(job_seconds(run_dir / "jobs", set(table.job)), 2),
        ),
    )
    render("feature_learning", run_dir)
    return out


EXPERIMENT = Experiment(
    name="feature_learning",
    check=check_config,
    entry=run,
    schema=FeatureLearningSchema,
    tiny=("width=16", "alpha=0.5", "base_width=16", "train.steps=3", "data.n_train=24", "data.n_test=12", "n_probe=6"),
)


class AggregateOnEnd(Callback):
    """Hydra callback: merge the jobs, fit and draw the figures when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:  # noqa: D102
        aggregate(Path(config.out_dir))
