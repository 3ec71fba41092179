"""Kernels of differential operators of a network: the NTK blocks of a physics-informed network.

A physics-informed network (PINN) fits u(x) = f(theta, x) at boundary points x_u and makes a residual
r(x) = L[u](x) vanish at collocation points x_r, for a differential operator L. Gradient descent on
its loss moves the two outputs by one kernel (Wang, Yu & Perdikaris 2022, "When and why PINNs fail to
train: A neural tangent kernel perspective", J. Comput. Phys. 449, Eq. 3.3-3.6):

    K = [[K_uu, K_ur],      K_uu[i, j] = <du(x_i)/dtheta, du(x_j)/dtheta>
         [K_ru, K_rr]]      K_ur[i, j] = <du(x_i)/dtheta, dr(x_j)/dtheta>,   K_rr likewise with r.

`operator_ntk(net, operator, x_u, x_r)` computes the three blocks through `ntk.empirical_ntk` and
its methods, not a Jacobian code of its own: `OperatorModel` is one module whose input is a point
with a tag, tag 0 giving u(x) and tag 1 giving r(x), so that K is one symmetric empirical kernel and
K_ur its off-diagonal block. The operator is written with torch.func on u as a function of one point:

    >>> from torch.func import hessian
    >>> poisson = lambda u, x: hessian(u)(x).trace()  # u_xx (a source term f(x) does not enter K)

Which methods apply: the residual differentiates the network inside the forward pass, so the
structured per-layer rules cannot record it (it refuses in one line); `jacobian` (vmap(jacrev) over
the residual's own vmap(hessian)), `ntk_vp` (a jvp over it) and `autograd` (plain reverse mode, one
point at a time) are exact, and method="auto" measures them on a probe and takes the fastest.
torch.func's `hessian` is already forward-over-reverse (jacfwd of jacrev), the cheaper order for a
few input coordinates; write the operator with `jacfwd(jacrev(u))` likewise for other derivatives.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn
from torch.func import vmap

from ntk.empirical import empirical_ntk

Tensor = torch.Tensor

# operator(u, x) -> the residual at one point: u maps a point (d,) to a scalar, x is a point (d,)
Operator = Callable[[Callable[[Tensor], Tensor], Tensor], Tensor]


def point_function(net: nn.Module) -> Callable[[Tensor], Tensor]:
    """u as a function of one point: (d,) -> a scalar, for operators written with torch.func."""
    return lambda point: net(point.unsqueeze(0)).reshape(())


def residual_at(operator: Operator, u: Callable[[Tensor], Tensor], point: Tensor) -> Tensor:
    """operator(u, point) as a scalar; refused in one line unless it is one number per point."""
    residual = operator(u, point)
    if residual.numel() != 1:
        raise ValueError(
            f"the operator must return one number per point (a residual (N, 1) in all), got shape {tuple(residual.shape)} per point"
        )
    return residual.reshape(())


def operator_values(net: nn.Module, operator: Operator, x: Tensor) -> Tensor:
    """The residual operator(u, x_j) at every point of x (N, d): (N, 1), differentiable in the parameters.

    Example:
        >>> import torch
        >>> from torch.func import hessian
        >>> net = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        >>> operator_values(net, lambda u, x: hessian(u)(x)[0, 0], torch.rand(5, 1)).shape  # u_xx at 5 points
        torch.Size([5, 1])
    """
    u = point_function(net)
    return vmap(lambda point: residual_at(operator, u, point))(x)[:, None]


class OperatorModel(nn.Module):
    """u and a differential operator of it, as one module of tagged points.

    Input (N, 1 + d): a tag in column 0 (0: the value u(x), 1: the residual operator(u, x)) and the
    point x in the other d columns. Output (N, 1). Both values are computed at every point and the
    tag selects one (torch.where: the other contributes no gradient), so any batch may mix them.

    Args:
        net: the network, mapping points (N, d) to (N, 1) or (N,).
        operator: operator(u, x) -> a scalar (module docstring).

    Example:
        >>> import torch
        >>> from torch.func import hessian
        >>> net = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        >>> model = OperatorModel(net, lambda u, x: hessian(u)(x)[0, 0])
        >>> z = tagged_points(torch.zeros(1, 1), torch.full((1, 1), 0.5))  # u(0), then u_xx(0.5)
        >>> bool(torch.allclose(model(z)[0], net(torch.zeros(1, 1))[0]))
        True
    """

    def __init__(self, net: nn.Module, operator: Operator):
        super().__init__()
        self.net = net
        self.operator = operator

    def forward(self, z: Tensor) -> Tensor:
        tag, x = z[:, :1], z[:, 1:]  # (N, 1), (N, d)
        u = point_function(self.net)

        def both(point: Tensor) -> tuple[Tensor, Tensor]:
            return u(point), residual_at(self.operator, u, point)

        values, residuals = vmap(both)(x)  # (N,), (N,)
        return torch.where(tag > 0.5, residuals[:, None], values[:, None])


class OperatorKernels(NamedTuple):
    """The blocks of a PINN's NTK: K_uu (N_u, N_u), K_ur (N_u, N_r) and K_rr (N_r, N_r).

    Example:
        >>> import torch
        >>> k = OperatorKernels(torch.eye(2), torch.ones(2, 3), torch.eye(3))
        >>> tuple(k.full().shape)
        (5, 5)
    """

    uu: Tensor
    ur: Tensor
    rr: Tensor

    def full(self) -> Tensor:
        """K = [[K_uu, K_ur], [K_ru, K_rr]], (N_u + N_r, N_u + N_r)."""
        return torch.cat([torch.cat([self.uu, self.ur], 1), torch.cat([self.ur.T, self.rr], 1)], 0)


def tagged_points(x_u: Tensor, x_r: Tensor) -> Tensor:
    """The inputs of `OperatorModel` for boundary points x_u (N_u, d) and residual points x_r (N_r, d):
    (N_u + N_r, 1 + d), tags 0 then 1."""
    if x_u.dim() != 2 or x_r.dim() != 2 or x_u.shape[1] != x_r.shape[1]:
        raise ValueError(f"x_u and x_r must be points (N, d) of one dimension d, got {tuple(x_u.shape)} and {tuple(x_r.shape)}")
    dtype = torch.promote_types(x_u.dtype, x_r.dtype)
    zeros, ones = x_u.new_zeros(x_u.shape[0], 1, dtype=dtype), x_r.new_ones(x_r.shape[0], 1, dtype=dtype)
    return torch.cat([torch.cat([zeros, x_u.to(dtype)], 1), torch.cat([ones, x_r.to(dtype)], 1)])


_WRAPPED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def operator_ntk(
    net: nn.Module,
    operator: Operator,
    x_u: Tensor,
    x_r: Tensor,
    method: str = "auto",
    dtype: torch.dtype = torch.float64,
    **kwargs,
) -> OperatorKernels:
    """K_uu, K_ur and K_rr of `net` and the residual `operator` (module docstring), in one call of
    `ntk.empirical_ntk` on `OperatorModel` (keyword arguments go to it: block_size, memory_limit).

    Args:
        net: maps points (N, d) to (N, 1) or (N,).
        operator: operator(u, x) -> the residual at the point x (d,), a scalar, written with torch.func.
        x_u: points where u is fitted (boundary and initial conditions), (N_u, d).
        x_r: collocation points of the residual, (N_r, d).
        method: "auto", "jacobian", "ntk_vp" or "autograd" ("structured" refuses: the residual
            differentiates inside the forward pass).

    Example:
        >>> import torch
        >>> from torch.func import hessian
        >>> net = torch.nn.Sequential(torch.nn.Linear(1, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        >>> k = operator_ntk(net, lambda u, x: hessian(u)(x).trace(), torch.tensor([[0.0], [1.0]]), torch.rand(5, 1))
        >>> tuple(k.uu.shape), tuple(k.ur.shape), tuple(k.rr.shape)
        ((2, 2), (2, 5), (5, 5))
    """
    z = tagged_points(x_u, x_r)
    wrapped = _WRAPPED.setdefault(net, {})  # one OperatorModel per network and operator: auto's choice is kept with it
    model = wrapped.setdefault(operator, OperatorModel(net, operator))
    kernel = empirical_ntk(model, z, method=method, dtype=dtype, trace=True, **kwargs)
    n_u = x_u.shape[0]
    return OperatorKernels(kernel[:n_u, :n_u], kernel[:n_u, n_u:], kernel[n_u:, n_u:])
