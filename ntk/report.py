"""What the empirical NTK of a model costs and how each parameter is handled, before computing it.

`kernel_report(model, x1)` lists, for every parameter, the rule or fallback that handles it with its
FLOPs by formula, and for every exact method its memory, FLOPs, dispatched operations and predicted
time, with the one method="auto" takes (`ntk.planning.plan_method`). Printing it gives two Markdown
tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ntk.forward import output_shape
from ntk.memory import NTKMemoryError, available_memory, fmt_bytes
from ntk.methods import METHODS, ModelSizes, predicted_seconds
from ntk.model import NTKMLP
from ntk.planning import plan_method
from ntk.structured.capture import checked_rules
from ntk.structured.cost import block_costs
from ntk.structured.coverage import CONVS, LINEAR, uncovered_reasons

Tensor = torch.Tensor


@dataclass
class ParameterRow:
    name: str
    shape: tuple[int, ...]
    numel: int
    handled_by: str  # the rule, or why the Jacobian takes it
    form: str  # the contraction: explicit, gram of grams, per-sample, with the weight, jacobian, layerwise, frozen
    gflop: float  # FLOPs of its share of the contraction by formula, / 1e9 (the passes are shared: in the methods' rows)


@dataclass
class MethodRow:
    name: str
    fits: bool
    block: int | None
    memory: float  # bytes at that block
    gflop: float
    dispatches: float
    predicted_s: float
    note: str = ""


@dataclass
class KernelReport:
    """The report of `kernel_report`: `parameters` (one `ParameterRow` each), `methods` (one
    `MethodRow` per exact method that takes the model) and `chosen` (auto's method and block, None
    when none fits); `str()` gives both tables in Markdown.

    Example:
        >>> import torch, ntk
        >>> report = ntk.kernel_report(torch.nn.Linear(3, 2), torch.randn(4, 3))
        >>> print(str(report).splitlines()[0])
        empirical NTK of 4 x 4 inputs, 2 output entries per input
        >>> [m.name for m in report.methods]
        ['structured', 'jacobian', 'ntk_vp']
    """

    n1: int
    n2: int
    outputs: int
    parameters: list[ParameterRow] = field(default_factory=list)
    methods: list[MethodRow] = field(default_factory=list)
    chosen: tuple[str, int | None] | None = None

    def __str__(self) -> str:
        lines = [f"empirical NTK of {self.n1} x {self.n2} inputs, {self.outputs} output entries per input", ""]
        lines += ["| parameter | shape | numbers | handled by | contraction | GFLOP |", "|---|---|---|---|---|---|"]
        for p in self.parameters:
            lines.append(f"| {p.name} | {tuple(p.shape)} | {p.numel} | {p.handled_by} | {p.form} | {p.gflop:.3g} |")
        lines += ["", "| method | fits | block | memory | GFLOP | operations | predicted s | note |", "|---|---|---|---|---|---|---|---|"]
        for m in self.methods:
            mem = fmt_bytes(m.memory)
            lines.append(
                f"| {m.name} | {'yes' if m.fits else 'no'} | {m.block} | {mem} | {m.gflop:.3g} | {m.dispatches:.0f} | {m.predicted_s:.3g} | {m.note} |"
            )
        chosen = "none fits" if self.chosen is None else f"{self.chosen[0]} (block {self.chosen[1]})"
        lines += ["", f"method='auto' takes: {chosen}"]
        return "\n".join(lines)


def kernel_report(
    model: nn.Module,
    x1: Tensor,
    x2: Tensor | None = None,
    trace: bool = False,
    dtype: torch.dtype = torch.float64,
    memory_limit: int | None = None,
) -> KernelReport:
    """How `ntk.empirical_ntk(model, x1, x2, trace=trace)` would compute its kernel, and at what cost.

    Runs no kernel: one forward pass of one input measures the model (and, for the structured rules,
    their check against autograd on a few inputs, as the kernel itself would).

    Example:
        >>> import torch, ntk
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        >>> report = ntk.kernel_report(model, torch.randn(16, 3))
        >>> [(p.name, p.handled_by, p.form) for p in report.parameters][:2]
        [('0.weight', 'Linear rule', 'gram of grams'), ('0.bias', 'Linear rule', 'with the weight')]
        >>> report.chosen
        ('structured', 16)
    """
    n1, n2 = x1.shape[0], (x1 if x2 is None else x2).shape[0]
    symmetric = x2 is None
    sizes = ModelSizes(model, x1[:1])
    o = output_shape(model, x1)[1]
    report = KernelReport(n1, n2, o)
    budget = memory_limit if memory_limit is not None else available_memory(x1.device)
    try:
        report.chosen = plan_method(model, x1, n1, n2, symmetric, "auto", None, dtype, budget, trace)
    except NTKMemoryError:
        report.chosen = None
    oo = o if trace else o * o
    if isinstance(model, NTKMLP):
        for name, p in model.named_parameters():
            report.parameters.append(ParameterRow(name, tuple(p.shape), p.numel(), "layer-wise factors (NTK MLP)", "layerwise", 0.0))
    else:
        by_module, rest = sizes.structured_plan
        wrong = checked_rules(model, x1, by_module)[0] if by_module else set()
        reasons = uncovered_reasons(model)
        costs: dict[nn.Module, list] = {}
        for c in block_costs(sizes.blocks, by_module, n1, n2, o, trace, symmetric):
            costs.setdefault(c.block.module, []).append(c)
        full_to_module = {full: (m, name) for m, names in by_module.items() for name, full in names.items()}
        for full, p in model.named_parameters():
            row = ParameterRow(full, tuple(p.shape), p.numel(), "", "", 0.0)
            jacobian_gflop = 2 * n1 * n2 * oo * p.numel() / 1e9
            if not p.requires_grad:
                row.handled_by, row.form = "frozen (requires_grad False): not in the kernel", "-"
            elif full in wrong:
                row.handled_by, row.form, row.gflop = (
                    "Jacobian: its gradient is not all inside its module's call",
                    "jacobian",
                    jacobian_gflop,
                )
            elif full in full_to_module:
                module, name = full_to_module[full]
                row.handled_by = f"{type(module).__name__} rule"
                mine = costs.get(module, [])
                matrix = isinstance(module, (*LINEAR, *CONVS, nn.MultiheadAttention))
                weight = "in_proj_weight" if isinstance(module, nn.MultiheadAttention) else "weight"
                if matrix and name != weight and weight in by_module[module]:
                    row.form = "with the weight"  # one more input column of the weight's contraction
                elif not mine:
                    row.form = "never called"
                else:
                    row.form = ", ".join(sorted({c.form for c in mine}))
                    row.gflop = sum(c.flops for c in mine) / 1e9
            else:
                row.handled_by, row.form, row.gflop = f"Jacobian: {reasons.get(full, 'no rule')}", "jacobian", jacobian_gflop
            report.parameters.append(row)
    for m in METHODS.values():
        if m.refuses(model) is not None:
            continue
        note = "" if m.in_auto(model) else "not tried by auto"
        try:
            name, block = plan_method(model, x1, n1, n2, symmetric, m.name, None, dtype, budget, trace)
            fits = True
        except NTKMemoryError:
            block, fits = (1 if m.blocks else None), False
        memory = m.memory(sizes, n1, n2, symmetric, dtype, block)
        report.methods.append(
            MethodRow(
                m.name,
                fits,
                block,
                memory,
                m.flops(sizes, n1, n2, symmetric, trace) / 1e9,
                m.dispatches(sizes, n1, n2, symmetric, block),
                predicted_seconds(m, sizes, n1, n2, symmetric, trace, block, x1.device),
                note,
            )
        )
    return report
