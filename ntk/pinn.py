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

`shallow_mean_kernels` gives the same blocks for the mean NTK of a one-hidden-layer network in their
initialisation (weights N(0, 1/fan_in), biases N(0, 1), standard forward), written by quadrature
and differentiated with torch.func: the deterministic kernel that the empirical blocks approach at
rate n^-1/2, whose kernel gradient descent predicts the PINN's training.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import grad, vmap

from ntk.operators import Operator, OperatorKernels, operator_ntk, operator_values, residual_at

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
    compile: bool = False,
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
        compile: run each step's losses and gradients through torch.compile (one compilation, the
            weights passed as tensors; tens of seconds once, then 3-4x fewer seconds a step for a
            small network, whose step is mostly per-operation overhead).

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

    def losses_and_gradients(weight_u: Tensor, weight_r: Tensor) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
        loss_u, loss_r = pinn.losses()
        return loss_u.detach(), loss_r.detach(), torch.autograd.grad(weight_u * loss_u + weight_r * loss_r, params)

    step_fn = torch.compile(losses_and_gradients) if compile else losses_and_gradients
    dtype = params[0].dtype if params else torch.float64
    for step in range(steps + 1):
        if adaptive_every is not None and step % adaptive_every == 0 and step < steps:
            try:
                lam_u, lam_r = adaptive_weights(pinn.kernels(method=kernel_method))
            except ValueError as err:  # a block's trace vanished: the network saturated, typically after too large a step
                raise ValueError(f"at step {step} (t = {lr * step:g}): {err}; lower lr={lr:g}") from None
        if callback is not None and (step == steps or (callback_every and step % callback_every == 0)):
            callback(step, pinn)
        loss_u, loss_r, grads = step_fn(torch.tensor(lam_u, dtype=dtype), torch.tensor(lam_r, dtype=dtype))
        result.t.append(lr * step)
        result.loss_u.append(float(loss_u.detach()))
        result.loss_r.append(float(loss_r.detach()))
        result.lambda_u.append(lam_u)
        result.lambda_r.append(lam_r)
        if not (math.isfinite(result.loss_u[-1]) and math.isfinite(result.loss_r[-1])):
            raise FloatingPointError(f"the PINN's loss is not finite at step {step} (t = {lr * step:g}); lower lr={lr:g}")
        if step == steps:
            break
        with torch.no_grad():
            for p, gr in zip(params, grads):
                p.sub_(gr, alpha=lr)
    return result


SPAN = 10.0  # standard deviations covered by the quadrature (the Gaussian's mass beyond: 1.5e-23)
_ACTIVATIONS: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "tanh": (torch.tanh, lambda z: 1 - torch.tanh(z) ** 2),
    "erf": (torch.erf, lambda z: (2 / math.sqrt(math.pi)) * torch.exp(-z * z)),
}


