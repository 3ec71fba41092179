"""Elementwise activations with their derivatives.

The layer-wise NTK and the fused gradient-descent step need sigma'(z) next to sigma(z), so every
activation is registered as a pair. Names are the ones accepted everywhere (`activation="relu"`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ntk.gaussian import erf_expectations, relu_expectations

Tensor = torch.Tensor


@dataclass(frozen=True)
class Activation:
    """An elementwise nonlinearity sigma, its derivative sigma', and, where one exists, the closed
    form of the Gaussian expectations the infinite-width kernels need (`ntk.gaussian`); without it
    `ntk.analytic` integrates numerically."""

    name: str
    fn: Callable[[Tensor], Tensor]
    deriv: Callable[[Tensor], Tensor]
    gaussian: Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]] | None = None


def _relu_deriv(z: Tensor) -> Tensor:
    return (z > 0).to(z.dtype)


def _erf_deriv(z: Tensor) -> Tensor:
    return (2.0 / math.sqrt(math.pi)) * torch.exp(-z * z)


def _tanh_deriv(z: Tensor) -> Tensor:
    return 1.0 - torch.tanh(z) ** 2


ACTIVATIONS: dict[str, Activation] = {
    "relu": Activation("relu", torch.relu, _relu_deriv, relu_expectations),
    "erf": Activation("erf", torch.erf, _erf_deriv, erf_expectations),
    "tanh": Activation("tanh", torch.tanh, _tanh_deriv),
    "identity": Activation("identity", lambda z: z, torch.ones_like),
}


def get_activation(name: str) -> Activation:
    """Look up an activation by name; raise a one-line ValueError listing the allowed names."""
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown activation {name!r}; allowed: {', '.join(sorted(ACTIVATIONS))}") from None
