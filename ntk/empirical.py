"""Exact empirical neural tangent kernel of a finite network.

    Theta(x, x') = sum_p  df(x)/dtheta_p  df(x')/dtheta_p                      (paper, Section 4)

Two exact methods:

- ``"layerwise"`` (NTK MLP only). The sum over parameters factorises layer by layer
  (paper.md section 3):

      Theta(x, x') = sum_{l=0}^{L-1} [a(l)(x).a(l)(x') / n_l + beta^2] [d(l+1)(x).d(l+1)(x')]

  with a(l) the layer inputs and d(l+1) = df/dz(l+1), all obtained from one forward and one
  backward pass over the batch. Memory O(N x width) per layer, never O(N x parameters), so the
  kernel of a width-10000 network on a grid of inputs needs no Jacobian.
- ``"jacobian"`` (any module). torch.func ``vmap(jacrev)`` per-sample Jacobians through
  ``functional_call``, contracted over parameters. The reference implementation; memory
  O((N1 + N2) x O x parameters).

Kernels are computed in float64 by default, whatever the dtype of the parameters (they are cast,
not modified).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from ntk.model import NTKMLP, backward_factors, forward_with_cache

Tensor = torch.Tensor

METHODS = ("auto", "layerwise", "jacobian")


def empirical_ntk(
    model: nn.Module,
    x1: Tensor,
    x2: Tensor | None = None,
    method: str = "auto",
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Empirical NTK Theta(x1, x2) of `model` at its current parameters.

    Args:
        model: an `NTKMLP` (all methods) or any module mapping (N, d) to (N, O) ("jacobian").
        x1: inputs, (N1, d).
        x2: inputs, (N2, d); None means x2 = x1 (the factors are reused and the result is
            exactly symmetric).
        method: "auto" (layerwise for an NTKMLP, else jacobian), "layerwise" or "jacobian".
        dtype: precision of the computation and of the result.

    Returns:
        (N1, N2) for a scalar output; (N1, N2, O, O) for O > 1 outputs, entry [i, j, a, b]
        being sum_p df_a(x_i)/dtheta_p df_b(x_j)/dtheta_p.
    """
    if method not in METHODS:
        raise ValueError(f"unknown NTK method {method!r}; allowed: {', '.join(METHODS)}")
    _check_inputs(model, x1, x2)
    if method == "auto":
        method = "layerwise" if isinstance(model, NTKMLP) else "jacobian"
    if method == "layerwise":
        if not isinstance(model, NTKMLP):
            raise ValueError(
                f"method='layerwise' needs an NTKMLP, got {type(model).__name__}; use method='jacobian'"
            )
        with torch.no_grad():
            f1 = layerwise_factors(model, x1, dtype)
            kernel = _contract_factors(f1, f1 if x2 is None else layerwise_factors(model, x2, dtype), model.beta)
    else:
        kernel = _jacobian_kernel(model, x1, x2, dtype)
    if x2 is None:
        kernel = 0.5 * (kernel + kernel.transpose(0, 1).transpose(-1, -2) if kernel.dim() == 4 else kernel + kernel.T)
    return kernel


def _check_inputs(model: nn.Module, x1: Tensor, x2: Tensor | None) -> None:
    for name, x in (("x1", x1), ("x2", x2)):
        if x is None:
            continue
        if x.dim() != 2:
            raise ValueError(f"{name} must have shape (N, input_dim), got {tuple(x.shape)}")
        if isinstance(model, NTKMLP) and x.shape[1] != model.in_dim:
            raise ValueError(f"{name} has input dimension {x.shape[1]}, the model expects {model.in_dim}")
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} contains non-finite values")


def layerwise_factors(model: NTKMLP, x: Tensor, dtype: torch.dtype = torch.float64) -> list[tuple[Tensor, Tensor]]:
    """Per-layer factors (a(l), d(l+1)) for l = 0 ... L-1 from one forward and one backward pass.

    Returns:
        A list of L pairs: a(l) of shape (N, n_l), and d(l+1) = df/dz(l+1) of shape (N, n_{l+1})
        for a scalar output or (N, O, n_{l+1}) for O outputs (one row per output direction).
    """
    _, acts, derivs = forward_with_cache(model, x, dtype)
    n, out = x.shape[0], model.out_dim
    if out == 1:
        delta = torch.ones(n, 1, dtype=dtype, device=x.device)  # (N, 1)
    else:
        delta = torch.eye(out, dtype=dtype, device=x.device).expand(n, out, out)  # (N, O, O)
    factors = [(a, d) for _, a, d in backward_factors(model, acts, derivs, delta)]
    return factors[::-1]


def _contract_factors(f1: list[tuple[Tensor, Tensor]], f2: list[tuple[Tensor, Tensor]], beta: float) -> Tensor:
    """sum_l (A1 A2^T / n_l + beta^2) * (D1 D2^T), elementwise product of Gram matrices."""
    kernel = None
    for (a1, d1), (a2, d2) in zip(f1, f2):
        gram_a = torch.addmm(a1.new_full((), beta**2), a1, a2.T, alpha=1.0 / a1.shape[1])  # (N1, N2)
        if d1.dim() == 2:
            term = gram_a * (d1 @ d2.T)  # (N1, N2)
        else:
            gram_d = torch.einsum("iap,jbp->ijab", d1, d2)  # (N1, N2, O, O)
            term = gram_a[:, :, None, None] * gram_d
        kernel = term if kernel is None else kernel.add_(term)
    return kernel


def _jacobian_kernel(model: nn.Module, x1: Tensor, x2: Tensor | None, dtype: torch.dtype) -> Tensor:
    params = {k: v.detach().to(dtype) for k, v in model.named_parameters()}
    buffers = {k: v.to(dtype) if v.is_floating_point() else v for k, v in model.named_buffers()}

    def f(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(model, (p, buffers), (x.unsqueeze(0),)).reshape(-1)  # (O,)

    jac = vmap(jacrev(f), in_dims=(None, 0))

    def flat(x: Tensor) -> Tensor:
        j = jac(params, x.to(dtype))  # {name: (N, O, *shape)}
        return torch.cat([v.flatten(2) for v in j.values()], dim=2)  # (N, O, P)

    j1 = flat(x1)
    j2 = j1 if x2 is None else flat(x2)
    kernel = torch.einsum("iap,jbp->ijab", j1, j2)  # (N1, N2, O, O)
    return kernel[:, :, 0, 0] if kernel.shape[-1] == 1 else kernel
