"""Provenance and crash-safe writes for everything under results/."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from ntk.utils import synchronize


def git_revision() -> str:
    """Current commit, with '+dirty' when tracked code differs from it; 'unknown' outside git.

    Files under results/ do not count: rerunning an experiment rewrites them.
    """
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def provenance(command: list[str] | None = None, **extra: object) -> dict:
    """Who made a result: command, git revision, versions, machine, time; plus `extra` fields."""
    return {
        "command": " ".join(command if command is not None else ["python", "-m", "experiments.run", *sys.argv[1:]]),
        "git_revision": extra.pop("git_revision", None) or git_revision(),
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "cuda_version": torch.version.cuda,
        "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def gemm_gflops(size: int = 2048, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", rounds: int = 5) -> float:
    """This machine's matrix-product rate now: the median GFLOP/s of `rounds` (size x size) products.

    Long runs record it at their start and end, so that their wall times can be compared across
    machines and across runs of one machine (whose speed varies).
    """
    device = torch.device(device)
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    a @ b  # warm-up (on CUDA: the cuBLAS handle and kernel choice), finished before the clock starts
    synchronize(device)
    times = []
    for _ in range(rounds):
        begin = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - begin)
    return round(2 * size**3 / sorted(times)[rounds // 2] / 1e9, 1)


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same directory and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual mode
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path | str, obj: object) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")
