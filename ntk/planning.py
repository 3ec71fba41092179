"""Memory planning of the empirical NTK: what each method needs, and which method and block fit.

`memory_estimate` gives the bytes of a method for an (n1, n2) kernel (formulas in its docstring);
`plan_method` resolves method="auto" and picks the largest block that fits the budget of
`ntk.memory.available_memory`, or refuses with `NTKMemoryError` naming the methods that would fit.
"""

from __future__ import annotations

import torch
from torch import nn

from ntk.memory import NTKMemoryError, fmt_bytes
from ntk.model import NTKMLP

Tensor = torch.Tensor

JACOBIAN_OVERHEAD = 2.0  # vmap(jacrev) holds the Jacobians and about as much in intermediates


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
      structured: b x (2 B A (1 + O) + min(4 B^2 O^2 S^2, 2 B O P) + JACOBIAN_OVERHEAD x O x P_rest x 2 B) + K,
                 A = numbers recorded per input (inputs and outputs of the covered module calls),
                 S = the most positions of a covered call, P_rest = parameters left to the Jacobian.
    """
    b = torch.empty((), dtype=dtype).element_size()
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    out_dim = output_dim(model, x_example)
    result = n1 * n2 * out_dim**2 * b
    if method == "jacobian":
        return JACOBIAN_OVERHEAD * b * out_dim * n_params * (n1 + (0 if symmetric else n2)) + result
    if method == "ntk_vp":
        chunk = block_size or 1
        return b * chunk * (2 * n_params + 3 * n1 * _activation_numel(model, x_example)) + b * n_params + result
    if method == "structured":
        rows = min(block_size or max(n1, n2), max(n1, n2))
        per_input, positions, n_rest = _structured_sizes(model, x_example)
        grams = 4 * rows * rows * out_dim**2 * positions**2  # Gram-of-Grams temporaries (bounded below)
        jac = JACOBIAN_OVERHEAD * out_dim * n_rest * 2 * rows
        return b * (2 * rows * per_input * (1 + out_dim) + min(grams, 2 * rows * out_dim * n_params) + jac) + result
    if method == "layerwise":
        rows = min(block_size or max(n1, n2), max(n1, n2))
        widths = model.widths
        per_input = sum(2 * widths[l] + out_dim * widths[l + 1] for l in range(model.depth))
        cast = max(p.numel() for p in model.parameters()) * b if model.layers[0].weight.dtype != dtype else 0
        return b * rows * (2 * per_input + 2 * rows * out_dim**2) + cast + result
    raise ValueError(f"no memory estimate for method {method!r}")


def plan_method(
    model: nn.Module,
    x1: Tensor,
    n1: int,
    n2: int,
    symmetric: bool,
    method: str,
    block_size: int | None,
    dtype: torch.dtype,
    budget: float,
) -> tuple[str, int]:
    """The method ("auto" resolved) and the block size an (n1, n2) kernel is computed with.

    "auto" takes the first of layerwise (NTK MLP only), jacobian, ntk_vp whose estimate fits the
    budget; blocked methods get the largest block that fits (bisection on `memory_estimate`).

    Raises:
        NTKMemoryError: the method does not fit even one row at a time; the message names the
            methods that would.
    """
    _SIZES.clear()  # measured once in this planning, forgotten at its end (the model may change)
    try:
        return _plan(model, x1, n1, n2, symmetric, method, block_size, dtype, budget)
    finally:
        _SIZES.clear()


def _plan(model, x1, n1, n2, symmetric, method, block_size, dtype, budget) -> tuple[str, int]:
    candidates = ["layerwise"] if isinstance(model, NTKMLP) else ["structured"]
    candidates += ["jacobian", "ntk_vp"]
    x_example = x1[:1]

    def fit(m: str) -> tuple[int | None, float]:
        """Block size that fits (None: none does) and the estimate at that size."""
        top = max(n1, n2) if m in ("layerwise", "structured") else n2 * output_dim(model, x_example)
        if m == "jacobian":
            return (top, est) if (est := memory_estimate(model, m, n1, n2, symmetric, dtype, None, x_example)) <= budget else (None, est)
        if block_size is not None:
            est = memory_estimate(model, m, n1, n2, symmetric, dtype, block_size, x_example)
            return (block_size if est <= budget else None), est
        top_est = memory_estimate(model, m, n1, n2, symmetric, dtype, top, x_example)
        if top_est <= budget:  # all at once
            return top, top_est
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

    if method == "auto":  # the first that fits (the later ones are not even planned)
        for m in candidates:
            block, _ = fit(m)
            if block is not None:
                return m, block
        method = candidates[0]
    block, est = fit(method)
    if block is None:
        plans = {m: fit(m) for m in candidates}
        least = {m: memory_estimate(model, m, n1, n2, symmetric, dtype, 1, x_example) for m in candidates}
        others = [f"method={m!r} (from {fmt_bytes(least[m])})" for m in candidates if m != method and plans[m][0] is not None]
        advice = f"use {' or '.join(others)}" if others else "no method fits: use fewer inputs, or raise the limit (NTK_MEMORY_LIMIT)"
        raise NTKMemoryError(
            f"method={method!r} needs about {fmt_bytes(est)} for a {n1} x {n2} kernel, more than the "
            f"{fmt_bytes(budget)} available; {advice}"
        )
    return method, block


def as_model_input(model: nn.Module, x: Tensor) -> Tensor:
    """A floating input in the dtype of the model's parameters (for a probing forward pass)."""
    param = next(model.parameters(), None)
    return x.to(param.dtype) if param is not None and x.is_floating_point() else x


