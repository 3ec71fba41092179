"""Tiles against one process: the same kernel computed in one call and as tiles, alternating in one run.

    python -m scripts.bench_tiles                          # the first 236 digits as 3 tiles of 118, 7 rounds
    python -m scripts.bench_tiles n=626 rounds=3           # tiles of 313, the real run's

The kernel of the kernel_tiles experiment with its defaults (configs/exp/kernel_tiles.yaml: the
n = inf CNN-GP and CNTK with global average pooling of the 14 x 14 digits, float64) on the first `n`
of its digits, two ways:

  - one_process: `ntk.model_limiting_kernels` on all n digits at once (its own chunks of pairs);
  - tiles: the same digits cut into row_blocks x row_blocks blocks, the upper triangle's tiles
    computed one after another by the experiment's `compute_tile` (what each job of the multirun
    computes), on the same threads.

Both compute the n (n + 1) / 2 pairs once; every tile must equal its block of the one call
(relative Frobenius error below 1e-12, checked before the timing). The two alternate over the rounds
with a float64 GEMM (1024 x 1024) between them (`scripts.common.interleaved`: one warm-up and one
timed call each first, the order rotated every round), so the pairs per second come with the
machine's speed at that moment; a tile costs what its pairs cost in one call when the ratio is 1,
and the one-process rate then predicts a tiled run's time in one process. Writes results/bench/tiles.csv and .md.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pandas as pd
import torch
from hydra import compose, initialize_config_dir

from experiments.digits import architectures
from experiments.kernel_tiles import compute_tile, inputs
from experiments.runner import CONFIG_DIR
from experiments.schema import register_all
from ntk import model_limiting_kernels
from ntk.tiles import TileGrid
from scripts.common import interleaved, parse_kv, spread, write_bench


def main(argv: list[str]) -> None:
    args = parse_kv(argv, dict(n=236, row_blocks=2, rounds=7, threads=2))
    register_all()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["+exp=kernel_tiles"])
    x_all, _ = inputs(cfg)
    n = args["n"]
    if not isinstance(n, int) or not 2 <= n <= x_all.shape[0]:
        sys.exit(f"error: n must be an integer 2 ... {x_all.shape[0]} (the experiment's digits), got {n!r}")
    if not isinstance(args["row_blocks"], int) or not 1 <= args["row_blocks"] <= n:
        sys.exit(f"error: row_blocks must be an integer 1 ... n={n}, got {args['row_blocks']!r}")
    torch.set_num_threads(args["threads"])
    x = x_all[:n]
    g = TileGrid(n, n, math.ceil(n / args["row_blocks"]), symmetric=True)
    model = architectures(cfg)["cntk_gap"]
    a = torch.randn(1024, 1024, dtype=torch.float64)

    def one_process() -> np.ndarray:
        nngp, theta = model_limiting_kernels(model, x)
        return np.stack([nngp.numpy(), theta.numpy()])

    def tiles() -> dict[tuple[int, int], np.ndarray]:
        return {(i, j): compute_tile(cfg, x, i, j, g) for i, j in g.tiles}

    whole, errors = one_process(), []
    for (i, j), tile in tiles().items():
        r, c = g.slices(i, j)
        errors.append(np.linalg.norm(tile - whole[:, r, c]) / np.linalg.norm(whole[:, r, c]))
    error = max(errors)
    if not error < 1e-12:
        sys.exit(f"error: the tiles differ from the one call by {error:.3g} (relative Frobenius)")
    times, _ = interleaved(dict(one_process=one_process, tiles=tiles, gemm=lambda: a @ a), args["rounds"], torch.device("cpu"))
    pairs = n * (n + 1) // 2
    gflops = [2 * 1024**3 / s / 1e9 for s in times["gemm"]]
    ratios = np.array(times["one_process"]) / np.array(times["tiles"])
    rows = [
        dict(
            contender=name,
            n=n,
            tiles=g.count if name == "tiles" else 1,
            tile_rows=g.rows if name == "tiles" else n,
            pairs=pairs,
            threads=args["threads"],
            **spread(times[name]),
            pairs_per_s=pairs / float(np.median(times[name])),
            one_process_over_tiles=float(np.median(ratios)) if name == "tiles" else float("nan"),
            ratio_min=float(ratios.min()) if name == "tiles" else float("nan"),
            ratio_max=float(ratios.max()) if name == "tiles" else float("nan"),
            max_rel_error=error if name == "tiles" else float("nan"),
            gemm_gflops=float(np.median(gflops)),
            gemm_gflops_min=min(gflops),
            gemm_gflops_max=max(gflops),
        )
        for name in ("one_process", "tiles")
    ]
    write_bench(pd.DataFrame(rows), "tiles", argv)


if __name__ == "__main__":
    main(sys.argv[1:])
