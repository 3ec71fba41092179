"""The Figure 3c forecast experiment at tiny size: the curves agree at t = 0, the frozen-kernel curve
equals gradient descent on the network's linearisation, and the summary of a hand-made table."""

import numpy as np
import pandas as pd
import pytest
import torch

import experiments.mnist_forecast as mnist_forecast
from experiments.figure3 import prepare
from experiments.training import build_model
from ntk.finite import train_quadratic

TINY = ["+exp=mnist_forecast", *mnist_forecast.EXPERIMENT.tiny, "progress=false"]


def test_tiny_run_curves_start_together_and_the_frozen_curve_is_the_linearisation(compose_cfg, tmp_path):
    cfg = compose_cfg([*TINY, f"out_dir={tmp_path}"])
    summary = mnist_forecast.run(cfg)
    assert list(summary.width) == [20, 40]
    curves = pd.read_csv(tmp_path / "curves.csv")
    start = curves[curves.t == 0]
    for q in ("g", "h"):
        for p in ("forecast", "frozen", "inf"):
            assert np.allclose(start[f"{q}_{p}"], start[f"{q}_network"], atol=1e-6), (q, p)
    shared = prepare(cfg)
    model = build_model(cfg, 784, 40, 0, torch.device("cpu"), torch.float32)
    x = shared.x.float()
    target = model(x).detach().double() + shared.shift
    lin = {}
    train_quadratic(
        model,
        x,
        target.float(),
        1.0,
        6,
        [0, 2, 4, 6],
        lambda t, f: lin.__setitem__(t, mnist_forecast.split(f, target, shared.funcs, 1)),
        linear=True,
    )
    saved = curves[curves.width == 40].set_index("t")
    for t, (g, h) in lin.items():  # gradient descent on the linearised network against the eigendecomposition of Theta_0
        assert abs(saved.loc[t, "g_frozen"] - g) < 1e-5 and abs(saved.loc[t, "h_frozen"] - h) < 1e-5, t
    for name in ("summary.csv", "fits.csv", "mnist_forecast.png", "provenance.json"):
        assert (tmp_path / name).exists(), name


def test_summary_of_a_hand_made_curves_table():
    t = [0.0, 1.0, 2.0]
    rows = dict(width=10, seed=0, t=t, g_network=[0.5, 0.4, 0.3], h_network=[0.0, 0.1, 0.2])
    rows |= dict(g_forecast=[0.5, 0.41, 0.32], h_forecast=[0.0, 0.1, 0.15], g_frozen=[0.5, 0.4, 0.4], h_frozen=[0.0, 0.0, 0.0])
    rows |= dict(g_inf=[0.5, 0.3, 0.1], h_inf=[0.0, 0.0, 0.0])
    row = mnist_forecast.summarise(pd.DataFrame(rows)).iloc[0]
    assert row.g_error_forecast == pytest.approx(0.02) and row.g_error_inf == pytest.approx(0.2)
    assert row.g_explained_forecast == pytest.approx(0.9) and row.g_explained_frozen == pytest.approx(0.5)
    assert row.h_error_forecast == pytest.approx(0.05) and row.h_explained_frozen == pytest.approx(0.0)
    assert row.g_end_network == pytest.approx(0.3) and row.g_end_inf == pytest.approx(0.1)


def test_unstable_learning_rate_is_refused(compose_cfg, tmp_path):
    with pytest.raises(ValueError, match="the stability bound 2 / lambda_max"):
        mnist_forecast.run(compose_cfg([*TINY, "train.lr=1000", "train.steps=1", "record_dt=1000", f"out_dir={tmp_path}"]))
    assert not (tmp_path / "summary.csv").exists()
