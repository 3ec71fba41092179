"""Infinite-width NNGP and NTK kernels of the NTK-parameterised MLP (paper, Prop. 1 and Thm. 1).

    Sigma(1)(x, x')   = x.x' / n_0 + beta^2
    Sigma(l+1)(x, x') = E[sigma(u) sigma(v)] + beta^2,   (u, v) ~ N(0, Sigma(l) on {x, x'})
    SigmaDot(l+1)     = E[sigma'(u) sigma'(v)]
    Theta(1) = Sigma(1),   Theta(l+1) = Theta(l) SigmaDot(l+1) + Sigma(l+1)

The network output's NNGP kernel is Sigma(L) and its NTK is Theta(L), L = depth (weight layers).
The Gaussian expectations are the activation's closed form where it carries one
(`Activation.gaussian`: ReLU and erf, `ntk.gaussian`) and otherwise a
two-dimensional Gauss quadrature of configurable order for any other activation (polar form, split
at the kinks of piecewise activations; see `_quadrature`).
Everything is computed in float64 and batched over all pairs of inputs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch

from ntk.activations import Activation, get_activation
from ntk.gaussian import correlation
from ntk.memory import NTKMemoryError, available_memory, fmt_bytes

Tensor = torch.Tensor


def limiting_kernels(
    x1: Tensor,
    x2: Tensor | None,
    depth: int,
    beta: float = 0.1,
    activation: str | Activation | tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]] = "relu",
    quadrature_order: int = 24,
    force_quadrature: bool = False,
    memory_limit: int | None = None,
) -> tuple[Tensor, Tensor]:
    """NNGP kernel Sigma(L) and NTK Theta(L) of the infinite-width network.

    Args:
        x1: inputs, (N1, n_0).
        x2: inputs, (N2, n_0), or None for x2 = x1.
        depth: L >= 1, number of weight layers (L = 4: three hidden layers).
        beta: bias scale (>= 0).
        activation: "relu", "erf", "tanh", "identity", an `Activation`, or a pair
            (sigma, sigma') of elementwise torch functions.
        quadrature_order: Gauss nodes per dimension (radius, and each of the four angular arcs)
            for activations without a closed form.
        force_quadrature: use the quadrature even where the activation has a closed form (to test it).
        memory_limit: bytes the computation may use (default `ntk.memory.available_memory`); the
            rows of x1 are processed in blocks that fit, and a result that cannot fit is refused
            with `NTKMemoryError`.

    Returns:
        (nngp, ntk), each (N1, N2) in float64.
    """
    act = _activation(activation)
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be an integer >= 1 (number of weight layers), got {depth!r}")
    if not beta >= 0:
        raise ValueError(f"beta must be >= 0, got {beta!r}")
    if isinstance(quadrature_order, bool) or not isinstance(quadrature_order, int) or quadrature_order < 2:
        raise ValueError(f"quadrature_order must be an integer >= 2, got {quadrature_order!r}")
    x1, x2 = _check(x1, x2)
    closed = act.gaussian is not None and not force_quadrature  # the activation carries its closed form, if any
    expect = act.gaussian if closed else _quadrature(act, quadrature_order)
    rows = _rows_per_block(x1.shape[0], x2.shape[0], 0 if closed else quadrature_order, memory_limit)
    if rows < x1.shape[0]:  # pairs are independent: do the rows of x1 in blocks that fit
        parts = [_recursion(x1[i : i + rows], x2, depth, beta, expect) for i in range(0, x1.shape[0], rows)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    return _recursion(x1, x2, depth, beta, expect)


def _rows_per_block(n1: int, n2: int, order: int, memory_limit: int | None) -> int:
    """Rows of x1 per block so that the recursion's temporaries fit the memory budget.

    About 16 float64 arrays of the block's size for the closed forms, plus 6 arrays of
    4 x order angles per pair for the quadrature; the two (N1, N2) results must fit as well.
    """
    budget = memory_limit if memory_limit is not None else available_memory("cpu")
    result = 2 * n1 * n2 * 8
    per_row = n2 * 8 * (16 + 6 * 4 * order)
    if result + per_row > budget:
        raise NTKMemoryError(
            f"the analytic kernels of {n1} x {n2} pairs need at least {fmt_bytes(result + per_row)}, more than the "
            f"{fmt_bytes(budget)} available; use fewer inputs or raise the limit (NTK_MEMORY_LIMIT)"
        )
    return max(1, min(n1, (budget - result) // per_row))


def _recursion(x1: Tensor, x2: Tensor, depth: int, beta: float, expect) -> tuple[Tensor, Tensor]:
    """Sigma(L), Theta(L) of all pairs of rows of x1, x2 (float64)."""
    n0 = x1.shape[1]
    b2 = beta**2
    sigma = x1 @ x2.T / n0 + b2  # Sigma(1)(x1, x2), (N1, N2)
    diag1 = x1.square().sum(1) / n0 + b2  # Sigma(1)(x, x), (N1,)
    diag2 = x2.square().sum(1) / n0 + b2
    theta = sigma.clone()
    for _ in range(depth - 1):
        a, b = diag1[:, None].expand_as(sigma), diag2[None, :].expand_as(sigma)
        e_ss, e_dd = expect(a, b, sigma)
        sigma = e_ss + b2
        theta = theta * e_dd + sigma
        diag1 = expect(diag1, diag1, diag1)[0] + b2
        diag2 = expect(diag2, diag2, diag2)[0] + b2
    return sigma, theta


def _activation(activation) -> Activation:
    if isinstance(activation, Activation):
        return activation
    if isinstance(activation, tuple) and len(activation) == 2 and all(callable(f) for f in activation):
        return Activation("custom", activation[0], activation[1])
    if isinstance(activation, str):
        return get_activation(activation)
    raise ValueError(f"activation must be a name, an Activation or a pair (sigma, sigma'), got {activation!r}")


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
        e_ss = torch.zeros_like(a)
        e_dd = torch.zeros_like(a)
        for r, w in zip(radii.tolist(), r_weights.tolist()):
            u, v = r * u_dir, r * v_dir
            e_ss += w * (act.fn(u) * act.fn(v) * w_angle).sum(-1)
            e_dd += w * (act.deriv(u) * act.deriv(v) * w_angle).sum(-1)
        return e_ss, e_dd

    return expect
