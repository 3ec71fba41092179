import math

import numpy as np
import pytest
import torch

from ntk.activations import ACTIVATIONS
from ntk.analytic import limiting_kernels
from ntk.data import circle_points
from ntk.empirical import empirical_nngp, empirical_ntk
from ntk.memory import NTKMemoryError
from ntk.model import NTKMLP
from tests.conftest import rel_fro

X0 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
GAMMAS = torch.tensor([0, math.pi / 4, math.pi / 2, 3 * math.pi / 4, math.pi], dtype=torch.float64)


def test_check_values_of_the_reference_sheet():
    nngp, ntk = limiting_kernels(X0, circle_points(GAMMAS), depth=4, beta=0.1, activation="relu")
    np.testing.assert_allclose(ntk[0].numpy(), [0.28250, 0.16997, 0.09270, 0.06604, 0.06435], atol=1e-5)
    np.testing.assert_allclose(nngp[0].numpy(), [0.08125, 0.06987, 0.05576, 0.04924, 0.04810], atol=1e-5)
    diag = [limiting_kernels(X0, None, depth=l) for l in range(1, 5)]
    np.testing.assert_allclose([s.item() for s, _ in diag], [0.51, 0.265, 0.1425, 0.08125], atol=1e-12)
    np.testing.assert_allclose([t.item() for _, t in diag], [0.51, 0.52, 0.4025, 0.2825], atol=1e-12)


@pytest.mark.parametrize("activation", ["relu", "erf"])
@pytest.mark.parametrize("depth", [2, 3, 5])
def test_quadrature_matches_closed_forms(activation, depth):
    x = torch.randn(12, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.5
    x = torch.cat([x, x[:2], -x[:2], torch.zeros(1, 3, dtype=torch.float64)])  # rho = 1, rho = -1, zero input
    closed = limiting_kernels(x, None, depth, activation=activation)
    quad = limiting_kernels(x, None, depth, activation=activation, method="quadrature")
    for c, q in zip(closed, quad):
        assert torch.isfinite(c).all()
        assert rel_fro(q, c) < 1e-6
        assert (q - c).abs().max().item() < 1e-6


def test_identity_network_is_linear_kernel():
    """For sigma = identity: Sigma(l) = x.x'/n0 + l beta^2, SigmaDot = 1, Theta(L) = sum_l Sigma(l)."""
    x = torch.randn(6, 4, dtype=torch.float64)
    y = torch.randn(3, 4, dtype=torch.float64)
    lin = x @ y.T / 4
    nngp, ntk = limiting_kernels(x, y, depth=3, beta=0.3, activation="identity")
    torch.testing.assert_close(nngp, lin + 3 * 0.09, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ntk, 3 * lin + (1 + 2 + 3) * 0.09, rtol=1e-10, atol=1e-12)


def test_custom_activation_pair_equals_named_one():
    x = torch.randn(5, 2, dtype=torch.float64)
    named = limiting_kernels(x, None, 3, activation="tanh")
    custom = limiting_kernels(x, None, 3, activation=(torch.tanh, lambda z: 1 - torch.tanh(z) ** 2))
    for a, b in zip(named, custom):
        torch.testing.assert_close(a, b)


def test_tanh_second_layer_against_monte_carlo():
    x = torch.tensor([[1.0, 0.5], [-0.3, 0.8]], dtype=torch.float64)
    nngp, _ = limiting_kernels(x, None, depth=2, beta=0.1, activation="tanh")
    cov = (x @ x.T / 2 + 0.01).numpy()
    g = np.random.default_rng(0).multivariate_normal(np.zeros(2), cov, size=2_000_000)
    mc = np.tanh(g[:, 0]) * np.tanh(g[:, 1])
    assert abs(mc.mean() + 0.01 - nngp[0, 1].item()) < 5 * mc.std() / math.sqrt(len(mc))


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_empirical_kernel_approaches_the_limit_as_width_grows(activation):
    x = circle_points(torch.linspace(-3, 3, 7, dtype=torch.float64))
    _, limit = limiting_kernels(x, None, depth=3, activation=activation)
    widths, errors = [32, 256, 2048], []
    for width in widths:
        mean = (
            sum(
                empirical_ntk(
                    NTKMLP(2, width, 3, activation=activation, dtype=torch.float64, generator=torch.Generator().manual_seed(s)), x
                )
                for s in range(6)
            )
            / 6
        )
        errors.append(rel_fro(mean, limit))
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    slope = np.polyfit(np.log(widths), np.log(errors), 1)[0]
    assert slope < -0.3, (slope, errors)  # O(n^-1/2) fluctuations and O(1/n) bias: the error must shrink


@pytest.mark.parametrize("depth", [2, 3, 4, 5])
def test_limit_is_positive_definite_on_distinct_circle_points(depth):
    x = circle_points(torch.linspace(-math.pi, math.pi, 41, dtype=torch.float64)[:-1])
    nngp, ntk = limiting_kernels(x, None, depth)
    assert torch.linalg.eigvalsh(ntk)[0].item() > 0
    assert torch.linalg.eigvalsh(nngp)[0].item() > 0


def test_blocks_over_rows_within_a_memory_limit_and_refuses_what_cannot_fit():
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.randn(40, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for activation, limit, rtol in (("relu", 60_000, 1e-13), ("tanh", 400_000, 1e-9)):
        whole = limiting_kernels(x, y, 3, activation=activation)
        blocked = limiting_kernels(x, y, 3, activation=activation, memory_limit=limit)
        for a, b in zip(whole, blocked):  # (tanh's Hermite series is cut for the variances of each block: within its 1e-11 tail)
            torch.testing.assert_close(a, b, rtol=rtol, atol=1e-15)
    with pytest.raises(NTKMemoryError, match="the analytic kernels of 50 x 40 pairs need at least"):
        limiting_kernels(x, y, 3, memory_limit=10_000)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(depth=0), "depth must be an integer >= 1"),
        (dict(activation="swish"), "unknown activation 'swish'"),
        (dict(x2=torch.zeros(2, 3, dtype=torch.float64)), "x1 and x2 have different input dimensions: 2 and 3"),
        (dict(x1=torch.tensor([[float("inf"), 0.0]])), "x1 contains non-finite values"),
        (dict(beta=-0.1), "beta must be >= 0"),
    ],
)
def test_bad_inputs(kwargs, message):
    args = dict(x1=X0, x2=None, depth=3) | kwargs
    with pytest.raises(ValueError, match=message):
        limiting_kernels(**args)


