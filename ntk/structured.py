"""Exact empirical NTK of any PyTorch module at structured-derivative cost (method="structured").

    Theta(x, x')[a, b] = sum_p  df_a(x)/dtheta_p  df_b(x')/dtheta_p      over the trainable parameters

For a layer whose output is linear in its weight, y_s = W a_s at positions s (the rows of a
Linear layer's input with extra dimensions, the patches of a convolution, the tokens of an
embedding), the gradient of f_a with respect to W is sum_s g_s a_s^T, with g_s = df_a / dy_s the
cotangent at the layer's output. Its share of the kernel is computed by the cheaper of the two exact
contractions of Novak et al. (ICML 2022, "Fast Finite Width Neural Tangent Kernel", Table 2):

  - Gram of Grams:    sum_{s, s'} (g_s . g'_s') (a_s . a'_s')       cost ~ N1 N2 S^2 (in + O^2 out)
  - explicit:         G = sum_s g_s a_s^T per sample and output, then G1 . G2    cost ~ N O S in out + N1 N2 O^2 in out

Rules cover nn.Linear, nn.Conv1d/2d/3d (zero padding, any stride, dilation, groups),
nn.Embedding, nn.LayerNorm, nn.GroupNorm and nn.BatchNorm1d/2d/3d in eval mode, weight and bias,
and nn.MultiheadAttention's packed input projection (its query, key and value blocks are three
linear maps of the attention's inputs; while the kernel is computed, the module runs an equivalent
forward that exposes them, `_attention_forward`, checked against the module's own output).
One forward pass records every covered module's inputs (forward hooks; a module called several
times contributes every call, and the cross terms between calls); O backward passes give the
cotangents at the outputs of those modules, through zero "taps" added to each output. Every
trainable parameter no rule covers (a raw nn.Parameter used in a forward, nn.MultiheadAttention's
packed projections, recurrent cells, custom layers, a parameter shared by two modules) is handled
exactly by torch.func Jacobian contraction restricted to those parameters. Frozen parameters
(requires_grad False) are left out: the kernel is that of the parameters that training moves.

The check of the rules against autograd runs once per model and kind of input (input shape and
dtypes, trainable parameter names); a model whose forward changes afterwards should be checked
again (`ntk.structured._CHECKED.clear()`). Samples must not interact: a BatchNorm in training mode
is refused (put the model in eval mode).
"""

from __future__ import annotations

import functools
import math
import weakref
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from ntk.backends import blocked_kernel, cast_fixed, cast_input, cast_params, jacobian_kernel
from ntk.planning import as_model_input, as_outputs

Tensor = torch.Tensor

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
SMALL_FAN_IN = 32  # convolutions with at most this many inputs per output (in/groups x kernel) take per-sample gradients from patches


@dataclass
class Call:
    """One call of a covered module: what its rule needs from the forward pass, and its output tap."""

    inputs: Tensor  # per rule: Linear, attention (N, S, in); conv padded input (N, C, ...); embedding ids (N, S); norm x_hat (N, S, C)
    tap: Tensor  # the output as the module produced it (the forward goes on with a copy, so in-place ops leave it alone)
    cotangents: list[Tensor] = field(default_factory=list)  # one (N, S, out) per output direction
    block: int = 0  # nn.MultiheadAttention: which block of the packed projection (0 query, 1 key, 2 value)


# the parameters each rule knows, by the module's own parameter name
WEIGHT_BIAS = ("weight", "bias")
ATTENTION = ("in_proj_weight", "in_proj_bias")


def covered(module: nn.Module) -> bool:
    """Whether a rule covers `module` (its weight and bias)."""
    if isinstance(module, nn.Linear):
        return True
    if isinstance(module, CONVS):
        return module.padding_mode == "zeros"
    if isinstance(module, nn.Embedding):
        return module.max_norm is None
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        return module.affine and module.track_running_stats
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
        return getattr(module, "elementwise_affine", getattr(module, "affine", False))
    if isinstance(module, nn.MultiheadAttention):
        simple = module._qkv_same_embed_dim and module.bias_k is None and not module.add_zero_attn
        return simple and not (module.training and module.dropout > 0)
    return False


def _rule_names(module: nn.Module) -> tuple[str, ...]:
    return ATTENTION if isinstance(module, nn.MultiheadAttention) else WEIGHT_BIAS


def _own_params(module: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in module.named_parameters(recurse=False) if p is not None}


