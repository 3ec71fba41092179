"""Predictions of the infinite-width theory for the squared loss (paper, Section 5).

With K = Theta(X, X) on the N training inputs, k(x) = Theta(x, X), y = f*(X) and the kernel
gradient flow df/dt = -Theta (f - f*) / N, a network that starts from f0 is at time t

    f_t(x) = f0(x) + k(x) A_t (y - f0(X)),     A_t = K^{-1} (I - exp(-t K / N))      (A_inf = K^{-1})

At infinite width f0 ~ GP(0, Sigma) with Sigma the NNGP kernel, so f_t is Gaussian with
    mean  m_t(x)      = k(x) A_t y
    cov   C_t(x, x')  = Sigma(x, x') - k(x) A_t Sigma(X, x') - k(x') A_t Sigma(X, x)
                        + k(x) A_t Sigma(X, X) A_t^T k(x')^T.
A_t is applied through the eigendecomposition K = U diag(lambda) U^T, so finite t needs no
inverse (A_t = U diag((1 - exp(-t lambda / N)) / lambda) U^T, equal to t / N as lambda -> 0);
t = inf needs K positive definite and says so when it is not. Gradient descent with learning rate
lr (t = lr k after k steps) has A_t = K^{-1} (I - (I - lr K / N)^k) instead (`lr=`), which tends to
the flow's as lr -> 0.

Every function computes on the device of its kernels (or of the model): targets and initial
outputs given on another device are moved there, and the results are returned there.

`linearised_gradient_descent` trains the linearised network f_lin = f0 + J (theta - theta0) by the
same gradient descent as the real one, through torch.func `jvp` (Jacobian-vector products) and
`vjp`, without forming J. `kernel_gradient_descent` gives the same outputs from the network's
empirical NTK Theta_0 = J J^T: a step moves the outputs by -lr Theta_0 (f - y) / N exactly, so once
Theta_0 is known a step costs one matrix-vector product instead of a forward and a backward pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call, jvp, vjp

from ntk.train import record_steps

Tensor = torch.Tensor


def flow_matrix(ntk_train: Tensor, t: float, rcond: float = 1e-10, lr: float | None = None) -> Tensor:
    """A_t = K^{-1} (I - exp(-t K / N)) for K = Theta(X, X), (N, N); t = math.inf gives K^{-1}.

    With lr, gradient descent's A_t = K^{-1} (I - (I - lr K / N)^(t / lr)); t must then be a
    multiple of lr (t = math.inf: K^{-1} as well, for lr below the stability bound 2 N / lambda_max).

    Example:
        >>> import torch, ntk
        >>> theta = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
        >>> ntk.flow_matrix(theta, t=1.0)  # Theta^-1 (I - exp(-t Theta / N)), N = 2
        tensor([[0.3161, 0.0000],
                [0.0000, 0.3935]], dtype=torch.float64)
    """
    if ntk_train.dim() != 2 or ntk_train.shape[0] != ntk_train.shape[1]:
        raise ValueError(f"the training kernel must be square (N, N), got {tuple(ntk_train.shape)}")
    if not torch.isfinite(ntk_train).all():
        raise ValueError("the training kernel contains non-finite values")
    if not t >= 0:
        raise ValueError(f"t must be >= 0 (or math.inf), got {t!r}")
    n = ntk_train.shape[0]
    lam, u = torch.linalg.eigh(0.5 * (ntk_train + ntk_train.T))
    if lam[0] < -rcond * lam[-1].abs():
        raise ValueError(f"the training kernel is not positive semi-definite (smallest eigenvalue {lam[0].item():.3g})")
    if math.isinf(t):
        if lam[0] <= rcond * lam[-1]:
            raise ValueError(
                f"the training kernel is not positive definite (eigenvalues {lam[0].item():.3g} .. {lam[-1].item():.3g}): "
                "t = inf needs K^-1; use a finite t or distinct training inputs"
            )
        gain = 1.0 / lam
    else:
        lam = lam.clamp_min(0.0)
        small = lam * t / n < 1e-12
        if lr is None:
            learnt = -torch.expm1(-t * lam / n)  # 1 - exp(-t lambda / N)
        else:
            steps, x = _steps(t, lr), lr * lam / n
            small_step = x <= 0.5  # 1 - (1 - x)^k, through log1p for small x (accurate), directly otherwise
            learnt = torch.where(small_step, -torch.expm1(steps * torch.log1p(-x.clamp_max(0.5))), 1 - (1 - x) ** steps)
        gain = torch.where(small, torch.full_like(lam, t / n), learnt / torch.where(small, 1.0, lam))
    return (u * gain) @ u.T


def _steps(t: float, lr: float) -> int:
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    steps = round(t / lr)
    if abs(steps * lr - t) > 1e-9 * max(t, lr):
        raise ValueError(f"t = {t:g} is not a whole number of gradient-descent steps of lr = {lr:g}")
    return steps


def kernel_regression(
    ntk_test_train: Tensor,
    ntk_train: Tensor,
    y_train: Tensor,
    t: float = math.inf,
    f0_test: Tensor | None = None,
    f0_train: Tensor | None = None,
    lr: float | None = None,
) -> Tensor:
    """f_t(x) = f0(x) + k(x) A_t (y - f0(X)) for a given initial function (default f0 = 0).

    Args:
        ntk_test_train: Theta(x, X), (M, N).
        ntk_train: Theta(X, X), (N, N).
        y_train: targets, (N,) or (N, O).
        t: training time (math.inf for the end of training).
        f0_test: the initial function at the test inputs, shaped like the prediction.
        f0_train: the initial function at the training inputs, shaped like y_train.
        lr: gradient descent at this learning rate instead of the gradient flow (`flow_matrix`).

    Returns:
        (M,) or (M, O).

    Example:
        >>> import torch, ntk
        >>> theta = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
        >>> y = torch.tensor([1.0, -1.0], dtype=torch.float64)
        >>> torch.allclose(ntk.kernel_regression(theta, theta, y), y)  # at t = inf the training points are fitted
        True
    """
    device = ntk_train.device
    residual = y_train.to(device) if f0_train is None else y_train.to(device) - f0_train.to(device)
    pred = ntk_test_train @ (flow_matrix(ntk_train, t, lr=lr) @ residual)
    return pred if f0_test is None else f0_test.to(device) + pred


def gaussian_prediction(
    ntk_test_train: Tensor,
    ntk_train: Tensor,
    nngp_test: Tensor,
    nngp_test_train: Tensor,
    nngp_train: Tensor,
    y_train: Tensor,
    t: float = math.inf,
    lr: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Mean (M,) and covariance (M, M) of the infinite-width network at time t (scalar output).

    Args:
        ntk_test_train: Theta(x, X), (M, N).  ntk_train: Theta(X, X), (N, N).
        nngp_test: Sigma(x, x), (M, M).  nngp_test_train: Sigma(x, X), (M, N).  nngp_train: (N, N).
        y_train: (N,).
        t: training time.
        lr: gradient descent at this learning rate instead of the gradient flow (`flow_matrix`).

    Example:
        >>> import torch, ntk
        >>> x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        >>> nngp, theta = ntk.limiting_kernels(x, None, depth=3)
        >>> tr, te = slice(0, 3), slice(3, 5)
        >>> mean, cov = ntk.gaussian_prediction(theta[te, tr], theta[tr, tr], nngp[te, te], nngp[te, tr], nngp[tr, tr], x[tr, 0])
        >>> mean.shape, cov.shape
        (torch.Size([2]), torch.Size([2, 2]))
    """
    b = ntk_test_train @ flow_matrix(ntk_train, t, lr=lr)  # k(x) A_t, (M, N)
    return b @ y_train.to(b.device, b.dtype).reshape(-1), prediction_covariance(b, nngp_test, nngp_test_train, nngp_train)


