"""Three backends of `ntk.empirical_ntk`: layer-wise factors, Jacobian contraction, NTK-vector
products, and the blocking every blocked method shares (`blocked_kernel`). Each computes a whole
kernel at a given block size; `ntk.empirical` checks the inputs and `ntk.planning` picks the method
(from the table `ntk.methods.METHODS`) and the block size first. The fourth backend, the structured
kernel of general modules, is the package `ntk.structured`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

from ntk.forward import as_outputs, cast_fixed, cast_input, cast_params, output_dim
from ntk.model import NTKMLP, backward_factors, forward_with_cache

Tensor = torch.Tensor


# ----------------------------------------------------------------------------- layerwise


def layerwise_factors(model: NTKMLP, x: Tensor, dtype: torch.dtype = torch.float64) -> list[tuple[Tensor, Tensor]]:
    """Per-layer factors (a(l), d(l+1)) for l = 0 ... L-1 from one forward and one backward pass.

    Returns:
        A list of L pairs: a(l) of shape (N, n_l), and d(l+1) = df/dz(l+1) of shape (N, n_{l+1})
        for a scalar output or (N, O, n_{l+1}) for O outputs (one row per output direction).
        For a scalar output d(L) = 1, returned as None (its Gram matrix is all ones).

    Example:
        >>> import torch, ntk
        >>> model = ntk.NTKMLP(2, 100, 3, generator=torch.Generator().manual_seed(0))
        >>> x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
        >>> factors = ntk.layerwise_factors(model, x)  # [(a(l), d(l+1)) for l = 0, 1, 2]
        >>> [tuple(a.shape) for a, _ in factors]
        [(4, 2), (4, 100), (4, 100)]
    """
    _, acts, derivs = forward_with_cache(model, x, dtype)
    n, out = x.shape[0], model.out_dim
    if out == 1:
        delta = torch.ones(n, 1, dtype=dtype, device=x.device)  # (N, 1)
    else:
        delta = torch.eye(out, dtype=dtype, device=x.device).expand(n, out, out)  # (N, O, O)
    factors = [(a, d) for _, a, d in backward_factors(model, acts, derivs, delta)][::-1]
    if out == 1:
        factors[-1] = (factors[-1][0], None)
    return factors


def layer_coefficients(model: NTKMLP) -> list[tuple[float, float]]:
    """(m_l^2, beta_l^2) per layer: the squared weight and bias multipliers, (1/n_l, beta^2) in the NTK
    parameterisation (other parameterisations fold their learning rates into them,
    `ntk.parameterization`)."""
    return [(1.0 / layer.in_features if layer.parameterization == "ntk" else layer.scale**2, layer.beta**2) for layer in model.layers]


def _contract_factors(f1, f2, coefficients: list[tuple[float, float]], trace: bool) -> Tensor:
    """sum_l (m_l^2 A1 A2^T + beta_l^2) * (D1 D2^T): elementwise products of Gram matrices, with
    (m_l^2, beta_l^2) = (1/n_l, beta^2) in the NTK parameterisation (`layer_coefficients`).

    For O outputs (without trace) each layer's D1 D2^T is one (N1 O, N2 O) product, accumulated in
    the layout (N1, O, N2, O) and permuted to (N1, N2, O, O) once at the end.
    """
    kernel = None
    for (a1, d1), (a2, d2), (m2, b2) in zip(f1, f2, coefficients):
        term = torch.addmm(a1.new_full((), b2), a1, a2.T, alpha=m2)  # (N1, N2)
        if d1 is None:  # scalar output, last layer: d(L) = 1
            pass
        elif d1.dim() == 2:
            term.mul_(d1 @ d2.T)
        elif trace == "diagonal":
            term = torch.einsum("iap,jap->ija", d1, d2).mul_(term[:, :, None])  # (N1, N2, O)
        elif trace:
            term.mul_(torch.einsum("iap,jap->ij", d1, d2))
        else:
            (n1, out, p), n2 = d1.shape, d2.shape[0]
            gram = (d1.reshape(n1 * out, p) @ d2.reshape(n2 * out, p).T).view(n1, out, n2, out)  # (N1, O, N2, O)
            term = gram.mul_(term[:, None, :, None])
        kernel = term if kernel is None else kernel.add_(term)
    if kernel.dim() == 4:
        kernel = kernel.permute(0, 2, 1, 3).contiguous()  # (N1, N2, O, O)
    if trace == "diagonal" and kernel.dim() == 2:  # one output (or the last layer's scalar term only)
        kernel = kernel[:, :, None]
    return kernel


def blocked_kernel(
    n1: int,
    n2: int,
    block: int,
    symmetric: bool,
    rows_of: Callable[[slice], object],
    part: Callable[[object, slice, slice, bool], Tensor],
) -> Tensor:
    """The (N1, N2[, O, O]) kernel assembled from blocks of `block` rows and columns.

    `rows_of(rows)` computes what a row block needs once (its factors); `part(that, rows, cols,
    diagonal)` one block. For a symmetric kernel only the blocks on or above the diagonal are computed
    (`diagonal` marks those on it) and the others are their transposes.
    """
    rows = [slice(i, min(i + block, n1)) for i in range(0, n1, block)]
    cols = rows if symmetric else [slice(j, min(j + block, n2)) for j in range(0, n2, block)]
    if len(rows) == len(cols) == 1:  # everything at once: no copy into a result
        return part(rows_of(rows[0]), rows[0], cols[0], symmetric)
    kernel = None
    for i, r in enumerate(rows):
        of_rows = rows_of(r)
        for j, c in enumerate(cols):
            if symmetric and j < i:
                continue  # filled from the transposed block (i, j) -> (j, i)
            block_ij = part(of_rows, r, c, symmetric and i == j)
            if kernel is None:
                kernel = block_ij.new_empty((n1, n2) + block_ij.shape[2:])
            kernel[r, c] = block_ij
            if symmetric and j > i:
                kernel[c, r] = block_ij.transpose(0, 1).transpose(2, 3) if block_ij.dim() == 4 else block_ij.T
    return kernel


def layerwise_kernel(model: NTKMLP, x1: Tensor, x2: Tensor | None, dtype, block: int, trace: bool) -> Tensor:
    symmetric = x2 is None
    x2 = x1 if symmetric else x2
    coefficients = layer_coefficients(model)

    def part(f1: list, r: slice, c: slice, diagonal: bool) -> Tensor:
        return _contract_factors(f1, f1 if diagonal else layerwise_factors(model, x2[c], dtype), coefficients, trace)

    rows_of = lambda r: layerwise_factors(model, x1[r], dtype)  # noqa: E731
    return blocked_kernel(x1.shape[0], x2.shape[0], min(block, max(x1.shape[0], x2.shape[0])), symmetric, rows_of, part)


# ----------------------------------------------------------------------------- jacobian


def flat_jacobian(model: nn.Module, params: dict[str, Tensor], fixed: dict[str, Tensor], x: Tensor) -> Tensor:
    """Per-sample Jacobians (N, O, P) of `model` with respect to `params` (the rest held at `fixed`),
    a function of `params` that torch.func can differentiate again (`ntk.finite.kernel_velocity`)."""

    def f(p: dict[str, Tensor], xi: Tensor) -> Tensor:
        return as_outputs(functional_call(model, {**fixed, **p}, (xi.unsqueeze(0),)), 1)[0]  # (O,)

    try:
        j = vmap(jacrev(f), in_dims=(None, 0))(params, x)  # {name: (N, O, *shape)}
    except RuntimeError:  # a module vmap cannot batch (recurrent cells build their state per call): one input at a time
        per = [jacrev(f)(params, xi) for xi in x]
        j = {k: torch.stack([p[k] for p in per]) for k in params}
    return torch.cat([v.reshape(v.shape[0], v.shape[1], -1) for v in j.values()], dim=2)


def jacobian_kernel(
    model: nn.Module, x1: Tensor, x2: Tensor | None, dtype: torch.dtype, trace: bool, names: list[str] | None = None
) -> Tensor:
    """J(x1) J(x2)^T over the trainable parameters, or over those of `names` only (the rest held fixed)."""
    params, fixed = cast_params(model, dtype), cast_fixed(model, dtype)
    if names is not None:
        fixed |= {k: v for k, v in params.items() if k not in names}
        params = {k: params[k] for k in names}
    j1 = flat_jacobian(model, params, fixed, cast_input(x1, dtype))
    j2 = j1 if x2 is None else flat_jacobian(model, params, fixed, cast_input(x2, dtype))
    return contract_jacobians(j1, j2, trace)


def contract_jacobians(j1: Tensor, j2: Tensor, trace: bool | str) -> Tensor:
    """J1 J2^T of per-sample Jacobians (N, O, P): (N1, N2) traced or for O = 1, (N1, N2, O) for
    trace="diagonal" (the output diagonal), (N1, N2, O, O) otherwise."""
    if trace == "diagonal":  # O Gram products of contiguous (N, P) slices, one batched product
        a1 = j1.transpose(0, 1).contiguous()  # (O, N1, P)
        a2 = a1 if j2 is j1 else j2.transpose(0, 1).contiguous()
        return torch.bmm(a1, a2.transpose(1, 2)).permute(1, 2, 0)  # (N1, N2, O)
    if trace or j1.shape[1] == 1:
        return torch.einsum("iap,jap->ij", j1, j2)
    return torch.einsum("iap,jbp->ijab", j1, j2)


# ----------------------------------------------------------------------------- ntk_vp


def ntk_vp_kernel(model: nn.Module, x1: Tensor, x2: Tensor | None, dtype: torch.dtype, chunk: int, trace: bool) -> Tensor:
    params, fixed = cast_params(model, dtype), cast_fixed(model, dtype)
    x1 = cast_input(x1, dtype)
    xs = x1 if x2 is None else cast_input(x2, dtype)
    out_dim = output_dim(model, x1[:1])

    def call(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return as_outputs(functional_call(model, {**fixed, **p}, (x,)), x.shape[0])  # (N, O)

    def column(xj: Tensor, e: Tensor) -> Tensor:
        """Theta(X1, x_j) e = J(X1) J(x_j)^T e, (N1, O)."""
        _, pull = vjp(lambda p: call(p, xj.unsqueeze(0))[0], params)
        (tangent,) = pull(e)
        return jvp(lambda p: call(p, x1), (params,), (tangent,))[1]

    eye = torch.eye(out_dim, dtype=dtype, device=x1.device)
    points = xs.repeat_interleave(out_dim, dim=0)  # (N2 O, d): column (j, b) at j O + b
    directions = eye.repeat(xs.shape[0], 1)  # (N2 O, O)

    def columns(k: int) -> Tensor:
        try:
            return vmap(column)(points[k : k + chunk], directions[k : k + chunk])
        except RuntimeError:  # a module vmap cannot batch (recurrent layers): one column at a time
            return torch.stack([column(p, d) for p, d in zip(points[k : k + chunk], directions[k : k + chunk])])

    cols = torch.cat([columns(k) for k in range(0, points.shape[0], chunk)])  # (N2 O, N1, O)
    kernel = cols.reshape(xs.shape[0], out_dim, x1.shape[0], out_dim).permute(2, 0, 3, 1)  # (N1, N2, O_a, O_b)
    if trace == "diagonal":  # every column is needed anyway: the diagonal of the whole kernel
        return kernel.diagonal(dim1=2, dim2=3).contiguous()
    if out_dim == 1:
        return kernel[:, :, 0, 0].contiguous()
    if trace:
        return kernel.diagonal(dim1=2, dim2=3).sum(-1)
    return kernel.contiguous()


# ----------------------------------------------------------------------------- autograd


def autograd_jacobian(model: nn.Module, x: Tensor, dtype: torch.dtype) -> Tensor:
    """Per-sample Jacobians (N, O, P) by plain autograd: one forward pass per input and one backward
    pass per output entry, no torch.func transform. It takes what the transforms cannot: a forward
    that calls `torch.autograd.grad` itself (with create_graph), that updates a buffer in place, or
    that calls an operation without a batching or forward-mode rule."""
    params, fixed = cast_params(model, dtype), cast_fixed(model, dtype)
    names = list(params)
    rows = []
    for xi in cast_input(x, dtype):
        leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}  # fresh leaves per input
        with torch.enable_grad():
            out = as_outputs(functional_call(model, {**fixed, **leaves}, (xi.unsqueeze(0).clone(),)), 1)[0]  # (O,)
            per_output = []
            for a in range(out.shape[0]):
                grads = (
                    torch.autograd.grad(out[a], [leaves[k] for k in names], retain_graph=a < out.shape[0] - 1, allow_unused=True)
                    if out.requires_grad
                    else [None] * len(names)
                )
                per_output.append(
                    torch.cat([(g if g is not None else torch.zeros_like(leaves[k])).reshape(-1) for g, k in zip(grads, names)])
                )
        rows.append(torch.stack(per_output).detach())  # (O, P)
    return torch.stack(rows)  # (N, O, P)


def autograd_kernel(model: nn.Module, x1: Tensor, x2: Tensor | None, dtype: torch.dtype, block: int | None, trace: bool) -> Tensor:
    """J(x1) J(x2)^T with the Jacobians of `autograd_jacobian`."""
    j1 = autograd_jacobian(model, x1, dtype)
    j2 = j1 if x2 is None else autograd_jacobian(model, x2, dtype)
    return contract_jacobians(j1, j2, trace)
