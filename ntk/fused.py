"""Fused steps of the infinite-width recursion, compiled with torch.compile.

Eager PyTorch runs a Gaussian map such as ReLU's arc-cosine kernels as about twenty passes over
memory (one per operation: sqrt, division, clamp, arccos, ...), and a convolution's window sum as
one pass per offset; a compiled kernel does each in one pass (inductor: C++ with OpenMP on the CPU,
Triton on CUDA), which is what XLA does for neural-tangents. The steps of `ntk.limits` that touch
every (pair, position, position) entry go through here:

  activation  (var1, var2, Sigma, Theta) -> (E[sigma(u) sigma(v)], Theta E[sigma'(u) sigma'(v)]),
              one closed form of `ntk.gaussian` and the product with Theta in one pass
  affine      Sigma' = sigma_w^2 A[Sigma] + beta^2, Theta' = sigma_w^2 A[Theta] + Sigma' with the
              window sums A of a convolution (or the pooling of `ntk.limits`)

Each step is compiled once per family of shapes: the chunk of pairs (dimension 0) is dynamic
(`torch._dynamo.maybe_mark_dynamic`), so that chunking never recompiles; the positions are static
(one compilation per layer shape). Inductor caches what it compiled on disk (its FX graph cache,
in TORCHINDUCTOR_CACHE_DIR or the system's temporary directory), so a second process loads instead
of compiling. The time spent in calls that compiled is recorded apart (`compile_stats`).

When a step should be compiled is `mode`:
  "auto"   compile when the recursion's work is large enough to pay for the compilation (decided by
           `ntk.limits` from its entry count, `AUTO_NUMBERS`), else eager;
  "on"     always compile;
  "off"    never (eager).
The environment variable NTK_COMPILE (auto, on, off) sets the default. Whatever the mode, a
compilation that fails (no C++ compiler, an unsupported backend) falls back to the eager function,
once per step, with a warning naming the error; `compile_stats()["fallbacks"]` lists them.
Compiled and eager results agree to rounding (1e-12 relative is tested).
"""

from __future__ import annotations

import os
import time
import types
import warnings
from collections.abc import Callable

import torch

MODES = ("auto", "on", "off")
RECOMPILE_LIMIT = 64  # shapes one step may be compiled for (one per layer shape and rank; the chunk size is dynamic)
# Window sums (a convolution's or a pooling's) read strided slices whose rows are a layer's positions
# (7 on NTKCNN's last layers at 28 x 28): inductor's SIMD code runs such short rows as masked vectors
# of 8 doubles (with the zero padding's masks), 4x slower than its scalar code on a 2-core AVX2 CPU
# (24 against 5.7 ns per entry on the (2, 2, 7, 7, 7, 7) window sum); rows of 16 and more stay SIMD.
SCALAR_BELOW = 16
AUTO_NUMBERS = 3e9  # entries x blocks above which "auto" compiles: ~30 s of eager work on a 2-core CPU, a cold compilation's cost
_STATS: dict[str, object] = {"compile_s": 0.0, "compiled_calls": 0, "calls": 0, "fallbacks": {}, "steps": {}}


def default_mode() -> str:
    """The mode NTK_COMPILE names (default "auto"); one line for a value that is not a mode."""
    mode = os.environ.get("NTK_COMPILE", "auto").strip().lower()
    if mode not in MODES:
        raise ValueError(f"NTK_COMPILE={mode!r} is not a compile mode; allowed: {', '.join(MODES)}")
    return mode


def compile_stats() -> dict[str, object]:
    """Seconds spent in calls that compiled (compilation and that one run), their count, all fused
    calls, the steps that fell back to eager with the reason, and per step (`steps`, by name) the calls
    that did not compile: calls, seconds, bytes read (distinct arrays), bytes written, entries written."""
    steps = {name: dict(row) for name, row in _STATS["steps"].items()}
    return {**_STATS, "fallbacks": dict(_STATS["fallbacks"]), "steps": steps}


def reset_stats() -> None:
    _STATS.update(compile_s=0.0, compiled_calls=0, calls=0, fallbacks={}, steps={})


def _tensors(items) -> list[torch.Tensor]:
    out = []
    for item in items if isinstance(items, (tuple, list)) else (items,):
        if isinstance(item, torch.Tensor):
            out.append(item)
    return out


def _account(name: str, args: tuple, out, seconds: float) -> None:
    """Add one call of step `name` to its row of `compile_stats()["steps"]`, keyed by the name and the
    shape of one pair's output (so that layers sharing a step are told apart)."""
    written = _tensors(out)
    shape = tuple(written[0].shape[1:]) if written else ()
    row = _STATS["steps"].setdefault(f"{name} -> {shape}", dict(calls=0, seconds=0.0, bytes_read=0, bytes_written=0, entries=0))
    read = {t.data_ptr(): t.numel() * t.element_size() for t in _tensors(args)}  # arrays shared by two arguments once
    row["calls"] += 1
    row["seconds"] += seconds
    row["bytes_read"] += sum(read.values())
    row["bytes_written"] += sum(t.numel() * t.element_size() for t in written)
    row["entries"] += max((t.numel() for t in written), default=0)


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