def prediction_covariance(gain: Tensor, nngp_test: Tensor, nngp_test_train: Tensor, nngp_train: Tensor) -> Tensor:
    """The covariance (M, M) of `gaussian_prediction` from its gain k(x) A_t, (M, N), when that is known.

    Example:
        >>> import torch, ntk
        >>> x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        >>> nngp, theta = ntk.limiting_kernels(x, None, depth=3)
        >>> tr, te = slice(0, 3), slice(3, 5)
        >>> gain = theta[te, tr] @ ntk.flow_matrix(theta[tr, tr], float("inf"))
        >>> _, cov = ntk.gaussian_prediction(theta[te, tr], theta[tr, tr], nngp[te, te], nngp[te, tr], nngp[tr, tr], x[tr, 0])
        >>> torch.allclose(ntk.prediction_covariance(gain, nngp[te, te], nngp[te, tr], nngp[tr, tr]), cov)
        True
    """
    cross = gain @ nngp_test_train.T  # k(x) A_t Sigma(X, x'), (M, M)
    cov = nngp_test - cross - cross.T + gain @ nngp_train @ gain.T
    return 0.5 * (cov + cov.T)


def linearised_gradient_descent(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    lr: float,
    steps: int,
    x_eval: Tensor,
    record_t: Sequence[float],
    dtype: torch.dtype = torch.float64,
) -> dict[float, Tensor]:
    """Train f_lin(x) = f0(x) + J(x) (theta - theta0) by gradient descent on C = 1/(2N) sum ||f - y||^2.

    Uses the same learning rate and time t = lr * steps as `ntk.train.gradient_descent`; J is never
    formed (forward-mode products through `jvp`, reverse-mode through `vjp`). Only the trainable
    parameters (requires_grad) move, as in `ntk.gradient_descent`; the model is not modified.

    Returns:
        {t: f_lin(x_eval) at t, shape (M, O)} for every t in `record_t`.

    Example:
        >>> import torch, ntk
        >>> model = ntk.NTKMLP(2, 100, 3, generator=torch.Generator().manual_seed(0))
        >>> x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
        >>> out = ntk.linearised_gradient_descent(model, x, x[:, :1], lr=1.0, steps=10, x_eval=x, record_t=[0, 10])
        >>> sorted(out), out[10.0].shape
        ([0.0, 10.0], torch.Size([4, 1]))
    """
    to_record = record_steps(record_t, lr, steps)
    params = {k: v.detach().to(dtype) for k, v in model.named_parameters() if v.requires_grad}
    fixed = {k: v.detach().to(dtype) for k, v in model.named_parameters() if not v.requires_grad}
    fixed |= {k: v.to(dtype) if v.is_floating_point() else v for k, v in model.named_buffers()}
    if not params:
        raise ValueError("the model has no trainable parameters (none with requires_grad): nothing to linearise")
    device = next(iter(params.values())).device
    x, y, x_eval = x.to(device, dtype), y.to(device, dtype).reshape(x.shape[0], -1), x_eval.to(device, dtype)

    def f_train(p):
        return functional_call(model, {**fixed, **p}, (x,))

    def f_eval(p):
        return functional_call(model, {**fixed, **p}, (x_eval,))

    f0_train, pull = vjp(f_train, params)
    with torch.no_grad():
        f0_eval = f_eval(params)

    def push_train(tangent):
        return jvp(f_train, (params,), (tangent,))[1]

    def push_eval(tangent):
        return jvp(f_eval, (params,), (tangent,))[1]

    delta = {k: torch.zeros_like(v) for k, v in params.items()}
    out = {}
    for k in range(steps + 1):
        if k in to_record:
            out[to_record[k]] = f0_eval + push_eval(delta)
        if k == steps:
            break
        residual = f0_train + push_train(delta) - y  # (N, O)
        (grad,) = pull(residual / x.shape[0])
        for name in delta:
            delta[name].sub_(grad[name], alpha=lr)
    return out


