"""The NTK-parameterised multilayer perceptron of Jacot et al. (2018), Section 2.

    a(0) = x,   z(l+1) = W(l) a(l) / sqrt(n_l) + beta * b(l),   a(l) = sigma(z(l)),   f(x) = z(L)

Every entry of W(l) and b(l) is drawn i.i.d. N(0, 1); the 1/sqrt(n_l) lives in the forward pass,
not in the initialisation (no He/Glorot factor). `depth` = L counts weight layers.

Besides the usual `forward`, this module exposes the two halves of backpropagation that the rest of
the library shares: `forward_with_cache` keeps a(l) and sigma'(z(l)); `backward_factors` walks the
layers from the top and yields, for every layer l, the pair (a(l), d(l+1)) with d(l+1) = df/dz(l+1)
per sample. The layer-wise NTK (the paper's Section 4 definition, summed layer by layer) is built
from these pairs, and the fused
gradient-descent step uses the same pairs for an in-place rank-N weight update.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from ntk.activations import Activation, as_activation
from ntk.memory import check_fits
from ntk.parameterization import check_parameterization, layer_scales

Tensor = torch.Tensor


class NTKDense(nn.Module):
    """One NTK-parameterised affine layer z = sigma_w W a / sqrt(n_in) + beta * b (the dense building
    block, `ntk.blocks.Dense`).

    Args:
        in_features: n_l, the fan-in.
        out_features: n_{l+1}.
        beta: bias scale of the paper (0.1 in every experiment).
        generator: source of the N(0, 1) draws; weight first, then bias. The draws are made on
            the generator's device (the CPU for `torch.Generator()`) and then moved to `device`,
            so a CPU generator gives the same network on every device.
        sigma_w: weight scale (1 in the paper).
        bias: whether the layer has a bias (without one, z = sigma_w W a / sqrt(n_in) and beta is unused).
        weight_mult: the weight's multiplier in the forward pass, in place of sigma_w / sqrt(n_in)
            (other parameterisations, `ntk.parameterization`).
        weight_std, bias_std: the standard deviations of the stored weight and bias entries (1 in the
            NTK parameterisation). The same N(0, 1) draws are scaled, so a generator gives the same
            network up to these factors under every parameterisation.

    Example:
        >>> import torch, ntk
        >>> layer = ntk.NTKDense(3, 4, beta=0.1, generator=torch.Generator().manual_seed(0))
        >>> layer(torch.randn(2, 3)).shape
        torch.Size([2, 4])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        beta: float,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        sigma_w: float = 1.0,
        bias: bool = True,
        weight_mult: float | None = None,
        weight_std: float = 1.0,
        bias_std: float = 1.0,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.beta = float(beta) if bias else 0.0
        self.sigma_w = float(sigma_w)
        self.scale = self.sigma_w / math.sqrt(in_features) if weight_mult is None else float(weight_mult)
        self.weight_std, self.bias_std = float(weight_std), float(bias_std)
        # the NTK form (every entry N(0, 1), the multiplier sigma_w / sqrt(n_l)) or another parameterisation's
        self.parameterization = "ntk" if (weight_mult is None and weight_std == 1 and bias_std == 1) else "other"
        source = generator.device if generator is not None else device  # where the numbers are drawn
        kw = dict(generator=generator, device=source, dtype=dtype)
        weight = torch.randn(out_features, in_features, **kw)  # (n_{l+1}, n_l)
        self.weight = nn.Parameter((weight if weight_std == 1 else weight * weight_std).to(device))
        if bias:
            b = torch.randn(out_features, **kw)  # (n_{l+1},)
            self.bias = nn.Parameter((b if bias_std == 1 else b * bias_std).to(device))
        else:
            self.bias = None

    def forward(self, a: Tensor) -> Tensor:
        if self.bias is None:
            return nn.functional.linear(a * self.scale, self.weight)
        return dense(a, self.weight, self.bias, self.scale, self.beta)

    def extra_repr(self) -> str:
        extra = (
            ""
            if self.parameterization == "ntk"
            else f", weight_mult={self.scale:.4g}, weight_std={self.weight_std:.4g}, bias_std={self.bias_std:.4g}"
        )
        return f"in_features={self.in_features}, out_features={self.out_features}, beta={self.beta}, sigma_w={self.sigma_w}, bias={self.bias is not None}{extra}"


