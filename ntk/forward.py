"""Forward passes of a general module, as every kernel method sees them.

- The parameters a kernel differentiates by, cast for the computation (`cast_params`), and
  everything else a forward pass reads (`cast_fixed`); the model itself is never modified.
- A model's output as (N, O) (`as_outputs`: any tensor (N, ...), or a tuple, list or dict of
  them), its shape per input (`output_shape`) and its number of entries O (`output_dim`).
- `fingerprint` and `model_cache`: measurements of a model kept while it lives, measured again
  when the model changes (weakly keyed, never by id()).
- `hooked`: the one helper that captures what modules receive and produce in a forward pass
  (forward hooks, removed on exit), used by the structured kernel's passes, its self-check, its
  sizes and the memory planner.

This module sits at the bottom of `ntk`: it imports nothing of the kernel methods.
"""

from __future__ import annotations

import contextlib
import weakref
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


def as_outputs(f: object, n: int) -> Tensor:
    """A model's output on n inputs as (N, O), O the output entries per input in row-major order.

    A tensor (N, ...) is flattened per input ((N,) is O = 1); a tuple, list or dict of such tensors
    is flattened leaf by leaf and concatenated in order (a dict in its key order). Anything else, or a
    leaf whose first axis is not N, is refused in one line.
    """
    if isinstance(f, Tensor):
        if f.dim() == 0 or f.shape[0] != n:
            raise ValueError(f"the model's output must have the batch first, shape (N, ...) with N = {n}; got {tuple(f.shape)}")
        return f.reshape(n, -1)
    if isinstance(f, dict):
        f = list(f.values())
    if isinstance(f, (tuple, list)) and f:
        return torch.cat([as_outputs(leaf, n) for leaf in f], dim=1)
    raise ValueError(f"the model's output must be a tensor (N, ...) or a tuple, list or dict of them; got {type(f).__name__}")


def output_shape(model: nn.Module, x_example: Tensor) -> tuple[tuple[int, ...] | None, int]:
    """The shape of one input's output (without the batch axis; None for a tuple, list or dict of
    tensors) and its number of entries O (one forward pass of one input, without gradients, once per
    model and kind of input: `model_cache`)."""
    if isinstance(model, NTKMLP):
        return (model.out_dim,), model.out_dim
    cache = model_cache(model, "output shape", x_example[:1])  # measured once per model and kind of input
    if "shape" not in cache:
        f = probe_forward(model, x_example[:1])
        o = as_outputs(f, 1).shape[1]  # refuses what is not an output
        cache["shape"] = (tuple(f.shape[1:]) if isinstance(f, Tensor) else None), o
    return cache["shape"]


def output_dim(model: nn.Module, x_example: Tensor | None) -> int:
    """O, the output entries per input (`as_outputs`; `output_shape`, measured once per model and kind of input)."""
    if isinstance(model, NTKMLP):
        return model.out_dim
    return output_shape(model, x_example)[1]


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

    def count(_module: nn.Module, _args: tuple, out: object) -> None:
        nonlocal total
        total += sum(t.numel() for t in _tensors(out))

    with hooked([m for m in model.modules() if not list(m.children())], count):
        probe_forward(model, x_example)
    return total


def refuse_transformed(module: nn.Module, x: object) -> None:
    """One line when a module's input is a torch.func transform's tensor: the model differentiates or
    vectorises inside its forward (a PINN's residual, `vmap(hessian(u))`), where per-layer records of
    one forward pass do not hold one input's activations."""
    if isinstance(x, Tensor) and torch._C._functorch.is_functorch_wrapped_tensor(x):
        raise ValueError(
            f"method='structured' cannot record {type(module).__name__}: the model calls it inside a torch.func transform "
            "(vmap, grad, jacrev, hessian) in its forward; use method='jacobian', 'ntk_vp' or 'autograd'"
        )


def first_line(err: BaseException) -> str:
    """The first line of an error's message (its type's name if it has none)."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def probe_forward(model: nn.Module, x: Tensor) -> object:
    """The model's output on a few inputs, for measuring it: without gradients, or with them where
    the forward needs them (a model that differentiates inside forward, `torch.autograd.grad`).

    Raises:
        ValueError: the model fails on inputs of this shape; one line with the input shape and the
            model's own error.
    """
    x = as_model_input(model, x)
    try:
        with torch.no_grad():
            return model(x)
    except Exception as err:
        try:  # a forward that takes gradients itself runs only with grad enabled
            with torch.enable_grad():
                return model(x)
        except Exception:
            raise ValueError(
                f"the model fails on inputs of shape (N, {', '.join(map(str, x.shape[1:]))}) like x1's: "
                f"{type(err).__name__}: {first_line(err)}"
            ) from None


def _tensors(out: object) -> list[Tensor]:
    """The tensors in a module's output (a recurrent layer returns a tuple, some a dict)."""
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    return []


_MEMO: dict | None = None  # within `one_call`: fingerprints by (id(model), input shape, dtype)


@contextlib.contextmanager
def one_call() -> Iterator[None]:
    """Within the block (one kernel computation) the model is taken not to change: its `fingerprint`
    is computed once per kind of input, not by every cache lookup (a few ms on a model of hundreds
    of modules). Nested blocks share the outer one's memo."""
    global _MEMO
    outer = _MEMO
    if outer is None:
        _MEMO = {}
    try:
        yield
    finally:
        if outer is None:
            _MEMO = None


def fingerprint(model: nn.Module, x: Tensor | None) -> tuple:
    """What measurements of a model on a kind of input depend on: the input's shape per input and
    dtype, the trainable parameters by name and shape, and every submodule with its class, its
    forward (a replaced `forward` counts), its hooks and its training flag. Parameter values are not
    part of it: nothing cached under it depends on them."""
    kind = None if x is None else (tuple(x.shape[1:]), x.dtype)  # None: what does not depend on the input
    if _MEMO is not None and (key := (id(model), kind)) in _MEMO:
        return _MEMO[key]
    modules = tuple(
        (name, type(m), m.training, m.__dict__.get("forward", type(m).forward), tuple(m._forward_hooks), tuple(m._forward_pre_hooks))
        for name, m in model.named_modules()
    )
    trainable = tuple((n, tuple(p.shape)) for n, p in model.named_parameters() if p.requires_grad)
    result = (kind, trainable, modules)
    if _MEMO is not None:
        _MEMO[(id(model), kind)] = result
    return result


# per model, held weakly (an entry dies with its model): {(what, fingerprint): what was measured}
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def model_cache(model: nn.Module, what: str, x: Tensor | None) -> dict:
    """A dictionary for what is measured of `model` on inputs like `x` (None: for what does not
    depend on the input) (`fingerprint`), kept while the model lives: a model changed in a way the
    fingerprint sees gets a fresh one."""
    return _CACHE.setdefault(model, {}).setdefault((what, fingerprint(model, x)), {})