def plan(model: nn.Module) -> tuple[dict[nn.Module, dict[str, str]], list[str]]:
    """Which trainable parameters the rules cover (module -> its parameter names) and which are left
    to Jacobian contraction (full names). A parameter shared by several modules, or one a rule does not
    know (say a covered module with an extra parameter), goes to the Jacobian."""
    owners: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in model.modules():
        for name, p in _own_params(module).items():
            owners.setdefault(id(p), []).append((module, name))
    by_module: dict[nn.Module, dict[str, str]] = {}  # module -> {its parameter name: full name}
    rest: list[str] = []
    for full, p in model.named_parameters():  # (named_parameters lists a shared parameter once)
        if not p.requires_grad:
            continue
        uses = owners[id(p)]
        module, name = uses[0]
        if len(uses) == 1 and covered(module) and name in _rule_names(module):
            by_module.setdefault(module, {})[name] = full
        else:
            rest.append(full)
    return by_module, rest


# ----------------------------------------------------------------------------- what each rule records


def _linear_inputs(module: nn.Linear, x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1, x.shape[-1])  # (N, S, in)


def _conv_padded(module: nn.Module, x: Tensor) -> Tensor:
    """The input with the convolution's zero padding applied ('same' padding may be uneven)."""
    rev = module._reversed_padding_repeated_twice
    pad = [p for pair in zip(rev[::2], rev[1::2]) for p in pair]
    return F.pad(x, pad) if any(pad) else x


