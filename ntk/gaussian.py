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
- ELU (alpha 1), sigma = z (z > 0), e^z - 1 (z <= 0), sigma' = 1 (z > 0), e^z (z <= 0) (Tsuchida et
  al., 2021, ibid., give this kernel through bivariate normal CDFs; derived here as follows). Every
  piece is a polynomial times e^{p u + q v} on a quadrant; exponential tilting,
  E[e^{p u + q v} g(u, v)] = e^{(p^2 a + 2 p q c + q^2 b) / 2} E[g(u + p a + q c, v + p c + q b)],
  turns it into a quadrant probability of shifted variables (the bivariate normal CDF Phi_2), and
  Stein's lemma turns E[u 1{quadrant}] into one-dimensional terms. With s = sqrt(a), t = sqrt(b),
  rho = c / (s t), r = sqrt(1 - rho^2), A = 1/4 + arcsin(rho) / (2 pi) = P(u > 0, v > 0),
  P_v = Phi_2(-rho t, -t; rho), P_u = Phi_2(-s, -rho s; rho), D = e^{(a + b + 2c)/2} Phi_2(-(s + rho t), -(t + rho s); rho):
      E[sigma' sigma'] = A + e^{b/2} (Phi(-t) - P_v) + e^{a/2} (Phi(-s) - P_u) + D,
      E[sigma sigma]   = K_relu + D - e^{a/2} P_u - e^{b/2} P_v + A
                         + e^{b/2} (c (Phi(-t) - P_v) + s (phi(rho t) Phi(-r t) - rho phi(t) / 2))
                         + e^{a/2} (c (Phi(-s) - P_u) + t (phi(rho s) Phi(-r s) - rho phi(s) / 2))
                         - (s + t) phi(0) (1 - rho) / 2,
  K_relu the arc-cosine kernel above. Phi_2 is `bivariate_normal_cdf`, accurate relative to its
  value in the lower tail, which the tilt factors (up to e^{2a}) need: against an adaptive 2-D
  quadrature the relative error is below 1e-13 for variances up to 60 and 3e-11 at 100. Above
  ELU_MAX_VARIANCE the products underflow, and `elu_expectations` raises `OutOfRangeError` (the
  "auto" method of `ntk.analytic` uses its quadrature when the inputs could reach that range).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

Tensor = torch.Tensor

LEAKY_SLOPE = 0.01  # torch.nn.LeakyReLU's default negative slope
ELU_MAX_VARIANCE = 100.0  # largest variance of ELU's closed form (module docstring)


class OutOfRangeError(ValueError):
    """A closed form was asked for variances outside the range where it is accurate."""


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


