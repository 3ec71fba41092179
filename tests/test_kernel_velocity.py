"""The kernel velocity experiment at tiny size: its stored velocities against a finite difference of
the rebuilt networks' kernels, and its summary on a hand-made table."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch

import experiments.kernel_velocity as kernel_velocity
from ntk.empirical import empirical_ntk
from ntk.model import NTKMLP
from ntk.train import mse_cost

TINY = ["+exp=kernel_velocity", "model.widths=[16,32,64]", "n_seeds=3", "n_train=4", "progress=false"]


def flowed(model: NTKMLP, x: torch.Tensor, y: torch.Tensor, eps: float) -> NTKMLP:
    other = copy.deepcopy(model).double()
    grads = torch.autograd.grad(mse_cost(other(x), y), list(other.parameters()))
    with torch.no_grad():
        for p, g in zip(other.parameters(), grads):
            p.sub_(eps * g)
    return other


def test_tiny_run_velocities_equal_finite_differences_of_the_rebuilt_networks(compose_cfg, tmp_path):
    cfg = compose_cfg([*TINY, f"out_dir={tmp_path}"])
    fits = kernel_velocity.run(cfg)
    assert set(zip(fits.activation, fits.quantity)) == {
        (a, q) for a in ("identity", "relu", "tanh") for q in ("mean", "spread", "relative")
    }
    table = pd.read_csv(tmp_path / "velocity.csv")
    shared = kernel_velocity.prepare(cfg)
    for activation, width, seed in (("relu", 32, 1), ("tanh", 64, 2)):
        model = NTKMLP(4, width, 4, activation=activation, generator=torch.Generator().manual_seed(seed))  # float32, as in the run
        eps = 1e-4
        up = empirical_ntk(flowed(model, shared.x, shared.y, eps), shared.x)
        down = empirical_ntk(flowed(model, shared.x, shared.y, -eps), shared.x)
        expected = ((up - down) / (2 * eps)).numpy()
        saved = table[(table.activation == activation) & (table.width == width) & (table.seed == seed)].sort_values(["i", "j"])
        got = saved.velocity.to_numpy().reshape(4, 4)
        assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 1e-6
    for name in ("summary.csv", "fits.csv", "kernel_velocity.png", "provenance.json"):
        assert (tmp_path / name).exists(), name


def test_summary_of_a_hand_made_velocity_table():
    """Two seeds, two pairs: velocities (1, 3) and (3, 1), kernels all 2."""
    rows = [
        dict(activation="relu", width=8, seed=s, i=0, j=p, ntk=2.0, velocity=v)
        for s, vs in ((0, (1.0, 3.0)), (1, (3.0, 1.0)))
        for p, v in enumerate(vs)
    ]
    row = kernel_velocity.summarise(pd.DataFrame(rows)).iloc[0]
    assert row["mean"] == pytest.approx(2.0)  # the seed means are (2, 2)
    assert row.spread == pytest.approx(np.sqrt(2.0))  # seed sd sqrt(2) at both pairs
    assert row.relative == pytest.approx(np.sqrt(10) / np.sqrt(8))  # ||(1, 3)|| / ||(2, 2)||, both seeds


def test_bad_widths_are_refused(compose_cfg):
    with pytest.raises(ValueError, match="model.widths entries must be an integer >= 1"):
        kernel_velocity.EXPERIMENT.check(compose_cfg(["+exp=kernel_velocity", "model.widths=[0,8]"]))
