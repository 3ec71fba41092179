"""Kernel principal components: eigenpairs of Pi = Theta(X, X) / N (paper, Section 5).

Uncentred kernel PCA, as in the paper: the eigenvalues lambda_i of Pi = K / N are the rates at
which gradient descent learns each component (f_t - f* = sum_i exp(-lambda_i t) (f0 - f*)^(i)),
and the eigenfunction f(i) is normalised on the batch by (1/N) sum_j f(i)(x_j)^2 = 1, i.e.
f(i) = sqrt(N) u_i for the unit eigenvector u_i. Signs are fixed so that the largest-magnitude
entry of each eigenfunction is positive.

Two ways: exact (`kernel_pca`, torch.linalg.eigh of a formed kernel) and matrix-free
(`kernel_pca_matrix_free`, Lanczos by scipy's eigsh on kernel-vector products, for kernels too
large to form, e.g. with `ntk.empirical.ntk_vector_product`). `power_iteration` is the simple
block power method the paper used, kept for comparison. `top_eigenvalue` gives lambda_max alone
(Lanczos with full reorthogonalisation), for the stability bound of gradient descent.

Random start vectors are drawn on the CPU (so a seed gives the same start on every device) and
moved to the operator's device; results are returned on that device.
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
    signs = torch.sign(funcs[pivot, torch.arange(funcs.shape[1], device=funcs.device)])
    return values, funcs * torch.where(signs == 0, 1.0, signs)


def kernel_pca(kernel: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k eigenvalues of Pi = kernel / N and the eigenfunctions on the batch.

    Args:
        kernel: Theta(X, X), (N, N), symmetric.
        k: number of components (1 <= k <= N).

    Returns:
        lambdas (k,) descending, and f (N, k) with (1/N) sum_j f[j, i]^2 = 1.

    Example:
        >>> import torch, ntk
        >>> k = torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
        >>> eigenvalues, eigenvectors = ntk.kernel_pca(k, 2)  # of K / N
        >>> eigenvalues
        tensor([1.0000, 0.6667], dtype=torch.float64)
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

    Example:
        >>> import torch, ntk
        >>> k = torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
        >>> values, functions = ntk.kernel_pca(k, 2)  # normalised: (1/N) sum_j f(x_j)^2 = 1
        >>> torch.allclose(ntk.rayleigh_quotients(k, functions), values)
        True
    """
    n = kernel.shape[0]
    if kernel.dim() != 2 or kernel.shape[1] != n or funcs.dim() != 2 or funcs.shape[0] != n:
        raise ValueError(f"need a kernel (N, N) and functions (N, k) on the same N, got {tuple(kernel.shape)} and {tuple(funcs.shape)}")
    funcs = funcs.to(kernel.dtype)
    return (funcs * (kernel @ funcs)).sum(0) / n**2


def kernel_pca_matrix_free(
    matvec: Callable[[Tensor], Tensor],
    n: int,
    k: int,
    dtype: torch.dtype = torch.float64,
    tol: float = 1e-10,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor]:
    """Top-k eigenpairs of Pi = K / N from products v -> K v only (Lanczos, scipy eigsh).

    Args:
        matvec: v (N,) -> K v (N,), e.g. `lambda v: ntk_vector_product(model, x, v)`.
        n: N.  k: number of components (< N).  tol: eigsh's relative tolerance.
        device: where the vectors v handed to `matvec` live (the model's device); the Lanczos
            iteration itself runs in scipy on the CPU, and the eigenpairs are returned on `device`.

    Example:
        >>> import torch, ntk
        >>> k = torch.diag(torch.arange(1.0, 7.0, dtype=torch.float64))
        >>> values, _ = ntk.kernel_pca_matrix_free(lambda v: k @ v, n=6, k=2)
        >>> torch.allclose(values, torch.tensor([1.0, 5 / 6], dtype=torch.float64))
        True
    """
    from scipy.sparse.linalg import LinearOperator, eigsh

    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < n:
        raise ValueError(f"k must be an integer in [1, {n - 1}] for the matrix-free method, got {k!r}")

    def apply(v: np.ndarray) -> np.ndarray:
        return matvec(torch.as_tensor(v.reshape(-1), dtype=dtype, device=device)).detach().cpu().double().numpy() / n

    op = LinearOperator((n, n), matvec=apply, dtype=np.float64)
    values, vectors = eigsh(op, k=k, which="LA", tol=tol, v0=np.ones(n))
    return _normalise(torch.as_tensor(values, device=device), torch.as_tensor(vectors, device=device), n)


