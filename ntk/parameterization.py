"""Parameterisations of the MLP beyond the NTK's, and Chizat's scale alpha: where the kernel regime ends.

A layer z = m W a + m_b b with stored entries W ~ N(0, s^2), b ~ N(0, s_b^2), trained by gradient
descent at a per-layer learning rate rho eta, moves exactly as the layer with multiplier m sqrt(rho),
stored deviation s / sqrt(rho) and learning rate eta: only the forward scale at initialisation
F = m s and the kernel weight K = m^2 rho matter (Yang & Hu 2021, "Tensor Programs IV: Feature
learning in infinite-width neural networks", ICML 2021: the symmetry of their
abc-parameterisations). Every parameterisation here is written in that folded form, with one global learning rate
eta and t = eta x steps as everywhere in the library, so the fused step, the layer-wise empirical NTK
and the drift tools apply unchanged, and the empirical NTK of the model is the kernel that drives its
training. With n_l the fan-in, d = n_0 the input dimension, n the hidden width (one width for all
hidden layers) and n_b a base width:

| layer | "ntk" (Jacot et al. 2018) | "standard", rate eta / n | "mean_field" (muP, base n_b) |
|---|---|---|---|
| input weight | F = 1/sqrt(d), K = 1/d | F = 1/sqrt(d), K = 1/n | F = 1/sqrt(d), K = n/(n_b d) |
| hidden weight | F = 1/sqrt(n), K = 1/n | F = 1/sqrt(n), K = 1/n | F = 1/sqrt(n), K = 1/n_b |
| readout weight | F = 1/sqrt(n), K = 1/n | F = 1/sqrt(n), K = 1/n | F = sqrt(n_b)/n, K = 1/n |
| hidden biases | F = beta, K = beta^2 | F = beta, K = 1/n | F = beta, K = beta^2 n/n_b |
| readout bias | F = beta, K = beta^2 | F = beta, K = 1/n | F = beta, K = beta^2 |

- "ntk": the paper's (Section 2), every entry N(0, 1) and the multiplier 1/sqrt(n_l).
- "standard": the usual fan-in initialisation (W ~ N(0, 1/n_l), multiplier 1, biases N(0, beta^2))
  trained at the learning rate eta / n that keeps it stable as n grows (Yang & Hu 2021: a larger
  rate diverges as n grows; at this one the network is in a kernel regime). Hidden and
  readout layers then move exactly as in the NTK parameterisation; the input layer moves d/n times
  and the biases 1/(n beta^2) times as fast, so its n = inf kernel is the NTK's without the input
  weights' and biases' terms.
- "mean_field": the maximal-update parameterisation muP of Yang & Hu 2021 for SGD (in their
  abc form: multipliers n^(1/2), 1, n^(-1/2) for the input, hidden and readout weights, deviations
  n^(-1/2), one learning rate), the MLP form of the mean-field limit: a 1/n readout, and hidden features that move O(1) per unit of t at every width. Its
  constants are fixed by the base width: at n = n_b it is the NTK-parameterised network itself (the
  same draws give the same weights), and it equals Microsoft's `mup` package (`MuReadout`,
  `set_base_shapes` at n_b, `MuSGD` with the NTK parameterisation's per-layer rates at n_b as base
  learning rates: tested). Its output at initialisation is O(n^-1/2): Var f = (n_b / n) E[sigma^2]
  + beta^2. Its NTK at initialisation is the NTK-parameterised network's of the same draws (the
  per-layer factors cancel), so it tends to the same Theta at n = inf; but it does not stay there.

`LazyScaled` is Chizat, Oyallon & Bach 2019 ("On lazy training in differentiable programming",
NeurIPS), Section 2: f_alpha(x) = alpha (f(w, x) - f(w_0, x)) trained on (1/alpha^2) C(f_alpha, y).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

Tensor = torch.Tensor
PARAMETERIZATIONS = ("ntk", "standard", "mean_field")


@dataclass(frozen=True)
class LayerScales:
    """One layer's folded parameterisation (module docstring): multipliers, stored deviations, and the
    ratios of its kernel terms' expected sizes at initialisation to the NTK parameterisation's
    (`weight_rate`, `bias_rate`; the factors of `ntk.limiting_kernels`' `rates`)."""

    weight_mult: float
    weight_std: float
    bias_mult: float
    bias_std: float
    weight_rate: float
    bias_rate: float


def check_parameterization(parameterization: str) -> str:
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"unknown parameterization {parameterization!r}; allowed: {', '.join(PARAMETERIZATIONS)}")
    return parameterization


