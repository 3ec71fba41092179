"""Memory available to a kernel computation, and the guard that refuses what would not fit.

The available memory is read from the system, not guessed: on CUDA the device's free memory
(`torch.cuda.mem_get_info`) plus what PyTorch's caching allocator holds reserved but unallocated
(freed blocks it keeps for reuse, which `mem_get_info` counts as taken), on the CPU `MemAvailable`
of /proc/meminfo (Linux), else 8 GiB. A fraction (`SAFETY`) of it is the
budget. The environment variable NTK_MEMORY_LIMIT (bytes, or with a K/M/G suffix) or an explicit
`memory_limit` argument replaces the measurement, for tests and shared machines.

`reuse_freed_memory` keeps freed arrays of up to 32 MiB in the process (glibc's malloc), so that the
chunked recursions of `ntk.limits` do not pay a page fault per 4 kB for every fresh array.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import sys

import torch

SAFETY = 0.8
GIB = 1024**3


class NTKMemoryError(MemoryError):
    """A computation's memory estimate exceeds the budget; the message names what would fit.

    Example:
        >>> import torch, ntk
        >>> model = ntk.NTKMLP(2, 100, 3, generator=torch.Generator().manual_seed(0))
        >>> try:
        ...     ntk.empirical_ntk(model, torch.randn(100, 2), method="jacobian", memory_limit=10**6)
        ... except ntk.NTKMemoryError as err:
        ...     print(str(err).split(";")[0])
        method='jacobian' needs about 16.9 MB for a 100 x 100 kernel, more than the 1 MB available
    """


def parse_bytes(text: str | int | float) -> int:
    """'512M', '2G', '1.5e9' or a number -> bytes.

    Example:
        >>> import ntk
        >>> ntk.parse_bytes("2G"), ntk.parse_bytes("512M")
        (2147483648, 536870912)
    """
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([KMGT]?)i?B?\s*", str(text))
    if not m:
        raise ValueError(f"cannot read a memory size from {text!r}; use bytes or a K/M/G/T suffix, e.g. 4G")
    return int(float(m.group(1)) * 1024 ** "_KMGT".index(m.group(2) or "_"))


def available_memory(device: torch.device | str = "cpu") -> int:
    """Bytes that a computation on `device` may use (see module docstring).

    Example:
        >>> import ntk
        >>> ntk.available_memory("cpu") > 0  # bytes a kernel may use (NTK_MEMORY_LIMIT overrides)
        True
    """
    if os.environ.get("NTK_MEMORY_LIMIT"):
        return parse_bytes(os.environ["NTK_MEMORY_LIMIT"])
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(SAFETY * (free + cached))
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(SAFETY * int(line.split()[1]) * 1024)
    except OSError:
        pass
    return int(SAFETY * 8 * GIB)


def fmt_bytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n / 1e3:.3g} kB"


def check_fits(what: str, needed: int, device: torch.device | str | None = None) -> None:
    """Raise `NTKMemoryError` (one line: what, how much, how much is available) if `needed` bytes
    exceed the budget of `device` (the rule of `available_memory`)."""
    budget = available_memory(device if device is not None else "cpu")
    if needed > budget:
        raise NTKMemoryError(
            f"{what} needs {fmt_bytes(needed)}, more than the {fmt_bytes(budget)} available; "
            "use a smaller width or fewer inputs, or raise the limit (NTK_MEMORY_LIMIT)"
        )


_REUSE: dict[str, object] = {"applied": None}
MMAP_THRESHOLD = 32 * 1024**2  # glibc's largest: arrays up to this size come from (and return to) the heap
TRIM_THRESHOLD = GIB  # free memory kept at the heap's top before it goes back to the system


def reuse_freed_memory() -> bool:
    """Let freed CPU arrays be reused instead of returned to the system and faulted in again (glibc on
    Linux: mallopt's M_MMAP_THRESHOLD = 32 MiB and M_TRIM_THRESHOLD = 1 GiB, once per process; the
    process keeps up to 1 GiB of freed memory). A fresh array costs the kernel's zeroing of every page
    on first touch, about 3 GB/s on a 2-core CPU, which bounded the recursion's chunks (8 MB arrays):
    reused memory halves NTKCNN's limiting kernels there. The environment variable NTK_REUSE_MEMORY=0
    leaves the allocator as it is. Returns whether the setting is in force."""
    if _REUSE["applied"] is None:
        _REUSE["applied"] = False
        if os.environ.get("NTK_REUSE_MEMORY", "1").strip() != "0" and sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
                _REUSE["applied"] = bool(libc.mallopt(m_mmap_threshold, MMAP_THRESHOLD)) and bool(
                    libc.mallopt(m_trim_threshold, TRIM_THRESHOLD)
                )
            except (OSError, AttributeError):  # not glibc
                pass
    return bool(_REUSE["applied"])
