"""Exact empirical neural tangent kernel of a finite network, by three methods.

    Theta(x, x') = sum_p  df(x)/dtheta_p  df(x')/dtheta_p^T                     (paper, Section 4)

- ``"layerwise"`` (NTK MLP only; the fast path). The sum over parameters factorises layer by layer
  (the parameters of layer l are W(l) and b(l) of Section 2):

      Theta(x, x') = sum_{l=0}^{L-1} [a(l)(x).a(l)(x') / n_l + beta^2] [d(l+1)(x).d(l+1)(x')]

  with a(l) the layer inputs and d(l+1) = df/dz(l+1), obtained for a whole block of inputs from
  one forward and one backward pass, then one Gram product per factor and layer. Memory is
  O(N x width) for the factors, never O(N x parameters).
- ``"ntk_vp"`` (any module). Jacobian-free: column j of Theta is J(X1) (J(x_j)^T e_b), one
  torch.func ``vjp`` at x_j and one ``jvp`` over X1, vectorised over a chunk of columns with
  ``vmap``. Memory O(chunk x (parameters + N1 x activations)).
- ``"jacobian"`` (any module; the reference). torch.func ``vmap(jacrev)`` per-sample Jacobians
  through ``functional_call``, contracted over parameters. Memory O((N1 + N2) x O x parameters).

``"auto"`` takes layerwise for an `NTKMLP`, otherwise the cheapest method whose memory estimate
fits (jacobian, then ntk_vp). Every method first estimates its memory (`memory_estimate`, formulas
in its docstring) and refuses with `NTKMemoryError`, naming the methods that would fit, when the
estimate exceeds the budget of `ntk.memory.available_memory`.

Kernels are computed in float64 by default, whatever the dtype of the parameters (the parameters
are cast for the computation, never modified).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

from ntk.memory import NTKMemoryError, available_memory, fmt_bytes
from ntk.model import NTKMLP, backward_factors, forward_with_cache

Tensor = torch.Tensor

METHODS = ("auto", "layerwise", "ntk_vp", "jacobian")
JACOBIAN_OVERHEAD = 2.0  # vmap(jacrev) holds the Jacobians and about as much in intermediates


def empirical_ntk(
    model: nn.Module,
    x1: Tensor,
    x2: Tensor | None = None,
    method: str = "auto",
    block_size: int | None = None,
    dtype: torch.dtype = torch.float64,
    trace: bool = False,
    memory_limit: int | None = None,
) -> Tensor:
    """Empirical NTK Theta(x1, x2) of `model` at its current parameters.

    Args:
        model: an `NTKMLP` (all methods) or any module mapping (N, d) to (N, O).
        x1: inputs, (N1, d).
        x2: inputs, (N2, d); None means x2 = x1: the factors of x1 are reused, only blocks on or
            above the diagonal are computed, and the result is exactly symmetric.
        method: "auto", "layerwise", "ntk_vp" or "jacobian" (module docstring).
        block_size: rows of x1 (and x2) processed at once by "layerwise", or columns per
            vectorised chunk for "ntk_vp"; None picks the largest that fits the memory budget.
        dtype: precision of the computation and of the result.
        trace: for O > 1 outputs, return the trace over outputs sum_a Theta[:, :, a, a], (N1, N2).
        memory_limit: bytes the computation may use; default `ntk.memory.available_memory`.

    Returns:
        (N1, N2) for a scalar output (or with trace=True); (N1, N2, O, O) for O > 1 outputs,
        entry [i, j, a, b] being sum_p df_a(x_i)/dtheta_p df_b(x_j)/dtheta_p.

    Raises:
        ValueError: unknown method, malformed or non-finite inputs, layerwise on another module.
        NTKMemoryError: the method's memory estimate exceeds the budget.
    """
    if method not in METHODS:
        raise ValueError(f"unknown NTK method {method!r}; allowed: {', '.join(METHODS)}")
    _check_inputs(model, x1, x2)
    if method == "layerwise" and not isinstance(model, NTKMLP):
        raise ValueError(f"method='layerwise' needs an NTKMLP, got {type(model).__name__}; use method='ntk_vp' or 'jacobian'")
    if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1):
        raise ValueError(f"block_size must be an integer >= 1 or None, got {block_size!r}")
    budget = memory_limit if memory_limit is not None else available_memory(x1.device)
    n1, n2 = x1.shape[0], (x1 if x2 is None else x2).shape[0]
    method, block = _plan(model, x1, n1, n2, x2 is None, method, block_size, dtype, budget)
    with torch.no_grad():
        if method == "layerwise":
            kernel = _layerwise_kernel(model, x1, x2, dtype, block, trace)
        elif method == "jacobian":
            kernel = _jacobian_kernel(model, x1, x2, dtype, trace)
        else:
            kernel = _ntk_vp_kernel(model, x1, x2, dtype, block, trace)
    if x2 is None:
        kernel = 0.5 * (kernel + (kernel.transpose(0, 1).transpose(2, 3) if kernel.dim() == 4 else kernel.T))
    return kernel


def empirical_nngp(model: NTKMLP, x1: Tensor, x2: Tensor | None = None, dtype: torch.dtype = torch.float64) -> Tensor:
    """Finite-width estimate of the output's NNGP kernel Sigma(L) from the last hidden layer.

    Sigma(L)(x, x') ~ a(L-1)(x).a(L-1)(x') / n_{L-1} + beta^2, the covariance of f(x), f(x')
    over the output layer's N(0, 1) weights given the hidden features. (N1, N2).
    """
    if not isinstance(model, NTKMLP):
        raise ValueError(f"empirical_nngp needs an NTKMLP, got {type(model).__name__}")
    _check_inputs(model, x1, x2)
    with torch.no_grad():
        a1 = forward_with_cache(model, x1, dtype)[1][-1]  # (N1, n_{L-1})
        a2 = a1 if x2 is None else forward_with_cache(model, x2, dtype)[1][-1]
        return torch.addmm(a1.new_full((), model.beta**2), a1, a2.T, alpha=1.0 / a1.shape[1])


def ntk_row(model: nn.Module, x0: Tensor, x: Tensor, dtype: torch.dtype = torch.float64, **kwargs) -> Tensor:
    """The kernel row Theta(x0, X) for one input x0 of shape (d,): (N,) or (N, O, O).

    Needs no Jacobian of X: layerwise (blocked over X) for an NTKMLP, otherwise one vjp at x0
    per output and one jvp over X (method "ntk_vp"). Keyword arguments go to `empirical_ntk`.
    """
    if x0.dim() != 1:
        raise ValueError(f"x0 must be a single input of shape (d,), got {tuple(x0.shape)}")
    method = kwargs.pop("method", "layerwise" if isinstance(model, NTKMLP) else "ntk_vp")
    return empirical_ntk(model, x0.unsqueeze(0), x, method=method, dtype=dtype, **kwargs)[0]


def ntk_vector_product(model: nn.Module, x: Tensor, v: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    """Theta(X, X) v without forming Theta: J (J^T v), one vjp and one jvp over X.

    Args:
        model: any module mapping (N, d) to (N, O).
        x: inputs, (N, d).
        v: (N,) for a scalar output or (N, O); returned in the same shape.
    """
    _check_inputs(model, x, None)
    need = memory_estimate(model, "ntk_vp", x.shape[0], 1, False, dtype, 1, x[:1])
    budget = available_memory(x.device)
    if need > budget:
        raise NTKMemoryError(
            f"ntk_vector_product needs about {fmt_bytes(need)} for {x.shape[0]} inputs, more than the "
            f"{fmt_bytes(budget)} available; split the inputs or raise the limit (NTK_MEMORY_LIMIT)"
        )
    params = _params(model, dtype)
    x = x.to(dtype)

    def f(p: dict[str, Tensor]) -> Tensor:
        return functional_call(model, p, (x,))  # (N, O)

    out, pull = vjp(f, params)
    if v.shape[0] != x.shape[0] or v.numel() != out.numel():
        raise ValueError(f"v must have shape ({x.shape[0]},) or {tuple(out.shape)}, got {tuple(v.shape)}")
    (tangent,) = pull(v.to(dtype).reshape(out.shape))
    _, product = jvp(f, (params,), (tangent,))
    return product.reshape(v.shape)


# ----------------------------------------------------------------------------- memory planning


def memory_estimate(
    model: nn.Module,
    method: str,
    n1: int,
    n2: int,
    symmetric: bool,
    dtype: torch.dtype,
    block_size: int | None = None,
    x_example: Tensor | None = None,
) -> float:
    """Bytes a method needs for an (n1, n2) kernel (block_size rows/columns at a time).

    With b bytes per number, P parameters, O outputs, K = n1 n2 O^2 b the result:
      jacobian:  JACOBIAN_OVERHEAD x b x O x P x (n1 + n2 [0 if symmetric]) + K
      ntk_vp:    b x c x (2 P + 3 n1 A) + b x P + K, c = columns per chunk (block_size, default 1),
                 A = activation numbers per input (measured by forward hooks)
      layerwise: b x B x (2 F + 2 B O^2) + (largest weight matrix x b if the dtype changes) + K,
                 B = rows per block (block_size, default max(n1, n2)), F = sum_l (2 n_l + O n_{l+1})
                 numbers per input for the cache and factors of one block.
    """
    b = torch.empty((), dtype=dtype).element_size()
    n_params = sum(p.numel() for p in model.parameters())
    out_dim = _out_dim(model, x_example)
    result = n1 * n2 * out_dim**2 * b
    if method == "jacobian":
        return JACOBIAN_OVERHEAD * b * out_dim * n_params * (n1 + (0 if symmetric else n2)) + result
    if method == "ntk_vp":
        chunk = block_size or 1
        return b * chunk * (2 * n_params + 3 * n1 * _activation_numel(model, x_example)) + b * n_params + result
    if method == "layerwise":
        rows = min(block_size or max(n1, n2), max(n1, n2))
        widths = model.widths
        per_input = sum(2 * widths[l] + out_dim * widths[l + 1] for l in range(model.depth))
        cast = max(p.numel() for p in model.parameters()) * b if model.layers[0].weight.dtype != dtype else 0
        return b * rows * (2 * per_input + 2 * rows * out_dim**2) + cast + result
    raise ValueError(f"no memory estimate for method {method!r}")


def _plan(model, x1, n1, n2, symmetric, method, block_size, dtype, budget) -> tuple[str, int]:
    """Pick the method (for "auto") and the block size; refuse what does not fit."""
    candidates = ["layerwise"] if isinstance(model, NTKMLP) else []
    candidates += ["jacobian", "ntk_vp"]
    x_example = x1[:1]

    def fit(m: str) -> tuple[int | None, float]:
        """Block size that fits (None: none does) and the estimate at that size."""
        top = max(n1, n2) if m == "layerwise" else n2 * _out_dim(model, x_example)
        if m == "jacobian":
            return (top, est) if (est := memory_estimate(model, m, n1, n2, symmetric, dtype, None, x_example)) <= budget else (None, est)
        if block_size is not None:
            est = memory_estimate(model, m, n1, n2, symmetric, dtype, block_size, x_example)
            return (block_size if est <= budget else None), est
        lo_est = memory_estimate(model, m, n1, n2, symmetric, dtype, 1, x_example)
        if lo_est > budget:
            return None, lo_est
        lo, hi = 1, top  # largest block that fits, by bisection on the monotone estimate
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if memory_estimate(model, m, n1, n2, symmetric, dtype, mid, x_example) <= budget:
                lo = mid
            else:
                hi = mid - 1
        return lo, memory_estimate(model, m, n1, n2, symmetric, dtype, lo, x_example)

    plans = {m: fit(m) for m in candidates}
    if method == "auto":
        for m in candidates:
            if plans[m][0] is not None:
                return m, plans[m][0]
        method = candidates[0]
    block, est = plans[method]
    if block is None:
        least = {m: memory_estimate(model, m, n1, n2, symmetric, dtype, 1, x_example) for m in candidates}
        others = [f"method={m!r} (from {fmt_bytes(least[m])})" for m in candidates if m != method and plans[m][0] is not None]
        advice = f"use {' or '.join(others)}" if others else "no method fits: use fewer inputs, or raise the limit (NTK_MEMORY_LIMIT)"
        raise NTKMemoryError(
            f"method={method!r} needs about {fmt_bytes(est)} for a {n1} x {n2} kernel, more than the "
            f"{fmt_bytes(budget)} available; {advice}"
        )
    return method, block


def _out_dim(model: nn.Module, x_example: Tensor | None) -> int:
    if isinstance(model, NTKMLP):
        return model.out_dim
    with torch.no_grad():
        return model(x_example).shape[-1]


def _activation_numel(model: nn.Module, x_example: Tensor | None) -> int:
    """Numbers produced per input by all leaf modules (forward hooks on one input)."""
    if isinstance(model, NTKMLP):
        return 2 * sum(model.widths)
    total = [0]
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: total.__setitem__(0, total[0] + out.numel()))
        for m in model.modules()
        if not list(m.children())
    ]
    try:
        with torch.no_grad():
            model(x_example)
    finally:
        for h in hooks:
            h.remove()
    return total[0]


def _check_inputs(model: nn.Module, x1: Tensor, x2: Tensor | None) -> None:
    for name, x in (("x1", x1), ("x2", x2)):
        if x is None:
            continue
        if x.dim() != 2:
            raise ValueError(f"{name} must have shape (N, input_dim), got {tuple(x.shape)}")
        if isinstance(model, NTKMLP) and x.shape[1] != model.in_dim:
            raise ValueError(f"{name} has input dimension {x.shape[1]}, the model expects {model.in_dim}")
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} contains non-finite values")
    if x2 is not None and x2.shape[1] != x1.shape[1]:
        raise ValueError(f"x1 and x2 have different input dimensions: {x1.shape[1]} and {x2.shape[1]}")


def _params(model: nn.Module, dtype: torch.dtype) -> dict[str, Tensor]:
    return {k: v.detach().to(dtype) for k, v in model.named_parameters()}


# ----------------------------------------------------------------------------- layerwise


def layerwise_factors(model: NTKMLP, x: Tensor, dtype: torch.dtype = torch.float64) -> list[tuple[Tensor, Tensor]]:
    """Per-layer factors (a(l), d(l+1)) for l = 0 ... L-1 from one forward and one backward pass.

    Returns:
        A list of L pairs: a(l) of shape (N, n_l), and d(l+1) = df/dz(l+1) of shape (N, n_{l+1})
        for a scalar output or (N, O, n_{l+1}) for O outputs (one row per output direction).
        For a scalar output d(L) = 1, returned as None (its Gram matrix is all ones).
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


def _contract_factors(f1, f2, beta: float, trace: bool) -> Tensor:
    """sum_l (A1 A2^T / n_l + beta^2) * (D1 D2^T): elementwise products of Gram matrices."""
    kernel = None
    for (a1, d1), (a2, d2) in zip(f1, f2):
        term = torch.addmm(a1.new_full((), beta**2), a1, a2.T, alpha=1.0 / a1.shape[1])  # (N1, N2)
        if d1 is None:  # scalar output, last layer: d(L) = 1
            pass
        elif d1.dim() == 2:
            term.mul_(d1 @ d2.T)
        elif trace:
            term.mul_(torch.einsum("iap,jap->ij", d1, d2))
        else:
            term = term[:, :, None, None] * torch.einsum("iap,jbp->ijab", d1, d2)  # (N1, N2, O, O)
        kernel = term if kernel is None else kernel.add_(term)
    return kernel


def _layerwise_kernel(model: NTKMLP, x1: Tensor, x2: Tensor | None, dtype, block: int, trace: bool) -> Tensor:
    symmetric = x2 is None
    x2 = x1 if symmetric else x2
    n1, n2 = x1.shape[0], x2.shape[0]
    if block >= max(n1, n2):  # everything at once
        f1 = layerwise_factors(model, x1, dtype)
        return _contract_factors(f1, f1 if symmetric else layerwise_factors(model, x2, dtype), model.beta, trace)
    rows = [slice(i, min(i + block, n1)) for i in range(0, n1, block)]
    cols = rows if symmetric else [slice(j, min(j + block, n2)) for j in range(0, n2, block)]
    kernel = None
    for i, r in enumerate(rows):
        f1 = layerwise_factors(model, x1[r], dtype)
        for j, c in enumerate(cols):
            if symmetric and j < i:
                continue  # filled from the transposed block (i, j) -> (j, i)
            part = _contract_factors(f1, f1 if symmetric and i == j else layerwise_factors(model, x2[c], dtype), model.beta, trace)
            if kernel is None:
                kernel = part.new_empty((n1, n2) + part.shape[2:])
            kernel[r, c] = part
            if symmetric and j > i:
                kernel[c, r] = part.transpose(0, 1).transpose(2, 3) if part.dim() == 4 else part.T
    return kernel


# ----------------------------------------------------------------------------- jacobian


def _jacobian_kernel(model: nn.Module, x1: Tensor, x2: Tensor | None, dtype: torch.dtype, trace: bool) -> Tensor:
    params = _params(model, dtype)

    def f(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(model, p, (x.unsqueeze(0),)).reshape(-1)  # (O,)

    jac = vmap(jacrev(f), in_dims=(None, 0))

    def flat(x: Tensor) -> Tensor:
        j = jac(params, x.to(dtype))  # {name: (N, O, *shape)}
        return torch.cat([v.flatten(2) for v in j.values()], dim=2)  # (N, O, P)

    j1 = flat(x1)
    j2 = j1 if x2 is None else flat(x2)
    if trace or j1.shape[1] == 1:
        return torch.einsum("iap,jap->ij", j1, j2)  # (N1, N2)
    return torch.einsum("iap,jbp->ijab", j1, j2)  # (N1, N2, O, O)


# ----------------------------------------------------------------------------- ntk_vp


def _ntk_vp_kernel(model: nn.Module, x1: Tensor, x2: Tensor | None, dtype: torch.dtype, chunk: int, trace: bool) -> Tensor:
    params = _params(model, dtype)
    x1 = x1.to(dtype)
    xs = x1 if x2 is None else x2.to(dtype)
    out_dim = _out_dim(model, x1[:1])

    def column(xj: Tensor, e: Tensor) -> Tensor:
        """Theta(X1, x_j) e = J(X1) J(x_j)^T e, (N1, O)."""
        _, pull = vjp(lambda p: functional_call(model, p, (xj.unsqueeze(0),))[0], params)
        (tangent,) = pull(e)
        return jvp(lambda p: functional_call(model, p, (x1,)), (params,), (tangent,))[1]

    eye = torch.eye(out_dim, dtype=dtype, device=x1.device)
    points = xs.repeat_interleave(out_dim, dim=0)  # (N2 O, d): column (j, b) at j O + b
    directions = eye.repeat(xs.shape[0], 1)  # (N2 O, O)
    cols = torch.cat(
        [vmap(column)(points[k : k + chunk], directions[k : k + chunk]) for k in range(0, points.shape[0], chunk)]
    )  # (N2 O, N1, O)
    kernel = cols.reshape(xs.shape[0], out_dim, x1.shape[0], out_dim).permute(2, 0, 3, 1)  # (N1, N2, O_a, O_b)
    if out_dim == 1:
        return kernel[:, :, 0, 0].contiguous()
    if trace:
        return kernel.diagonal(dim1=2, dim2=3).sum(-1)
    return kernel.contiguous()