def layer_scales(parameterization: str, widths: Sequence[int | float], beta: float, base_width: int | None = None) -> list[LayerScales]:
    """The folded parameterisation of every layer of an MLP of widths n_0 ... n_L (module docstring).

    Args:
        parameterization: "ntk", "standard" or "mean_field".
        widths: [n_0, n_1, ..., n_L]; the hidden widths n_1 ... n_{L-1} must be equal except under "ntk"
            (one width n sets the learning rate and the muP scalings); a hidden width may be math.inf
            for the rates of the n = inf limit (then the multipliers are 0 or inf and only the
            rates are meaningful).
        beta: the bias multiplier of the NTK parameterisation.
        base_width: n_b of "mean_field" (required there, ignored otherwise).

    Returns:
        One `LayerScales` per weight layer.

    Example:
        >>> import ntk.parameterization as P
        >>> [s.weight_rate for s in P.layer_scales("standard", [784, 1024, 1024, 1], beta=0.1)]  # d/n for the input layer
        [0.765625, 1.0, 1.0]
        >>> [round(s.weight_std, 3) for s in P.layer_scales("mean_field", [784, 256, 256, 1], beta=0.1, base_width=64)]
        [0.5, 0.5, 0.5]
    """
    check_parameterization(parameterization)
    d, hidden = widths[0], list(widths[1:-1])
    depth = len(widths) - 1
    if parameterization == "ntk" or depth == 1:  # a single layer has no width to scale
        return [LayerScales(1 / math.sqrt(n_in), 1.0, beta, 1.0, 1.0, 1.0) for n_in in widths[:-1]]
    if len(set(hidden)) != 1:
        raise ValueError(f"parameterization {parameterization!r} needs one hidden width, got {hidden}")
    n = hidden[0]
    out = []
    for l in range(depth):
        n_in = widths[l]
        if parameterization == "standard":  # F = 1/sqrt(n_in), F_b = beta; K = 1/n for every parameter
            m = 1 / math.sqrt(n)
            w_rate = n_in / n  # K / K_ntk = (1/n) / (1/n_in)
            b_rate = 1 / (n * beta**2) if beta > 0 else 0.0
            out.append(LayerScales(m, math.sqrt(n / n_in), m if beta > 0 else 0.0, beta * math.sqrt(n), w_rate, b_rate))
            continue
        if base_width is None or not base_width >= 1:
            raise ValueError(f"parameterization 'mean_field' needs base_width >= 1 (the width where it equals 'ntk'), got {base_width!r}")
        ratio = n / base_width  # n / n_b
        shrink = 1 / math.sqrt(ratio)  # every width-dependent stored deviation: sqrt(n_b / n)
        if l == 0:  # input layer: K = n / (n_b d), K_b = beta^2 n / n_b
            out.append(LayerScales(math.sqrt(ratio / d), shrink, beta * math.sqrt(ratio), shrink, 1.0, 1.0))
        elif l < depth - 1:  # hidden: K = 1 / n_b
            out.append(LayerScales(1 / math.sqrt(base_width), shrink, beta * math.sqrt(ratio), shrink, 1.0, 1.0))
        else:  # readout: K = 1/n, F = sqrt(n_b)/n; its bias as in the NTK parameterisation
            out.append(LayerScales(1 / math.sqrt(n), shrink, beta, 1.0, 1.0, 1.0))
    return out