_SIZES: dict[tuple, object] = {}  # forward passes measured once per planning, not per bisection step (cleared by plan_method)


def _structured_sizes(model: nn.Module, x_example: Tensor) -> tuple[int, int, int]:
    """(numbers recorded per input, most positions of a covered call, parameters left to the Jacobian)."""
    from ntk import structured

    key = ("structured", id(model), tuple(x_example.shape[1:]), x_example.dtype, x_example.device)
    if key not in _SIZES:
        by_module, rest = structured.plan(model)
        names = set(rest)
        n_rest = sum(p.numel() for name, p in model.named_parameters() if name in names)
        blocks = structured.one_input_blocks(model, x_example, by_module)
        _SIZES[key] = (sum(b.numbers for b in blocks), max([b.positions for b in blocks], default=1), n_rest)
    return _SIZES[key]


def output_dim(model: nn.Module, x_example: Tensor | None) -> int:
    """O, the number of outputs (one forward pass on `x_example` for a module other than NTKMLP):
    the model maps (N, ...) to (N, O), or to (N,) for O = 1."""
    if isinstance(model, NTKMLP):
        return model.out_dim
    key = ("output_dim", id(model), tuple(x_example.shape), x_example.dtype, x_example.device)
    if key in _SIZES:
        return _SIZES[key]
    with torch.no_grad():
        out = as_outputs(model(as_model_input(model, x_example)), x_example.shape[0])
    _SIZES[key] = out.shape[1]
    return out.shape[1]


def as_outputs(f: Tensor, n: int) -> Tensor:
    """A model's output on n inputs as (N, O): (N,) is O = 1; any other shape is refused."""
    if f.dim() == 1 and f.shape[0] == n:
        return f[:, None]
    if f.dim() != 2 or f.shape[0] != n:
        raise ValueError(f"the model's output must have shape (N, O) or (N,), got {tuple(f.shape)} for {n} input(s)")
    return f


def _activation_numel(model: nn.Module, x_example: Tensor | None) -> int:
    """Numbers produced per input by all leaf modules (forward hooks on one input)."""
    if isinstance(model, NTKMLP):
        return 2 * sum(model.widths)
    key = ("activations", id(model), tuple(x_example.shape), x_example.dtype, x_example.device)
    if key in _SIZES:
        return _SIZES[key]
    total = [0]
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: total.__setitem__(0, total[0] + out.numel()))
        for m in model.modules()
        if not list(m.children())
    ]
    try:
        with torch.no_grad():
            model(as_model_input(model, x_example))
    finally:
        for h in hooks:
            h.remove()
    return total[0]
