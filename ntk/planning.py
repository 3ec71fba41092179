"""Memory planning of the empirical NTK: which method and which block fit the budget.

`memory_estimate` gives the bytes of a method for an (n1, n2) kernel, by the formula of its entry in
`ntk.methods.METHODS`; `plan_method` resolves method="auto" (of the methods of that table that
apply to the model and fit, the one of least predicted time) and picks the largest block that fits the budget of
`ntk.memory.available_memory`, or refuses with `NTKMemoryError` naming the methods that would fit.
What the formulas measure of the model (its outputs, recorded sizes) is measured once per planning
call (`ntk.methods.ModelSizes`), kept with the model while it lives (`ntk.forward.model_cache`).
"""

from __future__ import annotations

import torch
from torch import nn

from ntk.forward import model_cache
from ntk.memory import NTKMemoryError, fmt_bytes
from ntk.methods import METHODS, ModelSizes, get_method, predicted_seconds

Tensor = torch.Tensor


def memory_estimate(
    model: nn.Module,
    method: str,
    n1: int,
    n2: int,
    symmetric: bool,
    dtype: torch.dtype,
    block_size: int | None = None,
    x_example: Tensor | None = None,
    sizes: ModelSizes | None = None,
) -> float:
    """Bytes `method` needs for an (n1, n2) kernel, block_size rows or columns at a time (the formulas
    of `ntk.methods`).

    Args:
        model: the model; x_example: one input like those of the kernel (any module but an NTKMLP).
        sizes: what was already measured of the model in this planning (None: measured here).

    Example:
        >>> import torch
        >>> from ntk import NTKMLP
        >>> model = NTKMLP(2, 100, 3, generator=torch.Generator().manual_seed(0))
        >>> memory_estimate(model, "jacobian", 10, 10, True, torch.float64)  # 2 x 8 B x 10 x 10,501 + 8 B x 100
        1680960.0
    """
    sizes = sizes if sizes is not None else ModelSizes(model, x_example)
    return float(get_method(method).memory(sizes, n1, n2, symmetric, dtype, block_size))


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
    trace: bool = False,
) -> tuple[str, int | None]:
    """The method ("auto" resolved) and the block size an (n1, n2) kernel is computed with.

    "auto" plans every method of `ntk.methods.METHODS` that it tries for this model
    (`KernelMethod.in_auto`: layerwise for an NTKMLP; structured for any other module with a
    parameter a rule covers; jacobian; ntk_vp), keeps those whose estimate fits the budget and takes
    the one of least predicted time (`ntk.methods.predicted_seconds`: FLOPs by formula at a rate,
    plus a fixed cost per dispatched operation); blocked methods get the largest block that fits
    (bisection on `memory_estimate`).

    Raises:
        NTKMemoryError: the method does not fit even one row at a time; the message names the
            methods that would.

    Example:
        >>> import torch
        >>> from ntk import NTKMLP
        >>> model = NTKMLP(2, 100, 3, generator=torch.Generator().manual_seed(0))
        >>> plan_method(model, torch.randn(64, 2), 64, 64, True, "auto", None, torch.float64, 2**30)
        ('layerwise', 64)
    """
    sizes = ModelSizes(model, x1[:1])  # measured once per model and kind of input (`ntk.forward.model_cache`)
    candidates = [m for m in METHODS.values() if m.in_auto(model)]

    def estimate(m, block: int | None) -> float:
        return m.memory(sizes, n1, n2, symmetric, dtype, block)

    def fit(m) -> tuple[int | None, float]:
        """Block size that fits (None: none does) and the estimate at that size."""
        top = m.largest_block(sizes, n1, n2)
        if top is None:
            return (top, est) if (est := estimate(m, None)) <= budget else (-1, est)
        if block_size is not None:
            est = estimate(m, block_size)
            return (block_size if est <= budget else -1), est
        top_est = estimate(m, top)
        if top_est <= budget:  # all at once
            return top, top_est
        lo_est = estimate(m, 1)
        if lo_est > budget:
            return -1, lo_est
        lo, hi = 1, top  # largest block that fits, by bisection on the monotone estimate
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if estimate(m, mid) <= budget:
                lo = mid
            else:
                hi = mid - 1
        return lo, estimate(m, lo)

    if method == "auto":  # of those that fit, the least predicted time
        # the choice is kept with the model for this kernel's shape; it is reused while it still fits
        # the budget (which moves with the free memory), so that auto plans no more than one method does
        decided = model_cache(model, "auto", x1[:1])
        key = (n1, n2, symmetric, dtype, trace, block_size)
        if key in decided:
            name, block = decided[key]
            if estimate(get_method(name), block) <= budget:
                return name, block
        fitting = [(m, block) for m in candidates if (block := fit(m)[0]) != -1]
        if fitting:
            device = x1.device
            m, block = min(fitting, key=lambda mb: predicted_seconds(mb[0], sizes, n1, n2, symmetric, trace, mb[1], device))
            decided[key] = (m.name, block)
            return m.name, block
        chosen = candidates[0]
    else:
        chosen = get_method(method)
    block, est = fit(chosen)
    if block == -1:
        others = [f"method={m.name!r} (from {fmt_bytes(estimate(m, 1))})" for m in candidates if m is not chosen and fit(m)[0] != -1]
        advice = f"use {' or '.join(others)}" if others else "no method fits: use fewer inputs, or raise the limit (NTK_MEMORY_LIMIT)"
        raise NTKMemoryError(
            f"method={chosen.name!r} needs about {fmt_bytes(est)} for a {n1} x {n2} kernel, more than the "
            f"{fmt_bytes(budget)} available; {advice}"
        )
    return chosen.name, block
