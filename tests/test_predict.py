import math

import numpy as np
import pytest
import scipy.linalg
import torch

from ntk.analytic import limiting_kernels
from ntk.data import circle_points
from ntk.empirical import empirical_ntk
from ntk.model import NTKMLP
from ntk.predict import flow_matrix, gaussian_prediction, kernel_regression, linearised_gradient_descent
from tests.conftest import rel_fro


def kernels(n_train=5, n_test=7):
    x = circle_points(torch.linspace(-2.5, 2.5, n_train, dtype=torch.float64))
    xt = circle_points(torch.linspace(-3.0, 3.0, n_test, dtype=torch.float64))
    s_tt, k_tt = limiting_kernels(x, None, 4)
    s_st, k_st = limiting_kernels(xt, x, 4)
    s_ss, _ = limiting_kernels(xt, None, 4)
    return x, xt, k_tt, k_st, s_tt, s_st, s_ss


def test_flow_matrix_vanishes_at_time_zero():
    _, _, k, *_ = kernels()
    assert flow_matrix(k, 0.0).abs().max().item() == 0.0


@pytest.mark.parametrize("t", [0.01, 3.0, 500.0, math.inf])
def test_flow_matrix_matches_matrix_exponential(t):
    _, _, k, *_ = kernels()
    n = k.shape[0]
    kn = k.numpy()
    expected = np.linalg.inv(kn) if math.isinf(t) else np.linalg.solve(kn, np.eye(n) - scipy.linalg.expm(-t * kn / n))
    assert rel_fro(flow_matrix(k, t), torch.from_numpy(expected)) < 1e-8


def test_infinite_time_interpolates_and_gaussian_collapses_on_training_points():
    x, _, k_tt, _, s_tt, *_ = kernels()
    y = torch.tensor([0.3, -0.5, 0.1, 0.9, -0.2], dtype=torch.float64)
    torch.testing.assert_close(kernel_regression(k_tt, k_tt, y), y)
    mean, cov = gaussian_prediction(k_tt, k_tt, s_tt, s_tt, s_tt, y)
    torch.testing.assert_close(mean, y)
    assert cov.abs().max().item() < 1e-8


@pytest.mark.parametrize("t", [2.0, math.inf])
def test_gaussian_prediction_against_sampled_initial_functions(t):
    x, xt, k_tt, k_st, s_tt, s_st, s_ss = kernels()
    y = torch.tensor([0.3, -0.5, 0.1, 0.9, -0.2], dtype=torch.float64)
    mean, cov = gaussian_prediction(k_st, k_tt, s_ss, s_st, s_tt, y, t)
    joint = torch.cat([torch.cat([s_ss, s_st], 1), torch.cat([s_st.T, s_tt], 1)])  # Sigma on (test, train)
    rng = np.random.default_rng(0)
    f0 = torch.from_numpy(rng.multivariate_normal(np.zeros(len(joint)), joint.numpy(), size=40000, method="eigh"))
    f0_test, f0_train = f0[:, : len(xt)], f0[:, len(xt) :]
    samples = kernel_regression(k_st, k_tt, y[:, None] - f0_train.T, t) + f0_test.T  # (M, samples)
    sd = cov.diagonal().sqrt()
    assert ((samples.mean(1) - mean).abs() < 5 * sd / math.sqrt(f0.shape[0]) + 1e-8).all()  # sd = 0 on training points
    assert rel_fro(torch.cov(samples), cov) < 0.03


def test_linearised_network_follows_discrete_kernel_gradient_descent():
    model = NTKMLP(2, 64, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = x[:, :1] * x[:, 1:]
    xe = torch.randn(4, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    lr, steps = 0.5, 30
    out = linearised_gradient_descent(model, x, y, lr, steps, xe, [0.0, lr * steps])
    k, ke = empirical_ntk(model, x), empirical_ntk(model, xe, x)
    with torch.no_grad():
        f0, f0e = model(x), model(xe)
    n = x.shape[0]
    decay = torch.linalg.matrix_power(torch.eye(n, dtype=torch.float64) - lr * k / n, steps)
    expected = f0e + ke @ torch.linalg.solve(k, (torch.eye(n, dtype=torch.float64) - decay) @ (y - f0))
    torch.testing.assert_close(out[0.0], f0e)
    assert rel_fro(out[lr * steps], expected) < 1e-10


def test_singular_kernel_is_refused_at_infinite_time():
    k = torch.ones(3, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="not positive definite"):
        flow_matrix(k, math.inf)
    assert torch.isfinite(flow_matrix(k, 10.0)).all()
    with pytest.raises(ValueError, match="must be square"):
        flow_matrix(torch.ones(2, 3), 1.0)
