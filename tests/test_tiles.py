"""Tiled kernel stores and the solvers on stored kernels, against in-memory computations."""

import json

import numpy as np
import pytest
import torch

import ntk
from ntk.tiles import (
    TileGrid,
    TileStore,
    blocked_cholesky,
    cholesky_solve,
    conjugate_gradients,
    matmul_blocked,
    stored_gaussian,
    stored_regression,
)
from tests.conftest import rel_fro


def fill(store: TileStore, kernels: list[np.ndarray], tiles=None) -> None:
    for i, j in tiles if tiles is not None else store.missing():
        r, c = store.grid.slices(i, j)
        store.write(i, j, np.stack([k[r, c] for k in kernels]))


def spd(n: int, seed: int = 0) -> np.ndarray:
    a = np.random.default_rng(seed).normal(size=(n, n + 3))
    return a @ a.T / n + 0.1 * np.eye(n)


@pytest.mark.parametrize("symmetric", [True, False])
def test_a_store_assembles_the_kernel_from_its_tiles_and_resumes(tmp_path, symmetric):
    k = spd(11) if symmetric else np.random.default_rng(1).normal(size=(11, 7))
    store = TileStore.open(tmp_path / "s", dict(kernel="test"), *k.shape, rows=4, symmetric=symmetric)
    assert store.grid.count == (6 if symmetric else 6) and len(store.missing()) == store.grid.count
    first = store.missing()[:3]
    fill(store, [k], first)  # a partial run
    again = TileStore.open(tmp_path / "s", dict(kernel="test"), *k.shape, rows=4, symmetric=symmetric)
    assert set(again.done()) == set(first) and len(again.missing()) == store.grid.count - 3  # only the rest is left
    fill(again, [k])
    assembled = again.assemble()["k"]
    assert isinstance(assembled, np.memmap) and np.array_equal(assembled, k)
    record = again.record(0, 0)
    assert record["shape"] == [1, 4, 4] and len(record["sha256"]) == 64 and record["peak_memory_bytes"] > 0


def test_a_store_made_with_other_settings_is_refused_naming_the_setting(tmp_path):
    TileStore.open(tmp_path, dict(model=dict(width=1000, depth=4), n=10), 10, 10, rows=5, symmetric=True)
    with pytest.raises(ValueError, match=r"was made with settings.model.width=1000, not 500"):
        TileStore.open(tmp_path, dict(model=dict(width=500, depth=4), n=10), 10, 10, rows=5, symmetric=True)
    with pytest.raises(ValueError, match=r"was made with rows=5, not 4"):
        TileStore.open(tmp_path, dict(model=dict(width=1000, depth=4), n=10), 10, 10, rows=4, symmetric=True)


def test_bad_tiles_are_refused_and_damaged_ones_found(tmp_path):
    k = spd(6)
    store = TileStore.open(tmp_path, {}, 6, 6, rows=3, symmetric=True)
    with pytest.raises(ValueError, match=r"tile \(0, 1\) has shape \(1, 3, 2\), expected \(1, 3, 3\)"):
        store.write(0, 1, np.zeros((1, 3, 2)))
    with pytest.raises(ValueError, match="non-finite"):
        store.write(0, 1, np.full((1, 3, 3), np.nan))
    with pytest.raises(ValueError, match=r"\(1, 0\) is not a tile of this store"):
        store.write(1, 0, np.zeros((1, 3, 3)))
    assert store.missing() == [(0, 0), (0, 1), (1, 1)]  # nothing refused was stored
    fill(store, [k])
    tile = np.load(tmp_path / "tiles" / "0_1.npy")
    tile[0, 0, 0] += 1.0
    np.save(tmp_path / "tiles" / "0_1.npy", tile)
    with pytest.raises(ValueError, match=r"tile \(0, 1\) .* does not match its record"):
        store.assemble()
    with pytest.raises(ValueError, match="tile 7 does not exist: the kernel has 3 tiles"):
        TileGrid(6, 6, 3, True).tile(7)


def test_blocked_cholesky_and_both_solvers_equal_the_dense_solve(tmp_path):
    k = spd(37)
    b = torch.from_numpy(np.random.default_rng(2).normal(size=(37, 3)))
    dense = torch.linalg.solve(torch.from_numpy(k), b)
    L = blocked_cholesky(k, tmp_path / "L.npy", block=8)
    assert rel_fro(torch.from_numpy(np.asarray(L)), torch.linalg.cholesky(torch.from_numpy(k))) < 1e-13
    assert rel_fro(cholesky_solve(L, b, block=8), dense) < 1e-11
    x, iterations = conjugate_gradients(k, b, tol=1e-12, block=8)
    assert rel_fro(x, dense) < 1e-9 and iterations <= 2 * 37  # n steps in exact arithmetic
    assert rel_fro(matmul_blocked(k, b, block=5), torch.from_numpy(k) @ b) < 1e-14
    with pytest.raises(ValueError, match="not positive definite"):
        blocked_cholesky(-k, tmp_path / "M.npy", block=8)


@pytest.mark.parametrize("solver", ["cholesky", "cg"])
def test_predictions_from_a_stored_limit_equal_the_in_memory_ones(tmp_path, solver):
    x = torch.randn(30, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.sin(x[:20, 0])
    nngp, theta = ntk.limiting_kernels(x, None, depth=3)
    store = TileStore.open(tmp_path, dict(kernel="limit"), 30, 30, rows=7, symmetric=True, names=("nngp", "ntk"))
    fill(store, [nngp.numpy(), theta.numpy()])
    kernels = store.assemble()
    tr, te = slice(0, 20), slice(20, 30)
    ref = ntk.kernel_regression(theta[te, tr], theta[tr, tr], y)  # t = inf, f0 = 0
    pred = stored_regression(kernels["ntk"], 20, y, solver=solver, block=6)
    assert rel_fro(pred, ref) < 1e-8
    mean, cov = ntk.gaussian_prediction(theta[te, tr], theta[tr, tr], nngp[te, te], nngp[te, tr], nngp[tr, tr], y)
    m, var = stored_gaussian(kernels["ntk"], kernels["nngp"], 20, y, solver=solver, block=6)
    assert rel_fro(m, mean) < 1e-8 and rel_fro(var, torch.diagonal(cov)) < 1e-6
    assert json.loads((tmp_path / "manifest.json").read_text())["names"] == ["nngp", "ntk"]
