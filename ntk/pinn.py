"""Physics-informed networks through their NTK: Wang, Yu & Perdikaris 2022, "When and why PINNs fail to
train: A neural tangent kernel perspective" (J. Comput. Phys. 449, 110768).

A PINN is a network u(x) = f(theta, x) and a residual operator r(x) = L[u](x) written with torch.func
(`ntk.operators`). It fits u = g at boundary points x_u and r = h (a source term) at collocation
points x_r by gradient descent in t = lr x steps on

    C(theta) = lambda_u / (2 N_u) sum_i (u(x_u,i) - g_i)^2 + lambda_r / (2 N_r) sum_j (r(x_r,j) - h_j)^2,

their Eq. (2.5) with the factor 1/2 of the library's cost (`ntk.mse_cost`), so that in the kernel
regime the residuals move by the blocks of one kernel K = [[K_uu, K_ur], [K_ru, K_rr]] (their
Eq. 3.4-3.6, `ntk.operator_ntk`):

    d/dt [u - g; r - h] = -[[lambda_u K_uu / N_u, lambda_r K_ur / N_r], [lambda_u K_ru / N_u, lambda_r K_rr / N_r]] [u - g; r - h].

Their Algorithm 1 sets the weights from the traces of the blocks, lambda_u = tr(K) / tr(K_uu) and
lambda_r = tr(K) / tr(K_rr) with tr(K) = tr(K_uu) + tr(K_rr), recomputed every k steps, so that
both terms converge at comparable rates; `train_pinn(..., adaptive_every=k)` does that.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ntk.operators import Operator, OperatorKernels, operator_ntk, operator_values

Tensor = torch.Tensor


class PINN:
    """A network, its residual operator, and the data of one problem (module docstring).

    Args:
        net: maps points (N, d) to (N, 1).
        operator: operator(u, x) -> the residual at one point x (d,), a scalar, written with torch.func.
        x_u, g: boundary (and initial) points (N_u, d) and the values of u there, (N_u, 1).
        x_r, h: collocation points (N_r, d) and the residual's target there (the source term), (N_r, 1).
        domain: optional bounds ((low_1, ..., low_d), (high_1, ..., high_d)); points outside are refused.

    Example:
        >>> import torch, ntk
        >>> from torch.func import hessian
        >>> net = torch.nn.Sequential(torch.nn.Linear(1, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1)).double()
        >>> x_r = torch.linspace(0, 1, 20, dtype=torch.float64)[:, None]
        >>> pinn = ntk.PINN(net, lambda u, x: hessian(u)(x)[0, 0], torch.tensor([[0.0], [1.0]], dtype=torch.float64),
        ...                 torch.zeros(2, 1, dtype=torch.float64), x_r, -torch.pi**2 * torch.sin(torch.pi * x_r), domain=([0.0], [1.0]))
        >>> k = pinn.kernels()  # K_uu (2, 2), K_ur (2, 20), K_rr (20, 20)
        >>> lam_u, lam_r = ntk.adaptive_weights(k)  # tr(K) / tr(K_uu), tr(K) / tr(K_rr)
        >>> lam_u > lam_r  # the residual's kernel is far larger: the imbalance that stalls plain PINNs
        True
    """

    def __init__(
        self,
        net: nn.Module,
        operator: Operator,
        x_u: Tensor,
        g: Tensor,
        x_r: Tensor,
        h: Tensor,
        domain: tuple[Sequence[float], Sequence[float]] | None = None,
    ) -> None:
        for name, points in (("x_u", x_u), ("x_r", x_r)):
            if points.dim() != 2 or points.shape[0] < 1:
                raise ValueError(f"{name} must be points (N, d) with N >= 1, got shape {tuple(points.shape)}")
        if x_u.shape[1] != x_r.shape[1]:
            raise ValueError(f"x_u and x_r must have the same dimension d, got {x_u.shape[1]} and {x_r.shape[1]}")
        for name, target, points in (("g", g, x_u), ("h", h, x_r)):
            if tuple(target.shape) != (points.shape[0], 1):
                raise ValueError(f"{name} must have shape (N, 1) = ({points.shape[0]}, 1), one value per point, got {tuple(target.shape)}")
        if domain is not None:
            low, high = (torch.as_tensor(b, dtype=x_r.dtype, device=x_r.device) for b in domain)
            if low.shape != (x_r.shape[1],) or high.shape != (x_r.shape[1],):
                raise ValueError(f"domain must be ((low_1 ... low_d), (high_1 ... high_d)) with d = {x_r.shape[1]}, got {domain}")
            for name, points in (("x_u", x_u), ("x_r", x_r)):
                outside = ((points < low) | (points > high)).any(1)
                if outside.any():
                    i = int(outside.nonzero()[0])
                    raise ValueError(
                        f"{name} has {int(outside.sum())} point(s) outside the domain [{low.tolist()}, {high.tolist()}], the first {points[i].tolist()} (row {i})"
                    )
        self.net, self.operator = net, operator
        self.x_u, self.g, self.x_r, self.h = x_u, g, x_r, h
        operator_values(net, operator, x_r[:1])  # refuse an operator that is not one number per point now

    def residuals(self) -> tuple[Tensor, Tensor]:
        """(u(x_u) - g, r(x_r) - h), (N_u, 1) and (N_r, 1)."""
        return self.net(self.x_u).reshape(-1, 1) - self.g, operator_values(self.net, self.operator, self.x_r) - self.h

    def losses(self) -> tuple[Tensor, Tensor]:
        """The two unweighted terms 1/(2 N_u) sum (u - g)^2 and 1/(2 N_r) sum (r - h)^2."""
        du, dr = self.residuals()
        return 0.5 * du.square().mean(), 0.5 * dr.square().mean()

    def kernels(self, method: str = "auto", dtype: torch.dtype = torch.float64) -> OperatorKernels:
        """K_uu, K_ur and K_rr at the current parameters (`ntk.operator_ntk`)."""
        return operator_ntk(self.net, self.operator, self.x_u, self.x_r, method=method, dtype=dtype)


def adaptive_weights(kernels: OperatorKernels) -> tuple[float, float]:
    """Wang et al.'s Algorithm 1: lambda_u = tr(K) / tr(K_uu), lambda_r = tr(K) / tr(K_rr), tr(K) = tr(K_uu) + tr(K_rr).

    Example:
        >>> import torch, ntk
        >>> ntk.adaptive_weights(ntk.OperatorKernels(torch.eye(2), torch.zeros(2, 3), 3 * torch.eye(3)))  # traces 2 and 9
        (5.5, 1.2222222222222223)
    """
    tr_uu, tr_rr = float(kernels.uu.diagonal().sum()), float(kernels.rr.diagonal().sum())
    if not (tr_uu > 0 and tr_rr > 0):
        raise ValueError(f"the traces of K_uu and K_rr must be > 0 for adaptive weights, got {tr_uu:g} and {tr_rr:g}")
    total = tr_uu + tr_rr
    return total / tr_uu, total / tr_rr


@dataclass
class PINNResult:
    """The losses at every step (t = lr x step) and the weights in force at each.

    Example:
        >>> import ntk
        >>> result = ntk.PINNResult(t=[0.0, 0.1], loss_u=[1.0, 0.5], loss_r=[2.0, 1.0], lambda_u=[1.0, 1.0], lambda_r=[1.0, 1.0])
        >>> result.loss_u[-1] / result.loss_u[0]  # the boundary term halved by t = 0.1
        0.5
    """

    t: list[float] = field(default_factory=list)
    loss_u: list[float] = field(default_factory=list)
    loss_r: list[float] = field(default_factory=list)
    lambda_u: list[float] = field(default_factory=list)
    lambda_r: list[float] = field(default_factory=list)


def train_pinn(
    pinn: PINN,
    lr: float,
    steps: int,
    weights: tuple[float, float] = (1.0, 1.0),
    adaptive_every: int | None = None,
    kernel_method: str = "auto",
    callback: Callable[[int, PINN], None] | None = None,
    callback_every: int = 0,
) -> PINNResult:
    """Plain gradient descent on the weighted loss (module docstring) for `steps` steps at rate `lr`.

    Args:
        pinn: the problem; its network is trained in place.
        lr: learning rate (> 0); t = lr x steps.
        steps: number of steps (>= 0).
        weights: (lambda_u, lambda_r) when they are fixed.
        adaptive_every: recompute (lambda_u, lambda_r) by `adaptive_weights` from the kernels every
            this many steps (at step 0 first); None keeps `weights`.
        kernel_method: `ntk.empirical_ntk`'s method for those kernels.
        callback: called as callback(step, pinn) at steps 0, callback_every, 2 callback_every, ...
            (callback_every = 0: at the end only) and at the end, before the step taken there.

    Returns:
        A `PINNResult` with the two unweighted losses and the weights at every step 0 ... steps.

    Example:
        >>> import torch, ntk
        >>> from torch.func import hessian
        >>> net = torch.nn.Sequential(torch.nn.Linear(1, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1)).double()
        >>> x_r = torch.linspace(0, 1, 20, dtype=torch.float64)[:, None]
        >>> pinn = ntk.PINN(net, lambda u, x: hessian(u)(x)[0, 0], torch.tensor([[0.0], [1.0]], dtype=torch.float64),
        ...                 torch.zeros(2, 1, dtype=torch.float64), x_r, -torch.pi**2 * torch.sin(torch.pi * x_r))
        >>> result = ntk.train_pinn(pinn, lr=1e-3, steps=50, adaptive_every=10)
        >>> result.loss_r[-1] < result.loss_r[0], len(result.t)
        (True, 51)
    """
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    if adaptive_every is not None and (isinstance(adaptive_every, bool) or not isinstance(adaptive_every, int) or adaptive_every < 1):
        raise ValueError(f"adaptive_every must be an integer >= 1 or None, got {adaptive_every!r}")
    params = [p for p in pinn.net.parameters() if p.requires_grad]
    lam_u, lam_r = (float(w) for w in weights)
    result = PINNResult()
    for step in range(steps + 1):
        if adaptive_every is not None and step % adaptive_every == 0 and step < steps:
            try:
                lam_u, lam_r = adaptive_weights(pinn.kernels(method=kernel_method))
            except ValueError as err:  # a block's trace vanished: the network saturated, typically after too large a step
                raise ValueError(f"at step {step} (t = {lr * step:g}): {err}; lower lr={lr:g}") from None
        if callback is not None and (step == steps or (callback_every and step % callback_every == 0)):
            callback(step, pinn)
        loss_u, loss_r = pinn.losses()
        result.t.append(lr * step)
        result.loss_u.append(float(loss_u.detach()))
        result.loss_r.append(float(loss_r.detach()))
        result.lambda_u.append(lam_u)
        result.lambda_r.append(lam_r)
        if not (math.isfinite(result.loss_u[-1]) and math.isfinite(result.loss_r[-1])):
            raise FloatingPointError(f"the PINN's loss is not finite at step {step} (t = {lr * step:g}); lower lr={lr:g}")
        if step == steps:
            break
        grads = torch.autograd.grad(lam_u * loss_u + lam_r * loss_r, params)
        with torch.no_grad():
            for p, gr in zip(params, grads):
                p.sub_(gr, alpha=lr)
    return result