def kernel_rates(parameterization: str, in_dim: int, width: int | float, depth: int, beta: float) -> list[tuple[float, float]]:
    """(weight, bias) factors per layer of the kernel's terms relative to the NTK parameterisation's,
    for `ntk.limiting_kernels(..., rates=...)`; width = math.inf gives the n = inf limit.

    "ntk" and "mean_field": all 1 (muP's kernel at initialisation is the NTK network's). "standard": the input weights d/n, the biases
    1/(n beta^2), the others 1; at n = inf the input weights' and biases' terms vanish.

    Example:
        >>> import math, ntk.parameterization as P
        >>> P.kernel_rates("standard", 784, math.inf, 3, beta=0.1)
        [(0.0, 0.0), (1.0, 0.0), (1.0, 0.0)]
    """
    check_parameterization(parameterization)
    if parameterization != "standard":
        return [(1.0, 1.0)] * depth
    widths = [in_dim] + [width] * (depth - 1) + [1]
    if math.isinf(width):
        return [(0.0 if l == 0 else 1.0, 0.0) for l in range(depth)]
    return [(s.weight_rate, s.bias_rate) for s in layer_scales("standard", widths, beta)]


class LazyScaled(nn.Module):
    """Chizat's scaled model f_alpha(x) = alpha (f(w, x) - f(w_0, x)), written so that t is the same
    function-space time at every alpha.

    Chizat, Oyallon & Bach 2019 (Section 2) train w on the cost (1/alpha^2) C(f_alpha, y). Here the
    trainable parameters are u = alpha (w - w_0), from u = 0, so that w = w_0 + u / alpha and
    df_alpha/du = df/dw: the kernel of f_alpha in u is the NTK of f at w, for every alpha. Gradient
    descent on C(f_alpha, y) in u at rate eta is exactly theirs in w at rate eta (both move w by
    -(eta / alpha) J^T (f_alpha - y) per step), and `ntk.gradient_descent`'s t = eta x steps means the
    same function-space time at every alpha: as alpha grows the training approaches the linearised
    network's (`ntk.linearised_gradient_descent`) with an error O(1/alpha) (the lazy regime); small
    alpha lets the features move.

    Args:
        model: the network f; deep-copied, its parameters w_0 held fixed (they are not trained).
        alpha: the scale (> 0).

    Example:
        >>> import torch, ntk
        >>> net = ntk.NTKMLP(2, 64, 3, generator=torch.Generator().manual_seed(0))
        >>> lazy = ntk.LazyScaled(net, alpha=10.0)
        >>> x = torch.randn(5, 2, generator=torch.Generator().manual_seed(1))
        >>> float(lazy(x).abs().max())  # f_alpha(w_0) = 0
        0.0
        >>> bool(torch.allclose(ntk.empirical_ntk(lazy, x), ntk.empirical_ntk(net, x), rtol=1e-5))  # the same kernel at u = 0
        True
    """

    def __init__(self, model: nn.Module, alpha: float) -> None:
        super().__init__()
        if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"alpha must be a positive finite number, got {alpha!r}")
        self.alpha = float(alpha)
        self.model = copy.deepcopy(model).requires_grad_(False)  # w_0
        self.names = [name for name, _ in self.model.named_parameters()]
        self.shifts = nn.ParameterList(nn.Parameter(torch.zeros_like(p)) for _, p in self.model.named_parameters())  # u
        self._f0: tuple[Tensor, int, Tensor] | None = None  # (x, its version, f(w_0, x)) of the last call

    def weights(self) -> dict[str, Tensor]:
        """w = w_0 + u / alpha, by parameter name of the wrapped model."""
        return {name: p + u / self.alpha for (name, p), u in zip(self.model.named_parameters(), self.shifts)}

    def network(self) -> nn.Module:
        """A copy of the wrapped network at w = w_0 + u / alpha: its NTK is f_alpha's (in u)."""
        net = copy.deepcopy(self.model)
        with torch.no_grad():
            for (_, p), w in zip(net.named_parameters(), self.weights().values()):
                p.copy_(w)
        return net.requires_grad_(True)

    def initial_output(self, x: Tensor) -> Tensor:
        """f(w_0, x), kept for the last x seen (the training inputs, every step)."""
        cached = self._f0
        if cached is not None and cached[0] is x and cached[1] == x._version:
            return cached[2]
        with torch.no_grad():
            f0 = self.model(x)
        self._f0 = (x, x._version, f0)
        return f0

    def forward(self, x: Tensor) -> Tensor:
        f = functional_call(self.model, self.weights(), (x,))
        return self.alpha * (f - self.initial_output(x))

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}"
