"""Infinite-width NNGP and NTK kernels of the NTK-parameterised MLP (paper, Prop. 1 and Thm. 1).

    Sigma(1)(x, x')   = x.x' / n_0 + beta^2
    Sigma(l+1)(x, x') = E[sigma(u) sigma(v)] + beta^2,   (u, v) ~ N(0, Sigma(l) on {x, x'})
    SigmaDot(l+1)     = E[sigma'(u) sigma'(v)]
    Theta(1) = Sigma(1),   Theta(l+1) = Theta(l) SigmaDot(l+1) + Sigma(l+1)

The network output's NNGP kernel is Sigma(L) and its NTK is Theta(L), L = depth (weight layers).
The Gaussian expectations (`method`):

- "closed": the activation's closed form (`Activation.gaussian`, `ntk.gaussian`: relu, leaky_relu,
  abs, erf, gelu, sin, cos, identity, and elu through the bivariate normal CDF);
- "hermite": the Hermite expansion of the dual activation (Mehler's formula; O'Donnell, "Analysis of
  Boolean functions", ch. 11; Daniely, Frostig & Singer, 2016): with sigma(sqrt(a) z) =
  sum_k alpha_k(a) h_k(z) in the orthonormal probabilists' Hermite polynomials h_k,
      E[sigma(u) sigma(v)] = sum_k alpha_k(a) alpha_k(b) rho^k,     rho = c / sqrt(a b),
  and the same with sigma' for the derivative kernel. The coefficients of every input's variance
  are computed once per layer by a 1-D Gauss-Hermite rule of `HERMITE_NODES` nodes; the series is cut
  at the first K where every input's tail E[sigma^2] - sum_{k<=K} alpha_k^2 (which bounds the error
  of every pair by Cauchy-Schwarz) is below `HERMITE_TOL` of E[sigma^2], at most `HERMITE_MAX_TERMS`.
  Per pair this costs K multiply-adds, so any smooth activation runs at closed-form speed;
- "quadrature": a two-dimensional Gauss quadrature of configurable order in polar form, split at the
  kinks of piecewise activations (`_quadrature`); slow, the reference for the others;
- "auto": closed if the activation has one (the quadrature if the variances can leave its range:
  ELU above `ntk.gaussian.ELU_MAX_VARIANCE`), else hermite, else (a series that does not
  converge to HERMITE_TOL, as for a user pair with a kink) quadrature, per layer.

Everything is computed in float64 and batched over all pairs of inputs (over the upper triangle
when x2 is None and the expectations are closed forms or the quadrature), on the device of the
inputs, and returned there. The experiments compute these kernels once, on the CPU in float64
(they are shared by every network and cost seconds), and move what a network needs onto its device.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ntk.activations import Activation, as_activation
from ntk.gaussian import correlation
from ntk.memory import NTKMemoryError, available_memory, fmt_bytes

Tensor = torch.Tensor
METHODS = ("auto", "closed", "hermite", "quadrature")
HERMITE_NODES = 300  # Gauss-Hermite nodes of the 1-D rule for the coefficients (numpy's rule overflows beyond ~500)
HERMITE_MAX_TERMS = 160  # longest series before "auto" falls back to the quadrature
HERMITE_TOL = 1e-11  # largest relative tail of the series at any input


def limiting_kernels(
    x1: Tensor,
    x2: Tensor | None,
    depth: int,
    beta: float = 0.1,
    activation: str | Activation | tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]] = "relu",
    quadrature_order: int = 24,
    method: str = "auto",
    memory_limit: int | None = None,
    rates: Sequence[tuple[float, float]] | None = None,
) -> tuple[Tensor, Tensor]:
    """NNGP kernel Sigma(L) and NTK Theta(L) of the infinite-width network.

    Args:
        x1: inputs, (N1, n_0).
        x2: inputs, (N2, n_0), or None for x2 = x1.
        depth: L >= 1, number of weight layers (L = 4: three hidden layers).
        beta: bias scale (>= 0).
        activation: a name of `ntk.activations.ACTIVATIONS`, an `Activation`, or a pair
            (sigma, sigma') of elementwise torch functions.
        quadrature_order: Gauss nodes per dimension (radius, and each of the four angular arcs)
            of method "quadrature".
        method: "auto", "closed", "hermite" or "quadrature" (module docstring).
        memory_limit: bytes the computation may use (default `ntk.memory.available_memory`); the
            rows of x1 are processed in blocks that fit, and a result that cannot fit is refused
            with `NTKMemoryError`.
        rates: per layer l = 0 ... L-1, factors (r_w, r_b) of the kernel's weight and bias terms
            when layers train at other rates than the NTK parameterisation's (default all 1):
            Theta(1) = r_w x.x'/n_0 + r_b beta^2 and Theta(l+1) = Theta(l) SigmaDot(l+1)
            + r_w (Sigma(l+1) - beta^2) + r_b beta^2. `ntk.parameterization.kernel_rates` gives them
            for the standard parameterisation (its n = inf kernel drops the input weights' and the
            biases' terms).

    Returns:
        (nngp, ntk), each (N1, N2) in float64.

    Example:
        >>> import torch, ntk
        >>> x = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        >>> nngp, theta = ntk.limiting_kernels(x, None, depth=3)  # n = inf: Sigma(L) and Theta(L), (3, 3)
        >>> wide = ntk.NTKMLP(2, 4000, 3, generator=torch.Generator().manual_seed(0))
        >>> bool((ntk.empirical_ntk(wide, x) - theta).norm() / theta.norm() < 0.1)  # Theorem 1: width 4000 is close
        True
    """
    act = as_activation(activation)
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be an integer >= 1 (number of weight layers), got {depth!r}")
    if not beta >= 0:
        raise ValueError(f"beta must be >= 0, got {beta!r}")
    if isinstance(quadrature_order, bool) or not isinstance(quadrature_order, int) or quadrature_order < 2:
        raise ValueError(f"quadrature_order must be an integer >= 2, got {quadrature_order!r}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r} for the limiting kernels; allowed: {', '.join(METHODS)}")
    if method == "closed" and act.gaussian is None:
        raise ValueError(f"activation {act.name!r} has no closed form; use method='auto', 'hermite' or 'quadrature'")
    if rates is not None:
        rates = [(float(w), float(b)) for w, b in rates]
        if len(rates) != depth or not all(w >= 0 and b >= 0 for w, b in rates):
            raise ValueError(f"rates needs one pair (weight, bias) >= 0 per layer, {depth} in all, got {rates}")
    x1, x2 = _check(x1, x2)
    _check_finite(act)
    if method == "closed":
        expect = act.gaussian
    elif method == "auto" and act.gaussian is not None:
        expect = act.gaussian
        if _largest_variance(x1, x2, depth, beta) > getattr(act.gaussian, "max_variance", math.inf):
            method, expect = "quadrature", _quadrature(act, quadrature_order)  # outside the closed form's range
    elif method == "auto":  # the series, or the quadrature at layers where it does not converge
        expect = _hermite(act, fallback=_quadrature(act, quadrature_order))
    elif method == "hermite":
        expect = _hermite(act)
    else:
        expect = _quadrature(act, quadrature_order)
    may_integrate = method == "quadrature" or (method == "auto" and act.gaussian is None)  # (the series' fallback)
    rows = _rows_per_block(x1.shape[0], x2.shape[0], quadrature_order if may_integrate else 0, memory_limit, x1.device)
    if rows < x1.shape[0]:  # pairs are independent: do the rows of x1 in blocks that fit
        parts = [_recursion(x1[i : i + rows], x2, depth, beta, expect, rates) for i in range(0, x1.shape[0], rows)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    if x1 is x2 and (act.gaussian is not None or method == "quadrature") and method != "hermite":
        # x2 = None: the kernels are symmetric, so the upper triangle is enough (the series keeps
        # the full matrix: its coefficients broadcast along rows and columns)
        return _symmetric_recursion(x1, depth, beta, expect, rates)
    return _recursion(x1, x2, depth, beta, expect, rates)


def gaussian_expectations(
    activation: str | Activation | tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]],
    method: str = "auto",
    quadrature_order: int = 24,
) -> Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]:
    """The activation's Gaussian maps, the same as `limiting_kernels` uses: a function
    expect(a, b, c) -> (E[sigma(u) sigma(v)], E[sigma'(u) sigma'(v)]) for (u, v) ~ N(0, [[a, c], [c, b]]),
    a, b and c broadcasting against each other (any shapes; the convolutional kernels of `ntk.limits`
    pass per-position variances). `method` as in `limiting_kernels`; "auto" takes the closed form
    where there is one (the quadrature for a call whose variances leave its range), else the
    Hermite series with the quadrature where it does not converge.

    Example:
        >>> import torch
        >>> expect = gaussian_expectations("relu")
        >>> expect(torch.tensor(1.0), torch.tensor(1.0), torch.tensor(1.0))  # E[relu(u)^2] = 1/2, E[relu'(u)^2] = 1/2
        (tensor(0.5000), tensor(0.5000))
    """
    act = as_activation(activation)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r} for the Gaussian expectations; allowed: {', '.join(METHODS)}")
    if method == "closed" and act.gaussian is None:
        raise ValueError(f"activation {act.name!r} has no closed form; use method='auto', 'hermite' or 'quadrature'")
    _check_finite(act)
    return _expectations(act, method, quadrature_order)


@functools.lru_cache(maxsize=128)
def _expectations(act: Activation, method: str, quadrature_order: int) -> Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]:
    """`gaussian_expectations`' maps, made once per (activation, method, order): the same function
    object on every call, so that `ntk.fused` keys its compiled steps by it and compiles them once
    per process, not once per call (they hold no state between calls)."""
    if method == "closed":
        return act.gaussian
    if method == "auto" and act.gaussian is not None:
        limit = getattr(act.gaussian, "max_variance", math.inf)
        if limit == math.inf:
            return act.gaussian
        fallback = _quadrature(act, quadrature_order)

        def expect(a: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
            inside = max(float(a.max()), float(b.max())) <= limit
            return act.gaussian(a, b, c) if inside else fallback(a, b, c)

        return expect
    if method == "auto":
        return _hermite(act, fallback=_quadrature(act, quadrature_order))
    if method == "hermite":
        return _hermite(act)
    return _quadrature(act, quadrature_order)


def _rows_per_block(n1: int, n2: int, order: int, memory_limit: int | None, device: torch.device) -> int:
    """Rows of x1 per block so that the recursion's temporaries fit the memory budget.

    About 16 float64 arrays of the block's size for the closed forms, plus 6 arrays of
    4 x order angles per pair for the quadrature; the two (N1, N2) results must fit as well.
    """
    budget = memory_limit if memory_limit is not None else available_memory(device)
    result = 2 * n1 * n2 * 8
    per_row = n2 * 8 * (16 + 6 * 4 * order)
    if result + per_row > budget:
        raise NTKMemoryError(
            f"the analytic kernels of {n1} x {n2} pairs need at least {fmt_bytes(result + per_row)}, more than the "
            f"{fmt_bytes(budget)} available; use fewer inputs or raise the limit (NTK_MEMORY_LIMIT)"
        )
    return max(1, min(n1, (budget - result) // per_row))


def _weighted(rates, l: int, weight_term: Tensor, b2: float, sigma: Tensor) -> Tensor:
    """Layer l's new kernel terms: Sigma itself, or r_w (its weight part) + r_b beta^2 with rates."""
    if rates is None:
        return sigma
    r_w, r_b = rates[l]
    return r_w * weight_term + r_b * b2


def _recursion(x1: Tensor, x2: Tensor, depth: int, beta: float, expect, rates=None) -> tuple[Tensor, Tensor]:
    """Sigma(L), Theta(L) of all pairs of rows of x1, x2 (float64)."""
    n0 = x1.shape[1]
    b2 = beta**2
    gram = x1 @ x2.T / n0
    sigma = gram + b2  # Sigma(1)(x1, x2), (N1, N2)
    diag1 = x1.square().sum(1) / n0 + b2  # Sigma(1)(x, x), (N1,)
    diag2 = x2.square().sum(1) / n0 + b2
    theta = sigma.clone() if rates is None else _weighted(rates, 0, gram, b2, sigma)
    for l in range(1, depth):
        e_ss, e_dd = expect(diag1[:, None], diag2[None, :], sigma)  # (N1, 1), (1, N2), (N1, N2)
        sigma = e_ss + b2
        theta = theta * e_dd + _weighted(rates, l, e_ss, b2, sigma)
        diag1 = expect(diag1, diag1, diag1)[0] + b2
        diag2 = expect(diag2, diag2, diag2)[0] + b2
    return sigma, theta


def _largest_variance(x1: Tensor, x2: Tensor, depth: int, beta: float) -> float:
    """A bound on every layer's pre-activation variance for an activation with |sigma(z)| <= |z|
    (ELU): Sigma(l+1)(x, x) <= Sigma(l)(x, x) + beta^2."""
    first = max(float(x.square().sum(1).max()) / x.shape[1] for x in (x1, x2)) + beta**2
    return first + (depth - 1) * beta**2


def _symmetric_recursion(x: Tensor, depth: int, beta: float, expect, rates=None) -> tuple[Tensor, Tensor]:
    """`_recursion` with x2 = x, on the N (N + 1) / 2 pairs i <= j (half the Gaussian expectations)."""
    n = x.shape[0]
    i, j = torch.triu_indices(n, n, device=x.device)
    b2 = beta**2
    diag = x.square().sum(1) / x.shape[1] + b2
    gram = (x @ x.T / x.shape[1])[i, j]
    sigma = gram + b2
    theta = sigma.clone() if rates is None else _weighted(rates, 0, gram, b2, sigma)
    for l in range(1, depth):
        e_ss, e_dd = expect(diag[i], diag[j], sigma)
        sigma = e_ss + b2
        theta = theta * e_dd + _weighted(rates, l, e_ss, b2, sigma)
        diag = expect(diag, diag, diag)[0] + b2
    out = torch.empty(2, n, n, dtype=x.dtype, device=x.device)
    out[:, i, j] = torch.stack([sigma, theta])
    out[:, j, i] = torch.stack([sigma, theta])
    return out[0], out[1]


def _check_finite(act: Activation) -> None:
    """Refuse an activation whose sigma or sigma' is not finite on the real line (probed on [-50, 50])."""
    z = torch.linspace(-50, 50, 2001, dtype=torch.float64)
    for what, f in (("sigma", act.fn), ("sigma'", act.deriv)):
        with torch.no_grad():
            values = f(z)
        if not isinstance(values, Tensor) or values.shape != z.shape or not torch.isfinite(values).all():
            raise ValueError(f"activation {act.name!r}: {what} is not a finite elementwise function of z (probed on [-50, 50])")


def _check(x1: Tensor, x2: Tensor | None) -> tuple[Tensor, Tensor]:
    for name, x in (("x1", x1), ("x2", x2)):
        if x is None:
            continue
        if not isinstance(x, Tensor) or x.dim() != 2:
            raise ValueError(f"{name} must be a tensor of shape (N, input_dim), got {getattr(x, 'shape', type(x))}")
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} contains non-finite values")
    if x2 is not None and x2.shape[1] != x1.shape[1]:
        raise ValueError(f"x1 and x2 have different input dimensions: {x1.shape[1]} and {x2.shape[1]}")
    x1 = x1.to(torch.float64)
    return x1, x1 if x2 is None else x2.to(torch.float64)


@functools.cache
def rayleigh_rule(order: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss rule for int_0^inf g(r) r exp(-r^2 / 2) dr (weights sum to 1), by Golub-Welsch.

    The moments m_k = 2^(k/2) Gamma(k/2 + 1) are turned into the three-term recurrence by a
    Cholesky factorisation of their Hankel matrix in high precision (mpmath), then the Jacobi
    matrix is diagonalised in float64. Exact for polynomials in r of degree < 2 order.
    """
    import mpmath

    with mpmath.workdps(40 + 3 * order):
        moments = [mpmath.power(2, mpmath.mpf(k) / 2) * mpmath.gamma(mpmath.mpf(k) / 2 + 1) for k in range(2 * order + 1)]
        hankel = mpmath.matrix(order + 1, order + 1)
        for i in range(order + 1):
            for j in range(order + 1):
                hankel[i, j] = moments[i + j]
        upper = mpmath.cholesky(hankel).T
        alpha = [upper[j, j + 1] / upper[j, j] - (upper[j - 1, j] / upper[j - 1, j - 1] if j else 0) for j in range(order)]
        offdiag = [upper[j + 1, j + 1] / upper[j, j] for j in range(order - 1)]
        jacobi = np.diag([float(a) for a in alpha]) + np.diag([float(b) for b in offdiag], 1) + np.diag([float(b) for b in offdiag], -1)
    nodes, vectors = np.linalg.eigh(jacobi)
    return nodes, vectors[0] ** 2


def _quadrature(act: Activation, order: int) -> Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]:
    """E[sigma sigma] and E[sigma' sigma'] by a two-dimensional Gauss quadrature in polar form.

    With z = r (cos t, sin t) standard normal in the plane, u = sqrt(a) z1 and
    v = sqrt(b) (rho z1 + sqrt(1 - rho^2) z2). The integral over the angle t is split at the
    four angles where u = 0 or v = 0, where activations such as ReLU have their kink, and each
    arc gets a Gauss-Legendre rule of `order` nodes; the radius gets the Gauss rule of its
    weight r exp(-r^2/2) (`rayleigh_rule`). Piecewise-smooth activations with kinks at 0 converge
    as fast as smooth ones (ReLU is integrated exactly). Memory O(pairs x order) per radial node.
    """
    radii, r_weights = rayleigh_rule(order)
    legendre, l_weights = np.polynomial.legendre.leggauss(order)

    def expect(a: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        opts = dict(dtype=a.dtype, device=a.device)
        _, rho = correlation(a, b, c)
        perp = torch.sqrt((1 - rho * rho).clamp_min(0.0))
        kink_v = torch.atan2(-rho, perp) % math.pi  # v = 0 at this angle and at it + pi
        kinks = torch.stack([torch.full_like(rho, math.pi / 2), kink_v, torch.full_like(rho, 3 * math.pi / 2), kink_v + math.pi], -1)
        kinks = torch.sort(kinks, dim=-1).values  # (..., 4), all in [0, 2 pi)
        starts = kinks
        ends = torch.cat([kinks[..., 1:], kinks[..., :1] + 2 * math.pi], -1)
        half = (ends - starts) / 2  # (..., 4)
        x = torch.as_tensor(legendre, **opts)
        angles = (starts + half).unsqueeze(-1) + half.unsqueeze(-1) * x  # (..., 4, order)
        w_angle = (half.unsqueeze(-1) * torch.as_tensor(l_weights, **opts) / (2 * math.pi)).flatten(-2)  # (..., 4 order)
        angles = angles.flatten(-2)
        cos_t, sin_t = torch.cos(angles), torch.sin(angles)
        u_dir = torch.sqrt(a).unsqueeze(-1) * cos_t
        v_dir = torch.sqrt(b).unsqueeze(-1) * (rho.unsqueeze(-1) * cos_t + perp.unsqueeze(-1) * sin_t)
        e_ss = torch.zeros_like(rho)
        e_dd = torch.zeros_like(rho)
        for r, w in zip(radii.tolist(), r_weights.tolist()):
            u, v = r * u_dir, r * v_dir
            e_ss += w * (act.fn(u) * act.fn(v) * w_angle).sum(-1)
            e_dd += w * (act.deriv(u) * act.deriv(v) * w_angle).sum(-1)
        return e_ss, e_dd

    return expect


@functools.cache
def hermite_rule(nodes: int, terms: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gauss-Hermite rule for E[g(z)], z ~ N(0, 1) (weights sum to 1), and the orthonormal Hermite
    polynomials h_0 ... h_{terms-1} at its nodes, (nodes, terms), by h_{k+1} = (z h_k - sqrt(k) h_{k-1}) / sqrt(k + 1)."""
    z, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / w.sum()
    h = np.empty((nodes, terms))
    h[:, 0] = 1.0
    if terms > 1:
        h[:, 1] = z
    for k in range(1, terms - 1):
        h[:, k + 1] = (z * h[:, k] - math.sqrt(k) * h[:, k - 1]) / math.sqrt(k + 1)
    return z, w, h


class HermiteSeriesError(ValueError):
    """The Hermite series of an activation does not reach HERMITE_TOL within HERMITE_MAX_TERMS terms."""


def hermite_coefficients(
    f: Callable[[Tensor], Tensor], variance: Tensor, terms: int = HERMITE_MAX_TERMS, nodes: int = HERMITE_NODES
) -> tuple[Tensor, Tensor]:
    """alpha_k(a) = E[f(sqrt(a) z) h_k(z)] for k < terms, (M, terms), and E[f(sqrt(a) z)^2], (M,), for variances a, (M,)."""
    z, w, h = (torch.as_tensor(v, dtype=torch.float64, device=variance.device) for v in hermite_rule(nodes, terms))
    values = f(torch.sqrt(variance)[:, None] * z)  # (M, nodes)
    return (values * w) @ h, (values.square() * w).sum(1)


def _hermite(act: Activation, fallback=None, tol: float = HERMITE_TOL, max_terms: int = HERMITE_MAX_TERMS):
    """E[sigma sigma] and E[sigma' sigma'] by the truncated Hermite series (module docstring).

    a, b must broadcast against c with a constant along the columns and b along the rows (the
    recursion passes (N1, 1), (1, N2), (N1, N2)), or all have the same shape. Coefficients are
    computed once per distinct variance. Without a `fallback`, a series that does not converge
    raises `HermiteSeriesError`; with one, that layer is computed by the fallback instead.

    The map is two steps, so that the per-entry one compiles (`ntk.fused`): `expect.coefficients(a, b)`
    (per variance, with the convergence check; None where a series does not converge) and
    `expect.combine(a, b, c, *coefficients)` (the correlation and Horner's scheme in it, per entry);
    `expect.fallback` is the fallback (or None), for a caller that found the series does not converge.
    """

    def coefficients_of(f: Callable[[Tensor], Tensor], a: Tensor, b: Tensor) -> tuple[Tensor, Tensor] | None:
        variances, inverse = torch.unique(torch.cat([a.flatten(), b.flatten()]), return_inverse=True)
        coef, second = hermite_coefficients(f, variances.double(), max_terms)  # (V, K), (V,), in float64 whatever a's dtype
        tail = second[:, None] - torch.cumsum(coef.square(), 1)  # (V, K): what the first k + 1 terms leave out
        enough = (tail <= tol * second.clamp_min(1e-300)[:, None]).all(0)
        if not enough.any():
            return None
        terms = int(torch.nonzero(enough)[0]) + 1
        coef = coef.to(a.dtype)  # the entries' precision (float32 kernels stay float32)
        return (
            coef[inverse[: a.numel()], :terms].reshape(a.shape + (terms,)),
            coef[inverse[a.numel() :], :terms].reshape(b.shape + (terms,)),
        )

    def coefficients(a: Tensor, b: Tensor) -> tuple[Tensor, ...] | None:
        """The coefficients of sigma's and sigma''s series at a and at b, or None if one does not converge."""
        out: list[Tensor] = []
        for f in (act.fn, act.deriv):
            pair = coefficients_of(f, a, b)
            if pair is None:
                return None
            out.extend(pair)
        return tuple(out)

    def horner(coef_a: Tensor, coef_b: Tensor, rho: Tensor) -> Tensor:
        total = coef_a[..., -1] * coef_b[..., -1]
        for k in range(coef_a.shape[-1] - 2, -1, -1):
            total = total * rho + coef_a[..., k] * coef_b[..., k]
        return total + torch.zeros_like(rho)

    def combine(a: Tensor, b: Tensor, c: Tensor, ss_a: Tensor, ss_b: Tensor, dd_a: Tensor, dd_b: Tensor) -> tuple[Tensor, Tensor]:
        _, rho = correlation(a, b, c)
        return horner(ss_a, ss_b, rho), horner(dd_a, dd_b, rho)

    def expect(a: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        coefs = coefficients(a, b)
        if coefs is None:
            if fallback is None:
                raise HermiteSeriesError(
                    f"the Hermite series of activation {act.name!r} does not reach a relative tail of {tol:g} within "
                    f"{max_terms} terms at these variances; use method='quadrature'"
                )
            return fallback(a, b, c)
        return combine(a, b, c, *coefs)

    expect.coefficients, expect.combine, expect.fallback = coefficients, combine, fallback
    return expect
