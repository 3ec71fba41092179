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
t = inf needs K positive definite and says so when it is not.

`linearised_gradient_descent` trains the linearised network f_lin = f0 + J (theta - theta0) by the
same gradient descent as the real one, through torch.func `jvp` (Jacobian-vector products) and
`vjp`, without forming J.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call, jvp, vjp

from ntk.train import record_steps

Tensor = torch.Tensor


def flow_matrix(ntk_train: Tensor, t: float, rcond: float = 1e-10) -> Tensor:
    """A_t = K^{-1} (I - exp(-t K / N)) for K = Theta(X, X), (N, N); t = math.inf gives K^{-1}."""
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
        gain = torch.where(small, torch.full_like(lam, t / n), -torch.expm1(-t * lam / n) / torch.where(small, 1.0, lam))
    return (u * gain) @ u.T


def kernel_regression(
    ntk_test_train: Tensor,
    ntk_train: Tensor,
    y_train: Tensor,
    t: float = math.inf,
    f0_test: Tensor | None = None,
    f0_train: Tensor | None = None,
) -> Tensor:
    """f_t(x) = f0(x) + k(x) A_t (y - f0(X)) for a given initial function (default f0 = 0).

    Args:
        ntk_test_train: Theta(x, X), (M, N).
        ntk_train: Theta(X, X), (N, N).
        y_train: targets, (N,) or (N, O).
        t: training time (math.inf for the end of training).
        f0_test, f0_train: the initial function at the test and training inputs, shaped like the
            prediction and like y_train.

    Returns:
        (M,) or (M, O).
    """
    residual = y_train if f0_train is None else y_train - f0_train
    pred = ntk_test_train @ (flow_matrix(ntk_train, t) @ residual)
    return pred if f0_test is None else f0_test + pred


def gaussian_prediction(
    ntk_test_train: Tensor,
    ntk_train: Tensor,
    nngp_test: Tensor,
    nngp_test_train: Tensor,
    nngp_train: Tensor,
    y_train: Tensor,
    t: float = math.inf,
) -> tuple[Tensor, Tensor]:
    """Mean (M,) and covariance (M, M) of the infinite-width network at time t (scalar output).

    Args:
        ntk_test_train: Theta(x, X), (M, N).  ntk_train: Theta(X, X), (N, N).
        nngp_test: Sigma(x, x), (M, M).  nngp_test_train: Sigma(x, X), (M, N).  nngp_train: (N, N).
        y_train: (N,).
        t: training time.
    """
    b = ntk_test_train @ flow_matrix(ntk_train, t)  # k(x) A_t, (M, N)
    mean = b @ y_train.reshape(-1)
    cross = b @ nngp_test_train.T  # k(x) A_t Sigma(X, x'), (M, M)
    cov = nngp_test - cross - cross.T + b @ nngp_train @ b.T
    return mean, 0.5 * (cov + cov.T)


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
    formed (forward-mode products through `jvp`, reverse-mode through `vjp`). The model is not
    modified.

    Returns:
        {t: f_lin(x_eval) at t, shape (M, O)} for every t in `record_t`.
    """
    to_record = record_steps(record_t, lr, steps)
    params = {k: v.detach().to(dtype) for k, v in model.named_parameters()}
    x, y, x_eval = x.to(dtype), y.to(dtype).reshape(x.shape[0], -1), x_eval.to(dtype)

    def f_train(p):
        return functional_call(model, p, (x,))

    def f_eval(p):
        return functional_call(model, p, (x_eval,))

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
