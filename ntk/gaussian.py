"""Closed-form Gaussian expectations of activations, for the infinite-width recursion (paper, Prop. 1).

Each function maps the covariance (a, b, c) of (u, v) ~ N(0, [[a, c], [c, b]]) (tensors of equal
shape) to the pair (E[sigma(u) sigma(v)], E[sigma'(u) sigma'(v)]).

- ReLU: the arc-cosine kernels of degree 1 and 0 (Cho & Saul, 2009): with rho = c / sqrt(a b) and
  phi = arccos(rho), sqrt(a b) (sin phi + (pi - phi) cos phi) / (2 pi) and (pi - phi) / (2 pi).
- erf: Williams (1997), Computing with infinite networks: (2 / pi) arcsin(2c / sqrt((1 + 2a)(1 + 2b)))
  and its derivative kernel (4 / pi) / sqrt((1 + 2a)(1 + 2b) - 4c^2).
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor


def correlation(a: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """sqrt(a b) and the correlation c / sqrt(a b) clipped into [-1, 1]."""
    norm = torch.sqrt(a * b)
    return norm, (c / norm.clamp_min(1e-300)).clamp(-1.0, 1.0)


def relu_expectations(a: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """E[relu(u) relu(v)] and E[relu'(u) relu'(v)] for (u, v) ~ N(0, [[a, c], [c, b]])."""
    norm, rho = correlation(a, b, c)
    phi = torch.arccos(rho)
    sin = torch.sqrt((1.0 - rho * rho).clamp_min(0.0))
    return norm / (2 * math.pi) * (sin + (math.pi - phi) * rho), (math.pi - phi) / (2 * math.pi)


def erf_expectations(a: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """E[erf(u) erf(v)] and E[erf'(u) erf'(v)] for (u, v) ~ N(0, [[a, c], [c, b]])."""
    denom = (1 + 2 * a) * (1 + 2 * b)
    e_ss = (2 / math.pi) * torch.arcsin((2 * c / torch.sqrt(denom)).clamp(-1.0, 1.0))
    e_dd = (4 / math.pi) / torch.sqrt(denom - 4 * c * c)
    return e_ss, e_dd
