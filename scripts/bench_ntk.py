"""Benchmark of the empirical-NTK engine: every method on the same model and inputs, one process.

    python -m scripts.bench_ntk                   # the cases below, float32
    python -m scripts.bench_ntk cases=[0] repeats=5

Cases (widths n_0-n_1-...-n_L, N inputs, full kernel, scalar output):
  0: 784-1000-1000-1000-1, N = 256          all methods
  1: 784-2000-2000-2000-1, N = 256          all methods
  2: 784-4000-4000-4000-1, N = 128          layerwise and ntk_vp
  3: 784-10000 x 4-1 (depth 5), N = 512     layerwise; the others report their memory estimate
For each: best-of-`repeats` wall time, ratio to Jacobian contraction, FLOP count of the layerwise
method (forward, input-gradient pass, Gram products) and its rate against a float32 GEMM
(N x n) @ (n x n) measured in the same run. Writes results/bench/ntk.csv and ntk.md.
"""

from __future__ import annotations

import sys

import pandas as pd
import torch

from ntk.empirical import empirical_ntk, memory_estimate, plan_method
from ntk.memory import NTKMemoryError, available_memory, fmt_bytes
from ntk.model import NTKMLP
from ntk.utils import best_time, resolve_device
from scripts.common import parse_kv, write_bench

CASES = [
    dict(width=1000, depth=4, n=256, methods=("layerwise", "ntk_vp", "jacobian")),
    dict(width=2000, depth=4, n=256, methods=("layerwise", "ntk_vp", "jacobian")),
    dict(width=4000, depth=4, n=128, methods=("layerwise", "ntk_vp", "jacobian")),
    dict(width=10000, depth=5, n=512, methods=("layerwise", "ntk_vp", "jacobian")),
]
SLOW_LIMIT_S = 120.0  # methods whose single run would take longer are not repeated


def layerwise_flops(widths: list[int], n: int) -> float:
    """FLOPs of the layer-wise kernel: forward, backward to the inputs, Gram products."""
    forward = sum(2 * n * a * b for a, b in zip(widths[:-1], widths[1:]))
    backward = sum(2 * n * a * b for a, b in zip(widths[1:-1], widths[2:]))
    grams = sum(2 * n * n * widths[l] + 2 * n * n * widths[l + 1] for l in range(len(widths) - 2)) + 2 * n * n * widths[-2]
    return float(forward + backward + grams)


def gemm_rate(n: int, width: int, device: torch.device, repeats: int) -> float:
    a = torch.randn(n, width, device=device)
    w = torch.randn(width, width, device=device)
    return 2 * n * width * width / best_time(lambda: a @ w, device, repeats) / 1e9


def main(argv: list[str]) -> None:
    args = parse_kv(argv, dict(cases=list(range(len(CASES))), repeats=3, device="auto", dtype="float32"))
    device = resolve_device(args["device"])
    dtype = {"float32": torch.float32, "float64": torch.float64}[args["dtype"]]
    rows = []
    for index in args["cases"]:
        case = CASES[index]
        n, width, depth = case["n"], case["width"], case["depth"]
        model = NTKMLP(784, width, depth, generator=torch.Generator(device).manual_seed(0), device=device)
        x = torch.rand(n, 784, generator=torch.Generator().manual_seed(1)).to(device)
        rate = gemm_rate(n, width, device, args["repeats"])
        flops = layerwise_flops(model.widths, n)
        arch = "-".join(map(str, model.widths))
        budget = available_memory(device)
        times = {}
        for method in case["methods"]:
            row = dict(model=arch, N=n, method=method, dtype=args["dtype"], device=str(device))
            n_params = sum(p.numel() for p in model.parameters())
            if method == "ntk_vp" and (guess := 4 * n * n * n_params / (rate * 1e9)) > SLOW_LIMIT_S:
                rows.append(
                    row
                    | dict(
                        time_s=None, memory_estimate="", note=f"skipped: N jvp passes over N inputs, about {guess:.0f} s at the GEMM rate"
                    )
                )
                print(f"{arch} N={n} {method}: skipped (about {guess:.0f} s)")
                continue
            try:
                plan_method(model, x, n, n, True, method, None, dtype, budget)
            except NTKMemoryError as err:
                est = memory_estimate(model, method, n, n, True, dtype, 1 if method == "ntk_vp" else None, x[:1])
                rows.append(row | dict(time_s=None, memory_estimate=fmt_bytes(est), note=f"refused: {err}"))
                print(f"{arch} N={n} {method}: refused ({fmt_bytes(est)})")
                continue
            first = best_time(lambda: empirical_ntk(model, x, method=method, dtype=dtype), device, 1, warmup=0)
            reps = 1 if first > SLOW_LIMIT_S / args["repeats"] else args["repeats"]
            t = min(first, best_time(lambda: empirical_ntk(model, x, method=method, dtype=dtype), device, reps, 0)) if reps > 1 else first
            times[method] = t
            print(f"{arch} N={n} {method}: {t:.4g} s")
            rows.append(
                row | dict(time_s=t, memory_estimate=fmt_bytes(memory_estimate(model, method, n, n, True, dtype, None, x[:1])), note="")
            )
        for row in rows[-len(case["methods"]) :]:
            t = row["time_s"]
            row["speedup_vs_jacobian"] = times["jacobian"] / t if t and "jacobian" in times else None
            row["layerwise_gflop"] = flops / 1e9
            row["gflops"] = flops / t / 1e9 if t and row["method"] == "layerwise" else None
            row["gemm_gflops"] = rate
            row["fraction_of_gemm"] = row["gflops"] / rate if row["gflops"] else None
        model = None  # free the weights before the next case
    table = pd.DataFrame(rows)[
        [
            "model",
            "N",
            "method",
            "dtype",
            "device",
            "time_s",
            "speedup_vs_jacobian",
            "layerwise_gflop",
            "gflops",
            "gemm_gflops",
            "fraction_of_gemm",
            "memory_estimate",
            "note",
        ]
    ]
    write_bench(table, "ntk", argv)


if __name__ == "__main__":
    main(sys.argv[1:])
