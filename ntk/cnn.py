"""An NTK-parameterised convolutional network (the paper's Section 2 parameterisation, for convolutions).

    h(0) = x,   z(l+1) = W(l) * (h(l) / sqrt(fan_in(l))),   h(l) = relu(z(l)),   f(x) = w . mean_s h(L)(s) / sqrt(C)

Every weight is drawn i.i.d. N(0, 1); the 1/sqrt(fan-in) (fan-in = C_in k^2 for a k x k
convolution, C for the read-out) lives in the forward pass, applied to each layer's input, so that
every convolution is a plain `nn.Conv2d` without bias and the structured empirical NTK
(`ntk.structured`) covers its weights. `channels` is the width: the infinite-width limit of Jacot
et al. (2018) is channels -> infinity, whose kernels `ntk.limiting_kernels(model, x)` computes
(`ntk.limits`).
"""

from __future__ import annotations

import torch
from torch import nn

from ntk.blocks import Conv, Dense, Elementwise, GlobalAvgPool

Tensor = torch.Tensor


class NTKCNN(nn.Sequential):
    """Convolutions of `channels` channels (3 x 3, the first at stride 1, the others at stride 2),
    ReLU, a global average pool and a linear read-out to `out_dim` outputs: the composition of
    `ntk.blocks`

        Conv(C_in, C, 3, padding 1, no bias), Elementwise("relu"), Conv(C, C, 3, stride 2, padding 1,
        no bias), Elementwise("relu"), ..., GlobalAvgPool(), Dense(C, out_dim, no bias)

    so that `ntk.limiting_kernels(model, x)` gives its n = inf kernels (channels -> infinity).

    Args:
        in_channels: channels of the input images (N, C, H, W).
        channels: channels of every hidden convolution (the width).
        depth: number of convolutions (>= 1).
        out_dim: outputs.
        generator: CPU (or any) generator for the N(0, 1) draws, layer by layer; the numbers are
            drawn on its device and moved to `device`, so a CPU generator gives the same network everywhere.

    Example:
        >>> import torch, ntk
        >>> model = ntk.NTKCNN(in_channels=1, channels=8, generator=torch.Generator().manual_seed(0))
        >>> model(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 1])
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        depth: int = 3,
        out_dim: int = 1,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        for name, n in (("in_channels", in_channels), ("channels", channels), ("depth", depth), ("out_dim", out_dim)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {n!r}")
        widths = [in_channels] + [channels] * depth
        kw = dict(generator=generator, device=device, dtype=dtype)
        layers: list[nn.Module] = []
        for l, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers += [Conv(c_in, c_out, 3, stride=1 if l == 0 else 2, padding=1, bias=False, **kw), Elementwise("relu")]
        layers += [GlobalAvgPool(), Dense(channels, out_dim, beta=0.0, bias=False, **kw)]
        super().__init__(*layers)

    @property
    def convs(self) -> list[Conv]:
        """The convolution blocks, first to last."""
        return [m for m in self if isinstance(m, Conv)]

    @property
    def readout(self) -> Dense:
        """The linear read-out."""
        return self[-1]
