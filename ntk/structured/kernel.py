"""The structured kernel itself: the covered modules' shares plus Jacobian contraction of the rest, in blocks."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from ntk.backends import blocked_kernel, jacobian_kernel
from ntk.structured.capture import checked_rules, factors
from ntk.structured.contractions import SampleGrams, module_kernel
from ntk.structured.coverage import plan

Tensor = torch.Tensor


def structured_kernel(model: nn.Module, x1: Tensor, x2: Tensor | None, dtype: torch.dtype, block: int, trace: bool) -> Tensor:
    """The whole kernel (N1, N2, O, O) (or (N1, N2) with trace, (N1, N2, O) with trace="diagonal", the
    output diagonal), in row blocks of `block` inputs
    (`empirical_ntk` has refused models whose samples interact, `check_independent_samples`)."""
    by_module, rest = plan(model)
    if not by_module and not rest:
        raise ValueError(
            "the model has no trainable parameters (none with requires_grad): its NTK is zero; set requires_grad on those that train"
        )
    wrong, copied = (
        checked_rules(model, x1, by_module) if by_module else (set(), set())
    )  # the rules against autograd, once per model and kind of input
    if wrong:  # parameters whose gradient the rules do not see whole: Jacobian contraction for them
        by_module = {m: {n: f for n, f in names.items() if f not in wrong} for m, names in by_module.items()}
        by_module = {m: names for m, names in by_module.items() if names}
        rest = rest + sorted(wrong)
    symmetric = x2 is None
    xs2 = x1 if symmetric else x2

    def covered(c1: dict, c2: dict, traced: bool) -> Tensor | None:
        """The covered modules' shares: (N1, N2), or (N1, N2, O, O) untraced."""
        total = None
        joint = SampleGrams(traced)  # the per-sample-gradient shares of all layers, in few products
        for module, names in by_module.items():
            if not c1[module]:
                continue  # never called (its parameters had no gradient in the check either)
            term = module_kernel(module, names, c1[module], c2[module], traced, joint)
            if term is not None:
                total = term if total is None else total + term
        if (term := joint.result()) is not None:
            total = term if total is None else total + term
        return total

    def part(of_rows: tuple | None, r: slice, c: slice, diagonal: bool) -> Tensor:
        if of_rows is None:  # no covered parameter: Jacobian contraction of them all, no passes of our own
            return jacobian_kernel(model, x1[r], None if diagonal else xs2[c], dtype, trace, names=rest)
        c1, out_dim, _ = of_rows
        c2 = c1 if diagonal else factors(model, xs2[c], dtype, by_module, copied=copied)[0]
        if trace == "diagonal":  # the output diagonal: output a's traced share from its own cotangents, a = 1 ... O
            terms = []
            for a in range(out_dim):
                s1 = {m: [replace(call, cotangents=[call.cotangents[a]]) for call in cs] for m, cs in c1.items()}
                s2 = s1 if diagonal else {m: [replace(call, cotangents=[call.cotangents[a]]) for call in cs] for m, cs in c2.items()}
                terms.append(covered(s1, s2, True))
            total = None if terms[0] is None else torch.stack(terms, -1)  # (N1, N2, O)
        else:
            total = covered(c1, c2, trace or out_dim == 1)
        if rest:
            term = jacobian_kernel(model, x1[r], None if diagonal else xs2[c], dtype, trace, names=rest)  # (N1, N2) for O = 1 or trace
            total = term if total is None else total + term
        return total

    rows_of = lambda r: factors(model, x1[r], dtype, by_module, copied=copied) if by_module else None  # noqa: E731
    return blocked_kernel(x1.shape[0], xs2.shape[0], block, symmetric, rows_of, part)