class Fused:
    """`fn` run compiled (dimension 0 of every tensor argument dynamic) or eager, as `enabled` says.
    `scalar`: on the CPU, inductor's C++ without SIMD (`cpp.simdlen` 1), for window sums whose rows
    are short (SCALAR_BELOW)."""

    def __init__(self, fn: Callable, name: str, scalar: bool = False):
        self.fn, self.name, self.scalar = _own_code(fn), name, scalar
        self.compiled: dict[str, Callable] = {}  # by device type
        self.failed = False

    def __call__(self, enabled: bool, *args):
        if not enabled or self.failed:
            start = time.perf_counter()
            out = self.fn(*args)
            _account(self.name + " (eager)", args, out, time.perf_counter() - start)
            return out
        _STATS["calls"] += 1
        device = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
        if device not in self.compiled:
            options = {"cpp.simdlen": 1} if self.scalar and device == "cpu" else None
            self.compiled[device] = torch.compile(self.fn, dynamic=False, fullgraph=True, options=options)
        for a in args:
            if isinstance(a, torch.Tensor) and a.dim() and a.shape[0] > 1:
                torch._dynamo.maybe_mark_dynamic(a, 0)
        before, start = _graphs(), time.perf_counter()
        try:
            with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
                out = self.compiled[device](*args)
        except Exception as err:  # no compiler, an unsupported backend or operation: eager from now on
            self.failed = True
            reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
            _STATS["fallbacks"][self.name] = reason
            warnings.warn(f"ntk.fused: compiling {self.name} failed ({reason}); running it eagerly", RuntimeWarning, stacklevel=2)
            return self.fn(*args)
        if _graphs() > before:
            _STATS["compile_s"] += time.perf_counter() - start
            _STATS["compiled_calls"] += 1
        else:
            _account(self.name, args, out, time.perf_counter() - start)
        return out


def _own_code(fn: Callable) -> Callable:
    """`fn` with a code object of its own: dynamo keeps compilations, and counts them against its
    recompile limit, per code object, and the steps made by one `make` share theirs."""
    own = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    own.__kwdefaults__ = fn.__kwdefaults__
    return own


_STEPS: dict[tuple, Fused] = {}


def step(key: tuple, make: Callable[[], Callable], scalar: bool = False) -> Fused:
    """The fused step for `key` (made once by `make`, then shared by every call with that key)."""
    if key not in _STEPS:
        _STEPS[key] = Fused(make(), " ".join(str(k) for k in key), scalar)
    return _STEPS[key]


def activation_step(gaussian: Callable) -> Fused:
    """(var1, var2, Sigma, Theta or None) -> (E[sigma(u) sigma(v)], Theta E[sigma'(u) sigma'(v)] or None)."""

    def make() -> Callable:
        def activation(var1, var2, nngp, ntk):
            e_ss, e_dd = gaussian(var1, var2, nngp)
            return e_ss, None if ntk is None else ntk * e_dd

        return activation

    return step(("activation", getattr(gaussian, "__name__", repr(gaussian)), id(gaussian)), make)


def hermite_step(combine: Callable) -> Fused:
    """(var1, var2, Sigma, Theta or None, *coefficients) -> the Hermite maps of `ntk.analytic` per entry
    (correlation and Horner's scheme, `combine`) and the product with Theta, in one pass; the
    coefficients (per variance, with the convergence check) are computed before, eagerly."""

    def make() -> Callable:
        def hermite(var1, var2, nngp, ntk, *coefficients):
            e_ss, e_dd = combine(var1, var2, nngp, *coefficients)
            return e_ss, None if ntk is None else ntk * e_dd

        return hermite

    return step(("hermite", id(combine)), make)


def affine_step(key: tuple, mean: Callable[[torch.Tensor], torch.Tensor], sigma_w: float, beta: float, row: int = 0) -> Fused:
    """(Sigma, Theta or None) -> (sigma_w^2 A[Sigma] + beta^2, sigma_w^2 A[Theta] + Sigma'), A = `mean` (a pure
    function of one tensor, the same for every call with this `key`), Theta = None read as zero. `row`:
    the length of the output's last dimension when A is a window sum (0: not one); below SCALAR_BELOW
    the CPU code is scalar (`Fused`), a step of its own (part of the step's key)."""
    s2, b2 = sigma_w**2, beta**2

    def make() -> Callable:
        def affine(nngp, ntk):
            out = mean(nngp) * s2 + b2
            return out, (out.clone() if ntk is None else mean(ntk) * s2 + out)

        return affine

    scalar = 0 < row < SCALAR_BELOW
    return step(("affine", *key, s2, b2, scalar), make, scalar)


def pool_step(key: tuple, pool: Callable[[torch.Tensor], torch.Tensor], row: int = 0) -> Fused:
    """(Sigma, Theta or None) -> (pool(Sigma), pool(Theta) or None), `pool` the same for every call with this
    `key`; `row` as in `affine_step`."""

    def make() -> Callable:
        def pooled(nngp, ntk):
            return pool(nngp), None if ntk is None else pool(ntk)

        return pooled

    scalar = 0 < row < SCALAR_BELOW
    return step(("pool", *key, scalar), make, scalar)


def patch_products_step() -> Fused:
    """(patches A (N1, Q, S), patches B (N2, Q, S), i, j, scale, shift) -> scale sum_q A[i, q, s] B[j, q, s] + shift,
    (P, S): a first convolution's kernel at equal positions, the pairs' patches read where they lie."""

    def make() -> Callable:
        def products(a, b, i, j, scale, shift):
            return (a[i] * b[j]).sum(1) * scale + shift

        return products

    return step(("patch products",), make)


def fusible(gaussian: Callable) -> bool:
    """Whether a Gaussian map compiles as one graph: the closed forms of `ntk.gaussian` without a range
    check (ELU's bivariate normal CDF selects its bands by boolean masks, the quadrature map of
    `ntk.analytic` is a fallback: they stay eager; the Hermite maps compile their per-entry half,
    `hermite_step`)."""
    return getattr(gaussian, "__module__", None) == "ntk.gaussian" and not hasattr(gaussian, "max_variance")
