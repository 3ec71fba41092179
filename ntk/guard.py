"""What a kernel computation may not change, and the inference shortcuts it must not take.

- `untouched(model)`: within the block the model may be run any number of times (probes, forward
  passes that update buffers in place, BatchNorm in training mode before it is refused); on exit,
  also when the block raises, its buffers, training flags, hooks, `requires_grad` flags and the random
  number generators are as they were. A forward pass that changes a parameter in place cannot be
  undone without a copy of every parameter: it is refused in one line instead.
- `no_fast_paths()`: within the block `nn.TransformerEncoderLayer` and `nn.MultiheadAttention` in
  eval mode run their composite forward, not the fused inference kernel
  (`aten::_transformer_encoder_layer_fwd`, `_native_multi_head_attention`), which has no forward-mode
  derivative and no per-layer structure, and `scaled_dot_product_attention` takes its math backend
  (the flash and memory-efficient kernels have no forward-mode derivative either). Each pair
  computes the same function.

This module imports nothing of `ntk`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks", "_forward_hooks_with_kwargs")


@contextlib.contextmanager
def no_fast_paths() -> Iterator[None]:
    """The fused inference paths of PyTorch's attention layers off within the block (module docstring)."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):  # the fused attention kernels have no forward-mode derivative on every device
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


@contextlib.contextmanager
def untouched(model: nn.Module) -> Iterator[None]:
    """The model's state as it was on entry, on every exit (module docstring).

    Example:
        >>> import torch
        >>> bn = torch.nn.BatchNorm1d(3).train()
        >>> with untouched(bn):
        ...     _ = bn(torch.randn(8, 3))  # updates the running statistics
        >>> bool(bn.running_mean.abs().sum() == 0)
        True
    """
    if not isinstance(model, nn.Module):  # the callers refuse it with their own line
        yield
        return
    modules = list(model.modules())
    buffers = [(m, name, b, b._version, b.clone()) for m in modules for name, b in m._buffers.items() if b is not None]
    flags = [m.training for m in modules]
    hooks = [[dict(getattr(m, h, None) or {}) for h in _HOOK_DICTS] for m in modules]
    params = list(model.parameters())
    grads = [p.requires_grad for p in params]
    versions = [p._version for p in params]
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        for m, name, b, version, saved in buffers:
            if m._buffers.get(name) is not b:
                m._buffers[name] = b  # a forward that replaced the buffer: the original back
            # written in place (native kernels such as batch_norm's running statistics do not count a version)
            if b._version != version or (b.device.type != "meta" and not torch.equal(b, saved)):
                with torch.no_grad():
                    b.copy_(saved)
        for m, flag, saved in zip(modules, flags, hooks):
            m.training = flag
            for h, before in zip(_HOOK_DICTS, saved):
                current = getattr(m, h, None)
                if current is not None and dict(current) != before:
                    current.clear()
                    current.update(before)
        for p, flag in zip(params, grads):
            p.requires_grad_(flag)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    changed = [n for (n, p), v in zip(model.named_parameters(), versions) if p._version != v]
    if changed:
        raise ValueError(
            f"the model's forward pass changed parameter {changed[0]!r} in place, so it has no fixed kernel; "
            "move that update out of forward (or into a buffer)"
        )


def leaves_model_unchanged(fn: Callable) -> Callable:
    """`fn(model, ...)` run inside `untouched(model)` and `no_fast_paths()`."""

    @functools.wraps(fn)
    def wrapper(model, *args, **kwargs):
        with untouched(model), no_fast_paths():
            return fn(model, *args, **kwargs)

    return wrapper
