"""Every range check of the configs, in one place.

Hydra checks types and key names while composing (`experiments.schema`); the functions here check
ranges and choices. Each experiment's `check_config` is built from them and is run once, first, by
`experiments.runner` (the drift sweep: by its job), so a bad value ends in one line before any work
or any write. The library keeps its own argument checks for users who call it directly.
"""

from __future__ import annotations

from collections.abc import Iterable

from omegaconf import DictConfig

from ntk.activations import ACTIVATIONS
from ntk.data import MNIST_SOURCES
from ntk.train import TRAIN_METHODS
from ntk.utils import DTYPES, resolve_device


def check_int(name: str, value: object, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def check_positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
    return float(value)


def check_nonnegative(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


def check_choice(what: str, value: object, allowed: Iterable[str]) -> str:
    """`value` must be one of `allowed`: "unknown <what> <value>; allowed: <allowed, in the given order>"."""
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; allowed: {', '.join(allowed)}")
    return value


def check_odd_grid(name: str, value: object) -> int:
    """A grid of angles in [-pi, pi] that contains 0: an odd number of points >= 3."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 3 or value % 2 == 0:
        raise ValueError(f"{name}: the gamma grid needs an odd number of points >= 3 (so gamma = 0 is on it), got {value!r}")
    return value


def check_run(cfg: DictConfig) -> None:
    """dtype, kernel_dtype and device."""
    check_choice("dtype", cfg.dtype, DTYPES)
    check_choice("kernel_dtype", cfg.kernel_dtype, DTYPES)
    resolve_device(cfg.device)  # auto, cpu, cuda, cuda:<index>, and CUDA present when asked for


def check_depth_and_beta(cfg: DictConfig) -> None:
    """model.depth and model.beta, what a limiting kernel needs besides its activation."""
    check_int("model.depth", cfg.model.depth)
    if not cfg.model.beta >= 0:
        raise ValueError(f"model.beta must be >= 0, got {cfg.model.beta!r}")


def check_model(cfg: DictConfig, allow_empty: bool = False) -> None:
    """model.*: the widths (at least one unless `allow_empty`), depth, activation and beta."""
    widths = cfg.model.widths
    if not widths and not allow_empty:
        raise ValueError("model.widths must list at least one width")
    for w in widths:
        check_int("model.widths entries", w)
    check_depth_and_beta(cfg)
    check_choice("activation", cfg.model.activation, sorted(ACTIVATIONS))


def check_seeds(cfg: DictConfig) -> None:
    check_int("n_seeds", cfg.n_seeds)
    check_int("seed", cfg.seed, low=0)


def check_model_and_training(cfg: DictConfig) -> None:
    """The checks every training experiment shares (model.*, train.*, seeds)."""
    check_model(cfg)
    check_positive("train.lr", cfg.train.lr)
    check_int("train.steps", cfg.train.steps, low=0)
    check_choice("train.method", cfg.train.method, TRAIN_METHODS)
    check_seeds(cfg)
    check_int("drift_points", cfg.drift_points, low=0)
    check_run(cfg)


def check_mnist(cfg: DictConfig, min_batch: int = 1) -> None:
    """The data.* checks of the MNIST experiments."""
    check_int("data.batch_size", cfg.data.batch_size, low=min_batch)
    check_choice("data.source", cfg.data.source, MNIST_SOURCES)
