"""Synthetic data of the paper's toy experiments (Figures 1 and 2)."""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor


def gaussian_inputs(n: int, dim: int, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> Tensor:
    """n i.i.d. N(0, I_dim) inputs, (n, dim), drawn on the CPU so they do not depend on the device."""
    return torch.randn(n, dim, generator=generator, dtype=dtype)


def product_target(x: Tensor) -> Tensor:
    """f*(x) = x1 * x2, the Figure 1 target; (N, 2) -> (N, 1)."""
    return (x[:, 0] * x[:, 1]).unsqueeze(1)


def circle_grid(n: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """gamma = n equispaced angles in [-pi, pi] and the points (cos gamma, sin gamma), (n, 2).

    n must be odd and >= 3, so that the grid is symmetric and its middle angle is exactly 0.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 3 or n % 2 == 0:
        raise ValueError(f"the gamma grid needs an odd number of points >= 3 (so gamma = 0 is on it), got {n!r}")
    half = torch.arange(-(n // 2), n // 2 + 1, dtype=dtype)  # -m ... m
    gamma = half * (math.pi / (n // 2))
    return gamma, circle_points(gamma)


def circle_points(gamma: Tensor) -> Tensor:
    """x(gamma) = (cos gamma, sin gamma), (n, 2)."""
    return torch.stack([torch.cos(gamma), torch.sin(gamma)], dim=1)
