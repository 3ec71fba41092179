"""Kernels in tiles: a store on disk that many processes fill one tile at a time, and predictions from it.

A kernel K (N1, N2) is cut into tiles of `rows` x `rows` entries (the last row and column of tiles
smaller); for a symmetric kernel (x2 = x1) only the tiles on or above the diagonal are computed, the
others are their transposes. Several kernels of the same inputs can share a store (the NNGP and the
NTK of a limit, computed together): a tile holds all of them, (C, rows, cols). `TileStore` is a
folder on a file system that every job sees:

    manifest.json        what the kernel is (the settings it was made with), its shape, dtype, tile
                         size, symmetry and the names of its C kernels
    tiles/<i>_<j>.npy     one tile, a plain .npy file written under a temporary name and renamed, so
                         a tile file is whole or absent, also with concurrent writers on NFS (tiles
                         in separate files never share a page, as they would in one file)
    tiles/<i>_<j>.json    its record: SHA-256 of its bytes, shape, seconds, peak memory, host, time
    kernel_<name>.npy     the assembled kernels (`assemble`): .npy memmaps, written one tile at a time

Every tile is checked when it is written (shape, finite values) and when it is read back (its
SHA-256 against the record); a tile without a record is missing, and a rerun computes only the
missing tiles. A store made with other settings is refused, naming the first setting that differs.

Predictions read the assembled kernel through memmaps, `block` rows at a time: `blocked_cholesky`
(left-looking, the factor written to its own memmap; memory O(N x block)), `cholesky_solve`, and
`conjugate_gradients` (many right-hand sides at once, one pass over the kernel per iteration); on
top of them `stored_regression` (kernel regression at t = inf, Section 5 of the paper) and
`stored_gaussian` (the infinite-width network's Gaussian at t = inf: its mean and the variances of
the test outputs, Theorem 2 with Sigma and Theta).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class TileGrid:
    """The tiles of an (n1, n2) kernel, `rows` x `rows` each; with `symmetric` only i <= j.

    Example:
        >>> from ntk.tiles import TileGrid
        >>> grid = TileGrid(10, 10, 4, symmetric=True)  # 3 x 3 blocks, upper triangle
        >>> grid.count, grid.tile(4), grid.slices(1, 2)
        (6, (1, 2), (slice(4, 8, None), slice(8, 10, None)))
    """

    n1: int
    n2: int
    rows: int
    symmetric: bool

    @property
    def blocks(self) -> tuple[int, int]:
        return math.ceil(self.n1 / self.rows), math.ceil(self.n2 / self.rows)

    @property
    def tiles(self) -> list[tuple[int, int]]:
        """Every tile (i, j) to compute, row by row."""
        b1, b2 = self.blocks
        return [(i, j) for i in range(b1) for j in range(b2) if not self.symmetric or j >= i]

    @property
    def count(self) -> int:
        return len(self.tiles)

    def tile(self, k: int) -> tuple[int, int]:
        """The k-th tile (0 <= k < count)."""
        if not 0 <= k < self.count:
            raise ValueError(f"tile {k} does not exist: the kernel has {self.count} tiles (0 ... {self.count - 1})")
        return self.tiles[k]

    def slices(self, i: int, j: int) -> tuple[slice, slice]:
        return slice(i * self.rows, min((i + 1) * self.rows, self.n1)), slice(j * self.rows, min((j + 1) * self.rows, self.n2))


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _peak_memory_bytes() -> int:
    """Peak resident memory of this process so far (Linux ru_maxrss is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class TileStore:
    """A kernel stored as tiles in a folder (module docstring). Open it with `TileStore.open`.

    Example:
        >>> import tempfile, numpy as np
        >>> from ntk.tiles import TileStore
        >>> x = np.random.default_rng(0).normal(size=(5, 3))
        >>> store = TileStore.open(tempfile.mkdtemp(), dict(kernel="linear"), 5, 5, rows=2, symmetric=True)
        >>> for i, j in store.missing():
        ...     r, c = store.grid.slices(i, j)
        ...     _ = store.write(i, j, (x[r] @ x[c].T)[None])  # checked, then kept with its SHA-256
        >>> np.allclose(store.assemble()["k"], x @ x.T)
        True
    """

    def __init__(self, path: Path, manifest: dict):
        self.path = Path(path)
        self.manifest = manifest
        self.grid = TileGrid(manifest["n1"], manifest["n2"], manifest["rows"], manifest["symmetric"])
        self.names: list[str] = list(manifest["names"])
        self.dtype = np.dtype(manifest["dtype"])

    @classmethod
    def open(
        cls,
        path: str | Path,
        settings: dict,
        n1: int,
        n2: int,
        rows: int,
        symmetric: bool,
        names: tuple[str, ...] = ("k",),
        dtype: str = "float64",
    ) -> TileStore:
        """Open the store at `path`, creating it if it does not exist. An existing store must have
        been made with the same settings, shape, tile size, symmetry, names and dtype: otherwise one
        line names the first that differs (the tiles of another kernel must not be mixed in)."""
        if rows < 1 or n1 < 1 or n2 < 1:
            raise ValueError(f"a tiled kernel needs n1, n2 and rows >= 1, got n1={n1}, n2={n2}, rows={rows}")
        if symmetric and n1 != n2:
            raise ValueError(f"a symmetric kernel is square, got {n1} x {n2}")
        path = Path(path)
        manifest = dict(
            settings=json.loads(json.dumps(settings)), n1=n1, n2=n2, rows=rows, symmetric=symmetric, names=list(names), dtype=dtype
        )
        file = path / "manifest.json"
        if file.exists():
            have = json.loads(file.read_text())
            diff = _first_difference(have, manifest)
            if diff is not None:
                key, old, new = diff
                raise ValueError(
                    f"the store {path} was made with {key}={old!r}, not {new!r}; use another store folder, or delete this one to start over"
                )
            return cls(path, have)
        (path / "tiles").mkdir(parents=True, exist_ok=True)
        _atomic_write(file, json.dumps(manifest, indent=1, sort_keys=True).encode())
        return cls(path, manifest)

    def _tile_path(self, i: int, j: int, suffix: str) -> Path:
        return self.path / "tiles" / f"{i}_{j}{suffix}"

    def done(self) -> list[tuple[int, int]]:
        """The tiles with a record (written whole)."""
        return [(i, j) for i, j in self.grid.tiles if self._tile_path(i, j, ".json").exists()]

    def missing(self) -> list[tuple[int, int]]:
        """The tiles still to compute."""
        return [(i, j) for i, j in self.grid.tiles if not self._tile_path(i, j, ".json").exists()]

    def write(self, i: int, j: int, tile: np.ndarray | Tensor, seconds: float | None = None, **meta: object) -> dict:
        """Check and store tile (i, j), (C, rows, cols): its data first, then its record (with `meta`,
        say the job that computed it)."""
        if (i, j) not in self.grid.tiles:
            raise ValueError(
                f"({i}, {j}) is not a tile of this store: {self.grid.blocks[0]} x {self.grid.blocks[1]} blocks, symmetric={self.grid.symmetric}"
            )
        if isinstance(tile, Tensor):
            tile = tile.detach().cpu().numpy()
        tile = np.ascontiguousarray(tile, dtype=self.dtype)
        r, c = self.grid.slices(i, j)
        shape = (len(self.names), r.stop - r.start, c.stop - c.start)
        if tile.shape != shape:
            raise ValueError(f"tile ({i}, {j}) has shape {tile.shape}, expected {shape} (kernels, rows, columns)")
        if not np.isfinite(tile).all():
            raise ValueError(f"tile ({i}, {j}) holds non-finite values; it was not stored")
        npy = self._tile_path(i, j, ".npy")
        tmp = npy.with_name(f".{npy.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as fh:
                np.save(fh, tile)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, npy)
        except OSError as err:  # a full disk, a missing permission, ...: one line, nothing half-written left
            tmp.unlink(missing_ok=True)
            raise ValueError(f"tile ({i}, {j}) could not be written to {npy}: {err.strerror or err}") from None
        record = (
            dict(
                sha256=hashlib.sha256(tile.tobytes()).hexdigest(),
                shape=list(shape),
                seconds=None if seconds is None else round(seconds, 3),
                peak_memory_bytes=_peak_memory_bytes(),
                host=socket.gethostname(),
                finished_unix=round(time.time(), 3),
            )
            | meta
        )
        _atomic_write(self._tile_path(i, j, ".json"), json.dumps(record, indent=1).encode())
        return record

    def record(self, i: int, j: int) -> dict:
        return json.loads(self._tile_path(i, j, ".json").read_text())

    def read(self, i: int, j: int) -> np.ndarray:
        """Tile (i, j), (C, rows, cols), checked against its record's SHA-256."""
        record = self.record(i, j)
        tile = np.load(self._tile_path(i, j, ".npy"))
        if list(tile.shape) != record["shape"] or hashlib.sha256(np.ascontiguousarray(tile).tobytes()).hexdigest() != record["sha256"]:
            raise ValueError(
                f"tile ({i}, {j}) of {self.path} does not match its record (changed or damaged on disk); delete tiles/{i}_{j}.json and rerun to recompute it"
            )
        return tile

    def assemble(self) -> dict[str, np.memmap]:
        """The whole kernels, {name: (N1, N2) memmap kernel_<name>.npy}, written one tile at a time
        (each checked): memory holds one tile, never a second copy of the kernel."""
        if missing := self.missing():
            raise ValueError(f"{len(missing)} of {self.grid.count} tiles are missing (first: {missing[0]}); compute them first")
        out = {
            name: np.lib.format.open_memmap(
                self.path / f"kernel_{name}.npy", mode="w+", dtype=self.dtype, shape=(self.grid.n1, self.grid.n2)
            )
            for name in self.names
        }
        for i, j in self.grid.tiles:
            tile = self.read(i, j)
            r, c = self.grid.slices(i, j)
            for k, name in enumerate(self.names):
                out[name][r, c] = tile[k]
                if self.grid.symmetric and i != j:
                    out[name][c, r] = tile[k].T
        for m in out.values():
            m.flush()
        return out

    def kernels(self) -> dict[str, np.memmap]:
        """The assembled kernels, opened read-only (`assemble` first)."""
        return {name: np.load(self.path / f"kernel_{name}.npy", mmap_mode="r") for name in self.names}


def _first_difference(have: dict, want: dict, prefix: str = "") -> tuple[str, object, object] | None:
    for key in sorted(set(have) | set(want)):
        a, b = have.get(key), want.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            if (diff := _first_difference(a, b, f"{name}.")) is not None:
                return diff
        elif a != b:
            return name, a, b
    return None


# ----------------------------------------------------------------------------- solvers on stored kernels


def _rows(k: np.ndarray, r: slice, c: slice, dtype: torch.dtype) -> Tensor:
    """A copy of k[r, c] in memory (never a view: the callers modify it)."""
    return torch.tensor(np.asarray(k[r, c]), dtype=dtype)


def matmul_blocked(k: np.ndarray, v: Tensor, block: int = 2048) -> Tensor:
    """K v for a kernel on disk (a memmap), `block` rows of K in memory at a time.

    Example:
        >>> import numpy as np, torch
        >>> from ntk.tiles import matmul_blocked
        >>> k = np.arange(12.0).reshape(3, 4)
        >>> matmul_blocked(k, torch.ones(4, dtype=torch.float64), block=2).tolist()
        [6.0, 22.0, 38.0]
    """
    out = []
    for s in range(0, k.shape[0], block):
        out.append(_rows(k, slice(s, s + block), slice(None), v.dtype) @ v)
    return torch.cat(out)


def blocked_cholesky(k: np.ndarray, path: str | Path, block: int = 1024, jitter: float = 0.0) -> np.memmap:
    """The lower Cholesky factor L of K + jitter I (K symmetric positive definite, a memmap), written
    to the memmap `path` block column by block column (left-looking): memory O(N x block).

    Example:
        >>> import numpy as np, tempfile, os
        >>> from ntk.tiles import blocked_cholesky
        >>> a = np.random.default_rng(0).normal(size=(7, 7)); k = a @ a.T + 7 * np.eye(7)
        >>> L = blocked_cholesky(k, os.path.join(tempfile.mkdtemp(), "L.npy"), block=3)
        >>> np.allclose(L, np.linalg.cholesky(k))
        True
    """
    n = k.shape[0]
    L = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(n, n))
    for s in range(0, n, block):
        e = min(s + block, n)
        left = _rows(L, slice(s, n), slice(0, s), torch.float64)  # (n - s, s): the factor's rows below, columns done
        col = _rows(k, slice(s, n), slice(s, e), torch.float64)  # (n - s, b)
        if s:
            col -= left @ left[: e - s].T
        diag = col[: e - s] + jitter * torch.eye(e - s, dtype=torch.float64)
        ljj, info = torch.linalg.cholesky_ex(diag)
        if info.item() != 0:
            raise ValueError(
                f"the kernel is not positive definite (the Cholesky factor failed at row {s + info.item()}); add a ridge or jitter"
            )
        L[s:e, s:e] = ljj.numpy()
        if e < n:  # the rows below: (col below) L_jj^-T
            L[e:, s:e] = torch.linalg.solve_triangular(ljj, col[e - s :].T, upper=False).T.numpy()
    L.flush()
    return L


