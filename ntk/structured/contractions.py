"""The contractions of the structured kernel: each covered module's share of Theta from its records.

For a weight W used at positions s (y_s = W a_s), with cotangents g_s = df_a / dy_s, the share is
computed by the cheaper of the two exact forms of Novak et al. (ICML 2022, "Fast Finite Width Neural
Tangent Kernel", Table 2), chosen by `contraction_costs`:

  - Gram of Grams:    sum_{s, s'} (g_s . g'_s') (a_s . a'_s')       cost ~ N1 N2 S^2 (in + O^2 out)
  - explicit:         G = sum_s g_s a_s^T per sample and output, then G1 . G2    cost ~ N O S in out + N1 N2 O^2 in out

Biases, embeddings (a Gram over equal ids) and the elementwise weights of norms have their own
per-sample forms. `module_kernel` gives one module's share, all its calls and their cross terms.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ntk.structured.coverage import CONVS, LINEAR, bias_scale
from ntk.structured.records import Call, conv_patches, conv_positions, conv_sample_grads, depthwise_sample_grads

Tensor = torch.Tensor


GROUPED_GRAMS = 4  # the Gram of Grams batched over groups runs tiny products: counted 4x its FLOPs against the explicit form
SMALL_FAN_IN = 32  # convolutions with at most this many inputs per output (in/groups x kernel) take per-sample gradients from patches


def contraction_costs(n1: int, n2: int, o: int, s1: int, s2: int, inp: int, out: int, trace: bool, same: bool = False) -> tuple[int, int]:
    """Multiply-adds of the two exact contractions for a weight (out, inp) used at s1 and s2 positions
    per input, O output directions (Novak et al. 2022, Table 2): (explicit per-sample gradients and
    their Gram, Gram of Grams). `same`: both sides are the same inputs (their gradients taken once)."""
    oo = o if trace else o * o
    explicit = (n1 if same else n1 + n2) * o * max(s1, s2) * inp * out + n1 * n2 * oo * inp * out
    grams = n1 * n2 * s1 * s2 * (inp + oo * out)
    return explicit, grams


CONCAT_NUMBERS = 2**22  # per-sample gradients held at once for one joint Gram product (32 MB in float64)


class SampleGrams:
    """The Grams of per-sample gradients w (N, O, p) of many layers, taken together: the gradients are
    concatenated along p and multiplied in one product per CONCAT_NUMBERS numbers, instead of one
    small product per layer (mobilenet_v3_small has 88 such layers)."""

    def __init__(self, trace: bool):
        self.trace = trace
        self.parts: list[tuple[Tensor, Tensor]] = []
        self.numbers = 0
        self.total: Tensor | None = None

    def add(self, w1: Tensor, w2: Tensor) -> None:
        self.parts.append((w1, w2))
        self.numbers += w1.numel() + (0 if w2 is w1 else w2.numel())
        if self.numbers >= CONCAT_NUMBERS:
            self.flush()

    def flush(self) -> None:
        if not self.parts:
            return
        same = all(w2 is w1 for w1, w2 in self.parts)
        w1 = torch.cat([p[0] for p in self.parts], 2) if len(self.parts) > 1 else self.parts[0][0]
        w2 = w1 if same else (torch.cat([p[1] for p in self.parts], 2) if len(self.parts) > 1 else self.parts[0][1])
        term = _gram_explicit(w1, w2, self.trace)
        self.total = term if self.total is None else self.total.add_(term)
        self.parts, self.numbers = [], 0

    def result(self) -> Tensor | None:
        self.flush()
        return self.total


def _gram_weight(
    a1: Tensor,
    g1: Tensor,
    a2: Tensor,
    g2: Tensor,
    trace: bool,
    joint: SampleGrams,
    with_bias: bool = False,
    bias_sq: float = 1.0,
) -> Tensor | None:
    """Weight part of a linear-in-W layer: sum over shared positions, the cheaper exact form.

    a: (N, S, in), g: (N, O, S, out). Returns (N1, N2, O, O), or (N1, N2) with trace, for the Gram of
    Grams; the explicit form's per-sample gradients go to `joint` (None is returned). With
    `with_bias` the layer's bias is included, as a weight column whose input is 1 at every position
    (in the Gram of Grams: a_s . a'_s' + 1), so it costs no product of its own; `bias_sq` is the square
    of the bias's factor in the output (beta^2 for an NTKDense, 1 otherwise).
    """
    same = a2 is a1 and g2 is g1
    n1, o, s1, out = g1.shape
    n2, _, s2, _ = g2.shape
    explicit, grams = contraction_costs(n1, n2, o, s1, s2, a1.shape[-1] + with_bias, out, trace, same)
    if explicit <= grams:  # per-sample gradients into the joint product, the bias's (sum_s g_s, times its factor) beside
        w1 = torch.einsum("nosj,nsi->noji", g1, a1).reshape(n1, o, -1)  # (N1, O, out in)
        joint.add(w1, w1 if same else torch.einsum("nosj,nsi->noji", g2, a2).reshape(n2, o, -1))
        if with_bias:
            _add_bias(joint, g1, g2, same, bias_sq)
        return None
    if s1 == s2 == 1:  # one position (a plain MLP layer): two matrix products, as the layer-wise kernel
        aa = torch.addmm(a1.new_full((), float(with_bias) * bias_sq), a1[:, 0], a2[:, 0].T)  # (N1, N2)
        if trace:
            return aa.mul_(g1.reshape(n1, -1) @ g2.reshape(n2, -1).T)
        gram = (g1.reshape(n1 * o, out) @ g2.reshape(n2 * o, out).T).view(n1, o, n2, o)
        return gram.mul_(aa[:, None, :, None]).permute(0, 2, 1, 3)
    aa = torch.einsum("asi,bti->abst", a1, a2)  # (N1, N2, S1, S2)
    if with_bias:
        aa += bias_sq
    if trace:
        gg = torch.einsum("aosj,botj->abst", g1, g2)
        return (aa * gg).sum((2, 3))
    gg = torch.einsum("aosj,bqtj->aboqst", g1, g2)  # (N1, N2, O, O, S1, S2)
    return torch.einsum("aboqst,abst->aboq", gg, aa)


def _gram_explicit(w1: Tensor, w2: Tensor, trace: bool) -> Tensor:
    """The Gram of per-sample gradients w (N, O, P): (N1, N2, O, O), or (N1, N2) with trace."""
    (n1, o, _), n2 = w1.shape, w2.shape[0]
    if trace:
        return w1.reshape(n1, -1) @ w2.reshape(n2, -1).T
    return (w1.reshape(n1 * o, -1) @ w2.reshape(n2 * o, -1).T).view(n1, o, n2, o).permute(0, 2, 1, 3)


def _conv_kernel(module: nn.Module, names, calls1: list[Call], calls2: list[Call], trace: bool, joint: SampleGrams) -> Tensor | None:
    """A convolution's share, all calls and their cross terms: the Gram of per-sample gradients (from
    the convolution's own backward) or the Gram of Grams over patches, whichever costs less."""
    same = calls2 is calls1
    cots = lambda c: c.cotangents[0].unsqueeze(1) if len(c.cotangents) == 1 else torch.stack(c.cotangents, 1)  # noqa: E731
    with_w, with_b = "weight" in names, "bias" in names
    groups = module.groups
    n1, n2 = calls1[0].inputs.shape[0], calls2[0].inputs.shape[0]
    o = len(calls1[0].cotangents)
    positions = lambda calls: sum(math.prod(c.cotangents[0].shape[2:]) for c in calls)  # noqa: E731
    s1, s2 = positions(calls1), positions(calls2)
    inp = module.weight[0].numel() + with_b  # per output channel: in/groups * prod(kernel) (+ the bias)
    out_g = module.out_channels // groups
    explicit, grams = contraction_costs(n1, n2, o, s1, s2, inp, out_g, trace, same)
    grams *= GROUPED_GRAMS if groups > 1 else 1
    if not with_w or explicit <= grams:

        def sample_weight_grads(c: Call, g: Tensor) -> Tensor:  # (N, O, out * in/groups * prod(kernel))
            if module.weight.shape[1] == 1 and groups > 1:  # depthwise: one grouped convolution
                return depthwise_sample_grads(module, c.inputs, g)
            if groups > 1 or inp <= SMALL_FAN_IN:  # grouped or few input channels: one batched product over patches
                a = conv_patches(module, c.inputs)  # (N, groups, S, in/groups k)
                gp = g.reshape(g.shape[0], o, groups, out_g, -1)  # (N, O, groups, out/groups, S)
                return torch.einsum("nogjs,ngsi->nogji", gp, a).reshape(g.shape[0], o, -1)  # weight layout (out, in/groups k)
            return conv_sample_grads(module, c.inputs, g)

        def sample_grads(calls: list[Call]) -> Tensor:  # (N, O, P of this layer), summed over the calls
            total = None
            for c in calls:
                g = cots(c)  # (N, O, out, *spatial)
                parts = [sample_weight_grads(c, g)] if with_w else []
                if with_b:
                    parts.append(g.sum(tuple(range(3, g.dim()))))  # (N, O, out)
                w = torch.cat(parts, 2) if len(parts) > 1 else parts[0]
                total = w if total is None else total + w
            return total

        w1 = sample_grads(calls1)
        joint.add(w1, w1 if same else sample_grads(calls2))
        return None

    def grouped(calls: list[Call]) -> tuple[Tensor, Tensor]:  # patches (N, groups, S, in), cotangents (N, O, groups, S, out)
        a = torch.cat([conv_patches(module, c.inputs) for c in calls], 2)
        g = torch.cat([conv_positions(module, cots(c).flatten(0, 1)).unflatten(0, (-1, o)) for c in calls], 3)
        return a, g

    a1, g1 = grouped(calls1)
    a2, g2 = (a1, g1) if same else grouped(calls2)
    if groups == 1:
        return _gram_weight(a1[:, 0], g1[:, :, 0], a2[:, 0], g2[:, :, 0], trace, joint, with_bias=with_b)
    aa = torch.einsum("agsi,bgti->abgst", a1, a2)  # (N1, N2, groups, S1, S2): every group at once
    if with_b:
        aa += 1.0
    if trace:
        return (aa * torch.einsum("aogsj,bogtj->abgst", g1, g2)).sum((2, 3, 4))
    return torch.einsum("aboqgst,abgst->aboq", torch.einsum("aogsj,bqgtj->aboqgst", g1, g2), aa)


