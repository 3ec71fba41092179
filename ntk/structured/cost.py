"""The cost model of the structured kernel: its weight blocks per input, their sizes and FLOPs.

`one_input_blocks` measures, in one forward pass of one input, every weight block a covered module
applies (the memory planner's sizes, `ntk.methods.ModelSizes`), and `layer_flops` the FLOPs of the
cheaper contraction of every block (`ntk.methods.flop_counts` adds the passes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ntk.forward import as_model_input, hooked, refuse_transformed
from ntk.structured.contractions import GROUPED_GRAMS, contraction_costs
from ntk.structured.coverage import CONVS, LINEAR
from ntk.structured.records import conv_padded, conv_patches, out_positions, record

Tensor = torch.Tensor


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
        refuse_transformed(module, args[0])
        x = args[0].detach()
        if isinstance(module, nn.MultiheadAttention):  # three blocks (E, E) on the L tokens, inputs and outputs (L, E) each
            e = module.embed_dim
            blocks.extend([Block(module, 2 * x.numel(), x.numel() // e, e, e)] * 3)
            if module.out_proj in by_module:  # called as a module by the forward the kernel runs, not by this one
                blocks.append(Block(module.out_proj, 2 * x.numel(), x.numel() // e, e, e))
        elif isinstance(module, CONVS):  # counted as patches, the larger form the kernel may build
            patches, g = conv_patches(module, conv_padded(module, x)), module.groups
            blocks.append(
                Block(module, patches.numel() + out.numel(), patches.shape[2], module.weight[0].numel(), module.out_channels // g, g)
            )
        else:
            cot = out_positions(module, out)  # (1, positions, channels)
            fan_in = x.shape[-1] if isinstance(module, LINEAR) else 1
            blocks.append(Block(module, record(module, x).numel() + out.numel(), cot.shape[1], fan_in, cot.shape[-1]))

    with hooked(by_module, hook), torch.enable_grad():
        model(as_model_input(model, x1[:1]))
    return blocks


@dataclass
class BlockCost:
    """How the kernel contracts one weight block, and what that costs for an (n1, n2) kernel."""

    block: Block
    form: str  # "explicit" (per-sample gradients and their Gram), "gram of grams", or "per-sample" (elementwise weights, embeddings, lone biases)
    flops: float  # a multiply-add is 2
    temporary: float  # numbers the contraction holds at once (its intermediates)


def block_costs(
    blocks: list[Block], by_module: dict[nn.Module, dict[str, str]], n1: int, n2: int, o: int, trace: bool, symmetric: bool
) -> list[BlockCost]:
    """For each block, the contraction the kernel takes for it (the cheaper of the two exact forms of
    a weight matrix, `contraction_costs`, its bias as one more input column; per-sample gradients for
    elementwise weights, embeddings and lone biases), its FLOPs and its intermediates."""
    n = n1 if symmetric else n1 + n2
    oo = o if trace else o * o
    out = []
    for b in blocks:
        names = by_module[b.module]
        if isinstance(b.module, (*LINEAR, nn.MultiheadAttention, *CONVS)) and ("weight" in names or "in_proj_weight" in names):
            explicit, grams = contraction_costs(n1, n2, o, b.positions, b.positions, b.fan_in + 1, b.fan_out, trace, symmetric)
            if explicit <= grams * (GROUPED_GRAMS if b.groups > 1 else 1):  # the kernel's own choice (`_conv_kernel`)
                temporary = n * o * b.groups * (b.fan_in + 1) * b.fan_out
                out.append(BlockCost(b, "explicit", 2.0 * b.groups * explicit, temporary))
            else:
                temporary = n1 * n2 * b.groups * b.positions**2 * (1 + oo)  # the two Grams over position pairs
                out.append(BlockCost(b, "gram of grams", 2.0 * b.groups * grams, temporary))
        else:
            flops = 2.0 * (n * o * b.positions * b.fan_out + n1 * n2 * oo * b.fan_out)
            out.append(BlockCost(b, "per-sample", flops, n * o * b.fan_out))
    return out


def layer_flops(
    blocks: list[Block], by_module: dict[nn.Module, dict[str, str]], n1: int, n2: int, o: int, trace: bool, symmetric: bool
) -> float:
    """FLOPs (a multiply-add is 2) of the covered modules' shares of an (n1, n2) kernel with O outputs
    (`block_costs`)."""
    return sum(c.flops for c in block_costs(blocks, by_module, n1, n2, o, trace, symmetric))
