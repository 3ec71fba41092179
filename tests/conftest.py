from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from experiments.schema import register_all
from ntk.model import NTKMLP

# Every run records the machine's GEMM rate at its start and end (`experiments.persistence.gemm_gflops`):
# with 2048 x 2048 products that is about 2 s a run here, a fifth of the suite; 256 x 256 takes
# milliseconds. Set before any command runs, so that the commands' own processes inherit it.
os.environ.setdefault("NTK_GEMM_SIZE", "256")
os.environ.setdefault("NTK_RESULT_GRACE_S", "1")  # the test cluster's jobs write their results on a local disk: no lag to wait for

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
ROOT = CONFIG_DIR.parent

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


@pytest.fixture(scope="session")
def cli():
    """run(args, env=None): `python -m experiments.run <args>` in a process of its own (its exit
    status, stdout and stderr as `subprocess.run` gives them, `env` added to its environment); on
    POSIX forked from a server that imported it once for the whole test run (`tests.cli_server`:
    the imports cost ~5 s a command here)."""
    if not hasattr(os, "fork"):

        def run(args, env=None):
            full = dict(os.environ, **(env or {}))
            return subprocess.run([sys.executable, "-m", "experiments.run", *args], cwd=ROOT, capture_output=True, text=True, env=full)

        yield run
        return
    from tests.cli_server import Server

    server = Server()
    yield server.run
    server.close()
