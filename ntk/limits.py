"""Exact infinite-width kernels of any composition of the NTK building blocks (`ntk.blocks`): the
NNGP kernel and the NTK of dense, convolutional, pooled and residual networks.

As the channel counts go to infinity (Novak et al. 2019, "Bayesian deep convolutional networks with
many channels are Gaussian processes"; Garriga-Alonso et al. 2019; Arora et al. 2019, "On exact
computation with an infinitely wide neural net", Section 4 and Appendix C), every channel of a
layer's output is an independent Gaussian process whose covariance over (input, position) pairs,
Sigma(x, s; x', s'), and tangent kernel Theta(x, s; x', s') follow the blocks one by one:

  input           Sigma = (1/C) sum_c x_c(s) x'_c(s'),  Theta = 0            ((1/d) x.x' for vectors)
  Conv / Dense    Sigma' = sigma_w^2 A[Sigma] + beta^2,  Theta' = sigma_w^2 A[Theta] + Sigma'
                  A[K](s, s') = (1/k) sum_{delta in window} K(s + delta, s' + delta)   (zero padding,
                  stride; k the window size, padded positions count as zeros), the mean over the
                  positions of a flattened input for Dense, K itself for a vector
  Elementwise     Sigma' = E[sigma(u) sigma(v)],  Theta' = Theta E[sigma'(u) sigma'(v)],
                  (u, v) ~ N(0, [[Sigma(x, s; x, s), Sigma], [Sigma, Sigma(x', s'; x', s')]])
                  (the maps of `ntk.analytic.gaussian_expectations`: closed forms, else quadrature)
  AvgPool         K'(t, t') = mean of K(s, s') over s in window t, s' in window t'
  GlobalAvgPool   K' = mean of K(s, s') over all s, s'
  Flatten         keeps K(s, s) per position (a Dense layer then takes their mean)
  Residual        K' = K + K_branch (the branch ends with Dense or Conv: its output is independent of x)

An activation needs a Gaussian input (the output of a Dense or Conv block, pooled, flattened or
summed with another Gaussian), as in neural-tangents; anything else is refused.

The output's kernels (N1, N2) are the NNGP kernel and the NTK of every output (Theorem 1; the
paper's MLP recursion is the dense case, equal to `ntk.analytic.limiting_kernels`).

Cost. The recursion keeps, per pair of inputs, only what the layers above need: the per-position
covariance Sigma(x, s; x', s) (N1 N2 S numbers, ~ N1 N2 S k per convolution) where nothing above
mixes positions, the full spatial covariance (N1 N2 S^2 numbers, ~ N1 N2 S^2 k per convolution) only
below a pooling layer (decided by one pass backwards over the blocks); a convolution, activation or
flatten above which nothing pools drops to the diagonal. Below a convolution of stride s (> 1 in
every dimension) whose output is kept at all position pairs, the recursion keeps only the pairs
(s, s') equal modulo s, the only ones that convolution reads (both positions of a pair move by the
same offset): 1/s^2 of them in 2-D, a quarter of NTKCNN's first and largest layer. Pairs are computed
in chunks that fit the memory budget (`ntk.memory.available_memory`), the upper triangle only when
x2 is None; every layer's per-position variances are computed once per input, by the runs of the
pairs (x, x), which give the diagonal of the result as well. The steps over every entry (Gaussian
maps in closed form, window sums, pooling) run compiled by torch.compile where the work pays for it
(`ntk.fused`; `compile=`). Float64 by default.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ntk.analytic import gaussian_expectations
from ntk.analytic import limiting_kernels as mlp_limiting_kernels
from ntk.blocks import AvgPool, Conv, Dense, Elementwise, Flatten, GlobalAvgPool, Residual
from ntk.fused import (
    AUTO_NUMBERS,
    MODES,
    activation_step,
    affine_step,
    default_mode,
    fusible,
    hermite_step,
    patch_products_step,
    pool_step,
)
from ntk.memory import NTKMemoryError, available_memory, fmt_bytes, reuse_freed_memory
from ntk.model import NTKMLP

Tensor = torch.Tensor

VECTOR, DIAG, FULL = 0, 1, 2  # what a layer's kernel keeps per pair: no positions, (s, s) pairs, all (s, s') pairs
SUPPORTED = "ntk.blocks.Dense (NTKDense), Conv, Elementwise, AvgPool, GlobalAvgPool, Flatten, Residual, nn.Sequential, NTKMLP, NTKCNN"
TEMPORARIES = 12  # arrays of a state's size alive at once (kernels, window sums, the Gaussian maps' intermediates)
PATCH_SHARE = 8  # the patches of every input are kept (not unfolded per chunk) while they fit 1/8 of the memory budget
FUSED_TERMS = 48  # Hermite series up to this many terms run compiled (padded with zeros to it); longer ones eagerly
# numbers per state array of a chunk of pairs: 32 MiB in float64, the largest arrays glibc keeps in its heap
# (`ntk.memory.MMAP_THRESHOLD`: reused, not faulted in again); fewer, larger chunks than 8 MiB ones save
# the per-call cost of the compiled steps (1.2x on NTKCNN at 28 x 28), larger ones are mapped afresh (1.5x slower)
CHUNK_NUMBERS = 2**22


@dataclass
class _Raw:
    """The inputs of a chunk of pairs before their kernel is formed, x1[i] and x2[j], with the patches
    of every input, computed once per call and shared by all chunks (`patches`: geometry -> the two
    inputs' patches) while they fit `patch_bytes`."""

    x1: Tensor
    x2: Tensor
    i: Tensor
    j: Tensor
    patches: dict
    patch_bytes: float

    def pairs(self) -> tuple[Tensor, Tensor]:
        return self.x1[self.i], self.x2[self.j]


@dataclass
class _State:
    """The kernels of one representation for P pairs of inputs."""

    nngp: Tensor | None  # (P, *positions): () for VECTOR, spatial for DIAG, spatial x spatial for FULL; None: `raw`
    ntk: Tensor | None  # None while it is zero (before the first layer with parameters)
    layout: int
    spatial: tuple[int, ...]  # one input's spatial shape: (L,), (H, W), or () for a vector
    flat: bool = False  # flattened: positions kept (DIAG), a Dense layer takes their mean
    gaussian: bool = False  # a Gaussian process in the limit (the output of an affine layer, pooled or summed)
    raw: _Raw | None = None  # the inputs of the pairs, before their kernel is formed
    phase: tuple[int, ...] = ()  # FULL on the sublattice only: (P, *phase, *sub, *sub), the pairs whose positions are equal modulo `phase`

    def materialized(self) -> _State:
        """The input's kernel formed from `raw` (for a block other than a convolution)."""
        if self.raw is None:
            return self
        a, b = (t.flatten(2) for t in self.raw.pairs())  # (P, C, S)
        if self.layout == FULL:
            k = torch.bmm(a.transpose(1, 2), b) / a.shape[1]  # (P, S, S)
            return _State(k.reshape(k.shape[0], *self.spatial, *self.spatial), None, FULL, self.spatial)
        return _State(((a * b).sum(1) / a.shape[1]).reshape(-1, *self.spatial), None, DIAG, self.spatial)

    def diagonal(self) -> _State:
        """The same representation keeping only equal positions (FULL -> DIAG)."""
        if self.layout != FULL:
            return self
        return _State(
            _full_diag(self.nngp, self.phase, len(self.spatial)),
            None if self.ntk is None else _full_diag(self.ntk, self.phase, len(self.spatial)),
            DIAG,
            self.spatial,
            self.flat,
        )

    def phased(self, phase: tuple[int, ...]) -> _State:
        """A FULL kernel kept on the sublattice of `phase` (the position pairs equal modulo the stride of
        the convolution above, the only ones it reads); itself where the sizes are not multiples."""
        if self.layout != FULL or self.phase or any(n % s for n, s in zip(self.spatial, phase)):
            return self
        cut = lambda t: None if t is None else _to_phases(t, phase)  # noqa: E731
        return _State(cut(self.nngp), cut(self.ntk), FULL, self.spatial, self.flat, self.gaussian, phase=phase)


def _diag(t: Tensor, dims: int) -> Tensor:
    """(P, *sp, *sp) -> (P, *sp), the entries at equal positions."""
    if dims == 1:
        return t.diagonal(dim1=1, dim2=2)
    return t.diagonal(dim1=1, dim2=3).diagonal(dim1=1, dim2=2)


def _to_phases(t: Tensor, phase: tuple[int, ...]) -> Tensor:
    """(P, *sp, *sp) -> (P, *phase, *sub, *sub) with sub = sp / phase: for every phase a, the entries
    K(phase u + a, phase u' + a)."""
    d = len(phase)
    parts = [t[(slice(None), *[slice(a, None, s) for a, s in zip(at, phase)] * 2)] for at in itertools.product(*map(range, phase))]
    out = torch.stack(parts, 1)
    return out.reshape(t.shape[0], *phase, *out.shape[2 : 2 + 2 * d])


def _vec_to_phases(v: Tensor, phase: tuple[int, ...]) -> Tensor:
    """(P, *sp) -> (P, *phase, *sub): position phase u + a at [a, u]."""
    d = len(phase)
    sub = [n // s for n, s in zip(v.shape[1:], phase)]
    split = v.reshape(v.shape[0], *itertools.chain(*zip(sub, phase)))  # (P, sub0, phase0, sub1, phase1, ...)
    return split.permute(0, *range(2, 2 * d + 1, 2), *range(1, 2 * d, 2))


def _phases_to_vec(v: Tensor, phase: tuple[int, ...]) -> Tensor:
    """(P, *phase, *sub) -> (P, *sp), the inverse of `_vec_to_phases`."""
    d = len(phase)
    order = [0] + [i for k in range(d) for i in (1 + d + k, 1 + k)]  # (P, sub0, phase0, sub1, phase1, ...)
    out = v.permute(*order)
    return out.reshape(v.shape[0], *[v.shape[1 + d + k] * phase[k] for k in range(d)])


def _full_diag(t: Tensor, phase: tuple[int, ...], dims: int) -> Tensor:
    """The entries at equal positions of a FULL kernel, natural or on its sublattice: (P, *sp)."""
    if not phase:
        return _diag(t, dims)
    inner = t.flatten(1, dims)  # (P, phases, *sub, *sub)
    diag = inner.diagonal(dim1=2, dim2=3) if dims == 1 else inner.diagonal(dim1=2, dim2=4).diagonal(dim1=2, dim2=3)
    return _phases_to_vec(diag.reshape(t.shape[0], *phase, *diag.shape[2:]), phase)


def _children(module: nn.Module) -> list[nn.Module]:
    """The blocks a composition applies in order (an NTKMLP as Dense, Elementwise, ..., Dense)."""
    if isinstance(module, NTKMLP):
        out: list[nn.Module] = []
        for l, layer in enumerate(module.layers):
            if l:
                out.append(Elementwise(module.activation))
            out.append(layer)
        return out
    return list(module)


def _composite(module: nn.Module) -> bool:
    return isinstance(module, (nn.Sequential, NTKMLP))


def check_blocks(model: nn.Module, where: str = "model") -> None:
    """Refuse, in one line naming it, any module that is not a building block of `ntk.blocks`."""
    if _composite(model):
        for i, child in enumerate(_children(model)):
            check_blocks(child, f"{where}[{i}]")
    elif isinstance(model, Residual):
        check_blocks(model.branch, f"{where}.branch")
    elif not isinstance(model, (Dense, Conv, Elementwise, AvgPool, GlobalAvgPool, Flatten)):
        raise ValueError(f"{where} is a {type(model).__name__}, which has no infinite-width kernel here; supported: {SUPPORTED}")


def _need_in(module: nn.Module, need_out: int) -> int:
    """What the kernel at a block's input must keep so that its output keeps `need_out`."""
    if _composite(module):
        need = need_out
        for child in reversed(_children(module)):
            need = _need_in(child, need)
        return need
    if isinstance(module, Residual):
        return max(need_out, _need_in(module.branch, need_out))
    if isinstance(module, (AvgPool, GlobalAvgPool)):
        return FULL
    if isinstance(module, (Dense, Flatten)):
        return DIAG
    if isinstance(module, Conv):
        return max(need_out, DIAG)
    return need_out  # Elementwise


def _window_mean(t: Tensor, kernel: tuple[int, ...], stride: tuple[int, ...], padding: tuple[int, ...], copies: int) -> Tensor:
    """A[K], (1/k) sum over the window with zero padding, both positions shifted by the same offset (one
    weight per offset): (P, *sp) -> (P, *sp_out) on the diagonal (`copies` = 1), (P, *sp, *sp) ->
    (P, *sp_out, *sp_out) on all position pairs (`copies` = 2). K zero-padded by p at every position,
    output t reads position s t + o of the padded K for offset o: a sum of strided slices of the
    output's size, one per offset (no scatter: a single fused loop when compiled)."""
    sizes = t.shape[1 : 1 + len(kernel)]
    out_sizes = [(n + 2 * p - k) // s + 1 for n, k, s, p in zip(sizes, kernel, stride, padding)]
    pad = [q for p in reversed(padding) for q in (p, p)] * copies  # F.pad's order: last dimension first
    padded = F.pad(t, pad) if any(padding) else t
    total = None
    for offset in itertools.product(*[range(k) for k in kernel]):
        at = [slice(o, o + s * (m - 1) + 1, s) for o, s, m in zip(offset, stride, out_sizes)]
        part = padded[(slice(None), *at * copies)]
        total = part if total is None else total + part
    return total * (1.0 / math.prod(kernel))


def _window_mean_phased(
    t: Tensor, kernel: tuple[int, ...], stride: tuple[int, ...], padding: tuple[int, ...], out_phase: tuple[int, ...] = ()
) -> Tensor:
    """A[K] of a stride-s convolution from K on its sublattice (P, *S, *sub, *sub) (`_State.phased`), S = s m:
    the output on its own sublattice of m (P, *m, *sub_out, *sub_out), or on all its pairs (P, *sp_out,
    *sp_out) for m = 1 (`out_phase` = ()). Output t = m u + b reads input s t + o - p = S u + v at both
    positions, v = s b + o - p: phase v mod S, index u + v // S on that phase's grid; every phase's grid
    zero-padded so that each (b, o) is one contiguous slice of the output's size."""
    d = len(kernel)
    m = out_phase or (1,) * d
    sub = t.shape[1 + d : 1 + 2 * d]
    big = [s * q for s, q in zip(stride, m)]
    out_sub = [((n * S + 2 * p - k) // s + 1) // q for n, S, k, s, p, q in zip(sub, big, kernel, stride, padding, m)]
    shifts = [[(s * b + o - p) // S for b in range(q) for o in range(k)] for k, s, p, q, S in zip(kernel, stride, padding, m, big)]
    low = [max(0, -min(q)) for q in shifts]
    high = [max(0, u - 1 + max(q) - (n - 1)) for q, u, n in zip(shifts, out_sub, sub)]
    pad = [x for lo, hi in zip(reversed(low), reversed(high)) for x in (lo, hi)] * 2
    padded = F.pad(t, pad) if any(pad) else t
    phases = []
    for b in itertools.product(*map(range, m)):
        total = None
        for offset in itertools.product(*[range(k) for k in kernel]):
            v = [s * bb + o - p for s, bb, o, p in zip(stride, b, offset, padding)]
            at = [slice(lo + w // S, lo + w // S + u) for w, S, lo, u in zip(v, big, low, out_sub)]
            part = padded[(slice(None), *[w % S for w, S in zip(v, big)], *at, *at)]
            total = part if total is None else total + part
        phases.append(total)
    out = phases[0] if not out_phase else torch.stack(phases, 1).reshape(t.shape[0], *m, *out_sub, *out_sub)
    return out * (1.0 / math.prod(kernel))


def _first_conv(module: Conv, state: _State, phase: tuple[int, ...] = (), fuse: bool = False) -> _State:
    """A convolution applied to the inputs themselves: Sigma' = sigma_w^2 (patch . patch') / (C k) + beta^2
    from the patches of both inputs (one batched product per pair), Theta' = Sigma'."""
    raw = state.raw
    one = module.dims == 1  # (N, C, L) as (N, C, 1, L): the extra dimension has kernel 1, stride 1, no padding
    k, s, p = ((1,) * one + module.kernel_size, (1,) * one + module.stride, (0,) * one + module.padding)
    unfold = lambda t: F.unfold(t.unsqueeze(2) if one else t, k, padding=p, stride=s)  # noqa: E731  (N, C k, S_out)
    spatial = tuple((n + 2 * q - kk) // ss + 1 for n, kk, ss, q in zip(state.spatial, module.kernel_size, module.stride, module.padding))
    width = raw.x1.shape[1] * math.prod(k)
    size = (raw.x1.shape[0] + raw.x2.shape[0]) * width * math.prod(spatial) * raw.x1.element_size()
    scale = module.sigma_w**2 / width
    if state.layout == FULL and phase and not any(n % s for n, s in zip(spatial, phase)):  # the sublattice's pairs only
        sub = [n // s for n, s in zip(spatial, phase)]

        def by_phase(t: Tensor, rows: bool) -> Tensor:
            """Patches (N, C k, S) -> (N, phases, S_sub, C k) times the scale (rows) or (N, phases, C k, S_sub)."""
            n = t.shape[0]
            split = _vec_to_phases(t.reshape(n * width, *spatial), phase).reshape(n, width, math.prod(phase), math.prod(sub))
            return (split.permute(0, 2, 3, 1) * scale).contiguous() if rows else split.transpose(1, 2).contiguous()

        key = ("sublattice", k, s, p, phase)
        if 2 * size <= raw.patch_bytes:  # every input's patches once, by phase, in both layouts (x2 may be x1)
            if key not in raw.patches:
                raw.patches[key] = (by_phase(unfold(raw.x1), True), by_phase(unfold(raw.x2), False))
            (all_a, all_b), i, j = raw.patches[key], raw.i, raw.j
        else:  # the chunk's inputs only
            all_a, all_b = (by_phase(unfold(t), rows) for t, rows in zip(raw.pairs(), (True, False)))
            i = j = torch.arange(all_a.shape[0], device=all_a.device)
        nngp = torch.bmm(all_a[i].flatten(0, 1), all_b[j].flatten(0, 1)).reshape(i.shape[0], *phase, *sub, *sub)
        if module.beta:
            nngp.add_(module.beta**2)
        # Theta = Sigma: one array until the first activation (no step writes into a state's arrays)
        return _State(nngp, nngp, FULL, spatial, gaussian=True, phase=phase)
    if size <= raw.patch_bytes:  # every input's patches once, the chunk's pairs gathered from them
        if (k, s, p) not in raw.patches:
            first = unfold(raw.x1)
            raw.patches[(k, s, p)] = (first, first if raw.x2 is raw.x1 else unfold(raw.x2))
        (all_a, all_b), i, j = raw.patches[(k, s, p)], raw.i, raw.j
    else:  # the chunk's inputs only
        all_a, all_b = (unfold(t) for t in raw.pairs())
        i = j = torch.arange(all_a.shape[0], device=all_a.device)
    if state.layout != FULL:  # the patches' products summed: Sigma(x, s; x', s) only
        nngp = patch_products_step()(fuse, all_a, all_b, i, j, scale, module.beta**2).reshape(-1, *spatial)
        return _State(nngp, nngp, state.layout, spatial, gaussian=True)
    pa, pb = all_a[i], all_b[j]
    nngp = torch.bmm(pa.transpose(1, 2), pb).reshape(pa.shape[0], *spatial, *spatial)
    nngp.mul_(scale).add_(module.beta**2)
    return _State(nngp, nngp, state.layout, spatial, gaussian=True)


def _pool_full(t: Tensor, kernel: tuple[int, ...], stride: tuple[int, ...]) -> Tensor:
    """Average pooling of both positions of a FULL kernel, one positional dimension at a time."""
    d = len(kernel)
    for axis in range(2 * d):
        k, s = kernel[axis % d], stride[axis % d]
        t = t.unfold(1 + axis, k, s).mean(-1)
    return t


def _mean_over_positions(t: Tensor) -> Tensor:
    """A Dense block's A[K]: the mean over a flattened input's positions, K itself for a vector."""
    return t.mean(tuple(range(1, t.dim()))) if t.dim() > 1 else t


class _Run:
    """One pass of the recursion over a batch of pairs. In self mode (pairs (x, x)) each activation's
    per-position variances are read from the state itself and recorded; in pair mode they come from
    the two inputs' self runs (`marginals`, in the order the activations are met)."""

    def __init__(self, expect_of: Callable[[Elementwise], Callable], marginals: Iterator | None = None, fuse: bool = False):
        self.expect_of = expect_of
        self.marginals = marginals
        self.fuse = fuse  # the steps over every entry compiled (`ntk.fused`)
        self.records: list[Tensor] = []
        self.peak = 0  # largest state, in numbers per pair

    def run(self, module: nn.Module, state: _State, need_out: int, phase: tuple[int, ...] = ()) -> _State:
        if not _composite(module) and not isinstance(module, Conv) and state.raw is not None:
            state = state.materialized()  # the inputs' kernel itself, for a block other than a convolution
            self.peak = max(self.peak, state.nngp[0].numel())
        if _composite(module):
            children = _children(module)
            needs, need = [], need_out
            for child in reversed(children):
                needs.append(need)
                need = _need_in(child, need)
            needs.reverse()
            phases = _sublattices(children, needs, state.spatial)
            for child, need, phase in zip(children, needs, phases):
                state = self.run(child, state, need, phase)
                if state.layout == FULL and need <= DIAG:
                    state = state.diagonal()  # nothing above mixes positions: keep (s, s) only
                elif phase:
                    state = state.phased(phase)  # a strided convolution above reads only these pairs
                self.peak = max(self.peak, state.nngp[0].numel())
            return state
        if isinstance(module, Residual):
            branch = self.run(module.branch, state, need_out)
            skip = state
            if branch.layout != skip.layout:
                branch, skip = branch.diagonal(), skip.diagonal()
            if branch.nngp.shape != skip.nngp.shape:
                raise ValueError(
                    f"a residual branch changes the shape of its input's kernel ({tuple(skip.nngp.shape[1:])} to {tuple(branch.nngp.shape[1:])}); its output must have its input's shape"
                )
            ntk = branch.ntk if skip.ntk is None else skip.ntk + branch.ntk
            return _State(skip.nngp + branch.nngp, ntk, skip.layout, skip.spatial, skip.flat, skip.gaussian and branch.gaussian)
        if isinstance(module, Dense):
            if getattr(module, "parameterization", "ntk") != "ntk":
                raise ValueError(
                    "model_limiting_kernels covers the NTK parameterisation; for NTKMLP(parameterization=...) use "
                    "ntk.limiting_kernels(..., rates=ntk.parameterization.kernel_rates(...))"
                )
            if state.layout == FULL or (state.layout == DIAG and not state.flat):
                raise ValueError(
                    f"a Dense block needs inputs (N, features), got positions {state.spatial}: put Flatten or GlobalAvgPool before it"
                )
            beta = module.beta if module.bias is not None else 0.0
            nngp, ntk = affine_step(("dense",), _mean_over_positions, module.sigma_w, beta)(self.fuse, state.nngp, state.ntk)
            return _State(nngp, ntk, VECTOR, (), gaussian=True)
        if isinstance(module, Conv):
            if state.flat or len(state.spatial) != module.dims:
                raise ValueError(f"a {module.dims}-D Conv block needs inputs with {module.dims} spatial dimension(s), got {state.spatial}")
            if state.raw is not None:
                return _first_conv(module, state, phase, self.fuse)
            geometry = (module.kernel_size, module.stride, module.padding)
            out_phase: tuple[int, ...] = ()
            if state.phase:
                if any(S % s for S, s in zip(state.phase, module.stride)):
                    raise AssertionError(f"a kernel on the sublattice {state.phase} met a convolution of stride {module.stride}")
                out_phase = tuple(S // s for S, s in zip(state.phase, module.stride))
                out_phase = () if all(q == 1 for q in out_phase) else out_phase
                mean = lambda t: _window_mean_phased(t, *geometry, out_phase)  # noqa: E731
            else:
                copies = 2 if state.layout == FULL else 1
                mean = lambda t: _window_mean(t, *geometry, copies)  # noqa: E731
            spatial = tuple(
                (n + 2 * p - k) // s + 1 for n, k, s, p in zip(state.spatial, module.kernel_size, module.stride, module.padding)
            )
            row = spatial[-1] // (out_phase[-1] if out_phase else 1)  # the output's last dimension
            key = ("conv", state.layout, state.phase, out_phase, *geometry)
            nngp, ntk = affine_step(key, mean, module.sigma_w, module.beta, row)(self.fuse, state.nngp, state.ntk)
            return _State(nngp, ntk, state.layout, spatial, gaussian=True, phase=out_phase)
        if isinstance(module, Elementwise):
            return self.activation(module, state)
        if isinstance(module, AvgPool):
            spatial = tuple((n - k) // s + 1 for n, k, s in zip(state.spatial, module.kernel_size, module.stride))
            pool = lambda t: _pool_full(t, module.kernel_size, module.stride)  # noqa: E731
            nngp, ntk = pool_step(("avgpool", module.kernel_size, module.stride), pool, spatial[-1])(self.fuse, state.nngp, state.ntk)
            return _State(nngp, ntk, FULL, spatial, gaussian=state.gaussian)
        if isinstance(module, GlobalAvgPool):
            dims = tuple(range(1, state.nngp.dim()))
            return _State(state.nngp.mean(dims), None if state.ntk is None else state.ntk.mean(dims), VECTOR, (), gaussian=state.gaussian)
        if isinstance(module, Flatten):
            if state.layout == VECTOR:
                return state
            flat = state.diagonal()
            return _State(flat.nngp, flat.ntk, DIAG, flat.spatial, flat=True, gaussian=state.gaussian)
        raise ValueError(f"{type(module).__name__} has no infinite-width kernel here; supported: {SUPPORTED}")

    def activation(self, module: Elementwise, state: _State) -> _State:
        if not state.gaussian:
            raise ValueError(
                f"the input of activation {module.name!r} is not Gaussian in the limit (an activation or the input itself comes "
                "before it): put a Dense or Conv block before every activation"
            )
        d = len(state.spatial)
        if self.marginals is None:  # self pairs: the variances are the state's own diagonal
            # a copy: no view keeps the full kernel
            var = _full_diag(state.nngp, state.phase, d).contiguous() if state.layout == FULL else state.nngp
            self.records.append(var)
            var1 = var2 = var
        else:
            var1, var2 = next(self.marginals)
        if state.phase:  # (P, *phase, *sub, 1...) and (P, *phase, 1..., *sub) against (P, *phase, *sub, *sub)
            # contiguous (a copy of P x positions numbers): the compiled maps read strided views at half speed
            var1, var2 = _vec_to_phases(var1, state.phase).contiguous(), _vec_to_phases(var2, state.phase).contiguous()
            var1 = var1.reshape(var1.shape + (1,) * d)
            var2 = var2.reshape(var2.shape[: 1 + d] + (1,) * d + var2.shape[1 + d :])
        elif state.layout == FULL:  # (P, *sp, 1...) and (P, 1..., *sp) against (P, *sp, *sp)
            var1 = var1.reshape(var1.shape + (1,) * d)
            var2 = var2.reshape(var2.shape[:1] + (1,) * d + var2.shape[1:])
        expect = self.expect_of(module)
        coefficients = getattr(expect, "coefficients", None)  # a Hermite map: its per-entry half compiles
        prepared = coefficients(var1, var2) if self.fuse and coefficients is not None else None
        if prepared is not None and prepared[0].shape[-1] <= FUSED_TERMS and prepared[2].shape[-1] <= FUSED_TERMS:
            # series padded with zero terms to FUSED_TERMS (exact): one compilation per layer shape
            prepared = tuple(F.pad(c, (0, FUSED_TERMS - c.shape[-1])) for c in prepared)
            e_ss, ntk = hermite_step(expect.combine)(True, var1, var2, state.nngp, state.ntk, *prepared)
        elif prepared is not None:  # a longer series: eagerly, from the coefficients already computed
            e_ss, ntk = hermite_step(expect.combine)(False, var1, var2, state.nngp, state.ntk, *prepared)
        elif coefficients is not None and self.fuse and expect.fallback is not None:  # no convergence: the fallback at once
            e_ss, ntk = activation_step(expect.fallback)(fusible(expect.fallback), var1, var2, state.nngp, state.ntk)
        else:
            e_ss, ntk = activation_step(expect)(self.fuse and fusible(expect), var1, var2, state.nngp, state.ntk)
        return _State(e_ss, ntk, state.layout, state.spatial, state.flat, phase=state.phase)


def _input_state(
    x1: Tensor, x2: Tensor, i: Tensor, j: Tensor, layout: int, patches: dict | None = None, patch_bytes: float = 0.0
) -> _State:
    """The input's kernel for the pairs (x1[i], x2[j]): (1/d) x.x' for vectors; for images and
    sequences the inputs themselves (`_Raw`), whose kernel the first convolution forms from its patches."""
    if x1.dim() == 2:  # vectors (P, d)
        a, b = x1[i], x2[j]
        return _State((a * b).sum(1) / a.shape[1], None, VECTOR, ())
    return _State(None, None, layout, tuple(x1.shape[2:]), raw=_Raw(x1, x2, i, j, {} if patches is None else patches, patch_bytes))


def limiting_kernels(model_or_x1, *args, **kwargs) -> tuple[Tensor, Tensor]:
    """NNGP kernel and NTK of an infinite-width network, in either form:

    - `limiting_kernels(model, x1, x2=None, method="auto", dtype=torch.float64, memory_limit=None)`
      for a composition of the blocks of `ntk.blocks` (`model_limiting_kernels`);
    - `limiting_kernels(x1, x2, depth, beta=0.1, activation="relu", ...)`, the paper's MLP by the
      recursion of `ntk.analytic.limiting_kernels`.

    Example:
        >>> import torch, ntk
        >>> x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        >>> mlp = ntk.NTKMLP(3, 10, depth=3, activation="erf", generator=torch.Generator().manual_seed(0))
        >>> by_model, by_depth = ntk.limiting_kernels(mlp, x), ntk.limiting_kernels(x, None, depth=3, activation="erf")
        >>> all(torch.allclose(a, b, rtol=1e-12, atol=0) for a, b in zip(by_model, by_depth))
        True
    """
    if isinstance(model_or_x1, nn.Module):
        return model_limiting_kernels(model_or_x1, *args, **kwargs)
    return mlp_limiting_kernels(model_or_x1, *args, **kwargs)


def model_limiting_kernels(
    model: nn.Module,
    x1: Tensor,
    x2: Tensor | None = None,
    method: str = "auto",
    dtype: torch.dtype = torch.float64,
    memory_limit: int | None = None,
    compile: str | None = None,
) -> tuple[Tensor, Tensor]:
    """NNGP kernel and NTK of the infinite-width network `model`, (N1, N2) each.

    `model` is a composition of the building blocks of `ntk.blocks` (an `NTKMLP`, an `NTKCNN`, an
    `nn.Sequential` of blocks): the recursion of the module docstring, from the same module object
    that trains (`ntk.limiting_kernels(model, x1, x2)` calls this).

    Args:
        model: the network; its parameters are not read, only its architecture.
        x1: inputs (N1, ...) as the model takes them: (N, d), (N, C, L) or (N, C, H, W).
        x2: inputs (N2, ...), or None for x2 = x1 (only the upper triangle is computed).
        method: the Gaussian maps' method ("auto", "closed", "hermite", "quadrature"; `ntk.analytic`).
        dtype: precision of the computation and the result (float64).
        memory_limit: bytes the computation may use (default `ntk.memory.available_memory`).
        compile: the steps over every entry (Gaussian maps, window sums, pooling) compiled with
            torch.compile (`ntk.fused`): "auto" when the work pays for the compilation, "on", "off";
            None: the environment's NTK_COMPILE, else "auto". The same kernels to rounding.

    Returns:
        (nngp, ntk), each (N1, N2).

    Raises:
        ValueError: a layer that is not a block (named, with the supported ones), inputs the
            model cannot take (rank, channels, a kernel or stride that does not fit).
        NTKMemoryError: not even one pair fits the budget.

    Example:
        >>> import torch, ntk
        >>> from ntk.blocks import Conv, Dense, Elementwise, GlobalAvgPool
        >>> g = torch.Generator().manual_seed(0)
        >>> model = torch.nn.Sequential(Conv(1, 64, 3, padding=1, generator=g), Elementwise("relu"), GlobalAvgPool(), Dense(64, 1, beta=0.1, generator=g))
        >>> x = torch.randn(3, 1, 6, 6, dtype=torch.float64, generator=g)
        >>> nngp, theta = ntk.limiting_kernels(model, x)  # the CNN-GP and the CNTK, (3, 3)
        >>> theta.shape, bool(torch.allclose(theta, theta.T))
        (torch.Size([3, 3]), True)
    """
    check_blocks(model)
    mode = default_mode() if compile is None else compile
    if mode not in MODES:
        raise ValueError(f"unknown compile mode {mode!r}; allowed: {', '.join(MODES)}")
    for name, x in (("x1", x1), ("x2", x2)):
        if x is not None and (not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] < 1):
            raise ValueError(f"{name} must be a tensor (N, ...) of inputs, got {getattr(x, 'shape', type(x))}")
        if x is not None and x.is_floating_point() and not torch.isfinite(x).all():
            raise ValueError(f"{name} contains non-finite values")
    if x2 is not None and x2.shape[1:] != x1.shape[1:]:
        raise ValueError(f"x1 and x2 have different input shapes: {tuple(x1.shape[1:])} and {tuple(x2.shape[1:])} per input")
    _probe(model, x1[:1])
    if x1.device.type == "cpu":
        reuse_freed_memory()  # the chunks' arrays reused, not faulted in again (`ntk.memory`)
    x1 = x1.to(dtype)
    xs2 = x1 if x2 is None else x2.to(dtype)
    maps: dict[int, Callable] = {}

    def expect_of(block: Elementwise) -> Callable:
        key = id(block.activation)
        if key not in maps:
            maps[key] = gaussian_expectations(block.activation, method)
        return maps[key]

    layout = _need_in(model, VECTOR)
    zero = torch.zeros(1, dtype=torch.long, device=x1.device)
    first = _input_state(x1, x1, zero, zero, layout)
    one = _Run(expect_of)  # one pair (x1[0], x1[0]): the largest state per pair, and the output's layout, before the work
    if one.run(model, first, VECTOR).layout != VECTOR:
        raise ValueError("the model's output has positions: end it with GlobalAvgPool or Flatten and a Dense block")
    per_pair = max(one.peak, 1)
    budget = memory_limit if memory_limit is not None else available_memory(x1.device)
    bytes_per_pair = TEMPORARIES * per_pair * torch.empty((), dtype=dtype).element_size()
    n1, n2 = x1.shape[0], xs2.shape[0]
    result = 2 * n1 * n2 * torch.empty((), dtype=dtype).element_size()
    if result + bytes_per_pair > budget:
        raise NTKMemoryError(
            f"the infinite-width kernels need {fmt_bytes(bytes_per_pair)} per pair of inputs and {fmt_bytes(result)} for the result, "
            f"more than the {fmt_bytes(budget)} available; use fewer inputs or raise the limit (NTK_MEMORY_LIMIT)"
        )
    chunk = max(1, min(int((budget - result) // bytes_per_pair), CHUNK_NUMBERS // per_pair))
    pairs = n1 * (n1 + 1) // 2 if x2 is None else n1 * n2 + n1 + n2  # with the self runs
    fuse = mode == "on" or (mode == "auto" and per_pair * pairs * _depth(model) > AUTO_NUMBERS)

    nngp = x1.new_zeros(n1, n2)
    ntk = x1.new_zeros(n1, n2)

    patch_bytes = budget / PATCH_SHARE
    same_patches: dict = {}  # every input's patches for the runs of x1 with itself (and with x2 = x1)

    def self_records(x: Tensor, keep: bool) -> list[Tensor]:
        """Every activation's per-position input variances of every input, (N, *spatial) each; with
        `keep`, the kernels of the pairs (x, x) themselves go on the diagonal of the result."""
        parts, patches = [], same_patches if x is x1 else {}
        for start in range(0, x.shape[0], chunk):
            idx = torch.arange(start, min(start + chunk, x.shape[0]), device=x.device)
            run = _Run(expect_of, fuse=fuse)
            out = run.run(model, _input_state(x, x, idx, idx, layout, patches, patch_bytes), VECTOR)
            parts.append(run.records)
            if keep:
                nngp[idx, idx], ntk[idx, idx] = out.nngp, out.ntk if out.ntk is not None else 0.0
        return [torch.cat(r) for r in zip(*parts)] if parts and parts[0] else []

    rec1 = self_records(x1, keep=x2 is None)  # x2 = None: the self runs are the diagonal pairs, not run again
    rec2 = rec1 if x2 is None else self_records(xs2, keep=False)
    if x2 is None:
        i_all, j_all = torch.triu_indices(n1, n1, offset=1, device=x1.device)
    else:
        i_all = torch.arange(n1, device=x1.device).repeat_interleave(n2)
        j_all = torch.arange(n2, device=x1.device).repeat(n1)
    pair_patches = same_patches if x2 is None else {}
    for start in range(0, i_all.numel(), chunk):
        i, j = i_all[start : start + chunk], j_all[start : start + chunk]
        run = _Run(expect_of, iter([(r1[i], r2[j]) for r1, r2 in zip(rec1, rec2)]), fuse=fuse)
        out = run.run(model, _input_state(x1, xs2, i, j, layout, pair_patches, patch_bytes), VECTOR)
        nngp[i, j], ntk[i, j] = out.nngp, out.ntk if out.ntk is not None else torch.zeros_like(out.nngp)
        if x2 is None:
            nngp[j, i], ntk[j, i] = nngp[i, j], ntk[i, j]
    return nngp, ntk


def _spatial_after(module: nn.Module, spatial: tuple[int, ...]) -> tuple[int, ...]:
    """A block's output positions for input positions `spatial` (() once they are gone)."""
    if _composite(module):
        for child in _children(module):
            spatial = _spatial_after(child, spatial)
        return spatial
    if isinstance(module, Conv) and len(spatial) == module.dims:
        return tuple((n + 2 * p - k) // s + 1 for n, k, s, p in zip(spatial, module.kernel_size, module.stride, module.padding))
    if isinstance(module, AvgPool) and len(spatial) == len(module.kernel_size):
        return tuple((n - k) // s + 1 for n, k, s in zip(spatial, module.kernel_size, module.stride))
    if isinstance(module, (Elementwise, Residual)):
        return spatial
    return ()


def _sublattices(children: list[nn.Module], needs: list[int], spatial: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Per block of a composition, the sublattice its output is kept on. A stride-s convolution reads only
    the position pairs equal modulo s (Arora et al. 2019's recursion at stride s); if its own output is
    kept on the pairs equal modulo m, it reads only input pairs equal modulo s m. The blocks feeding it
    through activations only are kept on that sublattice where the sizes are multiples of it (else of
    s; else all pairs), for every convolution whose output is needed at all position pairs (FULL) with
    stride above 1 in every dimension; () elsewhere."""
    sizes = [spatial]
    for child in children:
        sizes.append(_spatial_after(child, sizes[-1]))
    out: list[tuple[int, ...]] = [()] * len(children)
    for c in reversed(range(len(children))):
        child, n_in, n_out = children[c], sizes[c], sizes[c + 1]
        if not (isinstance(child, Conv) and needs[c] == FULL and all(s > 1 for s in child.stride) and len(n_in) == child.dims):
            continue
        m = out[c] or (1,) * child.dims
        joint = tuple(s * q for s, q in zip(child.stride, m))
        if any(n % S for n, S in zip(n_in, joint)) or any(n % q for n, q in zip(n_out, m)):
            joint = tuple(child.stride)  # its output formed on all pairs, then cut to its own sublattice
        below = c - 1
        while below > 0 and isinstance(children[below], Elementwise):
            below -= 1
        for k in range(max(below, 0), c):
            out[k] = joint
    return out


def _depth(module: nn.Module) -> int:
    """The number of blocks (each a pass over the state) in a composition."""
    if _composite(module):
        return sum(_depth(child) for child in _children(module))
    if isinstance(module, Residual):
        return 1 + _depth(module.branch)
    return 1


def _probe(model: nn.Module, x: Tensor) -> None:
    """One forward pass of the finite network on one input: inputs it cannot take are refused in one line."""
    param = next(model.parameters(), None)
    try:
        with torch.no_grad():
            out = model(x.to(param.dtype) if param is not None else x)
    except ValueError:
        raise
    except RuntimeError as err:
        raise ValueError(f"the model cannot take inputs of shape {tuple(x.shape[1:])}: {str(err).splitlines()[0]}") from None
    if out.dim() != 2:
        raise ValueError(
            f"the model's output must be (N, O), got {tuple(out.shape)}: end it with GlobalAvgPool or Flatten and a Dense block"
        )
