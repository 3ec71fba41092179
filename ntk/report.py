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

from ntk.forward import first_line, output_shape
from ntk.guard import leaves_model_unchanged
from ntk.memory import NTKMemoryError, available_memory, fmt_bytes
from ntk.methods import METHODS, ModelSizes, predicted_seconds
from ntk.model import NTKMLP
from ntk.planning import choose_method, plan_method
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
    probe_s: float = float("nan")  # measured on auto's probe
    estimated_s: float = float("nan")  # the probe's time scaled to the whole kernel by the method's formula
    note: str = ""  # why it failed, does not fit, or was not probed


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
        ['structured', 'jacobian', 'ntk_vp', 'autograd']
    """

    n1: int
    n2: int
    outputs: int
    parameters: list[ParameterRow] = field(default_factory=list)
    methods: list[MethodRow] = field(default_factory=list)
    chosen: tuple[str, int | None] | None = None
    probe_inputs: tuple[int, int] = (0, 0)
    failure: str = ""

    def __str__(self) -> str:
        lines = [f"empirical NTK of {self.n1} x {self.n2} inputs, {self.outputs} output entries per input", ""]
        lines += ["| parameter | shape | numbers | handled by | contraction | GFLOP |", "|---|---|---|---|---|---|"]
        for p in self.parameters:
            lines.append(f"| {p.name} | {tuple(p.shape)} | {p.numel} | {p.handled_by} | {p.form} | {p.gflop:.3g} |")
        p1, p2 = self.probe_inputs
        lines += [
            "",
            f"| method | fits | block | memory | GFLOP | operations | predicted s | probe s ({p1} x {p2}) | estimated s | note |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for m in self.methods:
            mem = fmt_bytes(m.memory) if m.memory == m.memory else "-"
            lines.append(
                f"| {m.name} | {'yes' if m.fits else 'no'} | {m.block} | {mem} | {m.gflop:.3g} | {m.dispatches:.0f} | "
                f"{m.predicted_s:.3g} | {m.probe_s:.3g} | {m.estimated_s:.3g} | {m.note} |"
            )
        chosen = self.failure or "none fits" if self.chosen is None else f"{self.chosen[0]} (block {self.chosen[1]})"
        lines += ["", f"method='auto' takes: {chosen}"]
        return "\n".join(lines)


@leaves_model_unchanged
def kernel_report(
    model: nn.Module,
    x1: Tensor,
    x2: Tensor | None = None,
    trace: bool = False,
    dtype: torch.dtype = torch.float64,
    memory_limit: int | None = None,
) -> KernelReport:
    """How `ntk.empirical_ntk(model, x1, x2, trace=trace)` would compute its kernel, and at what cost.

    Runs what method="auto" runs before the kernel (`ntk.planning.choose_method`): one forward pass
    of one input measures the model, the structured rules are checked against autograd on a few
    inputs, and the methods predicted within `PROBE_FACTOR` of the fastest are timed on the probe (a
    block of the kernel; the choice is kept with the model, so the kernel itself then probes no more).
    Each method's row gives its predicted time, its time on the probe and that time scaled to the
    whole kernel, or why it failed or was not probed.

    Example:
        >>> import torch, ntk
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        >>> report = ntk.kernel_report(model, torch.randn(16, 3))
        >>> [(p.name, p.handled_by, p.form) for p in report.parameters][:2]
        [('0.weight', 'Linear rule', 'gram of grams'), ('0.bias', 'Linear rule', 'with the weight')]
        >>> report.probe_inputs  # auto ran its contenders on 8 x 8 of the 16 x 16 pairs, then decided
        (8, 8)
    """
    n1, n2 = x1.shape[0], (x1 if x2 is None else x2).shape[0]
    symmetric = x2 is None
    sizes = ModelSizes(model, x1[:1])
    o = output_shape(model, x1)[1]
    report = KernelReport(n1, n2, o)
    budget = memory_limit if memory_limit is not None else available_memory(x1.device)
    try:
        auto = choose_method(model, x1, x2, n1, n2, symmetric, None, dtype, budget, trace)
        report.chosen, report.probe_inputs = (auto.name, auto.block), auto.probe_inputs
    except (NTKMemoryError, ValueError) as err:  # none fits, or every method fails: the rows say why
        auto, report.chosen, report.failure = None, None, first_line(err)
    oo = o if trace else o * o
    if isinstance(model, NTKMLP):
        for name, p in model.named_parameters():
            report.parameters.append(ParameterRow(name, tuple(p.shape), p.numel(), "layer-wise factors (NTK MLP)", "layerwise", 0.0))
    else:
        by_module, rest = sizes.structured_plan
        try:
            wrong = checked_rules(model, x1, by_module)[0] if by_module else set()
            unrecorded = ""
        except ValueError as err:  # the rules cannot record this model's forward: every parameter by Jacobian
            wrong, unrecorded = {full for names in by_module.values() for full in names.values()}, first_line(err)
        reasons = uncovered_reasons(model)
        costs: dict[nn.Module, list] = {}
        for c in block_costs([] if unrecorded else sizes.blocks, by_module, n1, n2, o, trace, symmetric):
            costs.setdefault(c.block.module, []).append(c)
        full_to_module = {full: (m, name) for m, names in by_module.items() for name, full in names.items()}
        for full, p in model.named_parameters():
            row = ParameterRow(full, tuple(p.shape), p.numel(), "", "", 0.0)
            jacobian_gflop = 2 * n1 * n2 * oo * p.numel() / 1e9
            if not p.requires_grad:
                row.handled_by, row.form = "frozen (requires_grad False): not in the kernel", "-"
            elif full in wrong:
                row.handled_by, row.form, row.gflop = (
                    f"Jacobian: {unrecorded}" if unrecorded else "Jacobian: its gradient is not all inside its module's call",
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
    trials = {t.name: t for t in (auto.trials if auto is not None else [])}
    for m in METHODS.values():
        if m.refuses(model) is not None:
            continue
        t = trials.get(m.name)
        row = MethodRow(m.name, False, None, float("nan"), float("nan"), float("nan"), float("nan"))
        if t is not None:
            row.probe_s, row.estimated_s = t.probe_s, t.estimated_s
            row.note = t.error or t.note or ("" if t.probed else "not probed")
        else:
            row.note = "not tried by auto"
        try:
            name, row.block = plan_method(model, x1, n1, n2, symmetric, m.name, None, dtype, budget, trace)
            row.fits = True
        except NTKMemoryError:
            row.block = 1 if m.blocks else None
        except ValueError as err:  # the model defeats the method's measurement
            row.note = row.note or first_line(err)
            report.methods.append(row)
            continue
        try:
            row.memory = m.memory(sizes, n1, n2, symmetric, dtype, row.block)
            row.gflop = m.flops(sizes, n1, n2, symmetric, trace) / 1e9
            row.dispatches = m.dispatches(sizes, n1, n2, symmetric, row.block)
            row.predicted_s = predicted_seconds(m, sizes, n1, n2, symmetric, trace, row.block, x1.device)
        except ValueError as err:
            row.note = row.note or first_line(err)
        report.methods.append(row)
    return report
