"""Kernel and weight drift during training (beyond the paper: how fast "the kernel stays constant
during training" (Theorem 2) sets in with width; Lee et al. 2019, Dyer & Gur-Ari 2020).

    kernel drift   ||Theta_t - Theta_0||_F / ||Theta_0||_F
    weight drift   ||theta_t - theta_0||_2 / ||theta_0||_2      (all parameters as one vector)

`DriftLogger` snapshots Theta_0 on the training points and on a probe set, and theta_0, when it is
created; calling it with a `ntk.train.TrainState` returns the drifts at that time. It works with any
model `ntk.empirical.empirical_ntk` accepts.
"""

from __future__ import annotations

import torch
from torch import nn

from ntk.empirical import empirical_ntk

Tensor = torch.Tensor


def kernel_drift(kernel_t: Tensor, kernel_0: Tensor) -> float:
    """||K_t - K_0||_F / ||K_0||_F.

    Example:
        >>> import torch, ntk
        >>> round(ntk.kernel_drift(torch.eye(2) * 1.1, torch.eye(2)), 6)  # ||K_t - K_0||_F / ||K_0||_F
        0.1
    """
    return ((kernel_t - kernel_0).norm() / kernel_0.norm()).item()


def weight_drift(params_t: list[Tensor], params_0: list[Tensor]) -> float:
    """||theta_t - theta_0|| / ||theta_0|| over all parameters.

    Example:
        >>> import torch, ntk
        >>> ntk.weight_drift([torch.tensor([3.0, 4.0])], [torch.tensor([3.0, 0.0])])  # ||(0, 4)|| / ||(3, 0)||
        1.3333333333333333
    """
    num = sum((p.double() - q.double()).square().sum() for p, q in zip(params_t, params_0))
    den = sum(q.double().square().sum() for q in params_0)
    return (num / den).sqrt().item()


class DriftLogger:
    """Record kernel and weight drift relative to the moment of construction.

    Args:
        model: the network (its parameters are copied now).
        x_train: training inputs (N, d); x_probe: other inputs (M, d), or None.
        dtype: kernel precision.

    Example:
        >>> import torch, ntk
        >>> model = ntk.NTKMLP(2, 100, 3, generator=torch.Generator().manual_seed(0))
        >>> x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
        >>> logger = ntk.DriftLogger(model, x)  # Theta_0 and theta_0 now
        >>> rows = []
        >>> _ = ntk.gradient_descent(model, x, x[:, :1], lr=1.0, steps=20, record_t=[20], callback=lambda s: rows.append(logger(s)))
        >>> sorted(rows[0]), rows[0]["ntk_drift_train"] > 0
        (['loss', 'ntk_drift_train', 't', 'weight_drift'], True)
    """

    def __init__(self, model: nn.Module, x_train: Tensor, x_probe: Tensor | None = None, dtype: torch.dtype = torch.float64):
        self.x_train, self.x_probe, self.dtype = x_train, x_probe, dtype
        self.theta0 = [p.detach().clone() for p in model.parameters()]
        self.train0 = empirical_ntk(model, x_train, dtype=dtype)
        self.probe0 = None if x_probe is None else empirical_ntk(model, x_probe, dtype=dtype)

    def __call__(self, state) -> dict[str, float]:
        """Drifts of `state.model` at `state.t`, with its loss."""
        out = dict(
            t=state.t,
            loss=state.loss,
            ntk_drift_train=kernel_drift(empirical_ntk(state.model, self.x_train, dtype=self.dtype), self.train0),
            weight_drift=weight_drift(list(state.model.parameters()), self.theta0),
        )
        if self.x_probe is not None:
            out["ntk_drift_probe"] = kernel_drift(empirical_ntk(state.model, self.x_probe, dtype=self.dtype), self.probe0)
        return out
