import math

import numpy as np
import pandas as pd
import pytest
import torch

import experiments.circle_regression as circle_regression
from ntk.analytic import limiting_kernels
from ntk.data import circle_points
from ntk.model import NTKMLP
from ntk.train import gradient_descent

TINY = [
    "+exp=circle_regression",
    "model.widths=[30,60]",
    "n_seeds=2",
    "train.steps=20",
    "train.lr=0.5",
    "data.n_gamma=21",
    "approx_width=80",
    "progress=false",
]


def test_tiny_run_table_summary_and_independent_values(compose_cfg, tmp_path):
    cfg = compose_cfg(TINY + [f"out_dir={tmp_path}"])
    table = circle_regression.run(cfg)
    saved = pd.read_csv(tmp_path / "table.csv")
    assert list(saved.columns) == ["kind", "width", "seed", "gamma", "f"]
    counts = saved.kind.value_counts().to_dict()
    assert counts == {"network": 2 * 2 * 21, "train": 4} | {f"{k}_p{p}": 21 for k in ("limit", "approx") for p in (10, 50, 90)}
    assert len(table) == len(saved)
    for name in ("summary.csv", "loss.csv", "config.yaml", "provenance.json", "circle_regression.png", "circle_regression.pdf"):
        assert (tmp_path / name).exists(), name
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert list(summary.width) == [30, 60] and (summary.seeds == 2).all()

    # Network curve of width 60, seed 1: retrain independently and compare.
    x = circle_points(math.pi * torch.tensor([-0.75, -0.25, 0.25, 0.75], dtype=torch.float64))
    model = NTKMLP(2, 60, 4, generator=torch.Generator().manual_seed(1))
    gradient_descent(model, x.float(), (x[:, :1] * x[:, 1:]).float(), lr=0.5, steps=20)
    net = saved[(saved.kind == "network") & (saved.width == 60) & (saved.seed == 1)].sort_values("gamma")
    with torch.no_grad():
        expected = model(circle_points(torch.tensor(net.gamma.to_numpy())).float())[:, 0].numpy()
    np.testing.assert_allclose(net.f.to_numpy(), expected, rtol=1e-5, atol=1e-6)

    # The limiting median is kernel regression with the analytic NTK: it interpolates the targets.
    p50 = saved[saved.kind == "limit_p50"].set_index("gamma").f
    for g, y in saved[saved.kind == "train"][["gamma", "f"]].itertuples(index=False):
        nearest = p50.index[np.argmin(np.abs(p50.index - g))]
        if abs(nearest - g) < 1e-12:
            assert p50[nearest] == pytest.approx(y, abs=1e-8)
    grid = circle_points(torch.tensor(p50.index.to_numpy()))
    _, k_gt = limiting_kernels(grid, x, 4)
    _, k_tt = limiting_kernels(x, None, 4)
    np.testing.assert_allclose(p50.to_numpy(), (k_gt @ torch.linalg.solve(k_tt, x[:, 0] * x[:, 1])).numpy(), atol=1e-8)


def test_bad_config_is_refused(compose_cfg, tmp_path):
    cfg = compose_cfg(TINY + [f"out_dir={tmp_path / 'x'}", "data.train_gamma_over_pi=[0.25,0.25]"])
    with pytest.raises(ValueError, match="distinct angles"):
        circle_regression.run(cfg)
    assert not (tmp_path / "x").exists()


def test_summary_of_a_hand_made_table():
    """Band p10/p50/p90 = -1/0/1 at 4 angles (zero width at a fifth, a training point: left out);
    two seeds whose 8 points have 6 inside the band; their mean is off by 0.25 at every angle."""
    gamma = [-2.0, -1.0, 0.0, 1.0, 2.0]
    rows = [
        dict(kind=f"limit_p{p}", width=np.inf, seed=-1, gamma=g, f=0.0 if g == 0.0 else v)
        for p, v in ((10, -1.0), (50, 0.0), (90, 1.0))
        for g in gamma
    ]
    seed0 = {-2.0: 0.5, -1.0: 0.5, 0.0: 9.0, 1.0: 1.5, 2.0: 0.5}  # one point above the band (and the ignored one)
    seed1 = {-2.0: 0.0, -1.0: 0.0, 0.0: 0.0, 1.0: -1.0, 2.0: -1.5}  # on the lower edge (inside), one below
    rows += [dict(kind="network", width=100, seed=s, gamma=g, f=curve[g]) for s, curve in enumerate((seed0, seed1)) for g in gamma]
    summary = circle_regression.summarise(pd.DataFrame(rows)).iloc[0]
    assert summary.grid_points == 4 and summary.seeds == 2
    assert summary.inside_p10_p90 == 6 / 8
    assert summary.curves_fully_inside == 0.0
    mean_err = np.array([0.25, 0.25, 0.25, -0.5])  # seed means minus p50 at -2, -1, 1, 2
    assert summary.mean_rms_error == pytest.approx(np.sqrt((mean_err**2).mean()))
    assert summary.limit_sd_rms == pytest.approx(1 / circle_regression.Z90)