def dense(a: Tensor, weight: Tensor, bias: Tensor, scale: float, beta: float) -> Tensor:
    """z = scale * a W^T + beta * b, as one fused GEMM for a batch of rows."""
    if a.dim() == 2:
        return torch.addmm(bias, a, weight.T, beta=beta, alpha=scale)
    return (a @ weight.T) * scale + beta * bias


class NTKMLP(nn.Module):
    """Fully connected network in the NTK parameterisation.

    Args:
        in_dim: n_0, the input dimension.
        width: hidden width n (all hidden layers) or a list of the L - 1 hidden widths.
        depth: L, the number of weight layers (L = 4 means 3 hidden layers); at least 1.
        out_dim: n_L.
        beta: bias scale.
        activation: a name of `ntk.activations.ACTIVATIONS`, an `Activation`, or a pair (sigma, sigma')
            of elementwise torch functions.
        parameterization: "ntk" (the paper's, default), "standard" (fan-in initialisation at the
            stable learning rate eta / n) or "mean_field" (muP, the maximal-update
            parameterisation), each folded into multipliers and stored deviations so that one
            global learning rate trains it (`ntk.parameterization`: the table, the conventions,
            the citations). The hidden widths must be equal except under "ntk".
        base_width: n_b of "mean_field": the width at which it is the NTK-parameterised network.
        generator: explicit `torch.Generator` for the N(0, 1) initialisation, drawn layer by
            layer (weight then bias) on the generator's device, then moved to `device`. Same CPU
            generator state and dtype: the same network on every device (a CUDA generator draws
            other numbers, which also differ between GPU models).
        device: where the parameters live.
        dtype: the parameters' precision.

    Parameters are named `layers.{l}.weight` (n_{l+1}, n_l) and `layers.{l}.bias`, so the module
    works with `torch.func.functional_call`.

    Example:
        >>> import torch, ntk
        >>> model = ntk.NTKMLP(in_dim=2, width=100, depth=3, generator=torch.Generator().manual_seed(0))
        >>> model(torch.randn(5, 2)).shape  # every parameter N(0, 1); widths 2-100-100-1
        torch.Size([5, 1])
    """

    def __init__(
        self,
        in_dim: int,
        width: int | Sequence[int],
        depth: int,
        out_dim: int = 1,
        beta: float = 0.1,
        activation: str | Activation | tuple = "relu",
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        parameterization: str = "ntk",
        base_width: int | None = None,
    ) -> None:
        super().__init__()
        check_parameterization(parameterization)
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be an integer >= 1 (number of weight layers), got {depth!r}")
        hidden = [width] * (depth - 1) if isinstance(width, int) else list(width)
        if len(hidden) != depth - 1:
            raise ValueError(f"width lists the hidden widths, so it needs depth - 1 = {depth - 1} entries, got {len(hidden)}")
        for name, n in [("in_dim", in_dim), ("out_dim", out_dim)] + [("width", w) for w in hidden]:
            if not isinstance(n, int) or n < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {n!r}")
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0, got {beta!r}")
        self.act: Activation = as_activation(activation)
        self.activation = self.act.name
        self.beta = float(beta)
        self.widths = [in_dim, *hidden, out_dim]  # n_0 ... n_L
        itemsize = (dtype or torch.get_default_dtype()).itemsize
        check_fits(
            f"an NTK MLP of widths {self.widths} ({self.parameter_count(self.widths):,} parameters)",
            self.parameter_count(self.widths) * itemsize,
            device,
        )
        self.parameterization = parameterization
        self.base_width = base_width if parameterization == "mean_field" else None
        if parameterization == "ntk":
            self.layers = nn.ModuleList(
                NTKDense(n_in, n_out, beta, generator=generator, device=device, dtype=dtype)
                for n_in, n_out in zip(self.widths[:-1], self.widths[1:])
            )
        else:
            scales = layer_scales(parameterization, self.widths, self.beta, base_width)
            self.layers = nn.ModuleList(
                NTKDense(
                    n_in,
                    n_out,
                    s.bias_mult,
                    generator=generator,
                    device=device,
                    dtype=dtype,
                    weight_mult=s.weight_mult,
                    weight_std=s.weight_std,
                    bias_std=s.bias_std,
                )
                for n_in, n_out, s in zip(self.widths[:-1], self.widths[1:], scales)
            )

    @staticmethod
    def parameter_count(widths: Sequence[int]) -> int:
        """Weights and biases of a network with layer widths n_0 ... n_L."""
        return sum(n_in * n_out + n_out for n_in, n_out in zip(widths[:-1], widths[1:]))

    @property
    def depth(self) -> int:
        return len(self.layers)

    @property
    def in_dim(self) -> int:
        return self.widths[0]

    @property
    def out_dim(self) -> int:
        return self.widths[-1]

    def forward(self, x: Tensor) -> Tensor:
        """f(x) for x of shape (..., n_0); returns (..., n_L)."""
        a = x
        for l, layer in enumerate(self.layers):
            if l > 0:
                a = self.act.fn(a)
            a = layer(a)
        return a


