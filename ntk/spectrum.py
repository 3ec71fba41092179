"""Kernel principal components: eigenpairs of Pi = Theta(X, X) / N (paper, Section 5).

Uncentred kernel PCA, as in the paper: the eigenvalues lambda_i of Pi = K / N are the rates at
which gradient descent learns each component (f_t - f* = sum_i exp(-lambda_i t) (f0 - f*)^(i)),
and the eigenfunction f(i) is normalised on the batch by (1/N) sum_j f(i)(x_j)^2 = 1, i.e.
f(i) = sqrt(N) u_i for the unit eigenvector u_i. Signs are fixed so that the largest-magnitude
entry of each eigenfunction is positive.

Two ways: exact (`kernel_pca`, torch.linalg.eigh of a formed kernel) and matrix-free
(`kernel_pca_matrix_free`, Lanczos by scipy's eigsh on kernel-vector products, for kernels too
large to form, e.g. with `ntk.empirical.ntk_vector_product`). `power_iteration` is the simple
block power method the paper used, kept for comparison.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

Tensor = torch.Tensor


def _normalise(values: Tensor, vectors: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Sort descending, scale eigenvectors to eigenfunctions, fix signs."""
    order = torch.argsort(values, descending=True)
    values, vectors = values[order], vectors[:, order]
    funcs = vectors * (n**0.5)  # (N, k), (1/N) sum f^2 = 1
    pivot = funcs.abs().argmax(0)
    signs = torch.sign(funcs[pivot, torch.arange(funcs.shape[1])])
    return values, funcs * torch.where(signs == 0, 1.0, signs)


def kernel_pca(kernel: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k eigenvalues of Pi = kernel / N and the eigenfunctions on the batch.

    Args:
        kernel: Theta(X, X), (N, N), symmetric.
        k: number of components (1 <= k <= N).

    Returns:
        lambdas (k,) descending, and f (N, k) with (1/N) sum_j f[j, i]^2 = 1.
    """
    if kernel.dim() != 2 or kernel.shape[0] != kernel.shape[1]:
        raise ValueError(f"kernel must be square (N, N), got {tuple(kernel.shape)}")
    n = kernel.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be an integer in [1, {n}], got {k!r}")
    if not torch.isfinite(kernel).all():
        raise ValueError("kernel contains non-finite values")
    values, vectors = torch.linalg.eigh(0.5 * (kernel + kernel.T) / n)
    return _normalise(values[-k:], vectors[:, -k:], n)


def rayleigh_quotients(kernel: Tensor, funcs: Tensor) -> Tensor:
    """f(i)^T K f(i) / N^2 for every column f(i) of `funcs`: the rate at which kernel gradient descent
    with K learns the direction f(i) (paper, Section 5).

    For eigenfunctions of Pi = K / N normalised by (1/N) sum_j f(i)(x_j)^2 = 1 (`kernel_pca`), the
    quotient is the eigenvalue lambda_i; for another kernel (a finite network's NTK at time t) it
    measures how fast that kernel learns the same direction.

    Args:
        kernel: K, (N, N).  funcs: f, (N, k).

    Returns:
        (k,) quotients, in the dtype of `kernel`.
    """
    n = kernel.shape[0]
    if kernel.dim() != 2 or kernel.shape[1] != n or funcs.dim() != 2 or funcs.shape[0] != n:
        raise ValueError(f"need a kernel (N, N) and functions (N, k) on the same N, got {tuple(kernel.shape)} and {tuple(funcs.shape)}")
    funcs = funcs.to(kernel.dtype)
    return (funcs * (kernel @ funcs)).sum(0) / n**2


def kernel_pca_matrix_free(
    matvec: Callable[[Tensor], Tensor], n: int, k: int, dtype: torch.dtype = torch.float64, tol: float = 1e-10
) -> tuple[Tensor, Tensor]:
    """Top-k eigenpairs of Pi = K / N from products v -> K v only (Lanczos, scipy eigsh).

    Args:
        matvec: v (N,) -> K v (N,), e.g. `lambda v: ntk_vector_product(model, x, v)`.
        n: N.  k: number of components (< N).  tol: eigsh's relative tolerance.
    """
    from scipy.sparse.linalg import LinearOperator, eigsh

    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < n:
        raise ValueError(f"k must be an integer in [1, {n - 1}] for the matrix-free method, got {k!r}")

    def apply(v: np.ndarray) -> np.ndarray:
        return matvec(torch.as_tensor(v.reshape(-1), dtype=dtype)).detach().cpu().double().numpy() / n

    op = LinearOperator((n, n), matvec=apply, dtype=np.float64)
    values, vectors = eigsh(op, k=k, which="LA", tol=tol, v0=np.ones(n))
    return _normalise(torch.as_tensor(values), torch.as_tensor(vectors), n)


def power_iteration(
    matvec: Callable[[Tensor], Tensor],
    n: int,
    k: int,
    iters: int = 500,
    tol: float = 1e-12,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> tuple[Tensor, Tensor]:
    """Top-k eigenpairs of Pi = K / N by block power (subspace) iteration with Rayleigh-Ritz.

    `matvec` maps a block V (N, k) to K V (N, k). Stops when the Ritz values change by less than
    `tol` (relative) or after `iters` iterations.
    """
    v = torch.linalg.qr(torch.randn(n, k, generator=generator, dtype=dtype))[0]
    previous = None
    for _ in range(iters):
        w = matvec(v) / n  # (N, k)
        v, _ = torch.linalg.qr(w)
        small = v.T @ (matvec(v) / n)
        values, rot = torch.linalg.eigh(0.5 * (small + small.T))
        v = v @ rot
        if previous is not None and ((values - previous).abs() <= tol * values.abs().max()).all():
            break
        previous = values
    return _normalise(values, v, n)
