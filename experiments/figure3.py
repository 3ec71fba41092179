"""The Figure 3 setup shared by `mnist_convergence` and `mnist_lr_equivalence` (Section 6.3).

A batch of MNIST digits, the top-k components of the exact infinite-width NTK on it, and networks
trained towards f* = f0 + A sum_{i in S} f(i) (A = target_amplitude, S = target_components), logging
the residual along the tracked component, the component amplitudes and the network's own NTK along
the components (`train_network`; the module docstring of `experiments.mnist_convergence` gives the
quantities). Both experiments build on the schema, checks, shared state and job defined here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from omegaconf import MISSING, DictConfig

from experiments.persistence import Checkpoint
from experiments.training import build_model, loss_table, time_grid, train, with_lr
from experiments.validation import check_int, check_mnist, check_model_and_training, check_nonnegative, check_positive
from ntk.analytic import limiting_kernels
from ntk.data import mnist_batch
from ntk.drift import kernel_drift
from ntk.empirical import empirical_ntk
from ntk.spectrum import kernel_pca, rayleigh_quotients
from ntk.train import TrainState
from ntk.utils import resolve_device, resolve_dtype


@dataclass
class ComponentSchema:
    """The Figure 3 target along kernel principal components and the times the residual is recorded."""

    record_dt: float = MISSING
    k: int = MISSING
    target_components: list[int] = MISSING
    tracked_component: int = MISSING
    target_amplitude: float = MISSING


@dataclass
class ComponentTargetSchema(ComponentSchema):
    """ComponentSchema, with the network's own kernel logged and checkpoints (the networks trained here)."""

    kernel_dt: float = MISSING
    checkpoint_minutes: float = MISSING


def check_components(cfg: DictConfig) -> None:
    """The checks of the Figure 3 target (ComponentSchema) and of the training."""
    check_model_and_training(cfg)
    check_int("k", cfg.k, low=2)
    check_mnist(cfg, min_batch=cfg.k)
    check_positive("target_amplitude", cfg.target_amplitude)
    if not cfg.target_components or any(not 1 <= i <= cfg.k for i in cfg.target_components):
        raise ValueError(f"target_components must list components in [1, k={cfg.k}], got {list(cfg.target_components)}")
    if not 1 <= cfg.tracked_component <= cfg.k:
        raise ValueError(f"tracked_component must be in [1, k={cfg.k}], got {cfg.tracked_component}")


def check_target(cfg: DictConfig) -> None:
    """The checks of the Figure 3 settings both experiments share (ComponentTargetSchema)."""
    check_components(cfg)
    check_nonnegative("checkpoint_minutes", cfg.checkpoint_minutes)


def check_target_times(cfg: DictConfig) -> None:
    """record_dt and kernel_dt (where the experiment has it) fall on the steps of every network (at the lr of its width)."""
    for width in cfg.model.widths:
        sub = config_for_width(cfg, width)
        time_grid("record_dt", cfg.record_dt, sub.train.lr, sub.train.steps)
        if cfg.get("kernel_dt", 0) != 0:
            time_grid("kernel_dt", cfg.kernel_dt, sub.train.lr, sub.train.steps)


def check_narrow(cfg: DictConfig) -> None:
    """narrow_width and narrow_lr (`config_for_width`): narrow_lr divides the training time, and every
    recorded time is a step of every network."""
    check_int("narrow_width", cfg.narrow_width, low=0)
    check_positive("narrow_lr", cfg.narrow_lr)
    t_end = cfg.train.lr * cfg.train.steps
    if abs(t_end / cfg.narrow_lr - round(t_end / cfg.narrow_lr)) > 1e-9 * t_end / cfg.narrow_lr:
        raise ValueError(f"narrow_lr={cfg.narrow_lr:g} must divide the training time t = train.lr x train.steps = {t_end:g}")
    check_target_times(cfg)


def config_for_width(cfg: DictConfig, width: int) -> DictConfig:
    """The config one network of this width trains with: below `narrow_width`, narrow_lr to the same t."""
    if width >= cfg.get("narrow_width", 0):
        return cfg
    return with_lr(cfg, cfg.narrow_lr, cfg.train.lr * cfg.train.steps)


@dataclass
class Shared:
    """What every network of a run shares: the digits and the limiting kernel's components."""

    x: torch.Tensor  # (N, 784), float64, CPU
    lambdas: torch.Tensor  # (k,) eigenvalues of Theta_inf / N
    funcs: torch.Tensor  # (N, k) eigenfunctions, (1/N) sum f^2 = 1
    shift: torch.Tensor  # (N, 1) f* - f0 = A sum_{i in S} f(i)
    c0: np.ndarray  # (k,) amplitudes of f0 - f* = -shift