def _scaled(t: Tensor, factor: float) -> Tensor:
    return t if factor == 1.0 else t.mul_(factor)


def _add_bias(joint: SampleGrams, g1: Tensor, g2: Tensor, same: bool, bias_sq: float = 1.0) -> None:
    """A bias's per-sample gradients sum_s g_s (times its factor), g (N, O, S, out), into the joint product."""
    b1 = _scaled(g1.sum(2), bias_sq**0.5)
    joint.add(b1, b1 if same else _scaled(g2.sum(2), bias_sq**0.5))


def _gram_embedding(i1: Tensor, g1: Tensor, i2: Tensor, g2: Tensor, trace: bool, padding_idx: int | None) -> Tensor:
    """Embedding weight: sum_{s, s'} [id_s = id'_s'] (g_s . g'_s'); positions at padding_idx have no gradient."""
    same = (i1[:, None, :, None] == i2[None, :, None, :]).to(g1.dtype)  # (N1, N2, S1, S2)
    if padding_idx is not None:
        same = same * (i1 != padding_idx)[:, None, :, None].to(g1.dtype) * (i2 != padding_idx)[None, :, None, :].to(g1.dtype)
    if trace:
        return (same * torch.einsum("aosj,botj->abst", g1, g2)).sum((2, 3))
    return torch.einsum("aboqst,abst->aboq", torch.einsum("aosj,bqtj->aboqst", g1, g2), same)


