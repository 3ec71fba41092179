"""Model families that no kernel rule was written for, shared by the structured benchmark and the tests.

Each builder takes the number of outputs and a size ("test": small enough for float64 Jacobians in
the default test run; "bench": the size `scripts.bench_structured` times) and returns the model (eval
mode) and a function of (n, generator) giving inputs for it.

  mobilenet   torchvision's mobilenet_v3_small (depthwise and grouped convolutions, hardswish,
              squeeze-and-excitation, BatchNorm in eval mode), 32 x 32 images
  gru_text    nn.Embedding -> nn.GRU -> nn.Linear on the last state (token ids; no rule covers the GRU)
  vit         a small vision transformer: patches by a strided convolution, a class token and
              positions as raw parameters, nn.TransformerEncoder, LayerNorm, a linear head
  unet        a UNet-style block: convolutions, GroupNorm, SiLU, a strided convolution down,
              nn.ConvTranspose2d up, a skip connection; image to image (or pooled to O outputs)
  lora        frozen linear layers with trainable low-rank updates B A as raw parameters (LoRA,
              Hu et al. 2021): no trainable parameter belongs to a module with a rule
  img2img     an image-to-image network: Conv2d, GroupNorm, SiLU, ConvTranspose2d up by 2, a 1 x 1
              Conv2d; 3 x 8 x 8 images to `out` x 16 x 16 (the whole image kept as output)
  pinn        a physics-informed residual: u_xx of a tanh MLP [1, w, w, 1] by torch.func.hessian inside
              the forward pass (`ntk.OperatorModel`, Poisson), on points tagged for u or the residual
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

FAMILIES = ("mobilenet", "gru_text", "vit", "unet", "lora", "img2img", "pinn")
SIZES = ("test", "bench")

Inputs = Callable[[int, torch.Generator], torch.Tensor]


class GRUText(nn.Module):
    """Token ids (N, L) -> embedding -> GRU -> linear map of the last hidden state."""

    def __init__(self, vocab: int, dim: int, hidden: int, out: int):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.gru = nn.GRU(dim, hidden, batch_first=True)
        self.head = nn.Linear(hidden, out)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        states, _ = self.gru(self.emb(ids))
        return self.head(states[:, -1])


class ViT(nn.Module):
    """A small vision transformer (Dosovitskiy et al. 2021): patch embedding, class token, learned
    positions, pre-norm encoder layers, a linear head on the class token."""

    def __init__(self, image: int, patch: int, dim: int, depth: int, heads: int, out: int, channels: int = 3):
        super().__init__()
        tokens = (image // patch) ** 2
        self.patches = nn.Conv2d(channels, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patches(x).flatten(2).transpose(1, 2)  # (N, tokens, dim)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], 1) + self.pos
        return self.head(self.norm(self.encoder(t))[:, 0])


class UNetBlock(nn.Module):
    """One UNet level (Ronneberger et al. 2015): two convolutions with GroupNorm and SiLU, a strided
    convolution down, a transposed convolution up, the skip concatenated, a 1 x 1 convolution out.
    Image to image (N, out, H, W), or with `pooled` the spatial mean (N, out)."""

    def __init__(self, channels: int, width: int, out: int, pooled: bool):
        super().__init__()
        act = nn.SiLU()
        self.inp = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.GroupNorm(4, width), act)
        self.down = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.GroupNorm(4, 2 * width), act)
        self.up = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.out = nn.Conv2d(2 * width, out, 1)
        self.pooled = pooled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.inp(x)
        y = self.out(torch.cat([self.up(self.down(skip)), skip], 1))
        return y.mean((2, 3)) if self.pooled else y


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable update B A of rank r, scaled by alpha / r (Hu et al. 2021)."""

    def __init__(self, fan_in: int, fan_out: int, rank: int, alpha: float = 8.0):
        super().__init__()
        self.base = nn.Linear(fan_in, fan_out).requires_grad_(False)
        self.a = nn.Parameter(torch.randn(rank, fan_in) / fan_in**0.5)
        self.b = nn.Parameter(torch.randn(fan_out, rank) * 0.1)  # nonzero, so that A's gradient is too
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * (x @ self.a.T) @ self.b.T


class ImageToImage(nn.Module):
    """Conv2d -> GroupNorm -> SiLU -> ConvTranspose2d (x2 up) -> SiLU -> 1 x 1 Conv2d: (N, C, H, W) to (N, out, 2H, 2W)."""

    def __init__(self, channels: int, width: int, out: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.GroupNorm(4, width),
            nn.SiLU(),
            nn.ConvTranspose2d(width, width, 2, stride=2),
            nn.SiLU(),
            nn.Conv2d(width, out, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def poisson(u: Callable, x: torch.Tensor) -> torch.Tensor:
    """u_xx at one point x (1,): the Laplacian of a 1-D Poisson problem (a source term does not enter the kernel)."""
    from torch.func import hessian

    return hessian(u)(x)[0, 0]


def build(family: str, out: int = 1, size: str = "test", seed: int = 0) -> tuple[nn.Module, Inputs]:
    """The model of `family` (eval mode, float32, seeded) with `out` outputs, and its inputs' maker."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; allowed: {', '.join(FAMILIES)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; allowed: {', '.join(SIZES)}")
    small = size == "test"
    torch.manual_seed(seed)
    if family == "mobilenet":
        import torchvision

        model = torchvision.models.mobilenet_v3_small(num_classes=out)
        side = 32
        inputs: Inputs = lambda n, g: torch.rand(n, 3, side, side, generator=g)  # noqa: E731
    elif family == "gru_text":
        vocab, length = (50, 6) if small else (1000, 32)
        model = GRUText(vocab, 8 if small else 64, 8 if small else 128, out)
        inputs = lambda n, g: torch.randint(0, vocab, (n, length), generator=g)  # noqa: E731
    elif family == "vit":
        image = 8 if small else 32
        model = ViT(image, 4, 16 if small else 64, 1 if small else 2, 2 if small else 4, out)
        inputs = lambda n, g: torch.randn(n, 3, image, image, generator=g)  # noqa: E731
    elif family == "unet":
        side = 8 if small else 32
        model = UNetBlock(2 if small else 3, 8 if small else 32, out, pooled=not small)
        inputs = lambda n, g: torch.randn(n, 2 if small else 3, side, side, generator=g)  # noqa: E731
    elif family == "img2img":
        model = ImageToImage(3, 4 if small else 16, out)
        inputs = lambda n, g: torch.randn(n, 3, 4 if small else 8, 4 if small else 8, generator=g)  # noqa: E731
    elif family == "pinn":
        from ntk.operators import OperatorModel

        width = 8 if small else 64
        model = OperatorModel(
            nn.Sequential(nn.Linear(1, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 1)), poisson
        )
        # half boundary-like points for u (tag 0), half residual points (tag 1), x in [0, 1]
        inputs = lambda n, g: torch.cat([(torch.arange(n) >= n // 2).float()[:, None], torch.rand(n, 1, generator=g)], 1)  # noqa: E731
    else:
        widths = [6, 8, 8] if small else [784, 512, 512]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [LoRALinear(a, b, 2 if small else 8), nn.Tanh()]
        layers.append(LoRALinear(widths[-1], out, 2 if small else 8))
        model = nn.Sequential(*layers)
        inputs = lambda n, g: torch.randn(n, widths[0], generator=g)  # noqa: E731
    return model.eval(), inputs
