"""The depth-width experiment at tiny size and its per-cell statistics on a hand-made sample."""

import math

import numpy as np
import pandas as pd
import pytest

import experiments.depth_width as depth_width

TINY = ["+exp=depth_width", "depths=[2,3,4]", "model.widths=[4,8]", "n_networks=64", "bootstrap=20", "fit_beta_max=1.0", "progress=false"]


def test_tiny_run_covers_every_cell_and_fits_every_setting(compose_cfg, tmp_path):
    fits = depth_width.run(compose_cfg([*TINY, f"out_dir={tmp_path}"]))
    cells = pd.read_csv(tmp_path / "cells.csv")
    assert len(cells) == 3 * 3 * 2 and (cells.networks == 64).all()
    assert np.allclose(cells.beta, (cells.depth - 1) / cells.width)
    he = cells[cells.setting == "he_relu"]
    assert np.allclose(he.hanin_nica_mean, he.depth * 1.5)  # ||x||^2 = n_0
    assert ((he.log_moment2_low <= he.log_moment2) & (he.log_moment2 <= he.log_moment2_high)).all()
    assert list(fits.setting) == ["he_relu", "ntk_relu", "ntk_tanh"] and fits.slope.notna().all()
    for name in ("fits.csv", "depth_width.png", "provenance.json"):
        assert (tmp_path / name).exists(), name


def test_cell_statistics_of_a_hand_made_sample():
    row = depth_width.cell_statistics(np.array([1.0, 3.0]), bootstrap=0, seed=0)
    assert row["mean_k"] == 2.0 and row["log_moment2"] == pytest.approx(math.log(5 / 4))  # E[K^2] = 5, E[K]^2 = 4
    assert row["rel_sd"] == pytest.approx(0.5) and row["mean_k_se"] == pytest.approx(1.0)  # sd (ddof 1) sqrt(2) / sqrt(2)


def test_bad_depths_and_settings_are_refused(compose_cfg):
    with pytest.raises(ValueError, match="depths entries must be an integer >= 1, got 0"):
        depth_width.EXPERIMENT.check(compose_cfg(["+exp=depth_width", "depths=[0,2]"]))
    with pytest.raises(ValueError, match="unknown setting 'he_tanh'; allowed: he_relu, ntk_relu, ntk_tanh"):
        depth_width.EXPERIMENT.check(compose_cfg(["+exp=depth_width", "settings=[he_tanh]"]))
