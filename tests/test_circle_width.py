import json
from pathlib import Path

import pandas as pd
import pytest
import torch

import experiments.circle_width as circle_width
from experiments.runner import experiment_names
from ntk.data import circle_points
from ntk.empirical import empirical_ntk
from ntk.model import NTKMLP

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "+exp=circle_width",
    "model.widths=[20,30]",
    "n_seeds=2",
    "seed=3",
    "train.steps=3",
    "train.lr=0.5",
    "data.n_gamma=11",
    "data.n_train=5",
    "progress=false",
]


def test_tiny_run_writes_table_provenance_and_figure(compose_cfg, tmp_path):
    cfg = compose_cfg(TINY + [f"out_dir={tmp_path}"])
    table = circle_width.run(cfg)
    saved = pd.read_csv(tmp_path / "table.csv")
    assert list(saved.columns) == ["width", "seed", "t", "gamma", "ntk", "loss", "limit"]
    assert len(saved) == 2 * 2 * 2 * 11  # widths x seeds x times x gamma
    assert sorted(saved.t.unique()) == [0.0, 1.5]
    assert sorted(saved.seed.unique()) == [3, 4]
    pd.testing.assert_frame_equal(saved, table, check_exact=False, rtol=1e-9)
    loss = pd.read_csv(tmp_path / "loss.csv")
    assert len(loss) == 2 * 2 * 4 and set(loss.t) == {0.0, 0.5, 1.0, 1.5}
    prov = json.loads((tmp_path / "provenance.json").read_text())
    for key in ("command", "git_revision", "torch", "device", "dtype", "wall_time_s"):
        assert key in prov
    assert "widths:\n  - 20\n  - 30" in (tmp_path / "config.yaml").read_text()
    assert (tmp_path / "circle_width.png").stat().st_size > 0 and (tmp_path / "circle_width.pdf").stat().st_size > 0
    assert not (tmp_path / ".parts").exists()

    # Theta(x0, x0) at t = 0 for width 30, seed 4, recomputed independently (torch.func Jacobians).
    row = saved[(saved.width == 30) & (saved.seed == 4) & (saved.t == 0) & (saved.gamma == 0)]
    assert len(row) == 1
    model = NTKMLP(2, 30, 4, generator=torch.Generator().manual_seed(4))  # float32 as trained
    x0 = circle_points(torch.zeros(1, dtype=torch.float64))
    expected = empirical_ntk(model, x0, method="jacobian").item()
    assert row.ntk.item() == pytest.approx(expected, rel=1e-9)


def test_interrupted_run_resumes_without_redoing_finished_networks(compose_cfg, tmp_path, monkeypatch):
    cfg = compose_cfg(TINY + [f"out_dir={tmp_path / 'a'}"])
    reference = circle_width.run(compose_cfg(TINY + [f"out_dir={tmp_path / 'b'}"]))

    calls = []
    real = circle_width.train

    def crash_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(circle_width, "train", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        circle_width.run(cfg)
    assert not (tmp_path / "a" / "table.csv").exists()
    assert len(list((tmp_path / "a" / ".parts").rglob("*.table.csv"))) == 2

    calls.clear()
    table = circle_width.run(cfg)
    assert len(calls) == 2  # only the two unfinished networks
    pd.testing.assert_frame_equal(table, reference)


@pytest.mark.parametrize(
    "override,message",
    [
        (
            "model.activation=swish",
            "error: unknown activation 'swish'; allowed: abs, cos, elu, erf, gelu, identity, leaky_relu, relu, sigmoid, silu, sin, softplus, tanh",
        ),
        ("model.widths=[0]", "error: model.widths entries must be an integer >= 1, got 0"),
        ("model.depth=0", "error: model.depth must be an integer >= 1, got 0"),
        ("train.lr=0", "error: train.lr must be a number > 0, got 0"),
        ("model.widht=3", "error: unknown config key 'model.widht'; allowed keys in 'model': activation, beta, depth, widths"),
        ("+exp=nope", "error: unknown experiment 'nope'; allowed: " + ", ".join(experiment_names())),  # every configs/exp/*.yaml
    ],
)
def test_bad_input_fails_in_one_line_and_writes_nothing(tmp_path, override, message, cli):
    args = ([] if override.startswith("+exp") else ["+exp=circle_width"]) + [override, f"out_dir={tmp_path / 'out'}"]
    proc = cli(args)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(message) and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_drift_is_logged_into_the_loss_table_when_asked(compose_cfg, tmp_path):
    cfg = compose_cfg(TINY + [f"out_dir={tmp_path}", "drift_points=3", "n_seeds=1", "model.widths=[20]"])
    circle_width.run(cfg)
    loss = pd.read_csv(tmp_path / "loss.csv")
    assert len(loss) == 4 and {"ntk_drift_train", "weight_drift"} <= set(loss.columns)
    logged = loss.dropna(subset=["ntk_drift_train"])
    assert list(logged.t) == [0.0, 1.0, 1.5]  # steps 0, 2, 3 of 3 at lr 0.5
    assert logged.ntk_drift_train.iloc[0] == 0.0 and (logged.weight_drift.iloc[1:] > 0).all()
