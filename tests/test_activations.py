"""Every named activation: closed forms and the Hermite series against the 2-D quadrature, the
diagonal recursions against 1-D integrals, and the analytic NTK against seed-averaged empirical NTKs."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from ntk.activations import ACTIVATIONS
from ntk.analytic import HermiteSeriesError, limiting_kernels
from ntk.empirical import empirical_ntk
from ntk.model import NTKMLP
from tests.conftest import rel_fro

CLOSED = [name for name, act in ACTIVATIONS.items() if act.gaussian is not None]
SERIES = [name for name, act in ACTIVATIONS.items() if act.gaussian is None]
REQUIRED_CLOSED = {"relu", "leaky_relu", "abs", "erf", "gelu", "sin", "cos", "identity"}


def inputs() -> torch.Tensor:
    """Random inputs of mixed norms, plus pairs at rho = 1 and rho = -1 and a zero input."""
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.3
    return torch.cat([x, x[:2], -x[:2], torch.zeros(1, 3, dtype=torch.float64)])


def test_the_required_names_exist_and_have_closed_forms_where_promised():
    expected = REQUIRED_CLOSED | {"tanh", "silu", "softplus", "sigmoid", "elu"}
    assert set(ACTIVATIONS) == expected
    assert REQUIRED_CLOSED <= set(CLOSED)


@pytest.mark.parametrize(
    "torch_module,name",
    [
        (torch.nn.LeakyReLU(), "leaky_relu"),
        (torch.nn.GELU(), "gelu"),
        (torch.nn.SiLU(), "silu"),
        (torch.nn.Softplus(), "softplus"),
        (torch.nn.ELU(), "elu"),
        (torch.nn.Sigmoid(), "sigmoid"),
    ],
)
def test_names_compute_what_the_torch_modules_compute(torch_module, name):
    z = torch.linspace(-6, 6, 241, dtype=torch.float64)
    act = ACTIVATIONS[name]
    torch.testing.assert_close(act.fn(z), torch_module(z), rtol=1e-12, atol=1e-14)
    zg = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(torch_module(zg).sum(), zg)
    away = z.abs() > 1e-9  # piecewise activations: the derivative at the kink is a convention
    torch.testing.assert_close(act.deriv(z)[away], grad[away], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_derivatives_match_autograd(name):
    act = ACTIVATIONS[name]
    z = torch.linspace(-5, 5, 201, dtype=torch.float64)[1::2].requires_grad_(True)  # avoids z = 0
    (grad,) = torch.autograd.grad(act.fn(z).sum(), z)
    torch.testing.assert_close(act.deriv(z.detach()), grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_value_and_deriv_is_fn_and_deriv(name):
    act = ACTIVATIONS[name]
    z = torch.cat([torch.linspace(-5, 5, 101, dtype=torch.float64), torch.tensor([0.0, -0.0])])
    value, deriv = act.value_and_deriv(z.clone())  # may overwrite its argument
    assert torch.equal(value, act.fn(z)) and torch.equal(deriv, act.deriv(z))


@pytest.mark.parametrize("name", CLOSED)
@pytest.mark.parametrize("depth", [2, 4])
def test_closed_forms_match_the_quadrature(name, depth):
    x = inputs()
    closed = limiting_kernels(x, None, depth, activation=name, method="closed")
    quad = limiting_kernels(x, None, depth, activation=name, method="quadrature", quadrature_order=32)
    for c, q in zip(closed, quad):
        assert torch.isfinite(c).all()
        assert rel_fro(c, q) < 1e-8, name
        assert (c - q).abs().max().item() < 1e-8 * q.abs().max().item(), name


@pytest.mark.parametrize("name", SERIES)
@pytest.mark.parametrize("depth", [2, 4])
def test_default_method_matches_the_quadrature(name, depth):
    """The Hermite series (or, where it does not converge, the quadrature) within 1e-8 of order-40 quadrature."""
    x = inputs()
    fast = limiting_kernels(x, None, depth, activation=name)
    quad = limiting_kernels(x, None, depth, activation=name, method="quadrature", quadrature_order=40)
    for f, q in zip(fast, quad):
        assert rel_fro(f, q) < 1e-8, name


def test_hermite_series_refuses_kinks_instead_of_truncating():
    with pytest.raises(HermiteSeriesError, match="'relu' does not reach"):
        limiting_kernels(inputs(), None, 3, activation="relu", method="hermite")
    with pytest.raises(ValueError, match="'tanh' has no closed form"):
        limiting_kernels(inputs(), None, 3, activation="tanh", method="closed")


def one_d_expectation(f, q: float) -> float:
    """E[f(sqrt(q) z)], z ~ N(0, 1), by adaptive quadrature split at 0."""
    g = lambda z: f(math.sqrt(q) * z) * math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    return sum(integrate.quad(g, lo, hi, epsabs=1e-14, epsrel=1e-13, limit=200)[0] for lo, hi in ((-np.inf, 0), (0, np.inf)))


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_diagonal_recursions(name):
    """Sigma(l+1)(x, x) = E[sigma(sqrt(q) z)^2] + beta^2 and Theta(l+1) = Theta(l) E[sigma'^2] + Sigma(l+1), by scipy."""
    act = ACTIVATIONS[name]
    fn = lambda z: act.fn(torch.tensor(z, dtype=torch.float64)).item()  # noqa: E731
    dn = lambda z: act.deriv(torch.tensor(z, dtype=torch.float64)).item()  # noqa: E731
    x = torch.tensor([[0.9, -0.4, 1.7]], dtype=torch.float64)
    beta, depth = 0.3, 4
    q = (x.square().sum() / 3).item() + beta**2
    theta = q
    for _ in range(depth - 1):
        q_next = one_d_expectation(lambda z: fn(z) ** 2, q) + beta**2
        theta = theta * one_d_expectation(lambda z: dn(z) ** 2, q) + q_next
        q = q_next
    nngp, ntk = limiting_kernels(x, None, depth, beta, name)
    assert nngp.item() == pytest.approx(q, rel=1e-9)
    assert ntk.item() == pytest.approx(theta, rel=1e-9)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_analytic_ntk_is_the_wide_limit_of_empirical_ntks(name):
    """The seed-average of empirical NTKs approaches the analytic NTK as the width grows."""
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    _, limit = limiting_kernels(x, None, 3, 0.1, name)
    errors = []
    for width in (32, 2048):
        mean = (
            sum(
                empirical_ntk(NTKMLP(3, width, 3, activation=name, generator=torch.Generator().manual_seed(s), dtype=torch.float64), x)
                for s in range(6)
            )
            / 6
        )
        errors.append(rel_fro(mean, limit))
    assert errors[1] < 0.6 * errors[0], (name, errors)  # single networks: about n^-1/2 apart from the limit
    # (the limit's accuracy, to a fraction of a percent: test_analytic's one-hidden-layer seed-error test)


def test_user_pair_that_is_not_finite_is_refused_with_its_name():
    bad = (torch.log, lambda z: 1 / z)
    with pytest.raises(ValueError, match=r"^activation 'user pair': sigma is not a finite"):
        limiting_kernels(inputs(), None, 3, activation=bad)


def test_user_pair_works_in_the_network_and_the_limit():
    pair = (torch.nn.functional.softplus, torch.sigmoid)
    x = inputs()
    for a, b in zip(limiting_kernels(x, None, 3, activation=pair), limiting_kernels(x, None, 3, activation="softplus")):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    named = NTKMLP(3, 16, 3, activation="softplus", generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    custom = NTKMLP(3, 16, 3, activation=pair, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(empirical_ntk(named, x), empirical_ntk(custom, x))


@pytest.mark.parametrize(
    "name,overrides",
    [
        ("circle_width", ["model.widths=[20]", "n_seeds=1", "train.steps=3", "data.n_gamma=11", "data.n_train=5"]),
        ("circle_regression", ["model.widths=[20]", "n_seeds=1", "train.steps=5", "data.n_gamma=11", "approx_width=40"]),
        ("drift_sweep", ["width=24", "model.depth=3", "train.steps=4", "drift_points=3", "n_probe=9", "data.n_train=6"]),
    ],
)
@pytest.mark.parametrize("activation", ["gelu", "silu", "leaky_relu"])
def test_activation_names_on_the_command_line(name, overrides, activation, compose_cfg, tmp_path):
    import experiments.run as run

    cfg = compose_cfg([f"+exp={name}", f"model.activation={activation}", "progress=false", f"out_dir={tmp_path}", *overrides])
    run.dispatch(cfg)
    assert list(tmp_path.rglob("*.csv"))


def test_circle_activations_table_is_the_limit(compose_cfg, tmp_path):
    import experiments.circle_activations as circle_activations
    from ntk.data import circle_grid

    cfg = compose_cfg(["+exp=circle_activations", "activations=[gelu,tanh]", "data.n_gamma=21", "progress=false", f"out_dir={tmp_path}"])
    table = circle_activations.run(cfg)
    _, grid = circle_grid(21)
    for name in ("gelu", "tanh"):
        _, ntk = limiting_kernels(torch.tensor([[1.0, 0.0]], dtype=torch.float64), grid, 4, 0.1, name, method="quadrature")
        np.testing.assert_allclose(table[table.activation == name].ntk.to_numpy(), ntk[0].numpy(), rtol=1e-8)
    assert set(table.method) == {"closed form", "Hermite series"}
    assert (tmp_path / "circle_activations.png").exists()


def mpmath_bvn(h: float, k: float, rho: float) -> float:
    """Phi_2(h, k; rho) by mpmath at 30 digits: Phi(h) Phi(k) + int_0^rho phi_2(h, k; r) dr (Plackett)."""
    import mpmath

    mpmath.mp.dps = 30
    if abs(rho) == 1:
        return float(mpmath.ncdf(min(h, k))) if rho > 0 else float(max(0, mpmath.ncdf(h) - mpmath.ncdf(-k)))
    density = lambda r: mpmath.exp(-(h * h + k * k - 2 * h * k * r) / (2 * (1 - r * r))) / (2 * mpmath.pi * mpmath.sqrt(1 - r * r))  # noqa: E731
    return float(mpmath.ncdf(h) * mpmath.ncdf(k) + mpmath.quad(density, [0, rho]))


def test_bivariate_normal_cdf_against_mpmath():
    """Every branch (the three Gauss-Legendre bands, the expansion about rho = +-1, rho = +-1 exactly),
    h = k, h ~ k, zeros and lower tails; absolute error < 1e-15, and relative < 1e-12 in the lower
    tail at rho >= 0 (at rho < 0 a tiny result is a difference of larger terms)."""
    from ntk.gaussian import bivariate_normal_cdf

    rng = np.random.default_rng(0)
    points = [(*rng.normal(0, 2, 2), rng.uniform(-1, 1)) for _ in range(40)]
    for rho in (0.0, 0.2, -0.6, 0.9249, 0.925, 0.99, 1 - 1e-9, 1.0, -0.93, -1 + 1e-9, -1.0):
        for h, k in ((0.3, 0.3), (0.3, 0.31), (-2.0, -2.01), (1.0, -1.0), (0.0, 0.0), (-6.0, -6.2), (2.0, -0.5)):
            points.append((h, k, rho))
    h, k, rho = (torch.tensor(v, dtype=torch.float64) for v in zip(*points))
    got = bivariate_normal_cdf(h, k, rho)
    expected = torch.tensor([mpmath_bvn(*p) for p in points], dtype=torch.float64)
    assert (got - expected).abs().max().item() < 1e-15
    small = (expected < 1e-6) & (expected > 1e-300) & (rho >= 0)
    assert small.any() and ((got - expected)[small].abs() / expected[small]).max().item() < 1e-12
    # stacked (h, k) sharing rho give the same values
    stacked = bivariate_normal_cdf(torch.stack([h, k]), torch.stack([k, h]), rho)
    torch.testing.assert_close(stacked, torch.stack([got, got]), rtol=1e-14, atol=1e-16)


def adaptive_elu_expectations(a: float, b: float, c: float) -> tuple[float, float]:
    """E[elu(u) elu(v)] and E[elu'(u) elu'(v)] by scipy's adaptive 2-D quadrature, split at both kinks."""
    s, t = math.sqrt(a), math.sqrt(b)
    rho = c / (s * t)
    r = math.sqrt(1 - rho * rho)
    values = []
    for f in (lambda z: z if z > 0 else math.expm1(z), lambda z: 1.0 if z > 0 else math.exp(z)):
        g = lambda y, x: f(s * x) * f(t * (rho * x + r * y)) * math.exp(-(x * x + y * y) / 2) / (2 * math.pi)  # noqa: E731,B023
        kink = lambda x: -rho * x / r  # noqa: E731
        values.append(
            sum(
                integrate.dblquad(g, lo, hi, *limits, epsabs=1e-15, epsrel=1e-13)[0]
                for lo, hi in ((-14, 0), (0, 14))
                for limits in ((lambda x: -14, kink), (kink, lambda x: 14))
            )
        )
    return values[0], values[1]


@pytest.mark.parametrize("a,b,rho", [(40.0, 25.0, 0.95), (60.0, 30.0, -0.4), (0.05, 0.2, 0.999)])
def test_elu_closed_form_at_large_and_small_variances(a, b, rho):
    """Where the order-40 quadrature itself loses accuracy (variance 40: 1e-7), against adaptive quadrature."""
    from ntk.gaussian import elu_expectations

    c = rho * math.sqrt(a * b)
    e_ss, e_dd = elu_expectations(*(torch.tensor([v], dtype=torch.float64) for v in (a, b, c)))
    ref_ss, ref_dd = adaptive_elu_expectations(a, b, c)
    assert e_ss.item() == pytest.approx(ref_ss, rel=1e-11)
    assert e_dd.item() == pytest.approx(ref_dd, rel=1e-11)


def test_elu_outside_its_range_uses_the_quadrature_or_says_so():
    from ntk.gaussian import ELU_MAX_VARIANCE

    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2 * math.sqrt(ELU_MAX_VARIANCE)
    auto = limiting_kernels(x, None, 3, activation="elu")
    quad = limiting_kernels(x, None, 3, activation="elu", method="quadrature")
    for f, q in zip(auto, quad):
        torch.testing.assert_close(f, q, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"^ELU's closed form is accurate for pre-activation variances up to 100, got [0-9.]+; "):
        limiting_kernels(x, None, 3, activation="elu", method="closed")


@pytest.mark.parametrize("name,method", [("relu", "closed"), ("elu", "closed"), ("elu", "auto"), ("tanh", "quadrature")])
def test_symmetric_kernels_equal_the_general_path(name, method):
    """x2 = None computes the upper triangle only (closed forms, quadrature): the same as passing x2."""
    x = inputs()
    same = limiting_kernels(x, None, 3, activation=name, method=method)
    general = limiting_kernels(x, x.clone(), 3, activation=name, method=method)
    for s, g in zip(same, general):
        assert torch.equal(s, s.T)
        torch.testing.assert_close(s, g, rtol=1e-13, atol=1e-15)