def _conv_patches(module: nn.Module, x: Tensor) -> Tensor:
    """The patches a convolution multiplies by its weight: (N, groups, S, in/groups * prod(kernel)),
    from its padded input (im2col by F.unfold for Conv2d, strided windows otherwise)."""
    dims = x.dim() - 2
    n, c, g = x.shape[0], x.shape[1], module.groups
    if dims == 2:
        cols = F.unfold(x, module.kernel_size, dilation=module.dilation, stride=module.stride)  # (N, C k, S)
        return cols.view(n, g, cols.shape[1] // g, cols.shape[2]).transpose(2, 3)  # (N, groups, S, C/groups k)
    for d in range(dims):  # windows along each spatial dimension: (N, C, out_1, ..., out_d, k_1, ..., k_d)
        span = module.dilation[d] * (module.kernel_size[d] - 1) + 1
        x = x.unfold(2 + d, span, module.stride[d])
        if module.dilation[d] > 1:
            x = x[..., :: module.dilation[d]]
    s = math.prod(x.shape[2 : 2 + dims])
    k = math.prod(module.kernel_size)
    # (N, C, *out, *k) -> (N, groups, C/groups, S, k) -> (N, groups, S, C/groups * k), matching weight (out, C/groups, *k)
    return x.reshape(n, g, c // g, s, k).permute(0, 1, 3, 2, 4).reshape(n, g, s, (c // g) * k)


def _conv_positions(module: nn.Module, y: Tensor) -> Tensor:
    """A cotangent (N, out, *spatial) at a convolution's output as (N, groups, S, out/groups)."""
    n, g = y.shape[0], module.groups
    return y.reshape(n, g, y.shape[1] // g, -1).transpose(2, 3)


def _conv_weight_grad(module: nn.Module, x: Tensor, g: Tensor) -> Tensor:
    """sum over the batch of the weight gradient: padded inputs x (B, C, ...), cotangents g (B, out, ...)."""
    dims = x.dim() - 2
    weight = x.new_empty(1).expand(module.weight.shape)  # only its shape is read
    return torch.ops.aten.convolution_backward(
        g, x, weight, None, module.stride, [0] * dims, module.dilation, False, [0] * dims, module.groups, [False, True, False]
    )[1]


def _conv_sample_grads(module: nn.Module, x: Tensor, g: Tensor) -> Tensor:
    """Per-sample, per-direction weight gradients (N, O, out * in/groups * prod(kernel)), from padded
    inputs (N, C, ...) and cotangents (N, O, out, ...): the convolution's own backward, batched."""
    one = lambda xi, gi: _conv_weight_grad(module, xi[None], gi[None])  # noqa: E731
    return vmap(vmap(one, in_dims=(None, 0)), in_dims=(0, 0))(x, g).reshape(g.shape[0], g.shape[1], -1)


def _norm_inputs(module: nn.Module, x: Tensor) -> Tensor:
    """x_hat (N, S, C): the normalised input that the affine weight multiplies, channel last."""
    if isinstance(module, nn.LayerNorm):
        xh = F.layer_norm(x, module.normalized_shape, None, None, module.eps)
        return xh.reshape(x.shape[0], -1, math.prod(module.normalized_shape))
    if isinstance(module, nn.GroupNorm):
        xh = F.group_norm(x, module.num_groups, None, None, module.eps)
    else:
        xh = F.batch_norm(x, module.running_mean, module.running_var, None, None, False, 0.0, module.eps)
    return xh.reshape(x.shape[0], x.shape[1], -1).transpose(1, 2)  # (N, S, C)


def _record(module: nn.Module, x: Tensor) -> Tensor:
    if isinstance(module, nn.Linear):
        return _linear_inputs(module, x)
    if isinstance(module, CONVS):
        return _conv_padded(module, x)  # (N, C, *spatial): patches or per-sample gradients when the kernel needs them
    if isinstance(module, nn.Embedding):
        ids = x.reshape(x.shape[0], -1)  # (N, S)
        return ids
    return _norm_inputs(module, x)


def _out_positions(module: nn.Module, y: Tensor) -> Tensor:
    """A cotangent at the module's output as (N, S, out) (a convolution's as it is, (N, out, *spatial))."""
    n = y.shape[0]
    if isinstance(module, CONVS):
        return y
    if isinstance(module, (nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        return y.reshape(n, y.shape[1], -1).transpose(1, 2)  # channel last
    if isinstance(module, nn.LayerNorm):
        return y.reshape(n, -1, math.prod(module.normalized_shape))
    return y.reshape(n, -1, y.shape[-1])  # Linear, Embedding


# ----------------------------------------------------------------------------- contractions


def contraction_costs(n1: int, n2: int, o: int, s1: int, s2: int, inp: int, out: int, trace: bool, same: bool = False) -> tuple[int, int]:
    """Multiply-adds of the two exact contractions for a weight (out, inp) used at s1 and s2 positions
    per input, O output directions (Novak et al. 2022, Table 2): (explicit per-sample gradients and
    their Gram, Gram of Grams). `same`: both sides are the same inputs (their gradients taken once)."""
    oo = o if trace else o * o
    explicit = (n1 if same else n1 + n2) * o * max(s1, s2) * inp * out + n1 * n2 * oo * inp * out
    grams = n1 * n2 * s1 * s2 * (inp + oo * out)
    return explicit, grams


def _gram_weight(a1: Tensor, g1: Tensor, a2: Tensor, g2: Tensor, trace: bool, with_bias: bool = False) -> Tensor:
    """Weight part of a linear-in-W layer: sum over shared positions, the cheaper exact form.

    a: (N, S, in), g: (N, O, S, out). Returns (N1, N2, O, O), or (N1, N2) with trace. With
    `with_bias` the layer's bias is included, as a weight column whose input is 1 at every position
    (in the Gram of Grams: a_s . a'_s' + 1), so it costs no product of its own.
    """
    same = a2 is a1 and g2 is g1
    n1, o, s1, out = g1.shape
    n2, _, s2, _ = g2.shape
    explicit, grams = contraction_costs(n1, n2, o, s1, s2, a1.shape[-1] + with_bias, out, trace, same)
    if explicit <= grams:
        w1 = torch.einsum("nosj,nsi->noji", g1, a1).reshape(n1, o, -1)  # per-sample gradients (N1, O, out in)
        w2 = w1 if same else torch.einsum("nosj,nsi->noji", g2, a2).reshape(n2, o, -1)
        if trace:
            kernel = w1.reshape(n1, -1) @ w2.reshape(n2, -1).T
        else:
            kernel = (w1.reshape(n1 * o, -1) @ w2.reshape(n2 * o, -1).T).view(n1, o, n2, o).permute(0, 2, 1, 3)
        return kernel + _gram_sum(g1, g2, trace) if with_bias else kernel
    if s1 == s2 == 1:  # one position (a plain MLP layer): two matrix products, as the layer-wise kernel
        aa = torch.addmm(a1.new_full((), float(with_bias)), a1[:, 0], a2[:, 0].T)  # (N1, N2)
        if trace:
            return aa.mul_(g1.reshape(n1, -1) @ g2.reshape(n2, -1).T)
        gram = (g1.reshape(n1 * o, out) @ g2.reshape(n2 * o, out).T).view(n1, o, n2, o)
        return gram.mul_(aa[:, None, :, None]).permute(0, 2, 1, 3)
    aa = torch.einsum("asi,bti->abst", a1, a2)  # (N1, N2, S1, S2)
    if with_bias:
        aa += 1
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


def _conv_kernel(module: nn.Module, names, calls1: list[Call], calls2: list[Call], trace: bool) -> Tensor:
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
    explicit, grams = contraction_costs(n1, n2, o, s1, s2, inp, module.out_channels // groups, trace, same)
    if not with_w or explicit <= grams:

        def sample_weight_grads(c: Call, g: Tensor) -> Tensor:  # (N, O, out * in/groups * prod(kernel))
            if groups == 1 and inp <= SMALL_FAN_IN:  # few input channels: patches and one batched product are faster
                a, gp = _conv_patches(module, c.inputs)[:, 0], _conv_positions(module, g.flatten(0, 1))[:, 0]  # (N, S, in), (N O, S, out)
                return torch.bmm(gp.unflatten(0, (-1, o)).transpose(2, 3).reshape(a.shape[0], -1, a.shape[1]), a).reshape(a.shape[0], o, -1)
            return _conv_sample_grads(module, c.inputs, g)

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
        return _gram_explicit(w1, w1 if same else sample_grads(calls2), trace)

    def grouped(calls: list[Call], group: int) -> tuple[Tensor, Tensor]:  # patches (N, S, in), cotangents (N, O, S, out)
        a = torch.cat([_conv_patches(module, c.inputs)[:, group] for c in calls], 1)
        g = torch.cat([_conv_positions(module, cots(c).flatten(0, 1)).unflatten(0, (-1, o))[:, :, group] for c in calls], 2)
        return a, g

    total = None
    for group in range(groups):
        a1, g1 = grouped(calls1, group)
        a2, g2 = (a1, g1) if same else grouped(calls2, group)
        term = _gram_weight(a1, g1, a2, g2, trace, with_bias=with_b)
        total = term if total is None else total + term
    return total


def _gram_sum(g1: Tensor, g2: Tensor, trace: bool) -> Tensor:
    """Bias part: (sum_s g_s) . (sum_s' g'_s'), g (N, O, S, out)."""
    b1, b2 = g1.sum(2), g2.sum(2)  # (N, O, out)
    if trace:
        return torch.einsum("aoj,boj->ab", b1, b2)
    return torch.einsum("aoj,bqj->aboq", b1, b2)


def _gram_embedding(i1: Tensor, g1: Tensor, i2: Tensor, g2: Tensor, trace: bool, padding_idx: int | None) -> Tensor:
    """Embedding weight: sum_{s, s'} [id_s = id'_s'] (g_s . g'_s'); positions at padding_idx have no gradient."""
    same = (i1[:, None, :, None] == i2[None, :, None, :]).to(g1.dtype)  # (N1, N2, S1, S2)
    if padding_idx is not None:
        same = same * (i1 != padding_idx)[:, None, :, None].to(g1.dtype) * (i2 != padding_idx)[None, :, None, :].to(g1.dtype)
    if trace:
        return (same * torch.einsum("aosj,botj->abst", g1, g2)).sum((2, 3))
    return torch.einsum("aboqst,abst->aboq", torch.einsum("aosj,bqtj->aboqst", g1, g2), same)


def _gram_diagonal(x1: Tensor, g1: Tensor, x2: Tensor, g2: Tensor, trace: bool) -> Tensor:
    """Norm weight (elementwise scale of x_hat): per-sample gradient sum_s g_s * x_hat_s, (N, O, C)."""
    w1, w2 = torch.einsum("nosc,nsc->noc", g1, x1), torch.einsum("nosc,nsc->noc", g2, x2)
    if trace:
        return torch.einsum("aoc,boc->ab", w1, w2)
    return torch.einsum("aoc,bqc->aboq", w1, w2)


def _module_kernel(module: nn.Module, names, calls1: list[Call], calls2: list[Call], trace: bool) -> Tensor:
    """The kernel share of one covered module's parameters `names`, all calls and their cross terms."""

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

    def add(term: Tensor) -> None:
        nonlocal total
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
                add(_gram_weight(a1, g1, a2, g2, trace, with_bias="in_proj_bias" in names))
            else:
                add(_gram_sum(g1, g2, trace))
        return total
    if isinstance(module, CONVS):
        return _conv_kernel(module, names, calls1, calls2, trace)
    a1, g1 = stacked(calls1)
    a2, g2 = (a1, g1) if calls2 is calls1 else stacked(calls2)
    if "weight" in names and isinstance(module, nn.Linear):
        add(_gram_weight(a1, g1, a2, g2, trace, with_bias="bias" in names))
        return total
    if "weight" in names:
        if isinstance(module, nn.Embedding):
            add(_gram_embedding(a1, g1, a2, g2, trace, module.padding_idx))
        else:
            add(_gram_diagonal(a1, g1, a2, g2, trace))
    if "bias" in names:
        add(_gram_sum(g1, g2, trace))
    return total


# ----------------------------------------------------------------------------- forward and backward passes


def _attention_forward(
    module: nn.MultiheadAttention, query, key, value, tap, *, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal
):
    """nn.MultiheadAttention's forward (batched inputs, no dropout) with its packed input projection as
    three linear maps whose outputs pass through `tap(block, input, output)`; out_proj called as a module."""
    if not module.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))  # (N, L, E)
    e, heads = module.embed_dim, module.num_heads
    w, b = module.in_proj_weight, module.in_proj_bias
    proj = [
        tap(block, t, F.linear(t, w[block * e : (block + 1) * e], None if b is None else b[block * e : (block + 1) * e]))
        for block, t in enumerate((query, key, value))
    ]
    n, lq, lk = query.shape[0], query.shape[1], key.shape[1]
    q, k, v = (p.reshape(n, -1, heads, e // heads).transpose(1, 2) for p in proj)  # (N, heads, L, E / heads)

    def additive(mask: Tensor) -> Tensor:
        return torch.zeros_like(mask, dtype=q.dtype).masked_fill_(mask, float("-inf")) if mask.dtype == torch.bool else mask.to(q.dtype)

    mask = None
    if attn_mask is not None:
        mask = additive(attn_mask)
        mask = mask.reshape(n, heads, lq, lk) if mask.dim() == 3 else mask
    if key_padding_mask is not None:
        padding = additive(key_padding_mask).reshape(n, 1, 1, lk)
        mask = padding if mask is None else mask + padding
    weights = None
    if need_weights:  # the weights are returned: form them, and the output from them
        scores = q @ k.transpose(-2, -1) / math.sqrt(e // heads)
        full = (scores if mask is None else scores + mask).softmax(-1)  # (N, heads, Lq, Lk)
        out = full @ v
        weights = full.mean(1) if average_attn_weights else full
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal and mask is None)  # (N, heads, Lq, E / heads)
    out = module.out_proj(out.transpose(1, 2).reshape(n, lq, e))
    return (out if module.batch_first else out.transpose(0, 1)), weights


def check_independent_samples(model: nn.Module) -> None:
    """Refuse a model whose samples interact (batch statistics), whose NTK per input pair is undefined."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and (module.training or not module.track_running_stats):
            raise ValueError(
                f"{name or 'the model'} ({type(module).__name__}) normalises by the statistics of the batch, so the output for one input "
                "depends on the others and the NTK is not a kernel of input pairs; call model.eval() (with running statistics) first"
            )


def factors(
    model: nn.Module,
    x: Tensor,
    dtype: torch.dtype,
    by_module: dict[nn.Module, dict[str, str]],
    verify: bool = False,
    copied: set[nn.Module] | None = None,
) -> tuple[dict[nn.Module, list[Call]], int, set[str]]:
    """One forward pass recording every covered module's calls, O backward passes for their cotangents.

    The cotangent of a module is the gradient with respect to its output as it produced it; the
    forward goes on with a copy of the outputs of the modules in `copied` (all when None), those the
    forward later modifies in place (`inplace_outputs`), so that the recorded output stays the one
    the module produced.

    With `verify`, the gradient of a random combination of all outputs at all inputs with respect to
    every covered parameter is also taken by plain autograd and compared with what the module's rule
    gives; the full names of the parameters whose rule does not account for their whole gradient (a
    weight also used outside its module's forward, a module whose forward is bypassed, as
    nn.MultiheadAttention does with its out_proj) are returned, for Jacobian contraction.
    """
    calls: dict[nn.Module, list[Call]] = {m: [] for m in by_module}
    mismatched: set[nn.Module] = set()  # attention modules whose equivalent forward did not give their output

    def hook(module: nn.Module, args: tuple, out: Tensor) -> Tensor:
        x_in = args[0]
        calls[module].append(Call(inputs=_record(module, x_in.detach()), tap=out))
        return out.clone() if copied is None or module in copied else out

    def projection_tap(module: nn.Module, block: int, x_in: Tensor, y: Tensor) -> Tensor:
        calls[module].append(Call(inputs=_linear_inputs(module, x_in.detach()), tap=y, block=block))
        return y  # consumed by reshapes and the attention product only: never modified in place

    def exposed(module: nn.MultiheadAttention):
        original = type(module).forward

        def forward(
            query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None, average_attn_weights=True, is_causal=False
        ):
            options = dict(key_padding_mask=key_padding_mask, need_weights=need_weights, attn_mask=attn_mask)
            options |= dict(average_attn_weights=average_attn_weights, is_causal=is_causal)
            if query.dim() != 3:  # unbatched: no rule (the check then hands its parameters to the Jacobian)
                return original(module, query, key, value, **options)
            tap = functools.partial(projection_tap, module)
            ours = _attention_forward(module, query, key, value, tap, **options)
            if verify:
                ref = original(module, query, key, value, **options)
                if (ours[0] - ref[0]).norm() > 1e-9 * ref[0].norm():
                    mismatched.add(module)
                    return ref
            return ours

        return forward

    handles = [m.register_forward_hook(hook) for m in by_module if not isinstance(m, nn.MultiheadAttention)]
    attention = [m for m in by_module if isinstance(m, nn.MultiheadAttention)]
    for m in attention:
        m.forward = exposed(m)
    # every trainable parameter requires grad, as in training: modules with a no-grad fast path
    # (nn.TransformerEncoderLayer) then take the same path in the check and in the kernel
    params = {k: v.requires_grad_(True) for k, v in cast_params(model, dtype).items()}
    checked = {full: params[full] for names in by_module.values() for full in names.values()} if verify else {}
    state = cast_fixed(model, dtype) | params
    x = cast_input(x, dtype)
    wrong: set[str] = set()
    try:
        with torch.enable_grad():
            f = as_outputs(functional_call(model, state, (x,)), x.shape[0])
            taps = [c.tap for cs in calls.values() for c in cs]
            out_dim = f.shape[1]
            if checked:  # a random combination of every output at every input
                mix = torch.randn(f.shape, generator=torch.Generator().manual_seed(0), dtype=f.dtype).to(f.device)
                true = torch.autograd.grad((f * mix).sum(), list(checked.values()), retain_graph=True, allow_unused=True)
                true = {full: (g if g is not None else torch.zeros_like(checked[full])) for full, g in zip(checked, true)}
            for b in range(out_dim):
                grads = torch.autograd.grad(f[:, b].sum(), taps, retain_graph=b < out_dim - 1, allow_unused=True)
                k = 0
                for module, cs in calls.items():
                    for c in cs:
                        grad = grads[k] if grads[k] is not None else torch.zeros_like(c.tap)
                        c.cotangents.append(_out_positions(module, grad.detach()))
                        k += 1
    finally:
        for h in handles:
            h.remove()
        for m in attention:
            del m.forward
    for cs in calls.values():
        for c in cs:
            c.tap = None
    wrong |= {full for module in mismatched for full in by_module[module].values()}
    if checked:
        for module, names in by_module.items():
            for name, full in names.items():
                ruled = rule_gradient(module, name, calls[module], checked[full], mix)
                scale = true[full].norm() + ruled.norm()
                if scale > 0 and (true[full] - ruled).norm() > 1e-9 * scale:  # float64: rounding is ~1e-15
                    wrong.add(full)
    return calls, out_dim, wrong


def rule_gradient(module: nn.Module, name: str, calls: list[Call], like: Tensor, mix: Tensor) -> Tensor:
    """The gradient of sum_{n, b} mix[n, b] f_b(x_n) with respect to `module`'s parameter `name`, as
    its rule computes it from the recorded calls (zero when the module was never called)."""
    total = torch.zeros_like(like)
    for c in calls:
        # the cotangents combined over output directions with the weights of `mix`, (N, ...) like one of them
        g = sum(mix[:, b].reshape(-1, *[1] * (t.dim() - 1)) * t for b, t in enumerate(c.cotangents))
        if isinstance(module, nn.MultiheadAttention):  # rows block E ... (block + 1) E of the packed projection
            e = module.embed_dim
            rows = slice(c.block * e, (c.block + 1) * e)
            if name == "in_proj_weight":
                total[rows] += torch.einsum("nsj,nsi->ji", g, c.inputs)
            else:
                total[rows] += g.sum((0, 1))
        elif isinstance(module, CONVS):  # g (N, out, *spatial), inputs padded (N, C, *spatial)
            if name == "weight":
                total += _conv_weight_grad(module, c.inputs, g)
            else:
                total += g.sum((0, *range(2, g.dim())))
        elif name == "bias":
            total += g.sum((0, 1)).reshape(like.shape)
        elif isinstance(module, nn.Linear):
            total += torch.einsum("nsj,nsi->ji", g, c.inputs)
        elif isinstance(module, nn.Embedding):
            ids = c.inputs.reshape(-1)
            rows = g.reshape(-1, g.shape[-1])
            if module.padding_idx is not None:
                rows = rows * (ids != module.padding_idx)[:, None].to(rows.dtype)
            total += torch.zeros_like(like).index_add_(0, ids, rows)
        else:
            total += torch.einsum("nsc,nsc->c", g, c.inputs).reshape(like.shape)
    return total


def inplace_outputs(model: nn.Module, x: Tensor, by_module: dict[nn.Module, dict[str, str]]) -> set[nn.Module]:
    """The covered modules whose output the rest of the forward modifies in place (a ReLU(inplace=True)
    after a BatchNorm): one forward pass, with grad enabled as in the kernel, comparing versions."""
    seen: list[tuple[nn.Module, Tensor, int]] = []

    def hook(module: nn.Module, args: tuple, out: Tensor) -> None:
        seen.append((module, out, out._version))

    handles = [m.register_forward_hook(hook) for m in by_module if not isinstance(m, nn.MultiheadAttention)]
    try:
        with torch.enable_grad():
            model(as_model_input(model, x))
    finally:
        for h in handles:
            h.remove()
    return {module for module, out, version in seen if out._version != version}


# per model (weakly held) and input signature: the parameters whose gradient the rules do not see
# whole, and the modules whose outputs are copied (`inplace_outputs`)
_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def structured_kernel(model: nn.Module, x1: Tensor, x2: Tensor | None, dtype: torch.dtype, block: int, trace: bool) -> Tensor:
    """The whole kernel (N1, N2, O, O) (or (N1, N2) with trace), in row blocks of `block` inputs
    (`empirical_ntk` has refused models whose samples interact, `check_independent_samples`)."""
    by_module, rest = plan(model)
    signature = (tuple(x1.shape[1:]), x1.dtype, tuple(sorted(n for n, p in model.named_parameters() if p.requires_grad)))
    checked = _CHECKED.setdefault(model, {})
    if signature not in checked:  # once per model and kind of input: the rules' gradients against autograd's, in float64
        copied = inplace_outputs(model, x1[:4], by_module)
        checked[signature] = (factors(model, x1[:4], torch.float64, by_module, verify=True, copied=copied)[2], copied)
    wrong, copied = checked[signature]
    if wrong:  # parameters whose gradient the rules do not see whole: Jacobian contraction for them
        by_module = {m: {n: f for n, f in names.items() if f not in wrong} for m, names in by_module.items()}
        by_module = {m: names for m, names in by_module.items() if names}
        rest = rest + sorted(wrong)
    symmetric = x2 is None
    xs2 = x1 if symmetric else x2

    def part(of_rows: tuple, r: slice, c: slice, diagonal: bool) -> Tensor:
        c1, out_dim, _ = of_rows
        c2 = c1 if diagonal else factors(model, xs2[c], dtype, by_module, copied=copied)[0]
        total = None
        for module, names in by_module.items():
            if not c1[module]:
                continue  # never called (its parameters had no gradient in the check either)
            term = _module_kernel(module, names, c1[module], c2[module], trace or out_dim == 1)
            total = term if total is None else total + term
        if rest:
            term = jacobian_kernel(model, x1[r], None if diagonal else xs2[c], dtype, trace, names=rest)  # (N1, N2) for O = 1 or trace
            total = term if total is None else total + term
        if total is None:
            raise ValueError("the model has no trainable parameters: its NTK is zero; set requires_grad on the parameters to train")
        return total

    rows_of = lambda r: factors(model, x1[r], dtype, by_module, copied=copied)  # noqa: E731
    return blocked_kernel(x1.shape[0], xs2.shape[0], block, symmetric, rows_of, part)


@dataclass
class Block:
    """One weight block a covered module applies in a forward pass of one input."""

    module: nn.Module
    numbers: int  # what the kernel records for it per input: its inputs (patches, for a convolution) and outputs
    positions: int  # positions that share the weight (tokens, patches; 1 for a plain linear layer)
    fan_in: int  # per output channel: in/groups x kernel for a convolution, 1 for an elementwise weight
    fan_out: int  # output channels (per group)
    groups: int = 1


def one_input_blocks(model: nn.Module, x1: Tensor, by_module: dict[nn.Module, dict[str, str]]) -> list[Block]:
    """The weight blocks of every covered module call on one input (one forward pass, hooks; with grad
    enabled, as in the kernel, so that no fused no-grad fast path bypasses the modules)."""
    blocks: list[Block] = []

    def hook(module: nn.Module, args: tuple, out) -> None:
        x = args[0].detach()
        if isinstance(module, nn.MultiheadAttention):  # three blocks (E, E) on the L tokens, inputs and outputs (L, E) each
            e = module.embed_dim
            blocks.extend([Block(module, 2 * x.numel(), x.numel() // e, e, e)] * 3)
        elif isinstance(module, CONVS):  # counted as patches, the larger form the kernel may build
            patches, g = _conv_patches(module, _conv_padded(module, x)), module.groups
            blocks.append(
                Block(module, patches.numel() + out.numel(), patches.shape[2], module.weight[0].numel(), module.out_channels // g, g)
            )
        else:
            cot = _out_positions(module, out)  # (1, positions, channels)
            fan_in = x.shape[-1] if isinstance(module, nn.Linear) else 1
            blocks.append(Block(module, _record(module, x).numel() + out.numel(), cot.shape[1], fan_in, cot.shape[-1]))

    handles = [m.register_forward_hook(hook) for m in by_module]
    try:
        with torch.enable_grad():
            model(as_model_input(model, x1[:1]))
    finally:
        for h in handles:
            h.remove()
    return blocks


def flop_counts(model: nn.Module, x_example: Tensor, n1: int, n2: int | None = None, trace: bool = True) -> dict[str, float]:
    """FLOPs (a multiply-add is 2) of one (n1, n2) kernel (n2 None: symmetric) by the three exact
    methods, by formula in the manner of Novak et al. (2022, Tables 1-2). With F the FLOPs of a
    forward pass of one input (`torch.utils.flop_counter` on `x_example[:1]`), O outputs, P trainable
    parameters and n the distinct inputs (n1, or n1 + n2):

      jacobian:    n (F + 2 O F)  +  2 n1 n2 O^2 P           (per-sample Jacobians, then their contraction)
      ntk_vp:      n2 O (3 F + 3 F n1)                        (a VJP and a JVP over the n1 inputs per column)
      structured:  n (F + O F)  +  sum over covered layers of the cheaper contraction (2 x
                   `contraction_costs`)  +  the Jacobian terms restricted to the parameters no rule covers.

    Returns {"structured", "jacobian", "ntk_vp", "forward"} (forward: F).
    """
    from torch.utils.flop_counter import FlopCounterMode

    from ntk.planning import output_dim

    symmetric = n2 is None
    n2 = n1 if symmetric else n2
    n = n1 if symmetric else n1 + n2
    by_module, rest = plan(model)
    counter = FlopCounterMode(display=False)
    with counter:  # the same forward pass gives F and the blocks
        blocks = one_input_blocks(model, x_example[:1], by_module)
    fwd = float(counter.get_total_flops())
    o = output_dim(model, x_example[:1])
    oo = o if trace else o * o
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_rest = sum(p.numel() for name, p in model.named_parameters() if name in set(rest))
    layers = 0.0
    for b in blocks:
        names = by_module[b.module]
        if isinstance(b.module, (nn.Linear, nn.MultiheadAttention, *CONVS)) and ("weight" in names or "in_proj_weight" in names):
            costs = contraction_costs(n1, n2, o, b.positions, b.positions, b.fan_in + 1, b.fan_out, trace, symmetric)
            layers += 2 * b.groups * min(costs)
        else:  # elementwise weights (norms), embeddings, lone biases: per-sample gradients and their Gram
            layers += 2 * (n * o * b.positions * b.fan_out + n1 * n2 * oo * b.fan_out)
    return dict(
        forward=fwd,
        jacobian=n * (fwd + 2 * o * fwd) + 2 * n1 * n2 * oo * n_params,
        ntk_vp=n2 * o * (3 * fwd + 3 * fwd * n1),
        structured=n * (fwd + o * fwd) + layers + ((n * 2 * o * fwd + 2 * n1 * n2 * oo * n_rest) if rest else 0.0),
    )
