"""A kernel bigger than one process: tiles computed as the jobs of a Hydra multirun, one store, and
predictions from the stored kernel (`ntk.tiles`).

The inputs are data.n_train training digits followed by data.n_test test digits (standardised;
average-pooled to image_size x image_size for the CNN). Their (N, N) kernel, N = n_train + n_test,
is cut into row_blocks x row_blocks blocks; a job (`tile` = k) computes the k-th tile of the upper
triangle and writes it into the store (`store`, a folder every job can write: on a cluster a
shared file system). The kernel is

  - kernel=limit: the n = inf NNGP and NTK (Sigma, Theta; Section 3 of the paper, and for the CNN
    Arora et al. 2019) of NTKCNN's architecture (model.depth 3 x 3 convolutions at strides 1, 2,
    2, ReLU, global average pooling; `ntk.limits`) or of the NTK MLP (`ntk.analytic`);
  - kernel=empirical: the NTK of one network at initialisation (an NTKCNN with model.widths[0]
    channels, or the NTK MLP with that width, seed `seed`, 10 outputs; or the module saved at
    `checkpoint` by torch.save), traced over the 10 outputs and divided by 10 (`ntk.empirical_ntk`).

A job whose tile is in the store skips it; tile=-1 computes every missing tile in one process (the
single-process reference). The store is made with the settings that define the kernel
(`store_settings`) and refuses a job with other settings, naming the one that differs. When the
multirun ends (`AssembleOnEnd`; or `python -m experiments.kernel_tiles <the same overrides>` by hand)
every tile is checked and assembled into kernel_<name>.npy memmaps, and the test digits are
predicted from the stored kernel with targets e_k - 0.1: NTK regression at t = inf (and for the
limit the NNGP posterior mean and the infinite network's Gaussian variances), by blocked Cholesky
or conjugate gradients (`solver`). Outputs in out_dir: tiles.csv (i, j, rows, cols, SHA-256), table.csv
(kernel, predictor, solver, test_mse, test_accuracy), timing_tiles.csv (per tile: seconds, the float64 GEMM rate right after it, peak
memory, host, SLURM job, threads, revision, finish time), timing_summary.csv (tiles, pairs, compute
seconds, wall seconds from the first tile's start to the last one's end, pairs per second), config.yaml, provenance.json and the figure.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from hydra.experimental.callback import Callback
from omegaconf import MISSING, DictConfig, OmegaConf

from experiments.cli import USER_ERRORS, fail, say
from experiments.digits import CLASSES, architectures, images, scores
from experiments.figures import render
from experiments.launching import threads_per_job
from experiments.persistence import atomic_write_text, gemm_gflops, gemm_size, git_revision, provenance, run_start
from experiments.runner import Experiment
from experiments.validation import check_choice, check_int, check_nonnegative
from ntk.analytic import limiting_kernels as mlp_kernels
from ntk.cnn import NTKCNN
from ntk.data import MNIST_SOURCES, mnist_split
from ntk.empirical import empirical_ntk
from ntk.limits import model_limiting_kernels
from ntk.model import NTKMLP
from ntk.tiles import TileGrid, TileStore, stored_gaussian, stored_regression

KERNELS = ("limit", "empirical")
ARCHITECTURES = ("cnn", "mlp")
SOLVERS = ("cholesky", "cg")


@dataclass
class KernelTilesSchema:
    kernel: str = MISSING
    architecture: str = MISSING
    image_size: int = MISSING
    row_blocks: int = MISSING
    tile: int = MISSING
    store: str = MISSING
    checkpoint: str | None = MISSING
    solver: str = MISSING
    ridge: float = MISSING
    solve_block: int = MISSING
    threads: int | None = MISSING


def tiles_of(row_blocks: int) -> int:
    """Tiles of the upper triangle of row_blocks x row_blocks blocks (the sweep's range, `tiles_of` resolver)."""
    return int(row_blocks) * (int(row_blocks) + 1) // 2


def grid(cfg: DictConfig) -> TileGrid:
    n = cfg.data.n_train + cfg.data.n_test
    return TileGrid(n, n, math.ceil(n / cfg.row_blocks), symmetric=True)


def check_config(cfg: DictConfig) -> None:
    check_choice("kernel", cfg.kernel, KERNELS)
    check_choice("architecture", cfg.architecture, ARCHITECTURES)
    check_choice("solver", cfg.solver, SOLVERS)
    check_choice("data.source", cfg.data.source, MNIST_SOURCES)
    check_int("data.n_train", cfg.data.n_train, low=2)
    check_int("data.n_test", cfg.data.n_test)
    if cfg.image_size not in (7, 14, 28):
        raise ValueError(f"image_size must be 7, 14 or 28 (the 28 x 28 digits average-pooled by 4, 2 or 1), got {cfg.image_size!r}")
    check_int("row_blocks", cfg.row_blocks)
    n = cfg.data.n_train + cfg.data.n_test
    if cfg.row_blocks > n:
        raise ValueError(f"row_blocks={cfg.row_blocks} is more than the {n} inputs; allowed: 1 ... {n}")
    count = tiles_of(cfg.row_blocks)
    if isinstance(cfg.tile, bool) or not isinstance(cfg.tile, int) or not -1 <= cfg.tile < count:
        raise ValueError(
            f"tile must be -1 (every tile) or 0 ... {count - 1} (row_blocks={cfg.row_blocks} gives {count} tiles), got {cfg.tile!r}"
        )
    check_int("model.depth", cfg.model.depth)
    if cfg.kernel == "empirical" and cfg.checkpoint is None:
        check_int("model.widths[0]", cfg.model.widths[0])
    if cfg.checkpoint is not None and cfg.kernel != "empirical":
        raise ValueError("checkpoint= gives a network, whose kernel is the empirical one: set kernel=empirical (or checkpoint=null)")
    if cfg.checkpoint is not None and not Path(cfg.checkpoint).is_file():
        raise ValueError(f"checkpoint {cfg.checkpoint} is not a file (a module saved with torch.save(model))")
    check_nonnegative("ridge", cfg.ridge)
    check_int("solve_block", cfg.solve_block)
    if cfg.threads is not None:
        check_int("threads", cfg.threads)


def store_settings(cfg: DictConfig) -> dict:
    """What defines the stored kernel: a store made with other values of these refuses the job."""
    settings = dict(
        kernel=cfg.kernel,
        architecture=cfg.architecture,
        image_size=cfg.image_size,
        data=OmegaConf.to_container(cfg.data, resolve=True),
        kernel_dtype=cfg.kernel_dtype,
    )
    if cfg.kernel == "empirical":
        settings |= dict(model=OmegaConf.to_container(cfg.model, resolve=True), seed=cfg.seed)
        if cfg.checkpoint is not None:
            settings["checkpoint_sha256"] = hashlib.sha256(Path(cfg.checkpoint).read_bytes()).hexdigest()
    else:
        settings["model"] = dict(depth=cfg.model.depth) | (
            dict(beta=cfg.model.beta, activation=cfg.model.activation) if cfg.architecture == "mlp" else {}
        )
    return settings


def open_store(cfg: DictConfig) -> TileStore:
    g = grid(cfg)
    names = ("nngp", "ntk") if cfg.kernel == "limit" else ("ntk",)
    return TileStore.open(cfg.store, store_settings(cfg), g.n1, g.n2, g.rows, True, names=names, dtype="float64")


def inputs(cfg: DictConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """All digits, training first: (N, 1, s, s) images for the CNN or (N, s^2) for the MLP; and the labels."""
    d = cfg.data
    x_train, l_train, x_test, l_test = mnist_split(d.n_train, d.n_test, d.seed, d.source, d.root, d.download)
    x = images(torch.cat([x_train, x_test]).double(), cfg.image_size)
    return (x if cfg.architecture == "cnn" else x.flatten(1)), torch.cat([l_train, l_test])


def network(cfg: DictConfig, in_dim: int) -> torch.nn.Module:
    if cfg.checkpoint is not None:
        return torch.load(cfg.checkpoint, weights_only=False).double().eval()
    g = torch.Generator().manual_seed(cfg.seed)
    if cfg.architecture == "cnn":
        return NTKCNN(1, cfg.model.widths[0], cfg.model.depth, out_dim=CLASSES, generator=g, dtype=torch.float64)
    return NTKMLP(
        in_dim,
        cfg.model.widths[0],
        cfg.model.depth,
        out_dim=CLASSES,
        beta=cfg.model.beta,
        activation=cfg.model.activation,
        generator=g,
        dtype=torch.float64,
    )


def compute_tile(cfg: DictConfig, x: torch.Tensor, i: int, j: int, g: TileGrid) -> np.ndarray:
    """Tile (i, j): (kernels, rows, cols)."""
    r, c = g.slices(i, j)
    x1, x2 = x[r], (None if i == j else x[c])
    if cfg.kernel == "empirical":
        theta = empirical_ntk(network(cfg, x.shape[1]), x1, x2, trace=True) / CLASSES
        return theta[None].numpy()
    if cfg.architecture == "cnn":
        nngp, theta = model_limiting_kernels(architectures(cfg)["cntk_gap"], x1, x2)
    else:
        nngp, theta = mlp_kernels(x1, x2, cfg.model.depth, cfg.model.beta, cfg.model.activation)
    return np.stack([nngp.numpy(), theta.numpy()])


def run(cfg: DictConfig) -> pd.DataFrame | None:
    """One job: tile `cfg.tile` (or every missing tile for tile=-1) into the store."""
    check_config(cfg)
    threads = cfg.threads if cfg.threads is not None else threads_per_job()
    if threads is not None:
        torch.set_num_threads(threads)
    store = open_store(cfg)
    g = store.grid
    todo = store.missing() if cfg.tile == -1 else [g.tile(cfg.tile)]
    todo = [t for t in todo if t not in set(store.done())]
    if not todo:
        print(f"skip: tile {cfg.tile} is in {cfg.store}" if cfg.tile != -1 else f"skip: every tile is in {cfg.store}")
        return aggregate(cfg) if cfg.tile == -1 else None
    x, _ = inputs(cfg)
    for i, j in todo:
        begin = time.time()
        tile = compute_tile(cfg, x, i, j, g)
        job = os.environ.get("SLURM_ARRAY_JOB_ID", os.environ.get("SLURM_JOB_ID"))
        job = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if job and "SLURM_ARRAY_TASK_ID" in os.environ else job
        record = store.write(
            i,
            j,
            tile,
            seconds=time.time() - begin,
            slurm_job=job,
            pid=os.getpid(),
            threads=torch.get_num_threads(),
            git_revision=git_revision(),
            gemm_gflops_float64=gemm_gflops(gemm_size(1024), torch.float64, rounds=3),  # the machine's speed right after this tile
        )
        print(
            f"tile ({i}, {j}) of {g.count}: {tile.shape[1]} x {tile.shape[2]} in {record['seconds']:.1f} s, peak {record['peak_memory_bytes'] / 2**30:.2f} GiB"
        )
    if cfg.tile == -1:
        return aggregate(cfg)
    return None


def aggregate(cfg: DictConfig) -> pd.DataFrame:
    """Check and assemble the tiles, predict the test digits from the stored kernel, write the tables."""
    start = run_start()
    store = open_store(cfg)
    missing = store.missing()
    if missing:
        raise ValueError(
            f"{len(missing)} of {store.grid.count} tiles are missing (first: {missing[0]}); run the same command again to compute them"
        )
    kernels = store.assemble()
    rows, timing = [], []
    for k, (i, j) in enumerate(store.grid.tiles):
        rec = store.record(i, j)
        rows.append(dict(tile=k, i=i, j=j, rows=rec["shape"][1], cols=rec["shape"][2], sha256=rec["sha256"]))
        keep = ("seconds", "gemm_gflops_float64", "peak_memory_bytes", "host", "slurm_job", "threads", "git_revision", "finished_unix")
        timing.append(dict(tile=k, i=i, j=j) | {key: rec.get(key) for key in keep})
    tiles, timing = pd.DataFrame(rows), pd.DataFrame(timing)
    _, labels = inputs(cfg)
    n_train = cfg.data.n_train
    y = F.one_hot(labels, CLASSES).double() - 1.0 / CLASSES
    y_train, y_test, l_test = y[:n_train], y[n_train:], labels[n_train:]
    work, table, solve_s = Path(cfg.store), [], {}

    def predicted(predictor: str, f: torch.Tensor, seconds: float) -> None:
        mse, acc = scores(f, y_test, l_test)
        table.append(
            dict(kernel=f"{cfg.kernel}_{cfg.architecture}", predictor=predictor, solver=cfg.solver, test_mse=mse, test_accuracy=acc)
        )
        solve_s[predictor] = round(seconds, 2)

    begin = time.time()
    if "nngp" in kernels:  # the n = inf Gaussian: its mean is the NTK's regression, one factorisation of Theta for both
        mean, var = stored_gaussian(kernels["ntk"], kernels["nngp"], n_train, y_train, cfg.ridge, cfg.solver, work, cfg.solve_block)
        predicted("ntk", mean, time.time() - begin)
        begin = time.time()
        predicted(
            "nngp", stored_regression(kernels["nngp"], n_train, y_train, cfg.ridge, cfg.solver, work, cfg.solve_block), time.time() - begin
        )
        sd = float(var.clamp_min(0).sqrt().mean())  # the same for every output: the variances do not depend on y
        table.append(
            dict(
                kernel=f"{cfg.kernel}_{cfg.architecture}",
                predictor="gaussian_sd_mean",
                solver=cfg.solver,
                test_mse=sd,
                test_accuracy=float("nan"),
            )
        )
    else:
        predicted(
            "ntk", stored_regression(kernels["ntk"], n_train, y_train, cfg.ridge, cfg.solver, work, cfg.solve_block), time.time() - begin
        )
    pairs = store.grid.n1 * (store.grid.n1 + 1) // 2
    gemm = pd.to_numeric(timing.gemm_gflops_float64)  # NaN for tiles stored before the rate was kept
    first_start = float((timing.finished_unix - timing.seconds).min())
    wall = float(timing.finished_unix.max()) - first_start
    summary = pd.DataFrame(
        [
            dict(
                n=store.grid.n1,
                tiles=store.grid.count,
                tile_rows=store.grid.rows,
                pairs=pairs,
                compute_s=round(float(timing.seconds.sum()), 2),
                wall_s=round(wall, 2),
                pairs_per_s_wall=pairs / wall if wall > 0 else float("nan"),
                pairs_per_s_compute=pairs / float(timing.seconds.sum()),
                gemm_gflops_float64_min=gemm.min(),
                gemm_gflops_float64_max=gemm.max(),
                hosts=timing.host.nunique(),
                peak_memory_max_bytes=int(timing.peak_memory_bytes.max()),
            )
            | {f"solve_{name}_s": seconds for name, seconds in solve_s.items()}
        ]
    )
    out = Path(cfg.out_dir)
    # timing_*.csv: what was measured about the run (differs between runs); tiles.csv and table.csv: what was computed
    for name, frame in (("tiles", tiles), ("table", pd.DataFrame(table)), ("timing_tiles", timing), ("timing_summary", summary)):
        atomic_write_text(out / f"{name}.csv", frame.to_csv(index=False, float_format="%.10g"))
    own = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])  # a multirun's config also holds Hydra's node
    atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(own, resolve=True))
    prov = provenance(
        git_revision=start["git_revision"],
        store=str(Path(cfg.store).resolve()),
        kernel_dtype=cfg.kernel_dtype,
        assemble_and_predict_s=round(time.time() - start["started"], 2),
        pid=os.getpid(),
    )
    atomic_write_text(out / "provenance.json", json.dumps(prov, indent=2, default=str) + "\n")
    render("kernel_tiles", out)
    return pd.DataFrame(table)


EXPERIMENT = Experiment(
    name="kernel_tiles",
    check=check_config,
    entry=run,
    schema=KernelTilesSchema,
    tiny=("data.n_train=12", "data.n_test=6", "image_size=7", "row_blocks=3", "tile=-1", "model.depth=2"),
)


class AssembleOnEnd(Callback):
    """Hydra callback: when the multirun ends, assemble the tiles and predict from the stored kernel;
    with tiles still missing (a failed job, a partial range of tiles), one warning says how many."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:  # noqa: D102
        try:
            missing = open_store(config).missing()
            if missing:
                count = grid(config).count
                say(f"warning: {len(missing)} of {count} tiles are not in {config.store} yet; run the same command again to compute them")
                return
            aggregate(config)
        except USER_ERRORS as exc:  # Hydra would only warn about a callback's error: end the command with its line, exit 2
            fail(exc)
