"""NTK-parameterised building blocks: the finite networks whose infinite-width kernels `ntk.limits` computes.

Every parameter is drawn N(0, 1); a layer computes

    z = sigma_w / sqrt(fan_in) W h + beta b,      fan_in = C_in (dense) or C_in x prod(kernel size) (convolution)

(the paper's Section 2 parameterisation, and that of neural-tangents' `stax` with
parameterization="ntk"). The blocks:

  Dense            `ntk.model.NTKDense` (a linear layer on (N, features))
  Conv             a 1-D or 2-D convolution: kernel size, stride, zero padding
  Elementwise      one of the 13 activations of `ntk.activations`
  AvgPool          average pooling over windows (no padding)
  GlobalAvgPool    the mean over all positions: (N, C, ...) -> (N, C)
  Flatten          (N, C, ...) -> (N, C x positions)
  Residual         x + branch(x), the branch a composition ending in Dense or Conv
  nn.Sequential    composition

A model made of them trains like any module (`ntk.gradient_descent`), gives its empirical NTK
(`ntk.empirical_ntk`: the convolutions and linear maps are plain `nn.Conv1d/2d` / `nn.Linear` inside,
covered by the structured rules) and its exact n = inf kernels (`ntk.limiting_kernels(model, x)`).
`ntk.NTKMLP` and `ntk.NTKCNN` are compositions of these blocks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ntk.activations import ACTIVATIONS, Activation, as_activation
from ntk.model import NTKDense

Tensor = torch.Tensor

Dense = NTKDense


def _draw(shape: tuple[int, ...], generator: torch.Generator | None, device, dtype) -> Tensor:
    """N(0, 1) numbers drawn on the generator's device (the same network everywhere), then moved."""
    source = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=source, dtype=dtype).to(device)


def _pair(value, dims: int, name: str) -> tuple[int, ...]:
    values = (value,) * dims if isinstance(value, int) and not isinstance(value, bool) else tuple(value)
    if len(values) != dims or any(isinstance(v, bool) or not isinstance(v, int) for v in values):
        raise ValueError(f"{name} must be an integer or {dims} integers, got {value!r}")
    return values


