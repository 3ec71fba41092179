"""Benchmark of the analytic infinite-width kernels (`ntk.analytic.limiting_kernels`).

    python -m scripts.bench_analytic                # N = 512 inputs of dimension 784, depth 5

Times the full (N, N) NNGP + NTK pair in float64 for ReLU and erf (closed forms) and tanh
(Gauss quadrature, default order; timed once), best of `repeats`, and the memory rate of a float64 copy of an
(N, N) matrix measured in the same run (the closed forms are elementwise, so memory-bound).
Writes results/bench/analytic.csv and .md.
"""

from __future__ import annotations

import sys

import pandas as pd
import torch

from ntk.analytic import limiting_kernels
from ntk.utils import best_time
from scripts.common import parse_kv, write_bench


def main(argv: list[str]) -> None:
    args = parse_kv(argv, dict(n=512, dim=784, depth=5, repeats=5))
    n, device = args["n"], torch.device("cpu")
    x = torch.rand(n, args["dim"], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a = torch.randn(n, n, dtype=torch.float64)
    copy_gbs = 2 * a.numel() * 8 / best_time(lambda: a.clone(), device, args["repeats"]) / 1e9
    rows = []
    for activation in ("relu", "erf", "tanh"):
        quadrature = activation == "tanh"  # ~1e10 activation evaluations: time it once
        t = best_time(
            lambda: limiting_kernels(x, None, args["depth"], activation=activation),
            device,
            1 if quadrature else args["repeats"],
            warmup=0 if quadrature else 1,
        )
        rows.append(
            dict(
                N=n,
                input_dim=args["dim"],
                depth=args["depth"],
                activation=activation,
                method="quadrature (order 24)" if quadrature else "closed form",
                dtype="float64",
                time_s=t,
                copy_GBps=copy_gbs,
            )
        )
    write_bench(pd.DataFrame(rows), "analytic", argv)


if __name__ == "__main__":
    main(sys.argv[1:])
