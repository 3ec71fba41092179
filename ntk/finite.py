"""Finite-width dynamics of the empirical NTK: how fast the kernel moves under gradient flow.

Gradient flow on the training loss C = 1/(2N) sum_i ||f(x_i) - y_i||^2 (time t = lr x steps) moves
the parameters along

    d theta / dt = -grad C = -(1/N) J(X)^T (f(X) - Y),

so the kernel moves at

    d Theta(x, x') / dt = D Theta(theta)[d theta / dt],

the directional derivative of the empirical NTK along the flow. At infinite width it vanishes
(Jacot et al. 2018, Theorem 2); at width n its mean is O(1/n) (Dyer & Gur-Ari 2019, Section 3 and
Table 1). `kernel_velocity` computes it exactly, in forward mode (`torch.func.jvp`), not by a
finite difference: through the layer-wise factors for `NTKMLP` (memory of a forward pass), through
the Jacobian (forward over reverse) for any other module.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import functional_call, grad, jvp

from ntk.activations import as_activation
from ntk.backends import flat_jacobian, layerwise_kernel
from ntk.forward import as_model_input, as_outputs, cast_fixed, cast_input, cast_params
from ntk.model import NTKMLP
from ntk.train import mse_cost, record_steps

Tensor = torch.Tensor


class _LayerwiseKernel(nn.Module):
    """Theta(x, x) of an NTKMLP as a module, so `functional_call` can hand it other parameters."""

    def __init__(self, model: NTKMLP) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return layerwise_kernel(self.model, x, None, x.dtype, x.shape[0], trace=False)


def flow_direction(model: nn.Module, x_train: Tensor, y_train: Tensor, dtype: torch.dtype = torch.float64) -> dict[str, Tensor]:
    """d theta / dt = -grad C under gradient flow on the squared loss, by parameter name (in `dtype`).

    Example:
        >>> import torch, ntk
        >>> model = ntk.NTKMLP(2, 100, 3, generator=torch.Generator().manual_seed(0))
        >>> x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
        >>> direction = ntk.flow_direction(model, x, x[:, :1])  # d theta / dt by parameter name
        >>> sorted(direction) == sorted(name for name, _ in model.named_parameters())
        True
    """
    params, fixed = cast_params(model, dtype), cast_fixed(model, dtype)
    x, y = cast_input(x_train, dtype), y_train.to(dtype)

    def cost(p: dict[str, Tensor]) -> Tensor:
        return mse_cost(as_outputs(functional_call(model, {**fixed, **p}, (x,)), x.shape[0]), y)

    return {k: -g for k, g in grad(cost)(params).items()}


def kernel_velocity(
    model: nn.Module, x_train: Tensor, y_train: Tensor | None, x: Tensor | None = None, dtype: torch.dtype = torch.float64
) -> Tensor:
    """d Theta / dt at the current parameters under gradient flow on the squared loss of (x_train, y_train).

    Args:
        model: an NTKMLP (layer-wise factors, forward mode) or any module mapping (N, ...) to (N, O).
        x_train, y_train: the training set whose loss drives the flow; y_train (N, O) or (N,).
        x: the inputs the kernel is taken on (default x_train).
        dtype: precision of the computation (float64 by default).

    Returns:
        (M, M) for one output, else (M, M, O, O), M = len(x), on the model's device.

    Raises:
        ValueError: no targets, or targets whose shape does not match the model's outputs.

    Example:
        >>> import torch, ntk
        >>> model = ntk.NTKMLP(2, 100, 3, generator=torch.Generator().manual_seed(0))
        >>> x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
        >>> ntk.kernel_velocity(model, x, x[:, :1]).shape  # d Theta(X, X) / dt at t = 0
        torch.Size([4, 4])
    """
    if y_train is None:
        raise ValueError(
            "the kernel velocity needs the training targets y_train: the flow follows the gradient of the loss on (x_train, y_train)"
        )
    x = x_train if x is None else x
    device = next(model.parameters()).device
    x_train, x, y_train = x_train.to(device), x.to(device), y_train.to(device)
    with torch.no_grad():
        f = as_outputs(model(as_model_input(model, x_train[:1])), 1)
    y = y_train.reshape(-1, 1) if y_train.dim() == 1 else y_train
    if y.shape != (x_train.shape[0], f.shape[1]):
        raise ValueError(
            f"y_train must have shape (N, O) = ({x_train.shape[0]}, {f.shape[1]}) like the model's outputs on x_train, got {tuple(y_train.shape)}"
        )
    direction = flow_direction(model, x_train, y, dtype)
    params, fixed = cast_params(model, dtype), cast_fixed(model, dtype)
    xs = cast_input(x, dtype)
    if isinstance(model, NTKMLP):
        wrapper = _LayerwiseKernel(model)

        def theta(p: dict[str, Tensor]) -> Tensor:
            return functional_call(wrapper, {f"model.{k}": v for k, v in {**fixed, **p}.items()}, (xs,))

        return jvp(theta, (params,), (direction,))[1]

    j, dj = jvp(lambda p: flat_jacobian(model, p, fixed, xs), (params,), (direction,))  # (M, O, P) each
    half = torch.einsum("iap,jbp->ijab", dj, j)  # D Theta = dJ J^T + J dJ^T
    velocity = half + half.permute(1, 0, 3, 2)
    return velocity[:, :, 0, 0] if velocity.shape[2] == 1 else velocity


def ntk_diagonal_ensemble(
    x: Tensor,
    widths: list[int],
    n_networks: int,
    activation: str = "relu",
    weight_std: float = 1.0,
    beta: float = 0.1,
    random_bias: bool = True,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    chunk: int = 256,
) -> Tensor:
    """K(x, x), the on-diagonal NTK at one input, for `n_networks` independent initialisations, `chunk`
    networks batched at a time (their weights are held for the backward pass).

    The networks: z(l) = weight_std W(l) a(l-1) / sqrt(n_{l-1}) + beta b(l), a(l) = sigma(z(l)),
    f = z(L) (scalar), every entry of W(l) N(0, 1), b(l) N(0, 1) (or 0 with random_bias=False),
    widths = [n_0, ..., n_{L-1}, 1]. K sums the squared derivatives with respect to every W and b:

        K(x, x) = sum_l (weight_std^2 ||a(l-1)||^2 / n_{l-1} + beta^2) ||d(l)||^2,   d(l) = df/dz(l)

    (one forward and one backward pass, the networks batched). `weight_std` = sqrt(2), beta = 1 and
    zero biases is the He-scaled ReLU network of Hanin & Nica (2019, Section 2), with the derivatives
    taken with respect to the N(0, 1) weights; weight_std = 1, beta = 0.1 is the paper's NTKMLP.

    Returns:
        (n_networks,) in `dtype`, on x's device.

    Example:
        >>> import torch, ntk
        >>> x = torch.randn(3, dtype=torch.float64)
        >>> ntk.ntk_diagonal_ensemble(x, [3, 64, 64, 1], n_networks=10, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([10])
    """
    act = as_activation(activation)
    if widths[0] != x.numel():
        raise ValueError(f"widths[0] must be the input dimension {x.numel()}, got {widths[0]}")
    if widths[-1] != 1:
        raise ValueError(f"the network has one output: widths[-1] must be 1, got {widths[-1]}")
    for n in widths:
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"widths must be integers >= 1, got {n!r}")
    if n_networks > chunk:
        parts = [
            ntk_diagonal_ensemble(x, widths, min(chunk, n_networks - i), activation, weight_std, beta, random_bias, generator, dtype, chunk)
            for i in range(0, n_networks, chunk)
        ]
        return torch.cat(parts)
    device = x.device
    draw = dict(generator=generator, device=generator.device if generator is not None else device, dtype=dtype)
    a = x.to(device, dtype).reshape(1, -1, 1).expand(n_networks, -1, 1)  # (S, n_0, 1)
    weights, acts, derivs = [], [], []
    for l, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        if l > 0:
            a, d = act.value_and_deriv(a)  # a holds z(l), a fresh product
            derivs.append(d)
        acts.append(a)
        w = torch.randn(n_networks, n_out, n_in, **draw).to(device)
        b = (
            torch.randn(n_networks, n_out, 1, **draw).to(device)
            if random_bias
            else torch.zeros(n_networks, n_out, 1, dtype=dtype, device=device)
        )
        a = torch.baddbmm(b, w, a, beta=beta, alpha=weight_std / math.sqrt(n_in))  # z(l + 1), (S, n_out, 1)
        weights.append(w)
    delta = torch.ones(n_networks, 1, 1, dtype=dtype, device=device)  # df/dz(L)
    kernel = torch.zeros(n_networks, dtype=dtype, device=device)
    for l in reversed(range(len(weights))):
        n_in = widths[l]
        kernel += (weight_std**2 * acts[l].square().sum((1, 2)) / n_in + beta**2) * delta.square().sum((1, 2))
        if l > 0:
            delta = torch.bmm(weights[l].transpose(1, 2), delta).mul_(weight_std / math.sqrt(n_in)).mul_(derivs[l - 1])
    return kernel


def quadratic_model(model: nn.Module, x: Tensor, dtype: torch.dtype | None = None):
    """The second-order Taylor model of `model` on the inputs x around its current parameters theta_0
    (Bai & Lee 2020, "Beyond linearization"): as a function of the displacement d = theta - theta_0,

        f_quad(d) = f(theta_0) + J_0 d + 1/2 D^2 f(theta_0)[d, d]        (N, O)

    by forward mode over forward mode (`torch.func.jvp`), never forming the Hessian. Dropping the last
    term gives the linearisation (`linear=True`).

    Returns:
        (f_quad, theta_0): f_quad(d, linear=False) for d a dict like theta_0, and theta_0 (detached,
        in `dtype`, default the parameters').

    Example:
        >>> import torch, ntk
        >>> model = ntk.NTKMLP(2, 100, 3, generator=torch.Generator().manual_seed(0))
        >>> x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
        >>> f_quad, theta0 = ntk.quadratic_model(model, x)
        >>> zero = {name: torch.zeros_like(p) for name, p in theta0.items()}
        >>> torch.allclose(f_quad(zero), model(x))  # at d = 0 it is the network
        True
    """
    dtype = dtype or next(model.parameters()).dtype
    params, fixed = cast_params(model, dtype), cast_fixed(model, dtype)
    xs = cast_input(x, dtype)

    def f(p: dict[str, Tensor]) -> Tensor:
        return as_outputs(functional_call(model, {**fixed, **p}, (xs,)), xs.shape[0])

    with torch.no_grad():
        f0 = f(params)

    def f_quad(d: dict[str, Tensor], linear: bool = False) -> Tensor:
        if linear:
            return f0 + jvp(f, (params,), (d,))[1]
        jd, hdd = jvp(lambda p: jvp(f, (p,), (d,))[1], (params,), (d,))  # J d and D(J d)[d] = D^2 f[d, d]
        return f0 + jd + 0.5 * hdd

    return f_quad, params


def train_quadratic(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    lr: float,
    steps: int,
    record_t=(),
    callback=None,
    linear: bool = False,
    dtype: torch.dtype | None = None,
    lr_max: float | None = None,
) -> None:
    """Gradient descent on C = 1/(2N) sum ||f_quad(d) - y||^2 over d from d = 0, the same steps the
    network takes (`ntk.train.gradient_descent`): `callback(t, f)` at every t of `record_t` with the
    model's outputs f (N, O) there. The network itself is not changed. `linear=True` trains the
    linearisation instead.

    Raises:
        ValueError: lr above the stability bound `lr_max` (2 / lambda_max(Theta_0 / N), when given),
            a time of record_t off the step grid.

    Example:
        >>> import torch, ntk
        >>> model = ntk.NTKMLP(2, 100, 3, generator=torch.Generator().manual_seed(0))
        >>> x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
        >>> seen = {}
        >>> ntk.train_quadratic(model, x, x[:, :1], lr=1.0, steps=10, record_t=[10], callback=lambda t, f: seen.update({t: f.shape}))
        >>> seen
        {10.0: torch.Size([4, 1])}
    """
    if not lr > 0 or (lr_max is not None and lr > lr_max):
        raise ValueError(
            f"lr must be in (0, {lr_max:.4g}], the stability bound 2 / lambda_max(Theta_0 / N) of the network at t = 0, got {lr!r}"
            if lr_max is not None
            else f"lr must be > 0, got {lr!r}"
        )
    f_quad, params = quadratic_model(model, x, dtype)
    y = y.to(next(iter(params.values())).dtype)
    to_record = record_steps(record_t, lr, steps)  # step -> t, refusing times off the step grid

    def cost(d: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        out = f_quad(d, linear)
        return mse_cost(out, y), out

    d = {k: torch.zeros_like(v) for k, v in params.items()}
    step = grad(cost, has_aux=True)
    for k in range(steps + 1):
        if k == steps:  # the last recorded time needs no gradient
            if k in to_record and callback is not None:
                callback(to_record[k], f_quad(d, linear).detach())
            break
        g, out = step(d)
        if k in to_record and callback is not None:
            callback(to_record[k], out.detach())
        d = {name: d[name] - lr * g[name] for name in d}