def power_iteration(
    matvec: Callable[[Tensor], Tensor],
    n: int,
    k: int,
    iters: int = 500,
    tol: float = 1e-12,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor]:
    """Top-k eigenpairs of Pi = K / N by block power (subspace) iteration with Rayleigh-Ritz.

    `matvec` maps a block V (N, k) to K V (N, k). Stops when the Ritz values change by less than
    `tol` (relative) or after `iters` iterations. The start block is drawn from `generator` on its
    own device (a CPU generator: the same start everywhere) and moved to `device`, where `matvec`
    receives its blocks and the eigenpairs are returned.

    Example:
        >>> import torch, ntk
        >>> k = torch.diag(torch.arange(1.0, 7.0, dtype=torch.float64))
        >>> values, _ = ntk.power_iteration(lambda v: k @ v, n=6, k=2, generator=torch.Generator().manual_seed(0))
        >>> torch.allclose(values, torch.tensor([1.0, 5 / 6], dtype=torch.float64))
        True
    """
    source = generator.device if generator is not None else "cpu"
    v = torch.linalg.qr(torch.randn(n, k, generator=generator, dtype=dtype, device=source).to(device))[0]
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


def top_eigenvalue(
    operator: Tensor | Callable[[Tensor], Tensor],
    n: int | None = None,
    tol: float = 1e-10,
    max_iter: int = 300,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> float:
    """lambda_max of a symmetric matrix K, by Lanczos with full reorthogonalisation.

    Builds the Krylov basis of K from a random start (drawn on the CPU from `seed`, then moved to
    the operator's device) one product at a time, and stops once the top Ritz pair (theta, y) of
    the tridiagonal projection has residual ||K y - theta y|| <= tol |theta|: then an eigenvalue of
    K lies within tol |theta| of theta (and, in practice, within (tol theta)^2 / gap), which for a
    random start is lambda_max. Costs one product per iteration, typically a few dozen for an NTK,
    instead of the O(N^3) of a full eigendecomposition; it is the stability bound's
    lambda_max(Theta / N) of `ntk.train.largest_stable_lr`.

    Args:
        operator: K as a square tensor (N, N), or a function v (N,) -> K v (N,).
        n: N (only for a function).
        tol: relative residual at which the iteration stops.
        max_iter: largest Krylov dimension (the iteration also stops at N, where it is exact).
        seed: seed of the start vector.
        dtype: of the vectors handed to a function (a tensor's own is used otherwise).
        device: of the vectors handed to a function (a tensor's own is used otherwise).

    Returns:
        theta, the largest Ritz value, as a float.

    Raises:
        RuntimeError: the residual is still above tol after max_iter iterations.

    Example:
        >>> import torch, ntk
        >>> k = torch.diag(torch.arange(1.0, 7.0, dtype=torch.float64))
        >>> round(ntk.top_eigenvalue(k), 8)
        6.0
    """
    if isinstance(operator, Tensor):
        if operator.dim() != 2 or operator.shape[0] != operator.shape[1]:
            raise ValueError(f"the matrix must be square (N, N), got {tuple(operator.shape)}")
        matrix = operator
        n, dtype, device = matrix.shape[0], matrix.dtype, matrix.device

        def matvec(v: Tensor) -> Tensor:
            return matrix @ v

    else:
        matvec = operator
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an integer >= 1 for a matrix-free operator, got {n!r}")
        device = torch.device(device if device is not None else "cpu")
    steps = min(n, max_iter)
    basis = torch.empty(steps, n, dtype=dtype, device=device)  # orthonormal Lanczos vectors, one per row
    start = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=dtype).to(device)
    basis[0] = start / start.norm()
    alphas, betas = [], []
    theta = 0.0
    for j in range(steps):
        w = matvec(basis[j])
        alphas.append(torch.dot(w, basis[j]).item())
        q = basis[: j + 1]
        w = w - q.T @ (q @ w)  # full reorthogonalisation, twice ("twice is enough", Parlett)
        w = w - q.T @ (q @ w)
        beta = w.norm().item()
        tri = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        values, vectors = np.linalg.eigh(tri)
        theta = float(values[-1])
        residual = beta * abs(vectors[-1, -1])  # ||K y - theta y|| for the Ritz vector y = Q s
        if residual <= tol * abs(theta) or j + 1 == n or beta <= 1e-300:
            return theta  # converged, exact (the whole space), or an invariant subspace (exact)
        if j + 1 == steps:
            break
        betas.append(beta)
        basis[j + 1] = w / beta
    raise RuntimeError(
        f"Lanczos did not reach the relative residual {tol:g} in {max_iter} iterations "
        f"(theta = {theta:.6g}, residual {residual:.3g}); raise max_iter or tol"
    )
