"""Forward passes of a general module, as every kernel method sees them.

- The parameters a kernel differentiates by, cast for the computation (`cast_params`), and
  everything else a forward pass reads (`cast_fixed`); the model itself is never modified.
- A model's output as (N, O) (`as_outputs`) and its number of outputs O (`output_dim`).
- `hooked`: the one helper that captures what modules receive and produce in a forward pass
  (forward hooks, removed on exit), used by the structured kernel's passes, its self-check, its
  sizes and the memory planner.

This module sits at the bottom of `ntk`: it imports nothing of the kernel methods.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from ntk.model import NTKMLP

Tensor = torch.Tensor

# hook(module, args, output) -> a replacement output, or None to keep it (torch's forward-hook contract)
CallHook = Callable[[nn.Module, tuple, object], object]


def cast_params(model: nn.Module, dtype: torch.dtype) -> dict[str, Tensor]:
    """The trainable parameters (requires_grad) by name, detached and cast to `dtype` (the model
    itself is not touched): the parameters the kernel differentiates by."""
    return {k: v.detach().to(dtype) for k, v in model.named_parameters() if v.requires_grad}


def cast_fixed(model: nn.Module, dtype: torch.dtype) -> dict[str, Tensor]:
    """Everything else a forward pass reads, cast likewise: frozen parameters and floating buffers."""
    fixed = {k: v.detach().to(dtype) for k, v in model.named_parameters() if not v.requires_grad}
    fixed |= {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in model.named_buffers()}
    return fixed


def cast_input(x: Tensor, dtype: torch.dtype) -> Tensor:
    """Floating inputs in `dtype`; integer inputs (token ids) as they are."""
    return x.to(dtype) if x.is_floating_point() else x


def as_model_input(model: nn.Module, x: Tensor) -> Tensor:
    """A floating input in the dtype of the model's parameters (for a probing forward pass)."""
    param = next(model.parameters(), None)
    return x.to(param.dtype) if param is not None and x.is_floating_point() else x


def as_outputs(f: Tensor, n: int) -> Tensor:
    """A model's output on n inputs as (N, O): (N,) is O = 1; any other shape is refused."""
    if f.dim() == 1 and f.shape[0] == n:
        return f[:, None]
    if f.dim() != 2 or f.shape[0] != n:
        raise ValueError(f"the model's output must have shape (N, O) or (N,), got {tuple(f.shape)} for {n} input(s)")
    return f


def output_dim(model: nn.Module, x_example: Tensor | None) -> int:
    """O, the number of outputs: the model maps (N, ...) to (N, O), or to (N,) for O = 1 (one
    forward pass of `x_example`, without gradients, for a module other than an `NTKMLP`)."""
    if isinstance(model, NTKMLP):
        return model.out_dim
    with torch.no_grad():
        return as_outputs(model(as_model_input(model, x_example)), x_example.shape[0]).shape[1]


@contextlib.contextmanager
def hooked(modules: Iterable[nn.Module], hook: CallHook) -> Iterator[None]:
    """Within the block, every call of one of `modules` calls `hook(module, args, output)` after the
    module's forward; a value the hook returns replaces the output. The hooks are removed on exit,
    also when the forward raises."""
    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def leaf_output_numel(model: nn.Module, x_example: Tensor) -> int:
    """Numbers produced per input by all leaf modules (one forward pass of `x_example`, one input),
    the activations that NTK-vector products hold (2 x the widths for an `NTKMLP`)."""
    if isinstance(model, NTKMLP):
        return 2 * sum(model.widths)
    total = 0

    def count(_module: nn.Module, _args: tuple, out: Tensor) -> None:
        nonlocal total
        total += out.numel()

    with hooked([m for m in model.modules() if not list(m.children())], count), torch.no_grad():
        model(as_model_input(model, x_example))
    return total