def elu_expectations(a: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """The same for ELU with alpha 1 (torch.nn.ELU()), by the bivariate normal CDF (module docstring)."""
    largest = max(float(a.max()), float(b.max()))
    if largest > ELU_MAX_VARIANCE:
        raise OutOfRangeError(
            f"ELU's closed form is accurate for pre-activation variances up to {ELU_MAX_VARIANCE:g}, got {largest:.4g}; "
            "scale the inputs down or use method='quadrature'"
        )
    s, t = torch.sqrt(a), torch.sqrt(b)
    _, rho = correlation(a, b, c)
    r = torch.sqrt(((1 - rho) * (1 + rho)).clamp_min(0.0))
    p_v, p_u, p_d = bivariate_normal_cdf(
        torch.stack(torch.broadcast_tensors(-rho * t, -s, -(s + rho * t))),
        torch.stack(torch.broadcast_tensors(-t, -rho * s, -(t + rho * s))),
        rho,
    )
    tilt_u, tilt_v = torch.exp(a / 2), torch.exp(b / 2)
    quadrant = 0.25 + torch.arcsin(rho) / (2 * math.pi)  # P(u > 0, v > 0) = P(u <= 0, v <= 0)
    d = torch.exp((a + b + 2 * c) / 2) * p_d  # E[e^{u + v} 1{u <= 0, v <= 0}]
    upper_v = tilt_v * (_ndtr(-t) - p_v)  # E[e^v 1{u > 0, v <= 0}]
    upper_u = tilt_u * (_ndtr(-s) - p_u)  # E[e^u 1{u <= 0, v > 0}]
    e_dd = quadrant + upper_v + upper_u + d
    phi0 = 1 / math.sqrt(2 * math.pi)
    e_ss = (
        s * t * (r + (math.pi - torch.arccos(rho)) * rho) / (2 * math.pi)  # u v on u, v > 0
        + d
        - tilt_u * p_u
        - tilt_v * p_v
        + quadrant  # (e^u - 1)(e^v - 1) on u, v <= 0
        + c * (upper_v + upper_u)  # u (e^v - 1) on u > 0, v <= 0, and its mirror
        + tilt_v * s * (_pdf(rho * t) * _ndtr(-r * t) - rho * _pdf(t) / 2)
        + tilt_u * t * (_pdf(rho * s) * _ndtr(-r * s) - rho * _pdf(s) / 2)
        - (s + t) * phi0 * (1 - rho) / 2
    )
    return e_ss, e_dd


elu_expectations.max_variance = ELU_MAX_VARIANCE  # read by ntk.analytic's "auto" method


def _ndtr(z: Tensor) -> Tensor:
    """Phi(z) by erfc, accurate in the lower tail (torch.special.ndtr is 0 below about -8.3)."""
    return 0.5 * torch.special.erfc(-z / math.sqrt(2))


def _pdf(z: Tensor) -> Tensor:
    return torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


@functools.cache
def _legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights on [0, 1]."""
    x, w = np.polynomial.legendre.leggauss(n)
    return (x + 1) / 2, w / 2


BVN_BANDS = ((0.3, 6), (0.75, 12), (0.925, 20))  # (|rho| below, Gauss-Legendre nodes), Genz (2004)
BVN_TAIL = 16.0  # (h^2 + k^2) / 2 above which every band uses 20 nodes (relative accuracy in the tail)
BVN_NEAR_NODES = 16  # nodes on each of the two intervals of the expansion about rho = 1


def bivariate_normal_cdf(h: Tensor, k: Tensor, rho: Tensor) -> Tensor:
    """Phi_2(h, k; rho) = P(X <= h, Y <= k) for standard normals of correlation rho, float64.

    h and k broadcast against rho and may carry extra leading dimensions: several (h, k) for the
    same rho share its trigonometry. The method of Drezner & Wesolowsky (1990) as refined by Genz
    (2004, "Numerical computation of rectangular bivariate and trivariate normal and t
    probabilities"), derived here from Plackett's identity d Phi_2 / d rho = phi_2:
    - |rho| < 0.925: Phi_2 = Phi(h) Phi(k) + (1 / 2 pi) int_0^{arcsin rho}
      exp(-(h^2 + k^2 - 2 h k sin th) / (2 cos^2 th)) d th, a smooth integrand: Gauss-Legendre with
      6, 12 or 20 nodes for |rho| below 0.3, 0.75, 0.925 (BVN_BANDS), 20 where (h^2 + k^2) / 2 >
      BVN_TAIL so that small probabilities keep their relative accuracy;
    - rho >= 0.925: Phi_2 = Phi(min(h, k)) - (1 / 2 pi) int_0^{sqrt(1 - rho^2)} e^{-(h - k)^2 / (2 x^2)} G(x) dx
      with G(x) = exp(-h k / (1 + sqrt(1 - x^2))) / sqrt(1 - x^2) (substituting 1 - rho'^2 = x^2);
      the factor e^{-(h-k)^2 / 2x^2} is sharp when h ~ k, so G's expansion e^{-hk/2} (1 + g1 x^2 + g2 x^4),
      g1 = (4 - hk) / 8, g2 = 3/8 - hk/8 + (hk)^2 / 128, is integrated in closed form
      (int_0^s e^{-b^2 / 2x^2} x^{2m} dx = (s^{2m+1} e^{-b^2 / 2s^2} - b^2 I_{m-1}) / (2m + 1),
      I_0 = s e^{-b^2 / 2s^2} - b sqrt(2 pi) Phi(-b / s)) and only the O(x^6) rest numerically, on
      [0, min(|h - k|, s)] and the rest of [0, s] (BVN_NEAR_NODES each), where that factor rises;
    - rho <= -0.925: Phi_2(h, k; rho) = Phi(h) - Phi_2(h, -k; -rho) for h < k, and the mirror image
      for h >= k, so that the lower tail keeps its relative accuracy.
    Phi is computed through erfc, so that for rho >= 0 small probabilities keep their relative
    accuracy (for rho < 0 a tiny result can be a difference of larger terms). Absolute error about
    3e-16 (tested against mpmath).
    """
    full = torch.broadcast_shapes(h.shape, k.shape, rho.shape)
    rho = rho.expand(full[len(full) - rho.dim() :])  # the pairs; leading dimensions beyond are stacks
    h, k = h.expand(full).reshape(-1, rho.numel()), k.expand(full).reshape(-1, rho.numel())  # (S, M)
    rho = rho.reshape(-1)
    out = torch.empty_like(h)
    size = rho.abs()
    tail = ((h * h + k * k) / 2).amax(0) > BVN_TAIL
    lower = 0.0
    for upper, nodes in BVN_BANDS:
        band = (size >= lower) & (size < upper)
        lower = upper
        for part, n in ((band & ~tail, nodes), (band & tail, BVN_BANDS[-1][1])):
            if part.all():
                return _bvn_low(h, k, rho, n).reshape(full)
            if part.any():
                out[:, part] = _bvn_low(h[:, part], k[:, part], rho[part], n)
    high = size >= lower
    if high.any():
        hh, kk, rr = h[:, high], k[:, high], rho[high]
        # rho < 0: reflect the larger argument, Phi_2(h, k; rho) = Phi(k) - Phi_2(-h, k; -rho) for
        # h >= k, so that a small result is the difference of two small terms, not of two near 1
        flip = (rr < 0)[None, :] & (hh >= kk)
        keep = (rr < 0)[None, :] & (hh < kk)
        near = _bvn_near_one(torch.where(flip, -hh, hh), torch.where(keep, -kk, kk), rr.abs())
        out[:, high] = torch.where(flip, _ndtr(kk) - near, torch.where(keep, _ndtr(hh) - near, near))
    return out.reshape(full)


def _bvn_low(h: Tensor, k: Tensor, rho: Tensor, nodes: int) -> Tensor:
    """Phi_2 for |rho| < 0.925, h and k (S, M), rho (M,): one pass per node over small arrays."""
    angle = torch.arcsin(rho)
    hk, hs = h * k, (h * h + k * k) / 2
    total = torch.zeros_like(h)
    for x, w in zip(*_legendre(nodes)):
        sin = torch.sin(angle * float(x))
        inv = torch.addcmul(torch.ones_like(sin), sin, sin, value=-1).reciprocal_()  # 1 / cos^2
        total.add_(torch.addcmul(-hs, hk, sin).mul_(inv).exp_(), alpha=float(w))
    return _ndtr(h) * _ndtr(k) + angle / (2 * math.pi) * total


def _bvn_near_one(h: Tensor, k: Tensor, rho: Tensor) -> Tensor:
    """Phi_2 for 0.925 <= rho <= 1 (rho = 1 exactly: Phi(min(h, k))), h and k (S, M), rho (M,)."""
    span = torch.sqrt((1 - rho) * (1 + rho))  # s = sqrt(1 - rho^2)
    safe = span.clamp_min(1e-300)
    b2, hk = (h - k).square(), h * k
    b = b2.sqrt()
    g1, g2 = (4 - hk) / 8, 0.375 - hk / 8 + hk * hk / 128
    # closed part, each e^{-hk/2} folded into the exponent (which is <= 0 since b^2 >= -4 hk)
    edge = torch.exp(-b2 / (2 * safe * safe) - hk / 2)
    tail = math.sqrt(2 * math.pi) * torch.exp(torch.special.log_ndtr(-b / safe) - hk / 2)
    i0 = span * edge - b * tail
    i1 = (span**3 * edge - b2 * i0) / 3
    i2 = (span**5 * edge - b2 * i1) / 5
    # the O(x^6) rest by Gauss-Legendre on [0, m] and [m, s], m = min(|h - k|, s)
    split = torch.minimum(b, span)
    rest = torch.zeros_like(h)
    for start, length in ((torch.zeros_like(split), split), (split, span - split)):
        for x, w in zip(*_legendre(BVN_NEAR_NODES)):
            xs = start + length * float(x)
            x2 = xs * xs
            root = torch.sqrt((1 - xs) * (1 + xs))
            gauss = -b2 / (2 * x2.clamp_min(1e-300))
            value = torch.exp(gauss - hk / (1 + root)) / root - torch.exp(gauss - hk / 2) * (1 + g1 * x2 + g2 * x2 * x2)
            rest.add_(value * length * float(w))
    integral = i0 + g1 * i1 + g2 * i2 + rest
    return torch.where(span > 0, _ndtr(torch.minimum(h, k)) - integral / (2 * math.pi), _ndtr(torch.minimum(h, k)))