def cholesky_solve(L: np.ndarray, b: Tensor, block: int = 1024) -> Tensor:
    """(L L^T)^-1 b for a lower factor L on disk, by blocked forward and back substitution; b (N,) or (N, K)."""
    vec = b.dim() == 1
    y = (b[:, None] if vec else b).to(torch.float64).clone()
    n = L.shape[0]
    starts = list(range(0, n, block))
    for s in starts:  # L z = b
        e = min(s + block, n)
        if s:
            y[s:e] -= _rows(L, slice(s, e), slice(0, s), torch.float64) @ y[:s]
        y[s:e] = torch.linalg.solve_triangular(_rows(L, slice(s, e), slice(s, e), torch.float64), y[s:e], upper=False)
    for s in reversed(starts):  # L^T x = z
        e = min(s + block, n)
        if e < n:
            y[s:e] -= _rows(L, slice(e, n), slice(s, e), torch.float64).T @ y[e:]
        y[s:e] = torch.linalg.solve_triangular(_rows(L, slice(s, e), slice(s, e), torch.float64).T, y[s:e], upper=True)
    return y[:, 0] if vec else y


def conjugate_gradients(
    k: np.ndarray, b: Tensor, ridge: float = 0.0, tol: float = 1e-10, max_iter: int | None = None, block: int = 2048
) -> tuple[Tensor, int]:
    """(K + ridge I)^-1 b by conjugate gradients, every column of b (N, K) at once (one pass over the
    kernel on disk per iteration); stops when every column's residual is below tol x its ||b||.
    Returns the solution and the iterations taken.

    Example:
        >>> import numpy as np, torch
        >>> from ntk.tiles import conjugate_gradients
        >>> a = np.random.default_rng(0).normal(size=(6, 6)); k = a @ a.T + 6 * np.eye(6)
        >>> x, it = conjugate_gradients(k, torch.ones(6, dtype=torch.float64))
        >>> np.allclose(k @ x.numpy(), 1.0)
        True
    """
    vec = b.dim() == 1
    b = (b[:, None] if vec else b).to(torch.float64)
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = (r * r).sum(0)
    target = (tol * b.norm(dim=0)) ** 2
    max_iter = max_iter or 10 * k.shape[0]
    it = 0
    while it < max_iter and bool((rs > target).any()):
        kp = matmul_blocked(k, p, block) + ridge * p
        alpha = rs / (p * kp).sum(0).clamp_min(torch.finfo(torch.float64).tiny)
        x += alpha * p
        r -= alpha * kp
        new = (r * r).sum(0)
        p = r + (new / rs.clamp_min(torch.finfo(torch.float64).tiny)) * p
        rs = new
        it += 1
    if bool((rs > target).any()):
        raise ValueError(f"conjugate gradients did not reach tol={tol:g} in {max_iter} iterations; add a ridge, or use the Cholesky solver")
    return (x[:, 0] if vec else x), it


