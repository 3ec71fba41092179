"""Exact empirical neural tangent kernel of a finite network, by four methods.

    Theta(x, x') = sum_p  df(x)/dtheta_p  df(x')/dtheta_p^T                     (paper, Section 4)

- ``"layerwise"`` (NTK MLP only; the fast path). The sum over parameters factorises layer by layer
  (the parameters of layer l are W(l) and b(l) of Section 2):

      `Theta(x, x') = sum_{l=0}^{L-1} [a(l)(x).a(l)(x') / n_l + beta^2] [d(l+1)(x).d(l+1)(x')]`

  with a(l) the layer inputs and d(l+1) = df/dz(l+1), obtained for a whole block of inputs from
  one forward and one backward pass, then one Gram product per factor and layer. Memory is
  O(N x width) for the factors, never O(N x parameters).
- ``"structured"`` (any module; `ntk.structured`). Per-layer rules from each layer's inputs and
  output cotangents (nn.Linear, convolutions, nn.Embedding, norms, biases), each the cheaper of the
  Gram-of-Grams and the explicit per-sample-gradient contraction (Novak et al., ICML 2022); the
  parameters no rule covers by Jacobian contraction restricted to them. Memory O(N x activations).
- ``"ntk_vp"`` (any module). Jacobian-free: column j of Theta is J(X1) (J(x_j)^T e_b), one
  torch.func ``vjp`` at x_j and one ``jvp`` over X1, vectorised over a chunk of columns with
  ``vmap``. Memory O(chunk x (parameters + N1 x activations)).
- ``"jacobian"`` (any module; the reference). torch.func ``vmap(jacrev)`` per-sample Jacobians
  through ``functional_call``, contracted over parameters. Memory O((N1 + N2) x O x parameters).

The methods, what each applies to, its memory and its FLOPs form one table, `ntk.methods.METHODS`;
``"auto"`` takes the first of it that applies and fits: layerwise for an `NTKMLP`, otherwise
structured, jacobian, ntk_vp. Inputs may have any shape (N, ...) for a general module (images,
sequences, integer token ids, which are never cast); its output must be (N, O) or (N,). Only
trainable parameters (requires_grad) count: frozen ones are held fixed, in every method. Every method first estimates its memory (`memory_estimate`, formulas
in `ntk.methods`) and refuses with `NTKMemoryError`, naming the methods that would fit, when the
estimate exceeds the budget of `ntk.memory.available_memory`.

The backends live in `ntk.backends` and `ntk.structured`, the memory planning in `ntk.planning`;
this module is the public API (also as `ntk.empirical_ntk`, ...). Kernels are computed in float64 by default, whatever the dtype of the parameters (the parameters
are cast for the computation, never modified). Every function computes on the model's device: inputs
on another device are moved there, and the result is returned there.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, jvp, vjp

from ntk.backends import layerwise_factors
from ntk.forward import as_outputs, cast_fixed, cast_input, cast_params, first_line, one_call, output_shape
from ntk.guard import leaves_model_unchanged
from ntk.memory import NTKMemoryError, available_memory, fmt_bytes
from ntk.methods import METHODS, get_method
from ntk.model import NTKMLP, forward_with_cache
from ntk.planning import choose_method, memory_estimate, plan_method, run_choice
from ntk.structured import check_independent_samples

__all__ = [
    "empirical_nngp",
    "empirical_ntk",
    "layerwise_factors",
    "memory_estimate",
    "ntk_row",
    "ntk_vector_product",
    "plan_method",
]

Tensor = torch.Tensor


@leaves_model_unchanged
def empirical_ntk(
    model: nn.Module,
    x1: Tensor,
    x2: Tensor | None = None,
    method: str = "auto",
    block_size: int | None = None,
    dtype: torch.dtype = torch.float64,
    trace: bool = False,
    memory_limit: int | None = None,
    trace_axes: tuple[int, ...] | None = None,
    diagonal: bool = False,
    diagonal_axes: tuple[int, ...] | int | None = None,
) -> Tensor:
    """Empirical NTK Theta(x1, x2) of `model` at its current parameters.

    Args:
        model: an `NTKMLP` (all methods) or any module mapping inputs (N, ...) to a tensor (N, ...)
            or to a tuple, list or dict of such tensors.
        x1: inputs, (N1, ...) ((N1, d) for an NTKMLP): a tensor whose first axis counts inputs.
        x2: inputs, (N2, ...) like x1; None means x2 = x1: the factors of x1 are reused, only blocks
            on or above the diagonal are computed, and the result is exactly symmetric.
        method: "auto", "layerwise", "structured", "ntk_vp" or "jacobian" (module docstring).
        block_size: rows of x1 (and x2) processed at once by "layerwise" and "structured", or
            columns per vectorised chunk for "ntk_vp"; None picks the largest that fits the budget.
        dtype: precision of the computation and of the result.
        trace: sum over every output entry, sum_a Theta[:, :, a, a]: (N1, N2).
        memory_limit: bytes the computation may use; default `ntk.memory.available_memory`.
        trace_axes: axes of the model's output (N, d_1, ..., d_k), counted with the batch axis 0 as
            neural-tangents counts them (1 ... k, or negative), to sum over; the other output axes
            are kept. A tensor output only; trace_axes covering every output axis equals trace=True.
        diagonal: the inputs' diagonal, the older spelling of diagonal_axes=(0,).
        diagonal_axes: axes computed only on their diagonal, counted as neural-tangents counts them
            (its `diagonal_axes`; batch axis 0, output axes 1 ... k or negative):
            - 0, the inputs: only K(x_i, x_i) for each input of x1 (x2 must be None), without the
              N x N matrix, in small symmetric blocks along the diagonal;
            - output axes: the kernel of each output entry with itself, K[i, j, a] = sum_p
              df_a(x_i)/dtheta_p df_a(x_j)/dtheta_p, as the torch.func NTK tutorial's "diagonal"
              mode; when every output axis is traced or on the diagonal this costs about what the
              trace costs (O Grams instead of O^2).

    Returns:
        The kernel, entry [i, j, a..., b...] = sum_p df_a(x_i)/dtheta_p df_b(x_j)/dtheta_p:

        - a tensor output (N, d_1, ..., d_k) with kept axes K = (d_k1, ...): (N1, N2, *K, *K);
        - a tuple, list or dict output: its leaves flattened and concatenated in order, O entries:
          (N1, N2, O, O);
        - with trace=True, every output axis traced, or one output entry per input ((N,), (N, 1)):
          (N1, N2);
        - with output axes D on the diagonal: (N1, N2, *K, *K, *D), K the other kept axes;
        - with the inputs' diagonal (diagonal=True, or 0 in diagonal_axes): the first two axes are
          one, N1: (N1, *K, *K), or (N1,) when nothing is kept.

    Raises:
        ValueError: unknown method; inputs that are not a tensor (N, ...), a 1-D float tensor, integer
            inputs the model cannot take, non-finite inputs or parameters; a model without trainable
            parameters; a stochastic layer (Dropout) or batch statistics in training mode; an
            output that is not a tensor or a tuple, list or dict of tensors; bad trace_axes.
        NTKMemoryError: the method's memory estimate exceeds the budget.

    Example:
        >>> import torch, ntk
        >>> model = ntk.NTKMLP(2, 100, 3, generator=torch.Generator().manual_seed(0))
        >>> x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
        >>> theta = ntk.empirical_ntk(model, x)  # layer-wise, float64
        >>> theta.shape, theta.dtype
        (torch.Size([4, 4]), torch.float64)
        >>> torch.allclose(theta, ntk.empirical_ntk(model, x, method="jacobian"))
        True
        >>> cnn = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 36, 3))
        >>> ntk.empirical_ntk(cnn, torch.randn(5, 1, 8, 8)).shape  # any module: (N1, N2, O, O)
        torch.Size([5, 5, 3, 3])
        >>> conv = torch.nn.Conv2d(1, 2, 3, padding=1)  # image to image: output (N, 2, 8, 8)
        >>> ntk.empirical_ntk(conv, torch.randn(5, 1, 8, 8), trace_axes=(2, 3)).shape  # channels kept
        torch.Size([5, 5, 2, 2])
        >>> ntk.empirical_ntk(conv, torch.randn(5, 1, 8, 8), trace=True, diagonal_axes=0).shape
        torch.Size([5])
        >>> ntk.empirical_ntk(cnn, torch.randn(5, 1, 8, 8), diagonal_axes=-1).shape  # each output with itself
        torch.Size([5, 5, 3])
    """
    if method != "auto":
        get_method(method)  # one line naming the allowed methods for an unknown name
    _check_tensor("x1", x1)
    if x2 is not None:
        _check_tensor("x2", x2)
    x1, x2 = on_model_device(model, x1), None if x2 is None else on_model_device(model, x2)
    _check_model(model)
    _check_inputs(model, x1, x2)
    if method != "auto" and (why := METHODS[method].refuses(model)) is not None:
        raise ValueError(why)
    if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1):
        raise ValueError(f"block_size must be an integer >= 1 or None, got {block_size!r}")
    axes = _diagonal_axes(diagonal_axes)
    if diagonal or 0 in axes:
        if x2 is not None:
            raise ValueError(
                "the inputs' diagonal (diagonal_axes with 0, or diagonal=True) gives K(x_i, x_i) for the inputs of x1: pass x2=None"
            )
        diagonal = True
    with one_call():  # the model does not change within: its fingerprint is taken once per kind of input
        shape, entries = output_shape(model, x1)
        traced, kept = _traced_axes(shape, trace, trace_axes)
        flat = shape if shape is not None else (entries,)  # a tuple, list or dict output: its O entries as one axis
        on_diagonal = _output_axes(flat, [a for a in axes if a != 0], "diagonal_axes")
        if set(on_diagonal) & set(traced):
            raise ValueError("an output axis cannot be both traced (trace, trace_axes) and on the diagonal (diagonal_axes)")
        off_diagonal = [i for i in range(len(flat)) if i not in traced and i not in on_diagonal]
        if on_diagonal and not off_diagonal:  # every kept axis on the diagonal: the backends' (N1, N2, O) at the trace's cost
            mode: bool | str = "diagonal"
        else:
            mode = not kept or entries == 1  # True: one number per pair, the backends' traced kernel (N1, N2)
        budget = memory_limit if memory_limit is not None else available_memory(x1.device)

        def compute(xa: Tensor, xb: Tensor | None) -> Tensor:
            n1, n2 = xa.shape[0], (xa if xb is None else xb).shape[0]
            if method == "auto":  # predicted, probed on the model in hand, decided (`ntk.planning.choose_method`)
                choice = choose_method(model, xa, xb, n1, n2, xb is None, block_size, dtype, budget, mode)
                kernel = run_choice(model, choice, xa, xb, dtype, mode)
            else:
                name, block = plan_method(model, xa, n1, n2, xb is None, method, block_size, dtype, budget, trace=mode)
                try:
                    with torch.no_grad():
                        kernel = METHODS[name].compute(model, xa, xb, dtype, block, mode)
                except (ValueError, NTKMemoryError):
                    raise
                except Exception as err:  # torch's error from deep inside a transform: one line, with what to do
                    raise ValueError(
                        f"method={name!r} cannot compute this model's kernel ({type(err).__name__}: {first_line(err)}); "
                        "method='auto' tries every method, and method='autograd' takes any model a forward pass runs on"
                    ) from err
            if xb is None:
                kernel = 0.5 * (kernel + (kernel.transpose(0, 1).transpose(2, 3) if kernel.dim() == 4 else kernel.transpose(0, 1)))
            if mode == "diagonal":  # (N1, N2, O) -> (N1, N2, *diagonal axes), the traced ones summed
                kernel = kernel.reshape(*kernel.shape[:2], *flat)
                return kernel.sum([2 + t for t in traced]) if traced else kernel
            if on_diagonal:
                return _kept(kernel, flat, traced, kept, on_diagonal)
            return kernel if mode else _kept(kernel, shape, traced, kept)

        if not diagonal:
            return compute(x1, x2)
        rows = min(x1.shape[0], DIAGONAL_ROWS)
        parts = []
        for start in range(0, x1.shape[0], rows):  # small symmetric blocks along the diagonal, their diagonals kept
            block = compute(x1[start : start + rows], None)
            parts.append(torch.diagonal(block, dim1=0, dim2=1).movedim(-1, 0).contiguous())
        return torch.cat(parts)


DIAGONAL_ROWS = 32  # inputs per diagonal block of diagonal=True: N x 32 pairs instead of N^2, few calls


def _traced_axes(shape: tuple[int, ...] | None, trace: bool, trace_axes) -> tuple[list[int], tuple[int, ...]]:
    """The output axes traced (0-based, per input) and the shape of those kept, from `trace` and
    `trace_axes` (axes of the output with the batch axis 0, as neural-tangents counts them)."""
    if shape is None:  # tuple, list or dict output: its O entries
        if trace_axes is not None:
            raise ValueError("trace_axes needs a tensor output; for a tuple, list or dict output use trace=True or trace=False")
        return [], () if trace else (-1,)  # (-1,): O entries, kept whole
    if trace:
        return list(range(len(shape))), ()
    if trace_axes is None:
        return [], shape
    axes = (trace_axes,) if isinstance(trace_axes, int) else tuple(trace_axes)
    if not all(isinstance(a, int) and not isinstance(a, bool) for a in axes):
        raise ValueError(f"trace_axes must be integers, got {trace_axes!r}")
    out = _output_axes(shape, axes, "trace_axes")
    return out, tuple(d for i, d in enumerate(shape) if i not in out)


def _diagonal_axes(diagonal_axes) -> tuple[int, ...]:
    if diagonal_axes is None:
        return ()
    axes = (diagonal_axes,) if isinstance(diagonal_axes, int) else tuple(diagonal_axes)
    if not all(isinstance(a, int) and not isinstance(a, bool) for a in axes):
        raise ValueError(f"diagonal_axes must be integers (0: the inputs, 1 ... k or -k ... -1: output axes), got {diagonal_axes!r}")
    return axes


def _output_axes(shape: tuple[int, ...], axes, what: str) -> list[int]:
    """Output axes as neural-tangents counts them (batch 0, then 1 ... k, or -k ... -1) as 0-based axes per input."""
    k, out = len(shape), []
    for a in axes:
        b = a + k + 1 if a < 0 else a
        if not 1 <= b <= k:
            raise ValueError(
                f"{what} {a} is not an output axis: the output (N, {', '.join(map(str, shape))}) has axes 1 ... {k} (or -{k} ... -1)"
            )
        out.append(b - 1)
    return sorted(set(out))


def _kept(kernel: Tensor, shape: tuple[int, ...] | None, traced: list[int], kept: tuple[int, ...], on_diagonal: list[int] = ()) -> Tensor:
    """(N1, N2, O, O) (or (N1, N2) for O = 1) over the flat outputs as (N1, N2, *kept, *kept), the
    traced axes summed over equal indices; axes `on_diagonal` are kept once, at the end, with equal
    indices: (N1, N2, *off, *off, *diagonal)."""
    n1, n2 = kernel.shape[:2]
    if kernel.dim() == 2:
        kernel = kernel[:, :, None, None]
    if shape is None:
        return kernel
    if not traced and not on_diagonal:
        return kernel.reshape(n1, n2, *shape, *shape)
    k = len(shape)
    letters = "abcdefghijklmnopqrstuvwx"
    left, right = list(letters[:k]), list(letters[k : 2 * k])
    for t in (*traced, *on_diagonal):
        right[t] = left[t]  # the same index on both sides: the diagonal (summed when traced)
    off = [i for i in range(k) if i not in traced and i not in on_diagonal]
    out = "".join(left[i] for i in off) + "".join(right[i] for i in off) + "".join(left[i] for i in on_diagonal)
    return torch.einsum(f"yz{''.join(left)}{''.join(right)}->yz{out}", kernel.reshape(n1, n2, *shape, *shape))


@leaves_model_unchanged
def empirical_nngp(model: NTKMLP, x1: Tensor, x2: Tensor | None = None, dtype: torch.dtype = torch.float64) -> Tensor:
    """Finite-width estimate of the output's NNGP kernel Sigma(L) from the last hidden layer.

    Sigma(L)(x, x') ~ a(L-1)(x).a(L-1)(x') / n_{L-1} + beta^2, the covariance of f(x), f(x')
    over the output layer's N(0, 1) weights given the hidden features. (N1, N2). Under another
    parameterisation, the covariance over the readout's own initial distribution.

    Example:
        >>> import torch, ntk
        >>> model = ntk.NTKMLP(2, 100, 3, generator=torch.Generator().manual_seed(0))
        >>> x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
        >>> ntk.empirical_nngp(model, x).shape
        torch.Size([4, 4])
    """
    if not isinstance(model, NTKMLP):
        raise ValueError(f"empirical_nngp needs an NTKMLP, got {type(model).__name__}")
    x1, x2 = on_model_device(model, x1), None if x2 is None else on_model_device(model, x2)
    _check_inputs(model, x1, x2)
    with torch.no_grad():
        a1 = forward_with_cache(model, x1, dtype)[1][-1]  # (N1, n_{L-1})
        a2 = a1 if x2 is None else forward_with_cache(model, x2, dtype)[1][-1]
        last = model.layers[-1]
        if last.parameterization == "ntk":
            return torch.addmm(a1.new_full((), model.beta**2), a1, a2.T, alpha=1.0 / a1.shape[1])
        # the output's covariance over the readout's stored N(0, s^2) entries: (m s)^2 a.a' + (beta s_b)^2
        return torch.addmm(a1.new_full((), (last.beta * last.bias_std) ** 2), a1, a2.T, alpha=(last.scale * last.weight_std) ** 2)


def ntk_row(model: nn.Module, x0: Tensor, x: Tensor, dtype: torch.dtype = torch.float64, **kwargs) -> Tensor:
    """The kernel row Theta(x0, X) for one input x0 of shape (d,): (N,) or (N, O, O).

    Needs no Jacobian of X: layerwise (blocked over X) for an NTKMLP, otherwise one vjp at x0
    per output and one jvp over X (method "ntk_vp"). Keyword arguments go to `empirical_ntk`.

    Example:
        >>> import torch, ntk
        >>> model = ntk.NTKMLP(2, 100, 3, generator=torch.Generator().manual_seed(0))
        >>> x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
        >>> torch.allclose(ntk.ntk_row(model, x[0], x), ntk.empirical_ntk(model, x)[0])
        True
    """
    if x0.dim() != 1:
        raise ValueError(f"x0 must be a single input of shape (d,), got {tuple(x0.shape)}")
    method = kwargs.pop("method", "layerwise" if isinstance(model, NTKMLP) else "ntk_vp")
    return empirical_ntk(model, x0.unsqueeze(0), x, method=method, dtype=dtype, **kwargs)[0]


@leaves_model_unchanged
def ntk_vector_product(model: nn.Module, x: Tensor, v: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    """Theta(X, X) v without forming Theta: J (J^T v), one vjp and one jvp over X.

    Args:
        model: any module mapping (N, d) to (N, O).
        x: inputs, (N, d).
        v: (N,) for a scalar output or (N, O); returned in the same shape, on the model's device
            (v and x may be on another device: they are moved there).

    Example:
        >>> import torch, ntk
        >>> model = ntk.NTKMLP(2, 100, 3, generator=torch.Generator().manual_seed(0))
        >>> x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
        >>> v = torch.randn(4, dtype=torch.float64)
        >>> torch.allclose(ntk.ntk_vector_product(model, x, v), ntk.empirical_ntk(model, x) @ v)
        True
    """
    x = on_model_device(model, x)
    _check_inputs(model, x, None)
    need = memory_estimate(model, "ntk_vp", x.shape[0], 1, False, dtype, 1, x[:1])
    budget = available_memory(x.device)
    if need > budget:
        raise NTKMemoryError(
            f"ntk_vector_product needs about {fmt_bytes(need)} for {x.shape[0]} inputs, more than the "
            f"{fmt_bytes(budget)} available; split the inputs or raise the limit (NTK_MEMORY_LIMIT)"
        )
    params, fixed = cast_params(model, dtype), cast_fixed(model, dtype)
    x = cast_input(x, dtype)

    def f(p: dict[str, Tensor]) -> Tensor:
        return as_outputs(functional_call(model, {**fixed, **p}, (x,)), x.shape[0])  # (N, O)

    out, pull = vjp(f, params)
    if v.shape[0] != x.shape[0] or v.numel() != out.numel():
        raise ValueError(f"v must have shape ({x.shape[0]},) or {tuple(out.shape)}, got {tuple(v.shape)}")
    (tangent,) = pull(v.to(x.device, dtype).reshape(out.shape))
    _, product = jvp(f, (params,), (tangent,))
    return product.reshape(v.shape)


def on_model_device(model: nn.Module, x: Tensor) -> Tensor:
    """`x` on the device of the model's parameters (unchanged for a module without parameters)."""
    param = next(model.parameters(), None)
    return x if param is None or x.device == param.device else x.to(param.device)


DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def _stochastic(m: nn.Module) -> bool:
    """Whether `m` draws random numbers in its forward pass (training mode): then there is no kernel
    of input pairs, but a different one per call."""
    if not m.training:
        return False
    if isinstance(m, DROPOUTS):
        return m.p > 0
    if isinstance(m, nn.MultiheadAttention):
        return m.dropout > 0
    return isinstance(m, nn.RReLU)


def _check_tensor(name: str, x: object) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of inputs (N, ...), got {type(x).__name__}; stack the inputs with torch.stack")


def _check_model(model: nn.Module) -> None:
    """One line for a model whose NTK is zero, undefined or random, or whose parameters are not finite."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(
            "the model has no trainable parameters (none with requires_grad): its NTK is zero; set requires_grad on those that train"
        )
    if not isinstance(model, NTKMLP):
        batch_statistics = nn.modules.batchnorm._BatchNorm
        # one pass over the modules without names (cheap); the names only for the message
        if any(_stochastic(m) or (isinstance(m, batch_statistics) and (m.training or not m.track_running_stats)) for m in model.modules()):
            check_independent_samples(model)  # batch statistics: no kernel of input pairs, whatever the method
            for name, m in model.named_modules():
                if _stochastic(m):
                    raise ValueError(
                        f"{name or 'the model'} ({type(m).__name__}) is random in training mode, so every forward pass draws anew and "
                        "the kernel changes from call to call; call model.eval() first (or set its probability to 0)"
                    )
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point() and t.device.type != "meta"]
    # one sum per tensor and one host sync in all; a non-finite sum (or an overflowing one) is looked at closely
    if tensors and not torch.isfinite(torch.stack([t.detach().sum().to(torch.float64) for t in tensors])).all():
        named = [("parameter", n, t) for n, t in model.named_parameters()] + [("buffer", n, t) for n, t in model.named_buffers()]
        for kind, name, t in named:
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise ValueError(
                    f"{kind} {name!r} holds non-finite values (NaN or inf), so the kernel would too; reset or reload the model"
                )


def _check_inputs(model: nn.Module, x1: Tensor, x2: Tensor | None) -> None:
    for name, x in (("x1", x1), ("x2", x2)):
        if x is None:
            continue
        if x.is_complex():
            raise ValueError(
                f"{name} is complex ({x.dtype}); the kernel takes real inputs: pass the real and imaginary parts as "
                f"features, torch.view_as_real({name}) (a last axis of 2)"
            )
        if isinstance(model, NTKMLP):
            if x.dim() != 2:
                raise ValueError(f"{name} must have shape (N, input_dim) for an NTKMLP, got {tuple(x.shape)}")
            if x.shape[1] != model.in_dim:
                raise ValueError(f"{name} has input dimension {x.shape[1]}, the model expects {model.in_dim}")
        elif x.dim() < 1 or x.shape[0] < 1:
            raise ValueError(f"{name} must have shape (N, ...) with N >= 1 inputs, got {tuple(x.shape)}")
        elif x.dim() == 1 and x.is_floating_point():
            raise ValueError(
                f"{name} has shape {tuple(x.shape)}, but inputs are (N, ...) with the inputs along axis 0: "
                f"x[:, None] for {x.shape[0]} scalar inputs, x[None] for one input of {x.shape[0]} numbers"
            )
        # a NaN or inf makes the sum non-finite (one fast pass and one host sync per kernel, not per
        # block); only an overflowing sum needs the full check. Meta tensors carry no values to check.
        if x.is_floating_point() and x.device.type != "meta" and not torch.isfinite(x.sum()) and not torch.isfinite(x).all():
            raise ValueError(f"{name} contains non-finite values")
        if not x.is_floating_point() and not isinstance(model, NTKMLP) and not _embeds(model):
            try:
                with torch.no_grad():
                    model(x[:1])
            except Exception as err:  # the model cannot take integers: say so, not torch's dtype error from inside
                first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                raise ValueError(
                    f"{name} holds integers ({x.dtype}) and the model fails on them ({first}); "
                    "pass floating inputs (x.float()), or token ids to a model that embeds them"
                ) from None
    if x2 is not None and x2.shape[1:] != x1.shape[1:]:
        raise ValueError(f"x1 and x2 have different input shapes: {tuple(x1.shape[1:])} and {tuple(x2.shape[1:])} per input")


def _embeds(model: nn.Module) -> bool:
    return any(isinstance(m, (nn.Embedding, nn.EmbeddingBag)) for m in model.modules())