def kernel_gradient_descent(
    ntk_train: Tensor,
    ntk_eval_train: Tensor,
    f0_train: Tensor,
    f0_eval: Tensor,
    y: Tensor,
    lr: float,
    steps: int,
    record_t: Sequence[float],
) -> dict[float, Tensor]:
    """The outputs of `linearised_gradient_descent`, computed from the network's empirical NTK.

    For f_lin = f0 + J (theta - theta0) a gradient-descent step on C = 1/(2N) sum ||f - y||^2 is
    theta -= lr J(X)^T (f(X) - y) / N, so the outputs move by
        f(X) -= lr Theta_0(X, X) (f(X) - y) / N,      f(x) -= lr Theta_0(x, X) (f(X) - y) / N.

    Args:
        ntk_train: Theta_0(X, X), (N, N, O, O) (or (N, N) for O = 1), as `ntk.empirical.empirical_ntk`.
        ntk_eval_train: Theta_0(x, X), (M, N, O, O) (or (M, N)).
        f0_train: the network at initialisation on the training inputs, (N, O).
        f0_eval: the network at initialisation on the evaluation inputs, (M, O).
        y: targets, (N, O). These three are moved to the device and dtype of `ntk_train`.
        lr: learning rate, as in `linearised_gradient_descent`.
        steps: number of steps (t = lr * steps).
        record_t: times at which the outputs are returned.

    Returns:
        {t: f_lin(x_eval) at t, shape (M, O)} for every t in `record_t`, in the dtype and on the
        device of `ntk_train`.

    Example:
        >>> import torch, ntk
        >>> theta = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
        >>> zeros, y = torch.zeros(2, 1, dtype=torch.float64), torch.ones(2, 1, dtype=torch.float64)
        >>> out = ntk.kernel_gradient_descent(theta, theta, zeros, zeros, y, lr=0.5, steps=2000, record_t=[1000.0])
        >>> torch.allclose(out[1000.0], y)  # the training outputs reach the targets
        True
    """
    to_record = record_steps(record_t, lr, steps)
    n, m = ntk_train.shape[0], ntk_eval_train.shape[0]
    dtype, device = ntk_train.dtype, ntk_train.device
    f, y = f0_train.to(device, dtype).reshape(n, -1).clone(), y.to(device, dtype).reshape(n, -1)
    out_dim = f.shape[1]
    if ntk_train.shape != (n, n) + ((out_dim, out_dim) if ntk_train.dim() == 4 else ()):
        raise ValueError(f"ntk_train must be (N, N) or (N, N, O, O) with N = {n}, O = {out_dim}, got {tuple(ntk_train.shape)}")
    if ntk_eval_train.shape[1:] != ntk_train.shape[1:]:
        raise ValueError(f"ntk_eval_train must be (M, {n}, ...) like ntk_train, got {tuple(ntk_eval_train.shape)}")

    def as_matrix(kernel: Tensor, rows: int) -> Tensor:  # (rows O, N O), entry [i O + a, j O + b]
        if kernel.dim() == 2:
            return kernel if out_dim == 1 else torch.kron(kernel, torch.eye(out_dim, dtype=dtype, device=kernel.device))
        return kernel.permute(0, 2, 1, 3).reshape(rows * out_dim, n * out_dim)

    k_train, k_eval = as_matrix(ntk_train, n), as_matrix(ntk_eval_train, m)
    k_eval = k_eval.to(device)
    f_eval0 = f0_eval.to(device, dtype).reshape(m, -1)
    moved = torch.zeros(n * out_dim, dtype=dtype, device=f.device)  # sum over past steps of (f(X) - y)
    out = {}
    for k in range(steps + 1):
        if k in to_record:
            out[to_record[k]] = f_eval0 - (lr / n) * (k_eval @ moved).reshape(m, out_dim)
        if k == steps:
            break
        residual = (f - y).reshape(-1)
        moved += residual
        f -= (lr / n) * (k_train @ residual).reshape(n, out_dim)
    return out