def _solve(k_train: np.ndarray, b: Tensor, ridge: float, solver: str, work: str | Path | None, block: int) -> Tensor:
    """(K + ridge I)^-1 b; the Cholesky factor goes to `work`/cholesky.npy (default: beside the kernel's file)."""
    if solver == "cholesky":
        work = Path(work) if work is not None else Path(getattr(k_train, "filename", None) or ".").parent
        L = blocked_cholesky(k_train, work / "cholesky.npy", block=block, jitter=ridge)
        return cholesky_solve(L, b, block)
    if solver == "cg":
        return conjugate_gradients(k_train, b, ridge=ridge, block=block)[0]
    raise ValueError(f"unknown solver {solver!r}; allowed: cholesky, cg")


def stored_regression(
    k: np.ndarray,
    n_train: int,
    y_train: Tensor,
    ridge: float = 0.0,
    solver: str = "cholesky",
    work: str | Path | None = None,
    block: int = 1024,
) -> Tensor:
    """Kernel regression at t = inf from a kernel on disk over train and test inputs, the first
    n_train of them the training inputs: K(test, X) (K(X, X) + ridge I)^-1 Y, (M, K) or (M,).

    Args:
        k: the (N, N) kernel (a memmap from `TileStore.assemble`), training inputs first.
        y_train: (n_train,) or (n_train, K) targets.
        solver: "cholesky" (`blocked_cholesky`, its factor written to `work`/cholesky.npy) or "cg".
        work: a folder for the factor (default: beside the kernel).

    Example:
        >>> import torch, tempfile, ntk
        >>> x = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        >>> theta = ntk.limiting_kernels(x, None, depth=2)[1]
        >>> pred = ntk.stored_regression(theta.numpy(), 6, x[:6, 0], work=tempfile.mkdtemp())
        >>> torch.allclose(pred, ntk.kernel_regression(theta[6:, :6], theta[:6, :6], x[:6, 0]))
        True
    """
    alpha = _solve(k[:n_train, :n_train], y_train.to(torch.float64), ridge, solver, work, block)
    return matmul_blocked(k[n_train:, :n_train], alpha, block)


