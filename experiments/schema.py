"""Typed schemas of the config groups (Hydra structured configs).

Each YAML file of configs/model, configs/train and configs/data starts from one of these
dataclasses (its defaults list names `<file>_schema`), so Hydra rejects a misspelled key or a value
of the wrong type while composing, before any work; ranges (width >= 1, lr > 0, ...) are checked by
the experiments, also before any work. Importing this module registers the schemas.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore


@dataclass
class ModelSchema:
    widths: list[int] = field(default_factory=lambda: [500])  # one network per entry
    depth: int = 4  # weight layers
    beta: float = 0.1
    activation: str = "relu"


@dataclass
class TrainSchema:
    lr: float = 1.0
    steps: int = 200
    method: str = "auto"
    divergence_factor: float = 1.0e4


@dataclass
class CircleDataSchema:
    n_train: int = 64
    seed: int = 1234
    n_gamma: int = 201


@dataclass
class Circle4DataSchema:
    train_gamma_over_pi: list[float] = field(default_factory=lambda: [-0.75, -0.25, 0.25, 0.75])
    n_gamma: int = 201


@dataclass
class MnistDataSchema:
    source: str = "auto"
    root: str = "data"
    download: bool = False
    batch_size: int = 512
    batch_seed: int = 0


SCHEMAS = {
    ("model", "ntk_mlp_schema"): ModelSchema,
    ("train", "gd_schema"): TrainSchema,
    ("data", "circle_schema"): CircleDataSchema,
    ("data", "circle4_schema"): Circle4DataSchema,
    ("data", "mnist_schema"): MnistDataSchema,
}

store = ConfigStore.instance()
for (group, name), node in SCHEMAS.items():
    store.store(group=group, name=name, node=node)