def prepare(cfg: DictConfig) -> Shared:
    """Load the batch, compute the exact limiting NTK and its top-k components, and the target shift."""
    x, _ = mnist_batch(cfg.data.batch_size, cfg.data.batch_seed, cfg.data.source, cfg.data.root, cfg.data.download)
    _, kernel = limiting_kernels(x, None, cfg.model.depth, cfg.model.beta, cfg.model.activation)
    lambdas, funcs = kernel_pca(kernel, cfg.k)  # (k,), (N, k)
    shift = cfg.target_amplitude * funcs[:, [i - 1 for i in cfg.target_components]].sum(1, keepdim=True)  # (N, 1)
    c0 = (-shift[:, 0] @ funcs / x.shape[0]).numpy()
    return Shared(x, lambdas, funcs, shift, c0)


def train_network(cfg: DictConfig, shared: Shared, width: int, seed: int, checkpoint: Checkpoint | None = None) -> dict[str, pd.DataFrame]:
    """Train one network as configured (cfg.train.lr, cfg.train.steps) and return its tables."""
    device, dtype, kernel_dtype = resolve_device(cfg.device), resolve_dtype(cfg.dtype), resolve_dtype(cfg.kernel_dtype)
    n, j = shared.x.shape[0], cfg.tracked_component - 1
    x = shared.x.to(device, dtype)
    funcs = shared.funcs.to(device)
    model = build_model(cfg, x.shape[1], width, seed, device, dtype)
    with torch.no_grad():
        target = model(x).double() + shared.shift.to(device)  # f* = f0 + A sum f(i), (N, 1)
    record_t = time_grid("record_dt", cfg.record_dt, cfg.train.lr, cfg.train.steps)
    kernel_t = set(time_grid("kernel_dt", cfg.kernel_dt, cfg.train.lr, cfg.train.steps)) if cfg.kernel_dt else set()
    kernel0 = empirical_ntk(model, x, dtype=kernel_dtype) if kernel_t else None  # Theta_0 of the initial network
    lambdas = shared.lambdas.numpy()
    rows: dict[str, list] = {"table": [], "components": [], "kernel": []}

    def record(state: TrainState) -> None:
        r = state.f.double()[:, 0] - target[:, 0]  # f_t - f*, (N,)
        amp = funcs.T @ r / n  # (k,)
        h = r - amp[j] * funcs[:, j]
        rows["table"].append(
            dict(
                width=width,
                seed=seed,
                lr=cfg.train.lr,
                t=state.t,
                loss=state.loss,
                g_norm=abs(amp[j].item()),
                h_norm=h.square().mean().sqrt().item(),
            )
        )
        key = dict(width=width, seed=seed, t=state.t, component=np.arange(1, cfg.k + 1))  # one row per component
        rows["components"].append(
            pd.DataFrame(
                dict(
                    **key,
                    amplitude=amp.cpu().numpy(),
                    predicted=shared.c0 * np.exp(-lambdas * state.t),
                )
            )
        )
        if state.t in kernel_t:
            kernel = kernel0 if state.step == 0 else empirical_ntk(state.model, x, dtype=kernel_dtype)  # (N, N)
            quotients = rayleigh_quotients(kernel, funcs).cpu().numpy()
            lam_max = torch.linalg.eigvalsh(kernel / n)[-1].item()
            rows["kernel"].append(
                pd.DataFrame(
                    dict(
                        **key,
                        rayleigh=quotients,
                        lambda_inf=lambdas,
                        rate_ratio=quotients / lambdas,
                        kernel_drift=kernel_drift(kernel, kernel0),
                        lr_max_t=2.0 / lam_max,
                    )
                )
            )

    result, drift = train(cfg, model, x, target.to(dtype), record_t, record, checkpoint=checkpoint, job_state=rows)
    kernel_rows = (
        pd.concat(rows["kernel"], ignore_index=True)
        if rows["kernel"]
        else pd.DataFrame(columns=["width", "seed", "t", "component", "rayleigh", "lambda_inf", "rate_ratio", "kernel_drift", "lr_max_t"])
    )
    return {
        "table": pd.DataFrame(rows["table"]),
        "components": pd.concat(rows["components"], ignore_index=True),
        "kernel": kernel_rows,
        "loss": loss_table(result, drift, width=width, seed=seed),
    }