def stored_gaussian(
    ntk: np.ndarray,
    nngp: np.ndarray,
    n_train: int,
    y_train: Tensor,
    ridge: float = 0.0,
    solver: str = "cholesky",
    work: str | Path | None = None,
    block: int = 1024,
) -> tuple[Tensor, Tensor]:
    """The infinite-width network's Gaussian at t = inf (Theorem 2 with the limits Sigma and Theta):
    mean Theta(x, X) Theta^-1 Y and the variance of each test output,
    Sigma(x, x) + b Sigma(X, X) b^T - 2 b Sigma(X, x), b = Theta(x, X) Theta^-1 (`ntk.gaussian_prediction` at t = inf).

    Returns:
        mean (M,) or (M, K), and variances (M,).

    Example:
        >>> import torch, tempfile, ntk
        >>> x = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        >>> nngp, theta = ntk.limiting_kernels(x, None, depth=2)
        >>> mean, var = ntk.stored_gaussian(theta.numpy(), nngp.numpy(), 6, x[:6, 0], work=tempfile.mkdtemp())
        >>> mean.shape, var.shape
        (torch.Size([2]), torch.Size([2]))
    """
    m = ntk.shape[0] - n_train
    cross = torch.cat(
        [_rows(ntk, slice(n_train + s, n_train + min(s + block, m)), slice(0, n_train), torch.float64) for s in range(0, m, block)]
    )
    gain_t = _solve(ntk[:n_train, :n_train], cross.T.contiguous(), ridge, solver, work, block)  # Theta^-1 Theta(X, x), (N, M)
    mean = gain_t.T @ y_train.to(torch.float64)
    sigma_gain = matmul_blocked(nngp[:n_train, :n_train], gain_t, block)  # Sigma(X, X) b^T, (N, M)
    sigma_cross = torch.cat(
        [_rows(nngp, slice(0, n_train), slice(n_train + s, n_train + min(s + block, m)), torch.float64) for s in range(0, m, block)], 1
    )  # Sigma(X, x), (N, M)
    own = torch.from_numpy(np.ascontiguousarray(np.diagonal(nngp)[n_train:])).to(torch.float64)
    var = own + (gain_t * sigma_gain).sum(0) - 2 * (gain_t * sigma_cross).sum(0)
    return mean, var
