"""Elementwise activations with their derivatives.

The layer-wise NTK and the fused gradient-descent step need sigma'(z) next to sigma(z), so every
activation is registered as a pair. Names are the ones accepted everywhere (`activation="relu"`),
each computing what the torch module of the same name computes (nn.LeakyReLU() with slope 0.01,
nn.GELU() in its exact erf form, nn.Softplus() with beta 1, nn.ELU() with alpha 1, nn.SiLU(), ...).
The infinite-width kernels use the activation's closed form where it carries one (`ntk.gaussian`)
and otherwise the Hermite expansion of `ntk.analytic` (any smooth pair (sigma, sigma')).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ntk import gaussian

Tensor = torch.Tensor


@dataclass(frozen=True)
class Activation:
    """An elementwise nonlinearity sigma, its derivative sigma', and, where one exists, the closed
    form of the Gaussian expectations the infinite-width kernels need (`ntk.gaussian`); without it
    `ntk.analytic` computes them numerically.

    Example:
        >>> import ntk
        >>> sorted(ntk.ACTIVATIONS)[:4]
        ['abs', 'cos', 'elu', 'erf']
    """

    name: str
    fn: Callable[[Tensor], Tensor]
    deriv: Callable[[Tensor], Tensor]
    gaussian: Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]] | None = None
    fused: Callable[[Tensor], tuple[Tensor, Tensor]] | None = None

    def value_and_deriv(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(sigma(z), sigma'(z)) for a pre-activation that is not needed afterwards: `fused`, where
        given, may overwrite z and share passes (ReLU: one in-place pass and one sign)."""
        return self.fused(z) if self.fused is not None else (self.fn(z), self.deriv(z))


def _step(z: Tensor) -> Tensor:
    return torch.relu(z).sign_()  # 1 where z > 0, else 0; 4x faster than (z > 0).to(dtype) on CPU


def _relu_fused(z: Tensor) -> tuple[Tensor, Tensor]:
    a = z.relu_()
    return a, torch.sign(a)


def _erf_deriv(z: Tensor) -> Tensor:
    return (2.0 / math.sqrt(math.pi)) * torch.exp(-z * z)


def _gelu_deriv(z: Tensor) -> Tensor:  # Phi(z) + z phi(z)
    return 0.5 * (1 + torch.erf(z / math.sqrt(2))) + z * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _silu_deriv(z: Tensor) -> Tensor:
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


def _sigmoid_deriv(z: Tensor) -> Tensor:
    s = torch.sigmoid(z)
    return s * (1 - s)


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in (
        Activation("relu", torch.relu, _step, gaussian.relu_expectations, _relu_fused),
        Activation(
            "leaky_relu",
            lambda z: F.leaky_relu(z, gaussian.LEAKY_SLOPE),
            lambda z: torch.where(z > 0, torch.ones_like(z), torch.full_like(z, gaussian.LEAKY_SLOPE)),
            gaussian.leaky_relu_expectations,
        ),
        Activation("abs", torch.abs, torch.sign, gaussian.abs_expectations),
        Activation("erf", torch.erf, _erf_deriv, gaussian.erf_expectations),
        Activation("gelu", F.gelu, _gelu_deriv, gaussian.gelu_expectations),
        Activation("sin", torch.sin, torch.cos, gaussian.sin_expectations),
        Activation("cos", torch.cos, lambda z: -torch.sin(z), gaussian.cos_expectations),
        Activation("identity", lambda z: z, torch.ones_like, gaussian.identity_expectations),
        Activation("tanh", torch.tanh, lambda z: 1.0 - torch.tanh(z) ** 2),
        Activation("silu", F.silu, _silu_deriv),
        Activation("softplus", F.softplus, torch.sigmoid),
        Activation("sigmoid", torch.sigmoid, _sigmoid_deriv),
        Activation(
            "elu",
            F.elu,
            lambda z: torch.where(z > 0, torch.ones_like(z), torch.exp(z.clamp_max(0))),
            gaussian.elu_expectations,
        ),
    )
}


def get_activation(name: str) -> Activation:
    """Look up an activation by name; raise a one-line ValueError listing the allowed names.

    Example:
        >>> import torch, ntk
        >>> relu = ntk.get_activation("relu")
        >>> relu.fn(torch.tensor([-1.0, 2.0])), relu.deriv(torch.tensor([-1.0, 2.0]))
        (tensor([0., 2.]), tensor([0., 1.]))
    """
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown activation {name!r}; allowed: {', '.join(sorted(ACTIVATIONS))}") from None


def as_activation(activation: str | Activation | tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]) -> Activation:
    """A name of ACTIVATIONS, an Activation, or a user pair (sigma, sigma') of elementwise torch functions.

    Example:
        >>> import torch, ntk
        >>> square = ntk.as_activation((torch.square, lambda z: 2 * z))  # (sigma, sigma'): kernels by quadrature
        >>> square.fn(torch.tensor(3.0)), square.gaussian is None
        (tensor(9.), True)
    """
    if isinstance(activation, Activation):
        return activation
    if isinstance(activation, tuple) and len(activation) == 2 and all(callable(f) for f in activation):
        return Activation("user pair", activation[0], activation[1])
    if isinstance(activation, str):
        return get_activation(activation)
    raise ValueError(f"activation must be a name, an Activation or a pair (sigma, sigma'), got {activation!r}")
