from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from experiments.schema import register_all
from ntk.model import NTKMLP

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, needs_cuda])])
def device(request) -> torch.device:
    """Every device a test can run on here: the CPU always, CUDA when it is available (marked gpu)."""
    return torch.device(request.param)


def mlp(in_dim: int, width, depth: int, seed: int = 0, dtype: torch.dtype = torch.float64, **kwargs) -> NTKMLP:
    """The tests' network: an NTK MLP drawn from a CPU generator seeded `seed` (float64 by default)."""
    return NTKMLP(in_dim, width, depth, generator=torch.Generator().manual_seed(seed), dtype=dtype, **kwargs)


def rel_fro(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative Frobenius error ||a - b|| / ||b||."""
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture
def compose_cfg():
    """compose_cfg(overrides) -> the config `python -m experiments.run <overrides>` would run."""

    return compose_config


def compose_config(overrides: list[str]) -> DictConfig:
    """The config `python -m experiments.run <overrides>` would run (the schemas registered first, as that entry point does)."""
    register_all()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)
