"""Small helpers shared by the library and the entry points: device, dtype, timing."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_device(device: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; otherwise a device string torch understands.

    Example:
        >>> import ntk
        >>> ntk.resolve_device("cpu")  # "auto" is CUDA when there is one, else the CPU
        device(type='cpu')
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; allowed: auto, cpu, cuda, cuda:<index>") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}; allowed: auto, cpu, cuda, cuda:<index>")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use device=auto or device=cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ValueError(f"device {device!r} requested but this machine has {count} CUDA device(s); allowed: cuda:0 ... cuda:{count - 1}")
    return dev


def resolve_dtype(dtype: str) -> torch.dtype:
    """'float32' or 'float64' -> torch dtype.

    Example:
        >>> import ntk
        >>> ntk.resolve_dtype("float64")
        torch.float64
    """
    try:
        return DTYPES[dtype]
    except (KeyError, TypeError):
        raise ValueError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPES)}") from None


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on `device` (a no-op on the CPU): needed before reading a clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn: Callable[[], object], device: torch.device, repeats: int = 5, warmup: int = 1) -> float:
    """Smallest wall time of `fn` over `repeats` runs, in seconds, after `warmup` runs."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)
