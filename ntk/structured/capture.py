"""The forward and backward passes of the structured kernel, and the check of its rules.

`factors` runs one forward pass that records every covered module call (`ntk.forward.hooked`) and O
backward passes for the cotangents at their outputs. `checked_rules` compares, once per model and
kind of input, the gradient each rule assembles from those records with plain autograd's, in
float64; a parameter whose rule does not see its whole gradient goes to Jacobian contraction.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ntk.forward import as_model_input, as_outputs, cast_fixed, cast_input, cast_params, hooked, model_cache, refuse_transformed
from ntk.structured.coverage import CONVS, LINEAR, bias_scale
from ntk.structured.records import Call, conv_weight_grad, linear_inputs, out_positions, record

Tensor = torch.Tensor


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
        refuse_transformed(module, x_in)
        calls[module].append(Call(inputs=record(module, x_in.detach()), tap=out))
        return out.clone() if copied is None or module in copied else out

    def projection_tap(module: nn.Module, block: int, x_in: Tensor, y: Tensor) -> Tensor:
        calls[module].append(Call(inputs=linear_inputs(module, x_in.detach()), tap=y, block=block))
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

    attention = [m for m in by_module if isinstance(m, nn.MultiheadAttention)]
    # every trainable parameter requires grad, as in training: modules with a no-grad fast path
    # (nn.TransformerEncoderLayer) then take the same path in the check and in the kernel
    tensors = [*model.parameters(), *model.buffers()]
    direct = not verify and all(t.dtype == dtype for t in tensors if t.is_floating_point())
    if direct:  # already in the kernel's dtype: the model's own tensors (only the taps are differentiated, no .grad is written)
        params, state = {}, None
    else:
        params = {k: v.requires_grad_(True) for k, v in cast_params(model, dtype).items()}
        state = cast_fixed(model, dtype) | params
    checked = {full: params[full] for names in by_module.values() for full in names.values()} if verify else {}
    x = cast_input(x, dtype)
    wrong: set[str] = set()
    for m in attention:
        m.forward = exposed(m)
    try:
        with hooked([m for m in by_module if m not in attention], hook), torch.enable_grad():
            f = as_outputs(model(x) if direct else functional_call(model, state, (x,)), x.shape[0])
    finally:
        for m in attention:
            del m.forward
    taps = [c.tap for cs in calls.values() for c in cs]
    out_dim = f.shape[1]
    with torch.enable_grad():  # the sums below are part of the graph
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
                    c.cotangents.append(out_positions(module, grad.detach()))
                    k += 1
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
                total += conv_weight_grad(module, c.inputs, g)
            else:
                total += g.sum((0, *range(2, g.dim())))
        elif name == "bias":
            total += g.sum((0, 1)).reshape(like.shape) * bias_scale(module)
        elif isinstance(module, LINEAR):
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
        refuse_transformed(module, args[0] if args else None)
        seen.append((module, out, out._version))

    with hooked([m for m in by_module if not isinstance(m, nn.MultiheadAttention)], hook), torch.enable_grad():
        model(as_model_input(model, x))
    return {module for module, out, version in seen if out._version != version}


def checked_rules(model: nn.Module, x: Tensor, by_module: dict[nn.Module, dict[str, str]]) -> tuple[set[str], set[nn.Module]]:
    """The rules checked against autograd on `x[:4]` in float64 (once per model and `fingerprint`):
    returns the full names of the parameters whose gradient the rules do not see whole (for Jacobian
    contraction) and the covered modules whose outputs the forward must copy (`inplace_outputs`)."""
    checked = model_cache(model, "structured rules", x)
    if "result" not in checked:
        copied = inplace_outputs(model, x[:4], by_module)
        checked["result"] = (factors(model, x[:4], torch.float64, by_module, verify=True, copied=copied)[2], copied)
    return checked["result"]
