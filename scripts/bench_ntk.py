"""Benchmark of the empirical-NTK engine: every method on the same model and inputs, one process.

    python -m scripts.bench_ntk                   # the cases below, float32, 11 rounds
    python -m scripts.bench_ntk cases=[0] rounds=7

Cases (widths n_0-n_1-...-n_L, N inputs, full kernel, scalar output):
  0: 784-1000-1000-1000-1, N = 256
  1: 784-2000-2000-2000-1, N = 256
  2: 784-4000-4000-4000-1, N = 128
  3: 784-10000 x 4-1 (depth 5), N = 512
Per case the contenders (the layer-wise kernel, NTK-vector products and Jacobian contraction where
they fit and take under `slow_limit` seconds, and a float32 GEMM (N x n) @ (n x n) as the rate
reference) alternate over `rounds` rounds (`scripts.common.interleaved`: each round of a contender
repeats it for at least 0.25 s and counts the mean per call); the table gives median,
min and max, the speed-up over the Jacobian contraction (medians), the layer-wise FLOP count
(forward, input-gradient pass, Gram products) and its rate as a fraction of the GEMM rate of the
same round: the median over rounds of that paired ratio, with its range, so that the machine's
drift between rounds (2x here) cancels. Where the time of the layer-wise kernel goes is in ntk_breakdown: torch's profiler
over one round's calls, per operator and per kernel call (calls, time, GFLOP, GFLOP/s). Writes results/bench/ntk.csv, .md and
ntk_breakdown.csv, .md (on CUDA the breakdown reads the GPU's own time per kernel), or the same
under out_dir=<dir>.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ntk import methods
from ntk.empirical import empirical_ntk, memory_estimate, plan_method
from ntk.memory import NTKMemoryError, available_memory, fmt_bytes
from ntk.model import NTKMLP
from ntk.utils import best_time, resolve_device, synchronize
from scripts.common import BENCH_DIR, interleaved, parse_kv, spread, write_bench

CASES = [
    dict(width=1000, depth=4, n=256),
    dict(width=2000, depth=4, n=256),
    dict(width=4000, depth=4, n=128),
    dict(width=10000, depth=5, n=512),
]
METHODS = ("layerwise", "ntk_vp", "jacobian")


def layerwise_flops(widths: list[int], n: int) -> float:
    """FLOPs of the layer-wise kernel (N x N, scalar output): forward, backward to the inputs, Gram
    products (`ntk.methods.layerwise_flops`, the formula of the methods table)."""
    return methods.layerwise_flops(widths, n)


def breakdown(fn, arch: str, n: int, calls: int, device: torch.device) -> list[dict]:
    """Per-operator time and FLOPs of a call of `fn` (torch profiler, mean over `calls` calls), largest first.

    On the CPU the time is the operators' self CPU time; on CUDA it is their self time on the GPU
    (the CPU time there would be the launch overhead, not the work).
    """
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities, with_flops=True) as prof:
        for _ in range(calls):
            fn()
        synchronize(device)
    rows = []
    for event in prof.key_averages():
        if device.type == "cuda":
            total = getattr(event, "self_device_time_total", None)
            total = total if total is not None else getattr(event, "self_cuda_time_total", 0)
        else:
            total = event.self_cpu_time_total
        if total <= 0:
            continue
        seconds = total / 1e6 / calls
        gflop = (event.flops or 0) / 1e9 / calls
        rows.append(
            dict(
                model=arch,
                N=n,
                op=event.key,
                clock="gpu" if device.type == "cuda" else "cpu",
                calls=event.count // calls,
                time_s=seconds,
                gflop=gflop,
                gflops=gflop / seconds if gflop else None,
            )
        )
    rows.sort(key=lambda r: -r["time_s"])
    total = sum(r["time_s"] for r in rows)
    for r in rows:
        r["share"] = r["time_s"] / total
    return rows[:8]


def main(argv: list[str]) -> None:
    args = parse_kv(
        argv, dict(cases=list(range(len(CASES))), rounds=11, slow_limit=10.0, device="auto", dtype="float32", out_dir=str(BENCH_DIR))
    )
    device = resolve_device(args["device"])
    dtype = {"float32": torch.float32, "float64": torch.float64}[args["dtype"]]
    rows, parts = [], []
    for index in args["cases"]:
        case = CASES[index]
        n, width, depth = case["n"], case["width"], case["depth"]
        model = NTKMLP(784, width, depth, generator=torch.Generator().manual_seed(0), device=device)
        x = torch.rand(n, 784, generator=torch.Generator().manual_seed(1)).to(device)
        a, w = torch.randn(n, width, device=device), torch.randn(width, width, device=device)
        flops = layerwise_flops(model.widths, n)
        arch = "-".join(map(str, model.widths))
        budget = available_memory(device)
        contenders = {"gemm": lambda: a @ w}
        notes = {}
        for method in METHODS:
            try:
                plan_method(model, x, n, n, True, method, None, dtype, budget)
            except NTKMemoryError as err:
                est = memory_estimate(model, method, n, n, True, dtype, 1 if method == "ntk_vp" else None, x[:1])
                notes[method] = (fmt_bytes(est), f"refused: {err}")
                continue
            fn = functools.partial(empirical_ntk, model, x, method=method, dtype=dtype)
            if method != "layerwise":
                guess = 4 * n * n * sum(p.numel() for p in model.parameters()) / 300e9 if method == "ntk_vp" else 0.0
                first = guess if guess > args["slow_limit"] else best_time(fn, device, 1, warmup=0)
                if first > args["slow_limit"]:
                    notes[method] = ("", f"not in the rounds: one call takes about {first:.0f} s (> slow_limit={args['slow_limit']:g} s)")
                    continue
            contenders[method] = fn
        times, calls = interleaved(contenders, args["rounds"], device)
        gemm = 2 * n * width * width / np.median(times["gemm"]) / 1e9
        for method in METHODS:
            row = dict(model=arch, N=n, method=method, dtype=args["dtype"], device=str(device))
            if method in times:
                row |= spread(times[method]) | dict(calls_per_round=calls[method])
                if "jacobian" in times:
                    row["speedup_vs_jacobian"] = np.median(times["jacobian"]) / row["median_s"]
                est = memory_estimate(model, method, n, n, True, dtype, None, x[:1])
                row |= dict(memory_estimate=fmt_bytes(est), note="")
            else:
                row |= dict(memory_estimate=notes[method][0], note=notes[method][1])
            row |= dict(layerwise_gflop=flops / 1e9, gemm_gflops=gemm)
            if method == "layerwise":
                row["gflops"] = flops / row["median_s"] / 1e9
                paired = np.array(times["gemm"]) / (2 * n * width * width) * flops / np.array(times["layerwise"])
                row |= dict(fraction_of_gemm=np.median(paired), fraction_min=paired.min(), fraction_max=paired.max())
            rows.append(row)
            if "median_s" in row:
                print(f"{arch} N={n} {method}: median {row['median_s']:.4g} s [{row['min_s']:.4g}, {row['max_s']:.4g}]")
        parts += breakdown(contenders["layerwise"], arch, n, calls["layerwise"], device)
        model = a = w = None  # free the weights before the next case
    columns = ["model", "N", "method", "dtype", "device", "median_s", "min_s", "max_s", "rounds", "calls_per_round", "speedup_vs_jacobian"]
    columns += ["layerwise_gflop", "gflops", "gemm_gflops", "fraction_of_gemm", "fraction_min", "fraction_max", "memory_estimate", "note"]
    write_bench(pd.DataFrame(rows).reindex(columns=columns), "ntk", argv, Path(args["out_dir"]))
    write_bench(pd.DataFrame(parts), "ntk_breakdown", argv, Path(args["out_dir"]))


if __name__ == "__main__":
    main(sys.argv[1:])
