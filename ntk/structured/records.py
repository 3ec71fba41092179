"""What each rule records from the forward and backward passes, and in which layout.

Every covered module call leaves a `Call`: the input its rule multiplies by the weight (a Linear
layer's rows (N, S, in), a convolution's zero-padded input (N, C, ...) from which patches or
per-sample gradients are formed, an embedding's ids (N, S), a norm's normalised input x_hat
(N, S, C)), and one cotangent per output direction at its output, laid out by `out_positions`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import vmap

from ntk.model import NTKDense
from ntk.structured.coverage import CONVS, LINEAR

Tensor = torch.Tensor


@dataclass
class Call:
    """One call of a covered module: what its rule needs from the forward pass, and its output tap."""

    inputs: Tensor  # per rule: Linear, attention (N, S, in); conv padded input (N, C, ...); embedding ids (N, S); norm x_hat (N, S, C)
    tap: Tensor  # the output as the module produced it (the forward goes on with a copy, so in-place ops leave it alone)
    cotangents: list[Tensor] = field(default_factory=list)  # one (N, S, out) per output direction
    block: int = 0  # nn.MultiheadAttention: which block of the packed projection (0 query, 1 key, 2 value)


def linear_inputs(module: nn.Linear, x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1, x.shape[-1])  # (N, S, in)


def conv_padded(module: nn.Module, x: Tensor) -> Tensor:
    """The input with the convolution's zero padding applied ('same' padding may be uneven)."""
    rev = module._reversed_padding_repeated_twice
    pad = [p for pair in zip(rev[::2], rev[1::2]) for p in pair]
    return F.pad(x, pad) if any(pad) else x


def conv_patches(module: nn.Module, x: Tensor) -> Tensor:
    """The patches a convolution multiplies by its weight: (N, groups, S, in/groups * prod(kernel)),
    from its padded input (im2col by F.unfold for Conv2d, strided windows otherwise)."""
    dims = x.dim() - 2
    n, c, g = x.shape[0], x.shape[1], module.groups
    if all(k == 1 for k in module.kernel_size):  # 1 x 1: the (strided) input itself, no copy when the stride is 1
        x = x[(slice(None), slice(None), *(slice(None, None, s) for s in module.stride))]
        return x.reshape(n, g, c // g, -1).transpose(2, 3)
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


def depthwise_sample_grads(module: nn.Module, x: Tensor, g: Tensor) -> Tensor:
    """Per-sample, per-direction weight gradients (N, O, out * prod(kernel)) of a convolution with one
    input channel per group (depthwise, any channel multiplier), from padded inputs (N, C, ...) and
    cotangents (N, O, out, ...): one grouped convolution correlating every input channel with its
    cotangents (the output's stride becomes the dilation), no patches formed."""
    dims, (n, o), c = x.dim() - 2, g.shape[:2], x.shape[1]
    mult = g.shape[2] // c  # outputs per input channel
    conv = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]
    spatial = g.shape[3:]
    w = g.reshape(n, o, c, mult, *spatial).movedim(1, 3).reshape(n * c * mult * o, 1, *spatial)  # (n, c, mult, o)
    out = conv(x.reshape(1, n * c, *x.shape[2:]), w, groups=n * c, dilation=module.stride)  # (1, n c mult o, *)
    keep = tuple(slice(0, (k - 1) * d + 1, d) for k, d in zip(module.kernel_size, module.dilation))
    out = out[(0, slice(None), *keep)]  # the taps of the kernel: offsets k d
    return out.reshape(n, c, mult, o, -1).movedim(3, 1).reshape(n, o, -1)  # weight layout (out = c mult + j, 1, *kernel)


def conv_positions(module: nn.Module, y: Tensor) -> Tensor:
    """A cotangent (N, out, *spatial) at a convolution's output as (N, groups, S, out/groups)."""
    n, g = y.shape[0], module.groups
    return y.reshape(n, g, y.shape[1] // g, -1).transpose(2, 3)


def conv_weight_grad(module: nn.Module, x: Tensor, g: Tensor) -> Tensor:
    """sum over the batch of the weight gradient: padded inputs x (B, C, ...), cotangents g (B, out, ...)."""
    dims = x.dim() - 2
    weight = x.new_empty(1).expand(module.weight.shape)  # only its shape is read
    return torch.ops.aten.convolution_backward(
        g, x, weight, None, module.stride, [0] * dims, module.dilation, False, [0] * dims, module.groups, [False, True, False]
    )[1]


def conv_sample_grads(module: nn.Module, x: Tensor, g: Tensor) -> Tensor:
    """Per-sample, per-direction weight gradients (N, O, out * in/groups * prod(kernel)), from padded
    inputs (N, C, ...) and cotangents (N, O, out, ...): the convolution's own backward, batched."""
    one = lambda xi, gi: conv_weight_grad(module, xi[None], gi[None])  # noqa: E731
    return vmap(vmap(one, in_dims=(None, 0)), in_dims=(0, 0))(x, g).reshape(g.shape[0], g.shape[1], -1)


def norm_inputs(module: nn.Module, x: Tensor) -> Tensor:
    """x_hat (N, S, C): the normalised input that the affine weight multiplies, channel last."""
    if isinstance(module, nn.LayerNorm):
        xh = F.layer_norm(x, module.normalized_shape, None, None, module.eps)
        return xh.reshape(x.shape[0], -1, math.prod(module.normalized_shape))
    if isinstance(module, nn.GroupNorm):
        xh = F.group_norm(x, module.num_groups, None, None, module.eps)
    else:
        xh = F.batch_norm(x, module.running_mean, module.running_var, None, None, False, 0.0, module.eps)
    return xh.reshape(x.shape[0], x.shape[1], -1).transpose(1, 2)  # (N, S, C)


def record(module: nn.Module, x: Tensor) -> Tensor:
    if isinstance(module, NTKDense):  # the input its weight multiplies: scale x
        return linear_inputs(module, x * module.scale)
    if isinstance(module, LINEAR):
        return linear_inputs(module, x)
    if isinstance(module, CONVS):
        return conv_padded(module, x)  # (N, C, *spatial): patches or per-sample gradients when the kernel needs them
    if isinstance(module, nn.Embedding):
        ids = x.reshape(x.shape[0], -1)  # (N, S)
        return ids
    return norm_inputs(module, x)


def out_positions(module: nn.Module, y: Tensor) -> Tensor:
    """A cotangent at the module's output as (N, S, out) (a convolution's as it is, (N, out, *spatial))."""
    n = y.shape[0]
    if isinstance(module, CONVS):
        return y
    if isinstance(module, (nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        return y.reshape(n, y.shape[1], -1).transpose(1, 2)  # channel last
    if isinstance(module, nn.LayerNorm):
        return y.reshape(n, -1, math.prod(module.normalized_shape))
    return y.reshape(n, -1, y.shape[-1])  # Linear, Embedding
