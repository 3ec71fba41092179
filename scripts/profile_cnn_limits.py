"""What bounds each step of NTKCNN's infinite-width kernels: time, bytes and the rate they reach.

    python -m scripts.profile_cnn_limits                 # N = 16 digits at 28 x 28, compiled, 3 calls
    python -m scripts.profile_cnn_limits n=32 calls=5 compile=off

The kernels are those of `scripts.bench_cnn_limits`' pooled case (three 3 x 3 convolutions at strides
1, 2, 2, ReLU, global average pooling; float64) of N random digits with themselves. After one warm-up
call (torch.compile's compilation, or its cache), `calls` calls are timed with `ntk.fused`'s per-step
accounting: every fused step (each activation's Gaussian map with its product with Theta, each
convolution's window sums with the affine map) reports its seconds, the bytes it read (distinct
arrays) and wrote, and the entries it wrote. What is not a fused step (the first convolution's
patch products, a batched GEMM; gathering the pairs; Python) is the remainder of the wall time.

The bound of a step, from two rates of this machine measured in the same run: its streaming rate
(a compiled y = 2 x over 8 MB arrays, the size of the recursion's chunks, memory reused: read + write
bytes per second; arrays of that size stay in a large last-level cache, so this is the rate the
chunks can reach, above main memory's) and the step's own rate. A step moving at least half the streaming rate is "memory"; one below it is "compute"
(its arithmetic per byte keeps the cores busy: transcendental functions, divisions), checked by
its nanoseconds per entry written. Compilation is reported apart (`compile_s`, the warm-up).
Writes results/bench/cnn_limits_layers.csv and .md with provenance.
"""

from __future__ import annotations

import sys
import time

import pandas as pd
import torch


def streaming_rate(numbers: int = 2**20, rounds: int = 50) -> float:
    """Bytes per second of a compiled y = 2 x over `numbers` float64 entries (read + write), memory reused."""
    double = torch.compile(lambda x: x * 2.0)
    x = torch.randn(numbers, dtype=torch.float64)
    double(x)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(rounds):
            double(x)
        best = min(best, (time.perf_counter() - start) / rounds)
    return 2 * x.numel() * x.element_size() / best


def label(name: str) -> str:
    """A fused step's row as words: its kind and one pair's output shape, e.g. 'activation relu ->
    (4, 4, 7, 7, 7, 7)' (the first layer kept modulo 4: phases (4, 4), then 7 x 7 positions twice)."""
    kind, shape = name.split(" -> ")
    words = kind.split(" ")
    if words[0] == "activation":
        kind = f"activation {words[1].replace('_expectations', '')}"
    elif words[0] == "affine":
        kind = "window sums + affine" if words[1] == "conv" else f"affine {words[1]}"
    return f"{kind} -> {shape}"


def main(argv: list[str]) -> None:
    import ntk
    from ntk import fused
    from ntk.memory import reuse_freed_memory
    from ntk.utils import best_time
    from scripts.common import parse_kv, write_bench

    args = parse_kv(argv, dict(n=16, calls=3, compile="on"))
    reuse_freed_memory()
    model = ntk.NTKCNN(1, 1, 3, generator=torch.Generator().manual_seed(0))
    x = torch.randn(int(args["n"]), 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    fused.reset_stats()
    start = time.perf_counter()
    ntk.limiting_kernels(model, x, compile=args["compile"])
    warm_s, compile_s = time.perf_counter() - start, fused.compile_stats()["compile_s"]
    fused.reset_stats()
    start = time.perf_counter()
    for _ in range(int(args["calls"])):
        ntk.limiting_kernels(model, x, compile=args["compile"])
    wall = time.perf_counter() - start
    stream = streaming_rate()
    a, w = torch.randn(512, 512, dtype=torch.float64), torch.randn(512, 512, dtype=torch.float64)
    gemm = 2 * 512**3 / best_time(lambda: a @ w, torch.device("cpu"), 5) / 1e9
    rows = []
    for name, row in fused.compile_stats()["steps"].items():
        moved = row["bytes_read"] + row["bytes_written"]
        rate = moved / row["seconds"]
        rows.append(
            dict(
                step=label(name),
                calls=row["calls"],
                seconds=row["seconds"],
                share=row["seconds"] / wall,
                entries=row["entries"],
                gb_moved=moved / 1e9,
                gb_per_s=rate / 1e9,
                ns_per_entry=1e9 * row["seconds"] / max(row["entries"], 1),
                bound="memory" if rate >= 0.5 * stream else "compute",
            )
        )
    table = pd.DataFrame(rows).sort_values("seconds", ascending=False)
    rest = wall - table.seconds.sum()
    table.loc[len(table)] = dict(
        step="not fused (first convolution's products, gathers, Python)", calls=int(args["calls"]), seconds=rest, share=rest / wall
    )
    n = int(args["n"])
    table["n"], table["wall_s"], table["ms_per_pair"] = n, wall, 1e3 * wall / int(args["calls"]) / (n * (n + 1) // 2)
    table["stream_gb_per_s"], table["gemm_f64_gflops"], table["warmup_s"], table["compile_s"] = stream / 1e9, gemm, warm_s, compile_s
    for _, r in table.iterrows():
        print(f"{r.step:60s} {r.seconds:7.3f} s {100 * r.share:5.1f}%  {r.get('gb_per_s', float('nan')):6.2f} GB/s  {r.get('bound', '')}")
    print(
        f"wall {wall:.3f} s for {args['calls']} calls, {table.ms_per_pair.iloc[0]:.2f} ms per pair; streaming {stream / 1e9:.2f} GB/s; GEMM {gemm:.1f} GFLOP/s"
    )
    write_bench(table, "cnn_limits_layers", argv)


if __name__ == "__main__":
    main(sys.argv[1:])
