"""MNIST digits for the convolutional experiments (`mnist_cntk`, `kernel_tiles`): the images, the
architectures whose infinite-width kernels they take, and the scores of a prediction."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from ntk.blocks import Dense, Flatten
from ntk.cnn import NTKCNN

CLASSES = 10


def images(x: torch.Tensor, size: int) -> torch.Tensor:
    """Flat digits (N, 784) -> standardised images (N, 1, size, size), average-pooled from 28 x 28."""
    x = (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True)
    x = x.reshape(-1, 1, 28, 28)
    return F.avg_pool2d(x, 28 // size) if size != 28 else x


def architectures(cfg: DictConfig) -> dict[str, nn.Module]:
    """The two convolutional architectures whose limits are computed (their weights are never read)."""
    gap = NTKCNN(1, 1, cfg.model.depth, generator=torch.Generator().manual_seed(0))
    probe = nn.Sequential(*list(gap)[:-2])(torch.zeros(1, 1, cfg.image_size, cfg.image_size))  # the last convolution's output
    flatten = nn.Sequential(*list(gap)[:-2], Flatten(), Dense(probe[0].numel(), 1, beta=0.0, bias=False))
    return {"cntk_gap": gap, "cntk_flatten": flatten}


def scores(f: torch.Tensor, y: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(mean over digits of ||f - y||^2, fraction with argmax f = label)."""
    return (f - y).square().sum(1).mean().item(), (f.argmax(1) == labels).double().mean().item()