def module_kernel(module: nn.Module, names, calls1: list[Call], calls2: list[Call], trace: bool, joint: SampleGrams) -> Tensor | None:
    """The kernel share of one covered module's parameters `names`, all calls and their cross terms:
    the shares taken as Grams of per-sample gradients go to `joint` (one product for many layers),
    the rest is returned (None when nothing is left)."""

    def stacked(calls: list[Call]) -> tuple[Tensor, Tensor]:
        """Inputs (N, S_total, ...) and cotangents (N, O, S_total, out) over every call, positions concatenated."""

        def one(c: Call) -> tuple[Tensor, Tensor]:
            cots = c.cotangents
            return c.inputs, (cots[0].unsqueeze(1) if len(cots) == 1 else torch.stack(cots, 1))

        if len(calls) == 1:
            return one(calls[0])
        parts = [one(c) for c in calls]
        return torch.cat([p[0] for p in parts], dim=1), torch.cat([p[1] for p in parts], dim=2)

    total = None

    def add(term: Tensor | None) -> None:
        nonlocal total
        if term is not None:
            total = term if total is None else total + term

    if isinstance(module, nn.MultiheadAttention):  # three weight blocks, no cross terms between them
        for block in range(3):
            b1 = [c for c in calls1 if c.block == block]
            b2 = b1 if calls2 is calls1 else [c for c in calls2 if c.block == block]
            if not (b1 and b2):
                continue
            a1, g1 = stacked(b1)
            a2, g2 = (a1, g1) if b2 is b1 else stacked(b2)
            if "in_proj_weight" in names:
                add(_gram_weight(a1, g1, a2, g2, trace, joint, with_bias="in_proj_bias" in names))
            else:
                _add_bias(joint, g1, g2, b2 is b1)
        return total
    if isinstance(module, CONVS):
        return _conv_kernel(module, names, calls1, calls2, trace, joint)
    a1, g1 = stacked(calls1)
    a2, g2 = (a1, g1) if calls2 is calls1 else stacked(calls2)
    bias_sq = bias_scale(module) ** 2
    if "weight" in names and isinstance(module, LINEAR):
        add(_gram_weight(a1, g1, a2, g2, trace, joint, with_bias="bias" in names, bias_sq=bias_sq))
        return total
    same = calls2 is calls1
    if "weight" in names:
        if isinstance(module, nn.Embedding):
            add(_gram_embedding(a1, g1, a2, g2, trace, module.padding_idx))
        else:  # a norm's elementwise weight: per-sample gradients sum_s g_s x_hat_s, (N, O, C)
            w1 = torch.einsum("nosc,nsc->noc", g1, a1)
            joint.add(w1, w1 if same else torch.einsum("nosc,nsc->noc", g2, a2))
    if "bias" in names:
        _add_bias(joint, g1, g2, same, bias_sq)
    return total
