"""The kernel methods of `ntk.empirical_ntk`, in one table: what each applies to, its memory and its FLOPs.

`METHODS` maps each name to a `KernelMethod`, in the order method="auto" tries them. The memory
planner (`ntk.planning`), the memory guard, the message for an unknown name and the documentation's
table of methods (docs/library.md, generated from here) all read this table; a new method is one
entry here.

Memory (bytes) and cost (FLOPs, a multiply-add is 2) are formulas of each entry, written out in its
`memory_formula` and `flops_formula` (`methods_table` renders them), with b bytes per number, P
trainable parameters, O outputs, N1 x N2 inputs (n distinct: N1, or N1 + N2), K = N1 N2 O^2 b the
result, F the FLOPs of a forward pass of one input, B the rows per block (block_size), c the columns
per vectorised chunk, A the numbers a rule records per input (structured: inputs and outputs of the
covered calls) or all leaf modules produce (ntk_vp), S the most positions of a covered call and
P_rest the parameters no structured rule covers.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.func import vmap
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from ntk.backends import autograd_kernel, jacobian_kernel, layerwise_kernel, ntk_vp_kernel
from ntk.forward import leaf_output_numel, model_cache, output_dim, probe_forward
from ntk.model import NTKMLP
from ntk.structured import plan, structured_kernel
from ntk.structured.contractions import CONCAT_NUMBERS
from ntk.structured.cost import Block, block_costs, layer_flops, one_input_blocks

Tensor = torch.Tensor

JACOBIAN_OVERHEAD = 2.0  # vmap(jacrev) holds the Jacobians and about as much in intermediates


class _OpCounter(TorchDispatchMode):
    """Counts the operations dispatched inside it, and their FLOPs by `torch.utils.flop_counter`'s
    formulas (its registry; `FlopCounterMode` itself cannot run a forward that differentiates inside,
    as a PINN's residual does)."""

    def __init__(self):
        super().__init__()
        self.count = 0
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.count += 1
        out = func(*args, **kwargs)
        if (count := flop_registry.get(func._overloadpacket)) is not None:
            self.flops += count(*args, **kwargs, out_val=out)
        return out


class _measured(functools.cached_property):
    """A property measured once per model and kind of input: kept in the model's cache
    (`ntk.forward.model_cache`), so that repeated kernels of one model do not measure it again."""

    def __get__(self, instance, owner=None):
        if instance is None:
            return self
        store = instance._store
        if self.attrname not in store:
            store[self.attrname] = self.func(instance)
        return store[self.attrname]


class ModelSizes:
    """What the memory and FLOP formulas read of one model on one kind of input, each measured on
    first use (a forward pass of `x_example`, one input) and kept with the model while it lives
    (`ntk.forward.model_cache`, keyed by its `fingerprint`: a model changed in structure, trainable
    parameters, training mode or hooks is measured again; nothing here depends on parameter values)."""

    def __init__(self, model: nn.Module, x_example: Tensor | None):
        self.model = model
        self.x_example = None if x_example is None else x_example[:1]
        self._store = {} if x_example is None else model_cache(model, "sizes", self.x_example)

    @_measured
    def out_dim(self) -> int:
        """O."""
        return output_dim(self.model, self.x_example)

    @_measured
    def n_params(self) -> int:
        """P, the trainable parameters."""
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    @_measured
    def leaf_numel(self) -> int:
        """Numbers all leaf modules produce per input (A of ntk_vp)."""
        return leaf_output_numel(self.model, self.x_example)

    @_measured
    def structured_plan(self) -> tuple[dict[nn.Module, dict[str, str]], list[str]]:
        """The structured rules' coverage (`ntk.structured.plan`)."""
        return plan(self.model)

    @_measured
    def blocks(self) -> list[Block]:
        """The weight blocks of the covered module calls on one input."""
        blocks = self.counted[0] if "counted" in self._store else one_input_blocks(self.model, self.x_example, self.structured_plan[0])
        if isinstance(blocks, Exception):
            raise blocks
        return blocks

    @_measured
    def counted(self) -> tuple[list[Block], float, int]:
        """The blocks, F (the FLOPs of one input's forward pass, `torch.utils.flop_counter`) and D
        (the operations it dispatches), from one pass."""
        ops = _OpCounter()
        try:
            with ops:
                blocks = one_input_blocks(self.model, self.x_example, self.structured_plan[0])
        except ValueError as err:  # the rules cannot record this model (`refuse_transformed`): F from a plain pass
            ops = _OpCounter()
            try:
                with ops:
                    probe_forward(self.model, self.x_example)
            except ValueError:  # not countable either: F and D unknown (0), so every method is measured on the probe
                ops = _OpCounter()
            blocks = err
        return blocks, float(ops.flops), ops.count

    @property
    def forward_ops(self) -> int:
        """D, the operations one forward pass dispatches (each costs a fixed time, whatever its size)."""
        return 3 * (self.model.depth + 1) if isinstance(self.model, NTKMLP) else self.counted[2]

    @_measured
    def vmappable(self) -> bool:
        """Whether torch.func.vmap batches the model's forward (recurrent layers have no batching
        rule: the torch.func methods then go one input, or one column, at a time)."""
        if isinstance(self.model, NTKMLP):
            return True
        try:
            with torch.no_grad():
                vmap(lambda xi: self.model(xi[None]))(torch.cat([self.x_example, self.x_example]))
        except Exception:
            return False
        return True

    @property
    def forward_flops(self) -> float:
        """F."""
        return self.counted[1]

    @_measured
    def n_rest(self) -> int:
        """P_rest, the trainable parameters no structured rule covers."""
        rest = set(self.structured_plan[1])
        return sum(p.numel() for name, p in self.model.named_parameters() if name in rest)


@dataclass(frozen=True)
class KernelMethod:
    """One exact method of the empirical NTK.

    Attributes:
        name: the value of `empirical_ntk(method=...)`.
        summary: what it does, in one line (the documentation's table).
        applies_to: the models it takes, in words.
        refuses: model -> None if the method takes it, else why not (one line).
        in_auto: model -> whether method="auto" tries it for this model.
        blocks: what block_size counts: "rows" (of x1 and x2), "columns" (of the kernel, per
            vectorised chunk) or None (no blocking).
        memory: (sizes, n1, n2, symmetric, dtype, block) -> bytes.
        flops: (sizes, n1, n2, symmetric, trace) -> FLOPs of the (n1, n2) kernel.
        compute: (model, x1, x2, dtype, block, trace) -> the kernel (the backend itself, `ntk.backends` / `ntk.structured`).
        dispatches: (sizes, n1, n2, symmetric, block) -> operations dispatched, each costing a fixed
            time whatever its size (`predicted_seconds`).

    Example:
        >>> import ntk
        >>> [(m.name, m.applies_to) for m in ntk.METHODS.values()]
        [('layerwise', 'NTKMLP'), ('structured', 'any module'), ('jacobian', 'any module'), ('ntk_vp', 'any module'), ('autograd', 'any module')]
    """

    name: str
    summary: str
    applies_to: str
    refuses: Callable[[nn.Module], str | None]
    in_auto: Callable[[nn.Module], bool]
    blocks: str | None
    memory: Callable[[ModelSizes, int, int, bool, torch.dtype, int | None], float]
    flops: Callable[[ModelSizes, int, int, bool, bool], float]
    compute: Callable[..., Tensor]
    dispatches: Callable[[ModelSizes, int, int, bool, int | None], float] = lambda s, n1, n2, symmetric, block: 0.0
    memory_formula: str = ""
    flops_formula: str = ""
    dispatches_formula: str = ""

    def largest_block(self, sizes: ModelSizes, n1: int, n2: int) -> int | None:
        """The block that computes everything at once (None for a method without blocks)."""
        if self.blocks == "rows":
            return max(n1, n2)
        if self.blocks == "columns":
            return n2 * sizes.out_dim
        return None


def _bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _result_bytes(s: ModelSizes, n1: int, n2: int, b: int) -> float:
    return n1 * n2 * s.out_dim**2 * b


def _rows(block: int | None, n1: int, n2: int) -> int:
    return min(block or max(n1, n2), max(n1, n2))


def _layerwise_memory(s: ModelSizes, n1: int, n2: int, symmetric: bool, dtype: torch.dtype, block: int | None) -> float:
    b = _bytes(dtype)
    rows, o, widths = _rows(block, n1, n2), s.out_dim, s.model.widths
    per_input = sum(2 * widths[l] + o * widths[l + 1] for l in range(s.model.depth))
    cast = max(p.numel() for p in s.model.parameters()) * b if s.model.layers[0].weight.dtype != dtype else 0
    return b * rows * (2 * per_input + 2 * rows * o**2) + cast + _result_bytes(s, n1, n2, b)


def _structured_memory(s: ModelSizes, n1: int, n2: int, symmetric: bool, dtype: torch.dtype, block: int | None) -> float:
    b = _bytes(dtype)
    rows, o = _rows(block, n1, n2), s.out_dim
    per_input = sum(blk.numbers for blk in s.blocks)
    by_module = s.structured_plan[0]
    # the contraction each block takes at this block size (by FLOPs), and the largest of their intermediates
    costs = block_costs(s.blocks, by_module, rows, rows, o, False, False)
    temporary = max((c.temporary for c in costs), default=0.0)
    # the per-sample gradients held for the joint Gram product (`SampleGrams`), up to CONCAT_NUMBERS at once
    temporary += min(CONCAT_NUMBERS, sum(c.temporary for c in costs if c.form != "gram of grams"))
    jac = JACOBIAN_OVERHEAD * o * s.n_rest * 2 * rows
    return b * (2 * rows * per_input * (1 + o) + 2 * temporary + jac) + _result_bytes(s, n1, n2, b)


def _jacobian_memory(s: ModelSizes, n1: int, n2: int, symmetric: bool, dtype: torch.dtype, block: int | None) -> float:
    b = _bytes(dtype)
    return JACOBIAN_OVERHEAD * b * s.out_dim * s.n_params * (n1 + (0 if symmetric else n2)) + _result_bytes(s, n1, n2, b)


def _ntk_vp_memory(s: ModelSizes, n1: int, n2: int, symmetric: bool, dtype: torch.dtype, block: int | None) -> float:
    b = _bytes(dtype)
    chunk = block or 1
    return b * chunk * (2 * s.n_params + 3 * n1 * s.leaf_numel) + b * s.n_params + _result_bytes(s, n1, n2, b)


def layerwise_flops(widths: list[int], n1: int, n2: int | None = None, o: int = 1, trace: bool = True) -> float:
    """FLOPs of the layer-wise kernel of an MLP with `widths` n_0 ... n_L: the forward pass, O passes
    back to the first hidden layer, and per layer the Gram products of its inputs and cotangents."""
    symmetric = n2 is None
    n2 = n1 if symmetric else n2
    n = n1 if symmetric else n1 + n2
    oo = o if trace else o * o
    forward = sum(2 * n * a * b for a, b in zip(widths[:-1], widths[1:]))
    backward = o * sum(2 * n * a * b for a, b in zip(widths[1:-1], widths[2:]))
    grams = sum(2 * n1 * n2 * w for w in widths[:-1]) + sum(2 * n1 * n2 * oo * w for w in widths[1:-1])
    grams += 2 * n1 * n2 * oo * o if o > 1 else 0
    return float(forward + backward + grams)


def _jacobian_flops(s: ModelSizes, n1: int, n2: int, symmetric: bool, trace: bool) -> float:
    o, f = s.out_dim, s.forward_flops
    return (n1 if symmetric else n1 + n2) * (f + 2 * o * f) + 2 * n1 * n2 * (o if trace else o * o) * s.n_params


def _ntk_vp_flops(s: ModelSizes, n1: int, n2: int, symmetric: bool, trace: bool) -> float:
    return n2 * s.out_dim * (3 * s.forward_flops + 3 * s.forward_flops * n1)


def _structured_flops(s: ModelSizes, n1: int, n2: int, symmetric: bool, trace: bool) -> float:
    o, f, n = s.out_dim, s.forward_flops, n1 if symmetric else n1 + n2
    by_module, rest = s.structured_plan
    layers = layer_flops(s.blocks, by_module, n1, n2, o, trace, symmetric)
    return n * (f + o * f) + layers + ((n * 2 * o * f + 2 * n1 * n2 * (o if trace else o * o) * s.n_rest) if rest else 0.0)


# The time model of method="auto": FLOPs at a rate plus a fixed cost per dispatched operation, per kind
# of device; rough, from the benchmark's models (scripts.bench_structured). A wrong guess costs time,
# never accuracy: every method is exact.
RATE = {"cpu": 60e9, "cuda": 10e12}  # FLOP/s
PER_OP = {"cpu": 10e-6, "cuda": 20e-6}  # seconds per dispatched operation
VMAP_OP = 4  # an operation under vmap(jacrev) (its batching rules, the backward) costs about as much as 4 plain ones
CONTRACTION_OPS = 12  # operations per covered call and pair of blocks in the structured contractions


def predicted_seconds(
    method: KernelMethod, sizes: ModelSizes, n1: int, n2: int, symmetric: bool, trace: bool, block: int | None, device: torch.device
) -> float:
    """The time model of method="auto": FLOPs / RATE + dispatched operations x PER_OP.

    Example:
        >>> import torch, ntk
        >>> from ntk.methods import ModelSizes, predicted_seconds
        >>> model, x = torch.nn.Linear(3, 1), torch.zeros(8, 3)
        >>> t = {m.name: predicted_seconds(m, ModelSizes(model, x), 8, 8, True, True, 8, torch.device("cpu")) for m in ntk.METHODS.values() if m.name != "layerwise"}
        >>> min(t, key=t.get)
        'structured'
    """
    kind = "cuda" if device.type == "cuda" else "cpu"
    return method.flops(sizes, n1, n2, symmetric, trace) / RATE[kind] + method.dispatches(sizes, n1, n2, symmetric, block) * PER_OP[kind]


def _blocks_count(n1: int, n2: int, symmetric: bool, block: int | None) -> tuple[int, int]:
    """Row blocks and computed block pairs of a blocked kernel."""
    rows = math.ceil(n1 / (block or max(n1, n2)))
    cols = rows if symmetric else math.ceil(n2 / (block or max(n1, n2)))
    return rows + (0 if symmetric else cols), rows * (rows + 1) // 2 if symmetric else rows * cols


def _jacobian_dispatches(s: ModelSizes, n1: int, n2: int, symmetric: bool, block: int | None) -> float:
    per_input = 1 if s.vmappable else (n1 if symmetric else n1 + n2)  # without a batching rule: one input at a time
    return VMAP_OP * s.forward_ops * (2 + s.out_dim) * (1 if symmetric else 2) * per_input


def _structured_dispatches(s: ModelSizes, n1: int, n2: int, symmetric: bool, block: int | None) -> float:
    passes, pairs = _blocks_count(n1, n2, symmetric, block)
    own = passes * s.forward_ops * (2 + s.out_dim) + pairs * CONTRACTION_OPS * len(s.blocks)
    return own + (pairs * _jacobian_dispatches(s, n1, n2, True, None) if s.n_rest else 0.0)


def _ntk_vp_dispatches(s: ModelSizes, n1: int, n2: int, symmetric: bool, block: int | None) -> float:
    chunks = math.ceil(n2 * s.out_dim / (block or 1)) if s.vmappable else n2 * s.out_dim  # without a batching rule: per column
    return chunks * VMAP_OP * 5 * s.forward_ops


def _autograd_dispatches(s: ModelSizes, n1: int, n2: int, symmetric: bool, block: int | None) -> float:
    n = n1 if symmetric else n1 + n2
    return n * s.forward_ops * (1 + 2 * s.out_dim)  # per input: a forward pass and O backward passes, no batching


def _layerwise_dispatches(s: ModelSizes, n1: int, n2: int, symmetric: bool, block: int | None) -> float:
    passes, pairs = _blocks_count(n1, n2, symmetric, block)
    return (passes + pairs) * 6 * (s.model.depth + 1)


def _jacobian(model: nn.Module, x1, x2, dtype, block, trace) -> Tensor:
    return jacobian_kernel(model, x1, x2, dtype, trace)  # no blocks


def _needs_mlp(model: nn.Module) -> str | None:
    if isinstance(model, NTKMLP):
        return None
    return f"method='layerwise' needs an NTKMLP, got {type(model).__name__}; use method='structured', 'ntk_vp' or 'jacobian'"


METHODS: dict[str, KernelMethod] = {
    m.name: m
    for m in (
        KernelMethod(
            name="layerwise",
            summary="the NTK MLP's kernel layer by layer from one forward and one backward pass (paper, Section 4)",
            applies_to="NTKMLP",
            refuses=_needs_mlp,
            in_auto=lambda model: isinstance(model, NTKMLP),
            blocks="rows",
            memory=_layerwise_memory,
            flops=lambda s, n1, n2, symmetric, trace: layerwise_flops(s.model.widths, n1, None if symmetric else n2, s.out_dim, trace),
            compute=layerwise_kernel,
            dispatches=_layerwise_dispatches,
            memory_formula="b B (2 F_l + 2 B O^2) + K, F_l = sum_l (2 n_l + O n_{l+1}) numbers per input",
            flops_formula="forward, O passes back to the first hidden layer, two Gram products per layer",
        ),
        KernelMethod(
            name="structured",
            summary="per-layer rules, the cheaper exact contraction per layer (Novak et al. 2022), the Jacobian for the rest",
            applies_to="any module",
            refuses=lambda model: None,
            in_auto=lambda model: not isinstance(model, NTKMLP)
            and bool(plan(model)[0]),  # an NTKMLP: layerwise; no covered parameter: the Jacobian itself
            blocks="rows",
            memory=_structured_memory,
            flops=_structured_flops,
            compute=structured_kernel,
            dispatches=_structured_dispatches,
            memory_formula="b (2 B A (1 + O) + 2 T + 4 O P_rest B) + K, T the largest intermediate of the contraction each layer takes at B rows plus the per-sample gradients held for the joint Gram (at most 2^22)",
            flops_formula="n (F + O F) + the cheaper contraction of each covered layer + the Jacobian terms of P_rest",
        ),
        KernelMethod(
            name="jacobian",
            summary="torch.func vmap(jacrev) per-sample Jacobians, contracted over the parameters (the reference)",
            applies_to="any module",
            refuses=lambda model: None,
            in_auto=lambda model: True,
            blocks=None,
            memory=_jacobian_memory,
            flops=_jacobian_flops,
            compute=_jacobian,
            dispatches=_jacobian_dispatches,
            memory_formula="2 b O P (N1 + N2) + K (N2 left out when symmetric)",
            flops_formula="n (F + 2 O F) + 2 N1 N2 O^2 P",
        ),
        KernelMethod(
            name="ntk_vp",
            summary="Jacobian-free: one vjp per column and one jvp over x1, vectorised over a chunk of columns",
            applies_to="any module",
            refuses=lambda model: None,
            in_auto=lambda model: True,
            blocks="columns",
            memory=_ntk_vp_memory,
            flops=_ntk_vp_flops,
            compute=ntk_vp_kernel,
            dispatches=_ntk_vp_dispatches,
            memory_formula="b c (2 P + 3 N1 A) + b P + K",
            flops_formula="N2 O (3 F + 3 F N1)",
        ),
    )
}
# plain autograd: the Jacobian's memory and FLOPs, its own passes (one input, one output entry at a time)
METHODS["autograd"] = replace(
    METHODS["jacobian"],
    name="autograd",
    summary="plain autograd, one forward per input and one backward per output entry: no torch.func transform, so it takes "
    "forwards that differentiate themselves or update buffers in place, and it is the fastest where vmap has no batching rule",
    compute=autograd_kernel,
    dispatches=_autograd_dispatches,
)

METHOD_NAMES = ("auto", *METHODS)  # what `empirical_ntk(method=...)` accepts


def get_method(name: str) -> KernelMethod:
    """The method called `name`; one line naming the allowed ones otherwise."""
    if name not in METHODS:
        raise ValueError(f"unknown NTK method {name!r}; allowed: {', '.join(METHOD_NAMES)}")
    return METHODS[name]


def flop_counts(model: nn.Module, x_example: Tensor, n1: int, n2: int | None = None, trace: bool = True) -> dict[str, float]:
    """FLOPs (a multiply-add is 2) of one (n1, n2) kernel (n2 None: symmetric) by every method that
    applies to `model`, by the formulas of the table (module docstring), in the manner of Novak et
    al. (2022, Tables 1-2); F from `torch.utils.flop_counter` on one input of `x_example`.

    Returns:
        {method name: FLOPs} for every applicable method, and "forward": F.

    Example:
        >>> import torch
        >>> counts = flop_counts(torch.nn.Linear(3, 1), torch.zeros(1, 3), 4)
        >>> counts["forward"], counts["jacobian"]  # F = 2 x 3; 4 (F + 2F) + 2 x 16 x 4 parameters
        (6.0, 200.0)
    """
    sizes = ModelSizes(model, x_example)
    symmetric, n2 = n2 is None, n1 if n2 is None else n2
    out = {"forward": sizes.forward_flops}
    for m in METHODS.values():
        if m.refuses(model) is None:
            try:
                out[m.name] = float(m.flops(sizes, n1, n2, symmetric, trace))
            except ValueError:  # a method that cannot take the model (structured on a forward it cannot record)
                continue
    return out


def methods_table() -> str:
    """The table of methods as Markdown, in the order "auto" tries them: what each applies to, what
    block_size counts, its memory and FLOPs by formula, what it does (the documentation's table).

    Example:
        >>> print(methods_table().splitlines()[0])
        | method | applies to | block_size counts | memory (bytes) | FLOPs | what it does |
    """
    rows = ["| method | applies to | block_size counts | memory (bytes) | FLOPs | what it does |", "|---|---|---|---|---|---|"]
    for m in METHODS.values():
        rows.append(f"| `{m.name}` | {m.applies_to} | {m.blocks or '(no blocks)'} | {m.memory_formula} | {m.flops_formula} | {m.summary} |")
    return "\n".join(rows)