class Conv(nn.Module):
    """An NTK-parameterised convolution, z = sigma_w / sqrt(C_in k) W * h + beta b, k = prod(kernel_size).

    Args:
        in_channels, out_channels: C_in, C_out.
        kernel_size, stride, padding: integers or one per spatial dimension; zero padding only
            (padding_mode other than "zeros" is refused).
        dims: 1 (sequences (N, C, L)) or 2 (images (N, C, H, W)).
        sigma_w, beta: weight and bias scales; bias=False leaves the bias out.
        generator: source of the N(0, 1) draws, weight first, then bias (drawn on its device).

    The convolution itself is a plain `nn.Conv1d` / `nn.Conv2d` without bias applied to the scaled
    input (so the structured empirical NTK covers its weight); the bias is its own parameter.

    Example:
        >>> import torch, ntk
        >>> conv = ntk.blocks.Conv(1, 8, 3, padding=1, generator=torch.Generator().manual_seed(0))
        >>> conv(torch.randn(2, 1, 5, 5)).shape
        torch.Size([2, 8, 5, 5])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] = 1,
        padding: int | tuple[int, ...] = 0,
        dims: int = 2,
        sigma_w: float = 1.0,
        beta: float = 0.1,
        bias: bool = True,
        padding_mode: str = "zeros",
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if dims not in (1, 2):
            raise ValueError(f"dims must be 1 or 2, got {dims!r}")
        if padding_mode != "zeros":
            raise ValueError(
                f"padding_mode={padding_mode!r} is not supported: the infinite-width kernels know zero padding only (padding_mode='zeros')"
            )
        for name, n in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {n!r}")
        self.dims = dims
        self.kernel_size = _pair(kernel_size, dims, "kernel_size")
        self.stride = _pair(stride, dims, "stride")
        self.padding = _pair(padding, dims, "padding")
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"kernel_size and stride must be >= 1 and padding >= 0, got {kernel_size}, {stride}, {padding}")
        self.sigma_w, self.beta = float(sigma_w), float(beta) if bias else 0.0
        self.fan_in = in_channels * math.prod(self.kernel_size)
        self.scale = self.sigma_w / math.sqrt(self.fan_in)
        cls = nn.Conv1d if dims == 1 else nn.Conv2d
        self.conv = cls(in_channels, out_channels, self.kernel_size, self.stride, self.padding, bias=False, device=device, dtype=dtype)
        with torch.no_grad():
            self.conv.weight.copy_(_draw(self.conv.weight.shape, generator, device, self.conv.weight.dtype))
        self.bias = nn.Parameter(_draw((out_channels,), generator, device, self.conv.weight.dtype)) if bias else None

    def forward(self, h: Tensor) -> Tensor:
        if h.dim() != self.dims + 2 or h.shape[1] != self.conv.in_channels:
            kind = "(N, C, L)" if self.dims == 1 else "(N, C, H, W)"
            raise ValueError(
                f"a {self.dims}-D convolution with {self.conv.in_channels} input channels needs {kind} inputs, got {tuple(h.shape)}"
            )
        for size, k, s, p in zip(h.shape[2:], self.kernel_size, self.stride, self.padding):
            if size + 2 * p < k:
                raise ValueError(
                    f"the convolution's kernel {self.kernel_size} does not fit the padded input {tuple(h.shape[2:])} (padding {self.padding})"
                )
            if s > size + 2 * p:
                raise ValueError(
                    f"the convolution's stride {self.stride} is larger than the padded input {tuple(h.shape[2:])} (padding {self.padding})"
                )
        z = self.conv(h * self.scale)
        return z if self.bias is None else z + self.beta * self.bias.view(-1, *[1] * self.dims)

    def extra_repr(self) -> str:
        return f"sigma_w={self.sigma_w}, beta={self.beta}, bias={self.bias is not None}"


class Elementwise(nn.Module):
    """An activation applied elementwise: a name of `ntk.activations.ACTIVATIONS` (or an `Activation`).

    Example:
        >>> import torch, ntk
        >>> ntk.blocks.Elementwise("relu")(torch.tensor([-1.0, 2.0]))
        tensor([0., 2.])
    """

    def __init__(self, activation: str | Activation) -> None:
        super().__init__()
        if isinstance(activation, str) and activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; allowed: {', '.join(sorted(ACTIVATIONS))}")
        self.activation = as_activation(activation)
        self.name = self.activation.name

    def forward(self, h: Tensor) -> Tensor:
        return self.activation.fn(h)

    def extra_repr(self) -> str:
        return self.name


class AvgPool(nn.Module):
    """Average pooling over windows of `kernel_size` at `stride` (default: the window), no padding.

    Example:
        >>> import torch, ntk
        >>> ntk.blocks.AvgPool(2)(torch.ones(1, 3, 4, 4)).shape
        torch.Size([1, 3, 2, 2])
    """

    def __init__(self, kernel_size: int | tuple[int, ...], stride: int | tuple[int, ...] | None = None, dims: int = 2) -> None:
        super().__init__()
        if dims not in (1, 2):
            raise ValueError(f"dims must be 1 or 2, got {dims!r}")
        self.dims = dims
        self.kernel_size = _pair(kernel_size, dims, "kernel_size")
        self.stride = self.kernel_size if stride is None else _pair(stride, dims, "stride")
        if min(self.kernel_size) < 1 or min(self.stride) < 1:
            raise ValueError(f"kernel_size and stride must be >= 1, got {kernel_size}, {stride}")

    def forward(self, h: Tensor) -> Tensor:
        if h.dim() != self.dims + 2 or any(size < k for size, k in zip(h.shape[2:], self.kernel_size)):
            raise ValueError(
                f"{self.dims}-D average pooling of window {self.kernel_size} needs inputs (N, C, ...) at least that large, got {tuple(h.shape)}"
            )
        pool = F.avg_pool1d if self.dims == 1 else F.avg_pool2d
        return pool(h, self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class GlobalAvgPool(nn.Module):
    """The mean over all positions: (N, C, ...) -> (N, C).

    Example:
        >>> import torch, ntk
        >>> ntk.blocks.GlobalAvgPool()(torch.ones(2, 3, 4, 4)).shape
        torch.Size([2, 3])
    """

    def forward(self, h: Tensor) -> Tensor:
        if h.dim() < 3:
            raise ValueError(f"global average pooling needs inputs (N, C, ...) with positions, got {tuple(h.shape)}")
        return h.mean(tuple(range(2, h.dim())))


class Flatten(nn.Module):
    """(N, C, ...) -> (N, C x positions), channel-major as `torch.flatten`.

    Example:
        >>> import torch, ntk
        >>> ntk.blocks.Flatten()(torch.ones(2, 3, 4, 4)).shape
        torch.Size([2, 48])
    """

    def forward(self, h: Tensor) -> Tensor:
        return h.flatten(1)


class Residual(nn.Module):
    """x + branch(x). The branch must end with a Dense or Conv block: its output is then a fresh
    zero-mean Gaussian process, independent of x in the limit, and the kernels of the two paths add.

    Example:
        >>> import torch, ntk
        >>> g = torch.Generator().manual_seed(0)
        >>> block = ntk.blocks.Residual(torch.nn.Sequential(ntk.blocks.Elementwise("relu"), ntk.blocks.Conv(4, 4, 3, padding=1, generator=g)))
        >>> block(torch.randn(2, 4, 6, 6)).shape
        torch.Size([2, 4, 6, 6])
    """

    def __init__(self, branch: nn.Module) -> None:
        super().__init__()
        last = branch[-1] if isinstance(branch, nn.Sequential) and len(branch) else branch
        if not isinstance(last, (NTKDense, Conv)):
            raise ValueError(
                f"a residual branch must end with a Dense or Conv block (so that its output is independent of x), got {type(last).__name__}"
            )
        self.branch = branch

    def forward(self, x: Tensor) -> Tensor:
        return x + self.branch(x)


BLOCKS = (NTKDense, Conv, Elementwise, AvgPool, GlobalAvgPool, Flatten, Residual, nn.Sequential)
