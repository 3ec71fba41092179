"""Typed schemas of every config (Hydra structured configs).

Each YAML file of configs/model, configs/train and configs/data starts from one of the group
dataclasses (its defaults list names `<file>_schema`), and each configs/exp/<name>.yaml from
`exp_schema/<name>` (the keys that experiment adds, with no
values: the YAML file holds them). Hydra thus rejects a misspelled key or a value of the wrong type
while composing, before any work; the ranges (width >= 1, lr > 0, ...) are checked once by the
experiment's `check_config` (`experiments.runner` calls it first), also before any work.
Importing this module registers the schemas.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


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


@dataclass
class CircleWidthSchema:
    kernel_t: list[float] | None = MISSING


@dataclass
class CircleRegressionSchema:
    limit_t: float | None = MISSING
    approx_width: int = MISSING
    approx_seed: int = MISSING


@dataclass
class CircleActivationsSchema:
    activations: list[str] = MISSING


@dataclass
class MnistPcaSchema:
    n_batches: int = MISSING
    k: int = MISSING


@dataclass
class ComponentTargetSchema:
    """The Figure 3 target and what is logged along the kernel principal components."""

    record_dt: float = MISSING
    kernel_dt: float = MISSING
    k: int = MISSING
    target_components: list[int] = MISSING
    tracked_component: int = MISSING
    target_amplitude: float = MISSING
    checkpoint_minutes: float = MISSING


@dataclass
class MnistConvergenceSchema(ComponentTargetSchema):
    narrow_width: int = MISSING
    narrow_lr: float = MISSING


@dataclass
class MnistLrEquivalenceSchema(ComponentTargetSchema):
    lrs: list[float] = MISSING
    t_max: float = MISSING
    tolerance: float = MISSING


@dataclass
class MnistGeneralizationSchema:
    record_t: list[float] = MISSING
    checkpoint_minutes: float = MISSING


@dataclass
class DriftSweepSchema:
    width: int = MISSING
    n_probe: int = MISSING
    overwrite: bool = MISSING
    threads: int | None = MISSING


SCHEMAS = {
    ("exp_schema", "circle_width"): CircleWidthSchema,
    ("exp_schema", "circle_regression"): CircleRegressionSchema,
    ("exp_schema", "circle_activations"): CircleActivationsSchema,
    ("exp_schema", "mnist_pca"): MnistPcaSchema,
    ("exp_schema", "mnist_convergence"): MnistConvergenceSchema,
    ("exp_schema", "mnist_lr_equivalence"): MnistLrEquivalenceSchema,
    ("exp_schema", "mnist_generalization"): MnistGeneralizationSchema,
    ("exp_schema", "drift_sweep"): DriftSweepSchema,
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
