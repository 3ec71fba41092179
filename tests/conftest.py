from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def rel_fro(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative Frobenius error ||a - b|| / ||b||."""
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture
def compose_cfg():
    """compose_cfg(overrides) -> the config `python -m experiments.run <overrides>` would run."""

    def _compose(overrides: list[str]) -> DictConfig:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose(config_name="config", overrides=overrides)

    return _compose
