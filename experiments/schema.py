"""Typed schemas of every config (Hydra structured configs).

Each YAML file of configs/model, configs/train and configs/data starts from one of the group
dataclasses here (its defaults list names `<file>_schema`), and each configs/exp/<name>.yaml from
`exp_schema/<name>`, the schema its experiment module declares (`Experiment.schema`, registered by
`experiments.runner.register_schemas`). Schemas hold types only: every value is in a YAML file. Hydra thus rejects a misspelled key or a value of the wrong type
while composing, before any work; the ranges (width >= 1, lr > 0, ...) are checked once by the
experiment's `check_config` (`experiments.runner` calls it first), also before any work.
Importing this module registers the schemas.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore

from experiments.runner import register_schemas


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
class MnistSourceSchema:
    source: str = "auto"
    root: str = "data"
    download: bool = False


@dataclass
class MnistDataSchema(MnistSourceSchema):
    batch_size: int = 512
    batch_seed: int = 0


@dataclass
class MnistSplitDataSchema(MnistSourceSchema):
    n_train: int = 1000
    n_test: int = 1000
    seed: int = 0


SCHEMAS = {
    ("model", "ntk_mlp_schema"): ModelSchema,
    ("train", "gd_schema"): TrainSchema,
    ("data", "circle_schema"): CircleDataSchema,
    ("data", "circle4_schema"): Circle4DataSchema,
    ("data", "mnist_schema"): MnistDataSchema,
    ("data", "mnist_split_schema"): MnistSplitDataSchema,
}

store = ConfigStore.instance()
for (group, name), node in SCHEMAS.items():
    store.store(group=group, name=name, node=node)
register_schemas()