def test_closed_form_comes_with_the_activation_not_its_name():
    """An Activation called "relu" that computes tanh is integrated as tanh (no lookup by name)."""
    from ntk.activations import Activation, get_activation

    tanh = get_activation("tanh")
    impostor = Activation("relu", tanh.fn, tanh.deriv)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for a, b in zip(limiting_kernels(x, None, 3, activation=impostor), limiting_kernels(x, None, 3, activation="tanh")):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    assert get_activation("relu").gaussian is not None and tanh.gaussian is None


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_limits_equal_the_seed_mean_of_very_wide_one_hidden_layer_networks(activation):
    """With one hidden layer the empirical NTK and NNGP are averages over n i.i.d. neurons whose
    expectation is exactly the limit (the first layer's pre-activations are exactly Gaussian), so
    the seed mean of 16 networks of width 2^17 must lie within the seed standard error of the
    analytic kernels, entry by entry (|z| < 6, t with 15 degrees of freedom). The relative standard
    error is 0.1-2%: a limit off by 1% gives |z| > 10 and fails (checked below)."""
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    nngp, ntk = limiting_kernels(x, None, 2, 0.1, activation)
    seeds = 16
    nets = [
        NTKMLP(3, 2**17, 2, activation=activation, generator=torch.Generator().manual_seed(s), dtype=torch.float64) for s in range(seeds)
    ]
    i, j = torch.triu_indices(6, 6)
    for name, limit, samples in (
        ("ntk", ntk, torch.stack([empirical_ntk(m, x) for m in nets])),
        ("nngp", nngp, torch.stack([empirical_nngp(m, x) for m in nets])),
    ):
        mean, se = samples.mean(0), samples.std(0) / math.sqrt(seeds)
        z = ((mean - limit) / se)[i, j]
        assert z.abs().max() < 6, (name, z)
        assert ((mean - 1.01 * limit) / se)[i, j].abs().max() > 6, name  # the test would catch a 1% error
