"""Closed-form Gaussian expectations of activations, for the infinite-width recursion (paper, Prop. 1).

Each function maps the covariance (a, b, c) of (u, v) ~ N(0, [[a, c], [c, b]]) (broadcastable
tensors) to the pair (E[sigma(u) sigma(v)], E[sigma'(u) sigma'(v)]). With rho = c / sqrt(a b),
phi = arccos(rho), D = (1 + a)(1 + b) - c^2:

- ReLU: the arc-cosine kernels of degree 1 and 0 (Cho & Saul, 2009, "Kernel methods for deep
  learning"): sqrt(a b) (sin phi + (pi - phi) cos phi) / (2 pi) and (pi - phi) / (2 pi).
- Leaky ReLU, slope s: sigma = (1 - s) relu + s id and E[relu(u) v] = c / 2 give
  (1 - s)^2 K_relu + s c and s + (1 - s)^2 (pi - phi) / (2 pi).
- abs = relu(z) + relu(-z) (arc-cosine kernels at rho and -rho): (2 / pi) sqrt(a b) (sin phi +
  (pi / 2 - phi) rho) and E[sign u sign v] = 1 - 2 phi / pi (Sheppard's formula).
- erf: Williams (1997), "Computing with infinite networks": (2 / pi) arcsin(2c / sqrt((1 + 2a)(1 + 2b)))
  and (4 / pi) / sqrt((1 + 2a)(1 + 2b) - 4c^2).
- GELU, sigma = z Phi(z) (Tsuchida et al., 2021, "Avoiding kernel fixed points: computing with ELU
  and GELU infinite networks"; derived here by Gaussian integration by parts): with
  T1 = E[Phi(u) Phi(v)] = 1/4 + arcsin(c / sqrt((1 + a)(1 + b))) / (2 pi) and
  T2 = E[phi(u) phi(v)] = 1 / (2 pi sqrt(D)),
      E[sigma sigma]   = c T1 + T2 (a b + c^2 (1 / (1 + a) + 1 / (1 + b) - 1)),
      E[sigma' sigma'] = T1 + c T2 (1 / (1 + a) + 1 / (1 + b) + 1 / D).
- sin and cos: the characteristic function E[e^{i(u +- v)}] = exp(-(a + b +- 2c) / 2) gives
  e^{-(a+b)/2} sinh c and e^{-(a+b)/2} cosh c (product-to-sum formulas), the derivative kernels
  swapping the two.
- identity: c and 1.
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor

LEAKY_SLOPE = 0.01  # torch.nn.LeakyReLU's default negative slope


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


def leaky_relu_expectations(a: Tensor, b: Tensor, c: Tensor, slope: float = LEAKY_SLOPE) -> tuple[Tensor, Tensor]:
    """The same for leaky ReLU, sigma(z) = z (z > 0), slope z (z <= 0)."""
    e_ss, e_dd = relu_expectations(a, b, c)
    return (1 - slope) ** 2 * e_ss + slope * c, slope + (1 - slope) ** 2 * e_dd


def abs_expectations(a: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """The same for sigma(z) = |z|, sigma'(z) = sign(z)."""
    norm, rho = correlation(a, b, c)
    phi = torch.arccos(rho)
    sin = torch.sqrt((1.0 - rho * rho).clamp_min(0.0))
    return (2 / math.pi) * norm * (sin + (math.pi / 2 - phi) * rho), 1 - 2 * phi / math.pi


def erf_expectations(a: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """The same for erf."""
    denom = (1 + 2 * a) * (1 + 2 * b)
    e_ss = (2 / math.pi) * torch.arcsin((2 * c / torch.sqrt(denom)).clamp(-1.0, 1.0))
    e_dd = (4 / math.pi) / torch.sqrt(denom - 4 * c * c)
    return e_ss, e_dd


def gelu_expectations(a: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """The same for GELU in its exact form z Phi(z) (torch.nn.GELU())."""
    pa, pb = 1 + a, 1 + b
    det = pa * pb - c * c  # D
    t1 = 0.25 + torch.arcsin((c / torch.sqrt(pa * pb)).clamp(-1.0, 1.0)) / (2 * math.pi)
    t2 = 1 / (2 * math.pi * torch.sqrt(det))
    e_ss = c * t1 + t2 * (a * b + c * c * (1 / pa + 1 / pb - 1))
    e_dd = t1 + c * t2 * (1 / pa + 1 / pb + 1 / det)
    return e_ss, e_dd


def sin_expectations(a: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """The same for sin (derivative cos)."""
    damp = torch.exp(-(a + b) / 2)
    return damp * torch.sinh(c), damp * torch.cosh(c)


def cos_expectations(a: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """The same for cos (derivative -sin)."""
    damp = torch.exp(-(a + b) / 2)
    return damp * torch.cosh(c), damp * torch.sinh(c)


def identity_expectations(a: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """The same for the identity."""
    c = c + torch.zeros_like(a + b)  # broadcast to the full shape
    return c, torch.ones_like(c)