def forward_with_cache(model: NTKMLP, x: Tensor, dtype: torch.dtype | None = None) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Forward pass that keeps what backpropagation needs.

    Args:
        model: the network.
        x: inputs, (N, n_0).
        dtype: compute in this dtype (weights are cast layer by layer); default the parameters'.

    Returns:
        f: outputs, (N, n_L).
        acts: [a(0), ..., a(L-1)], a(l) of shape (N, n_l).
        derivs: [sigma'(z(1)), ..., sigma'(z(L-1))], each (N, n_l).
    """
    dtype = dtype or model.layers[0].weight.dtype
    a = x.to(dtype)
    acts, derivs = [], []
    for l, layer in enumerate(model.layers):
        if l > 0:
            a, deriv = model.act.value_and_deriv(a)  # a is this layer's fresh GEMM output
            derivs.append(deriv)
        acts.append(a)
        a = dense(a, layer.weight.to(dtype), layer.bias.to(dtype), layer.scale, layer.beta)
    return a, acts, derivs


def backward_factors(model: NTKMLP, acts: list[Tensor], derivs: list[Tensor], delta: Tensor) -> Iterator[tuple[int, Tensor, Tensor]]:
    """Walk the layers from the top and yield (l, a(l), d(l+1)) for l = L-1, ..., 0.

    d(l) = sigma'(z(l)) * (d(l+1) W(l)) / sqrt(n_l) is computed *before* (l, a(l), d(l+1)) is
    yielded, so the consumer may update W(l) in place (the fused GD step relies on this).

    Args:
        model: the network.
        acts: [a(0), ..., a(L-1)], as returned by `forward_with_cache`.
        derivs: [sigma'(z(1)), ..., sigma'(z(L-1))], as returned by `forward_with_cache`.
        delta: cotangent at the output, (N, n_L), or (N, O, n_L) to carry O output
            directions at once (the per-output factors of a multi-output NTK).

    Yields:
        l, a(l) of shape (N, n_l), and d(l+1) of shape like `delta` with last dim n_{l+1}.
    """
    for l in reversed(range(model.depth)):
        below = None
        if l > 0:
            layer = model.layers[l]
            weight = layer.weight.to(delta.dtype)
            # scale folded into the GEMM (alpha; beta = 0 ignores the scalar input): no extra pass
            below = torch.addmm(delta.new_zeros(()), delta.reshape(-1, delta.shape[-1]), weight, beta=0, alpha=layer.scale)
            below = below.view(*delta.shape[:-1], weight.shape[1])  # (N, [O,] n_l)
            below.mul_(derivs[l - 1] if delta.dim() == 2 else derivs[l - 1].unsqueeze(1))
        yield l, acts[l], delta
        delta = below
