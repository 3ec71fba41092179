"""Planning of the empirical NTK: which method and which block, checked on the model in hand.

`memory_estimate` gives the bytes of a method for an (n1, n2) kernel, by the formula of its entry in
`ntk.methods.METHODS`. `plan_method` picks the largest block that fits the budget of
`ntk.memory.available_memory` (or refuses with `NTKMemoryError`, naming the methods that would fit)
and resolves method="auto" by `choose_method`:

1. every method of the table that auto tries for the model and that fits the budget is predicted a
   time (`ntk.methods.predicted_seconds`: FLOPs by formula at a rate, plus a fixed cost per
   dispatched operation);
2. those predicted within `PROBE_FACTOR` of the fastest are run on a probe, a block of the real
   kernel (the first `probe_inputs` inputs of x1 against those of x2); a method that raises is
   dropped, its error kept; when no contender runs, the others are tried in order of prediction;
3. each probe's measured time, scaled to the whole kernel by the method's own formula, decides.

Within `reproducible_auto()` (or with `torch.use_deterministic_algorithms(True)`), as with PyTorch's
own timing-based choices (`torch.backends.cudnn.benchmark`), the measured times do not decide: auto
takes the first method in predicted order that runs on the probe, the same one in every process,
so that a result is bitwise repeatable (the experiments run so).

A kernel no larger than the probe is the probe itself: its result is used, nothing is computed twice.
The choice, with every method's predicted and measured times and failures (`AutoChoice`), is kept
with the model per kernel shape (`ntk.forward.model_cache`), so repeated kernels neither plan nor
probe again; `ntk.kernel_report` shows it. What the formulas measure of the model (its outputs,
recorded sizes) is measured once (`ntk.methods.ModelSizes`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from ntk.forward import first_line, model_cache
from ntk.guard import leaves_model_unchanged
from ntk.memory import NTKMemoryError, fmt_bytes
from ntk.methods import METHODS, KernelMethod, ModelSizes, get_method, predicted_seconds
from ntk.model import NTKMLP
from ntk.utils import synchronize

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


PROBE_FACTOR = 10.0  # methods predicted within this factor of the fastest are measured on the probe
PROBE_MIN = 8  # inputs per side of the probe, at least ...
PROBE_FRACTION = 0.25  # ... and at least this fraction of the kernel's inputs per side
PROBE_REPEAT_S = 0.02  # a probe faster than this is repeated (up to 5 times) and its fastest run kept


_REPRODUCIBLE = False


@contextlib.contextmanager
def reproducible_auto() -> Iterator[None]:
    """Within the block method="auto" decides by prediction, not by measured time (module docstring):
    the same method in every run, so that results repeat bit for bit.

    Example:
        >>> import torch, ntk
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        >>> with reproducible_auto():
        ...     a = ntk.empirical_ntk(model, torch.ones(4, 3))
    """
    global _REPRODUCIBLE
    before, _REPRODUCIBLE = _REPRODUCIBLE, True
    try:
        yield
    finally:
        _REPRODUCIBLE = before


def _measured_decides() -> bool:
    return not (_REPRODUCIBLE or torch.are_deterministic_algorithms_enabled())


@dataclass
class Trial:
    """One method as auto saw it: its block and memory, its predicted time for the whole kernel, its
    time measured on the probe and scaled to the whole kernel, or why it was dropped."""

    name: str
    block: int | None = None
    memory: float = float("nan")
    predicted_s: float = float("nan")
    probe_s: float = float("nan")
    estimated_s: float = float("nan")
    error: str = ""  # why it failed or does not fit ("" when it ran)
    probed: bool = False
    note: str = ""


@dataclass
class AutoChoice:
    """What method="auto" decided for one kernel shape: the method and block taken, every method's
    `Trial`, and the probe's size (inputs of x1, of x2). `kernel` is the probe's result when the probe
    was the whole kernel (not kept in the cache)."""

    name: str
    block: int | None
    trials: list[Trial] = field(default_factory=list)
    probe_inputs: tuple[int, int] = (0, 0)
    kernel: torch.Tensor | None = None
    key: tuple = ()


def probe_inputs(n1: int, n2: int) -> tuple[int, int]:
    """Inputs of x1 and of x2 in the probe: max(PROBE_MIN, PROBE_FRACTION x the larger side), at most all."""
    p = max(PROBE_MIN, math.ceil(PROBE_FRACTION * max(n1, n2)))
    return min(n1, p), min(n2, p)


def _fit(m: KernelMethod, sizes: ModelSizes, n1: int, n2: int, symmetric: bool, dtype: torch.dtype, budget: float, block_size: int | None):
    """(block, estimate): the largest block of `m` that fits the budget (block -1: none does; None:
    a method without blocks that fits), by bisection on the monotone estimate."""

    def estimate(block: int | None) -> float:
        return m.memory(sizes, n1, n2, symmetric, dtype, block)

    top = m.largest_block(sizes, n1, n2)
    if top is None:
        return (top, est) if (est := estimate(None)) <= budget else (-1, est)
    if block_size is not None:
        est = estimate(block_size)
        return (block_size if est <= budget else -1), est
    top_est = estimate(top)
    if top_est <= budget:  # all at once
        return top, top_est
    lo_est = estimate(1)
    if lo_est > budget:
        return -1, lo_est
    lo, hi = 1, top
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if estimate(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo, estimate(lo)


@leaves_model_unchanged
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
    x2: Tensor | None = None,
) -> tuple[str, int | None]:
    """The method ("auto" resolved by `choose_method`, which probes) and the block size an (n1, n2)
    kernel is computed with.

    Args:
        x1: the kernel's first inputs (or at least its first `probe_inputs`); x2: its second inputs
            when not symmetric (None: inputs of x1 stand in for them in the probe).

    Raises:
        NTKMemoryError: the method does not fit even one row at a time; the message names the
            methods that would.
        ValueError: method="auto" and every method fails on the model: one line naming each failure.

    Example:
        >>> import torch
        >>> from ntk import NTKMLP
        >>> model = NTKMLP(2, 100, 3, generator=torch.Generator().manual_seed(0))
        >>> plan_method(model, torch.randn(64, 2), 64, 64, True, "auto", None, torch.float64, 2**30)
        ('layerwise', 64)
    """
    if method == "auto":
        choice = choose_method(model, x1, x2, n1, n2, symmetric, block_size, dtype, budget, trace)
        return choice.name, choice.block
    sizes = ModelSizes(model, x1[:1])  # measured once per model and kind of input (`ntk.forward.model_cache`)
    chosen = get_method(method)
    block, est = _fit(chosen, sizes, n1, n2, symmetric, dtype, budget, block_size)
    if block == -1:
        others = []
        for m in METHODS.values():
            if m is chosen or not m.in_auto(model):
                continue
            try:
                if _fit(m, sizes, n1, n2, symmetric, dtype, budget, None)[0] != -1:
                    others.append(f"method={m.name!r} (from {fmt_bytes(m.memory(sizes, n1, n2, symmetric, dtype, 1))})")
            except ValueError:
                continue
        advice = f"use {' or '.join(others)}" if others else "no method fits: use fewer inputs, or raise the limit (NTK_MEMORY_LIMIT)"
        raise NTKMemoryError(
            f"method={chosen.name!r} needs about {fmt_bytes(est)} for a {n1} x {n2} kernel, more than the "
            f"{fmt_bytes(budget)} available; {advice}"
        )
    return chosen.name, block


def choose_method(
    model: nn.Module,
    x1: Tensor,
    x2: Tensor | None,
    n1: int,
    n2: int,
    symmetric: bool,
    block_size: int | None,
    dtype: torch.dtype,
    budget: float,
    trace: bool,
) -> AutoChoice:
    """method="auto" for an (n1, n2) kernel: predicted, probed, decided (module docstring); kept with
    the model per kernel shape, and reused while the choice still fits the budget (which moves with
    the free memory).

    Raises:
        NTKMemoryError: no method fits the budget.
        ValueError: every method that fits fails on the model; one line naming each failure.
    """
    sizes = ModelSizes(model, x1[:1])
    _ = sizes.out_dim  # a model that fails on x1's shape: its one line, once rather than per method
    decided = model_cache(model, "auto", x1[:1])
    key = (n1, n2, symmetric, dtype, trace, block_size)
    if key in decided:
        choice = decided[key]
        if get_method(choice.name).memory(sizes, n1, n2, symmetric, dtype, choice.block) <= budget:
            return choice
    trials: list[Trial] = []
    for m in METHODS.values():
        if not m.in_auto(model):
            continue
        trial = Trial(m.name)
        trials.append(trial)
        try:
            trial.block, trial.memory = _fit(m, sizes, n1, n2, symmetric, dtype, budget, block_size)
            if trial.block == -1:
                trial.error = f"does not fit: needs about {fmt_bytes(trial.memory)} of {fmt_bytes(budget)}"
                continue
            trial.predicted_s = predicted_seconds(m, sizes, n1, n2, symmetric, trace, trial.block, x1.device)
        except Exception as err:  # the model defeats the method's measurement (a forward its rules cannot record)
            trial.error = f"{type(err).__name__}: {first_line(err)}"
    fitting = sorted((t for t in trials if not t.error), key=lambda t: t.predicted_s)
    if isinstance(model, NTKMLP) and fitting and fitting[0].name == "layerwise":
        # the NTK MLP's own method (Section 4's factorisation), 20-200x faster than the general ones on every
        # benchmark shape: taken without a probe whenever it fits
        fitting[0].note = "the NTK MLP's own method: not probed"
        choice = AutoChoice("layerwise", fitting[0].block, trials, (0, 0), key=key)
        decided[key] = choice
        return choice
    if not fitting:
        if any(t.error.startswith("does not fit") for t in trials):
            budget_line = "; ".join(f"{t.name} {t.error}" for t in trials)
            raise NTKMemoryError(
                f"no method fits a {n1} x {n2} kernel ({budget_line}); use fewer inputs, or raise the limit (NTK_MEMORY_LIMIT)"
            )
        raise ValueError(_all_failed(trials))
    p1, p2 = probe_inputs(n1, n2)
    xa = x1[:p1]
    xb = None if symmetric else (x2[:p2] if x2 is not None else x1[-p2:])
    whole = p1 == n1 and p2 == n2 and (symmetric or x2 is not None)
    best = fitting[0].predicted_s
    contenders = [t for t in fitting if t.predicted_s <= PROBE_FACTOR * best]
    later = [t for t in fitting if t not in contenders]
    kernels: dict[str, Tensor] = {}
    measured = _measured_decides()
    for t in contenders + later:
        if (t in later or not measured) and any(c.probed and not c.error for c in trials):
            t.note = f"not probed: predicted {t.predicted_s / best:.3g}x the fastest"
            continue
        m = get_method(t.name)
        block = None if t.block is None else min(t.block, max(p1, p2)) if m.blocks == "rows" else t.block
        t.probed = True
        alone = len(contenders) == 1 or not measured  # nothing to compare: the warm-up only checks that it runs
        try:
            with torch.no_grad():
                t.probe_s, kernel = _timed_probe(m, model, xa, xb, dtype, block, trace, timed=not alone or whole)
        except Exception as err:  # dropped: the next method takes over
            t.error = f"{type(err).__name__}: {first_line(err)}"
            continue
        if alone and not whole:
            t.estimated_s = t.predicted_s
            continue
        if whole:
            t.estimated_s, kernels[t.name] = t.probe_s, kernel
        else:
            at_probe = predicted_seconds(m, sizes, p1, p2, symmetric, trace, block, x1.device)
            # scaled by the method's own formula (by the pairs where the model could not be counted)
            t.estimated_s = t.probe_s * (t.predicted_s / at_probe if at_probe > 0 else n1 * n2 / (p1 * p2))
    ran = [t for t in trials if t.probed and not t.error]
    if not ran:
        raise ValueError(_all_failed(trials))
    winner = min(ran, key=lambda t: t.estimated_s) if measured else ran[0]
    choice = AutoChoice(winner.name, winner.block, trials, (p1, p2 if xb is not None else p1), key=key)
    decided[key] = choice
    return replace(choice, kernel=kernels.get(winner.name))


def run_choice(model: nn.Module, choice: AutoChoice, x1: Tensor, x2: Tensor | None, dtype: torch.dtype, trace: bool) -> Tensor:
    """The whole kernel by auto's choice; should the chosen method fail where the probe ran (a larger
    block), the next one by measured time takes over, and the choice kept with the model moves to it."""
    if choice.kernel is not None:
        return choice.kernel
    ranked = sorted(
        (t for t in choice.trials if (t.probed or t.name == choice.name) and not t.error),
        key=lambda t: (t.name != choice.name, t.estimated_s),  # the choice first, then by measured time
    )
    for t in ranked:
        try:
            with torch.no_grad():
                kernel = get_method(t.name).compute(model, x1, x2, dtype, t.block, trace)
        except NTKMemoryError:
            raise
        except Exception as err:
            t.error = f"{type(err).__name__} on the whole kernel: {first_line(err)}"
            continue
        if t.name != choice.name:
            model_cache(model, "auto", x1[:1])[choice.key] = replace(choice, name=t.name, block=t.block, kernel=None)
        return kernel
    raise ValueError(_all_failed(choice.trials))


def _timed_probe(
    m: KernelMethod, model: nn.Module, xa: Tensor, xb: Tensor | None, dtype: torch.dtype, block: int | None, trace: bool, timed: bool = True
):
    """(seconds, kernel) of `m` on the probe, after a warm-up on two inputs (its one-time checks, and
    a failure caught cheaply); a fast probe is repeated and its fastest run kept. Not `timed`: the
    warm-up only, (nan, None)."""
    m.compute(model, xa[:2], None if xb is None else xb[:2], dtype, None if block is None else min(block, 2), trace)
    if not timed:
        return float("nan"), None
    device = xa.device
    best, spent, runs = math.inf, 0.0, 0
    while runs < 5 and (runs == 0 or spent < PROBE_REPEAT_S):
        synchronize(device)
        start = time.perf_counter()
        kernel = m.compute(model, xa, xb, dtype, block, trace)
        synchronize(device)
        seconds = time.perf_counter() - start
        best, spent, runs = min(best, seconds), spent + seconds, runs + 1
    return best, kernel


def _all_failed(trials: list[Trial]) -> str:
    return "no method computes this model's kernel: " + "; ".join(f"{t.name}: {t.error}" for t in trials)