def shallow_mean_features(
    width: int, dim: int = 1, activation: str = "tanh", bias_std: float = 1.0, order: int = 101
) -> Callable[[Tensor], Tensor]:
    """Features phi of the mean NTK over the initialisation of u(x) = sum_i v_i sigma(w_i . x + b_i) + c
    in Wang et al.'s "NTK initialisation" (w_i ~ N(0, I / d), b_i ~ N(0, bias_std^2), v_i ~ N(0, 1 / width),
    standard forward, every parameter trained at one rate): Theta_n(x, x') = phi(x) . phi(x') with

        Theta_n(x, x') = n E[sigma(z) sigma(z')] + 1 + E[sigma'(z) sigma'(z')] (x . x' + 1),

    z = w . x + b, z' = w . x' + b (the terms of the read-out weights, the read-out bias, and the hidden
    weights and biases). It is the exact mean at every width n, and K / n -> E[sigma(z) sigma(z')] with
    fluctuations of order n^-1/2. The expectations are trapezoidal sums over the standardised (w, b),
    `order` nodes per dimension on [-10, 10] (order^(d + 1) in all): exponentially accurate for
    integrands analytic in a strip (tanh(w x + b) has poles at distance pi / (2 |x|) from the real
    axis; Gauss-Hermite converges slowly there), so phi has order^(d + 1) (d + 2) + 1 entries, smooth
    in x: torch.func differentiates them (`kernel_matrix`).

    Example:
        >>> import torch, ntk
        >>> phi = ntk.shallow_mean_features(width=512)
        >>> x = torch.tensor([0.3], dtype=torch.float64)
        >>> bool(phi(x) @ phi(x) > 0)
        True
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(_ACTIVATIONS)} (a smooth Gaussian map), got {activation!r}")
    for name, n, low in (("width", width, 1), ("dim", dim, 1), ("order", order, 3)):
        if isinstance(n, bool) or not isinstance(n, int) or n < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {n!r}")
    sigma, dsigma = _ACTIVATIONS[activation]
    dtype = torch.float64
    nodes = torch.linspace(-SPAN, SPAN, order, dtype=dtype)
    weights = torch.exp(-nodes * nodes / 2) * (2 * SPAN / (order - 1)) / math.sqrt(2 * math.pi)
    grid = torch.cartesian_prod(*[nodes] * (dim + 1)).reshape(-1, dim + 1)
    root = torch.cartesian_prod(*[weights] * (dim + 1)).reshape(-1, dim + 1).prod(1).sqrt()
    w, b = grid[:, :dim] / math.sqrt(dim), grid[:, dim] * bias_std
    one = torch.ones(1, dtype=dtype)

    def phi(x: Tensor) -> Tensor:
        z = w @ x + b
        slope = root * dsigma(z)
        return torch.cat([math.sqrt(width) * root * sigma(z), (slope[:, None] * x).reshape(-1), slope, one])

    return phi


def kernel_matrix(
    phi: Callable[[Tensor], Tensor],
    x_a: Tensor,
    x_b: Tensor,
    operator: Operator | None = None,
    apply: tuple[bool, bool] = (False, False),
    rows: int = 16,
) -> Tensor:
    """[A_x B_x' phi(x) . phi(x')] at (x_a,i, x_b,j), (N_a, N_b): A and B the residual `operator` where
    `apply` says so, else the identity; with phi a network's kernel features, (False, False) gives
    K_uu, (False, True) K_ur, (True, True) K_rr. The operator is linear, so L phi(x) is the gradient in
    v of the scalar L[phi . v](x): one torch.func pass per point through the user's operator, `rows`
    points at a time.

    Example:
        >>> import torch, ntk
        >>> from torch.func import hessian
        >>> phi = ntk.shallow_mean_features(width=64)
        >>> x = torch.rand(3, 1, dtype=torch.float64)
        >>> tuple(ntk.kernel_matrix(phi, x, x, lambda u, p: hessian(u)(p)[0, 0], (True, True)).shape)
        (3, 3)
    """
    if any(apply) and operator is None:
        raise ValueError("apply asks for the operator on one side: pass operator=")
    size = phi(x_a[0].to(torch.float64)).shape[0]

    def features(x: Tensor, with_operator: bool) -> Tensor:
        x = x.to(torch.float64)
        if not with_operator:
            return torch.cat([vmap(phi)(x[i : i + rows]) for i in range(0, x.shape[0], rows)])
        applied = grad(lambda v, p: residual_at(operator, lambda q: phi(q) @ v, p))
        zero = torch.zeros(size, dtype=torch.float64)
        return torch.cat([vmap(applied, (None, 0))(zero, x[i : i + rows]) for i in range(0, x.shape[0], rows)])

    return features(x_a, apply[0]) @ features(x_b, apply[1]).T


def shallow_mean_kernels(
    operator: Operator,
    x_u: Tensor,
    x_r: Tensor,
    width: int,
    activation: str = "tanh",
    bias_std: float = 1.0,
    order: int = 101,
) -> OperatorKernels:
    """K_uu, K_ur and K_rr of `shallow_mean_features` (the mean over the initialisation of a one-hidden-layer
    network's blocks, `PINN.kernels`) at boundary points x_u (N_u, d) and collocation points x_r (N_r, d),
    in the network's coordinates: K_ur = L_x' Theta, K_rr = L_x L_x' Theta by torch.func.

    Example:
        >>> import torch, ntk
        >>> from torch.func import hessian
        >>> x_u, x_r = torch.tensor([[0.0], [1.0]], dtype=torch.float64), torch.rand(4, 1, dtype=torch.float64)
        >>> k = ntk.shallow_mean_kernels(lambda u, x: hessian(u)(x)[0, 0], x_u, x_r, width=512)
        >>> tuple(k.rr.shape), bool(torch.allclose(k.rr, k.rr.T))
        ((4, 4), True)
    """
    if x_u.dim() != 2 or x_r.dim() != 2 or x_u.shape[1] != x_r.shape[1]:
        raise ValueError(f"x_u and x_r must be points (N, d) of one dimension d, got {tuple(x_u.shape)} and {tuple(x_r.shape)}")
    phi = shallow_mean_features(width, x_u.shape[1], activation, bias_std, order)
    return OperatorKernels(
        kernel_matrix(phi, x_u, x_u),
        kernel_matrix(phi, x_u, x_r, operator, (False, True)),
        kernel_matrix(phi, x_r, x_r, operator, (True, True)),
    )
