"""Typed schemas of every config (Hydra structured configs).

Each YAML file of configs/model, configs/train and configs/data starts from one of the group
dataclasses here (its defaults list names `<file>_schema`), and each configs/exp/<name>.yaml from
`exp_schema/<name>`, the schema its experiment module declares (`Experiment.schema`, registered by
`experiments.runner.register_schemas`). Schemas hold types only: every value is in a YAML file.
Hydra thus rejects a misspelled key or a value of the wrong type while composing, before any work;
the ranges (width >= 1, lr > 0, ...) are checked once by the experiment's `check` (`experiments.runner`
calls it first), also before any work. `register_all` registers the schemas; importing this module
does not.
"""

from __future__ import annotations

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from experiments.runner import register_schemas


@dataclass
class RootSchema:
    """The keys of configs/config.yaml, shared by every experiment (merged into each exp_schema/<name>)."""

    name: str | None = MISSING
    device: str = MISSING
    dtype: str = MISSING
    kernel_dtype: str = MISSING
    seed: int = MISSING
    n_seeds: int = MISSING
    out_dir: str = MISSING
    progress: str = MISSING  # auto | true | false
    resume: bool = MISSING
    drift_points: int = MISSING


@dataclass
class ModelSchema:
    widths: list[int] = MISSING
    depth: int = MISSING  # weight layers
    beta: float = MISSING
    activation: str = MISSING


@dataclass
class TrainSchema:
    lr: float = MISSING
    steps: int = MISSING
    method: str = MISSING
    divergence_factor: float = MISSING


@dataclass
class CircleDataSchema:
    n_train: int = MISSING
    seed: int = MISSING
    n_gamma: int = MISSING


@dataclass
class Circle4DataSchema:
    train_gamma_over_pi: list[float] = MISSING
    n_gamma: int = MISSING


@dataclass
class MnistSourceSchema:
    source: str = MISSING
    root: str = MISSING
    download: bool = MISSING


@dataclass
class MnistDataSchema(MnistSourceSchema):
    batch_size: int = MISSING
    batch_seed: int = MISSING


@dataclass
class MnistSplitDataSchema(MnistSourceSchema):
    n_train: int = MISSING
    n_test: int = MISSING
    seed: int = MISSING


SCHEMAS = {
    ("model", "ntk_mlp_schema"): ModelSchema,
    ("train", "gd_schema"): TrainSchema,
    ("data", "circle_schema"): CircleDataSchema,
    ("data", "circle4_schema"): Circle4DataSchema,
    ("data", "mnist_schema"): MnistDataSchema,
    ("data", "mnist_split_schema"): MnistSplitDataSchema,
}


def register_all() -> None:
    """Put every schema into Hydra's config store: the groups' above, and every experiment's joined
    with `RootSchema` (`experiments.runner.register_schemas`, which imports each experiment module).
    The entry points that compose configs call it (`experiments.run` on import, the unknown-key
    message, the tests' compose fixture); calling it again changes nothing."""
    # ${tiles_of:<row_blocks>}: the tiles of a symmetric kernel cut into row_blocks^2 blocks (the kernel_tiles sweep)
    OmegaConf.register_new_resolver("tiles_of", lambda blocks: int(blocks) * (int(blocks) + 1) // 2, replace=True)
    store = ConfigStore.instance()
    for (group, name), node in SCHEMAS.items():
        store.store(group=group, name=name, node=node)
    register_schemas(RootSchema)
