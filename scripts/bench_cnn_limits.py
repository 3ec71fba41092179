"""Infinite-width CNN kernels, ours against neural-tangents (JAX, jitted), alternating in one invocation.

    python -m scripts.bench_cnn_limits                         # cases 0 1 2, 5 rounds
    python -m scripts.bench_cnn_limits cases=[2] rounds=3 nt_python=/tmp/nt/bin/python

neural-tangents runs in a worker process of its own environment (as `scripts.bench_neural_tangents`
says how to make it). Cases (the NNGP kernel and NTK of N inputs with themselves, float64 on both sides):
  0: NTKCNN's shape: 28 x 28, three 3 x 3 convolutions (stride 1, 2, 2), ReLU, global average
     pooling, dense read-out; N = 8
  1: the same, N = 16
  2: the flatten variant (the same convolutions, Flatten, dense read-out), N = 256
neural-tangents' "SAME" padding puts the odd pixel of a stride-2 convolution of an even size on one
side, ours pads both sides (torch): the cost is the same, the kernels differ slightly (they are
compared where the paddings agree in tests/test_limits.py). Three contenders: neural-tangents,
ours compiled (`compile="on"`: the fused steps of `ntk.fused`) and ours eager (`compile="off"`).
All are warmed up (JAX's compilation and torch.compile's excluded from the rounds; ours is reported
as `compile_s`, the seconds of the calls that compiled, 0 when inductor's cache answered, and
`first_call_s`); one timed call of each sets its calls per round (at least `min_time` seconds); in
every round the worker computes its kernels on request and this process computes ours, next to each
other, the order reversed every other round. Reported: medians with min and max, the speed-up as the
median of per-round ratios (compiled and eager), milliseconds per pair of inputs (N (N + 1) / 2
pairs), the FLOPs of one call by formula (`cntk_flops`: the all-pairs count, the same for both; ours
does a sixteenth of the first layer's, `ntk.limits`' sublattices) and each side's rate, a float64 GEMM
rate of this process for scale, and each process's peak resident memory.
Writes results/bench/cnn_limits.csv and .md.
"""

from __future__ import annotations

import json
import resource
import sys
import time

CASES = [("gap", 8), ("gap", 16), ("flatten", 256)]
SIZE, CHANNELS = 28, 1


def worker() -> None:
    """Serve `<case index> <calls>` requests on stdin: `calls` kernels, timed together (mean per call)."""
    import jax
    import neural_tangents as nt

    jax.config.update("jax_enable_x64", True)
    from neural_tangents import stax

    built = {}
    for line in sys.stdin:
        index, calls = map(int, line.split())
        if index not in built:
            head, n = CASES[index]
            layers = []
            for stride in (1, 2, 2):
                layers += [stax.Conv(1, (3, 3), (stride, stride), "SAME", W_std=1.0, b_std=None), stax.Relu()]
            layers += [stax.GlobalAvgPool() if head == "gap" else stax.Flatten(), stax.Dense(1, W_std=1.0, b_std=None)]
            _, _, kernel_fn = stax.serial(*layers)
            x = jax.random.normal(jax.random.PRNGKey(1), (n, SIZE, SIZE, CHANNELS), dtype=jax.numpy.float64)
            fn = jax.jit(lambda x: kernel_fn(x, None, ("nngp", "ntk")))
            built = {index: (fn, x)}
        fn, x = built[index]
        start = time.perf_counter()
        for _ in range(calls):
            jax.block_until_ready(fn(x))
        elapsed = (time.perf_counter() - start) / calls
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps(dict(time_s=elapsed, peak_bytes=peak, jax=jax.__version__, neural_tangents=nt.__version__)), flush=True)


def _seconds(result) -> float:
    """A contender's seconds per call: the worker's answer, or ours."""
    return result["time_s"] if isinstance(result, dict) else result


def cntk_flops(head: str, n: int) -> float:
    """FLOPs of one call by formula (pairs i <= j; a multiply-add is 2, a special function 1): per pair,
    the first convolution's patch products (2 C k S1^2), every later convolution's window sums on the
    kernels it keeps (2 k S^2 for Sigma and Theta each), every ReLU's Gaussian map on its kernels
    (`RELU_OPS` per entry), and the pooling (2 S^2)."""
    relu_ops = 20  # norm, correlation, clamp, arccos, sqrt(1 - rho^2), E[sigma sigma], E[sigma' sigma'], Theta * it
    sizes = [SIZE]
    for stride in (1, 2, 2):
        sizes.append((sizes[-1] + 2 - 3) // stride + 1)
    entries = [(s * s) ** 2 if head == "gap" else s * s for s in sizes[1:]]  # numbers per pair after each convolution
    per_pair = 2 * CHANNELS * 9 * entries[0] + relu_ops * entries[0]
    for e in entries[1:]:
        per_pair += 2 * 2 * 9 * e + relu_ops * e
    per_pair += 2 * entries[-1]
    return float(per_pair * n * (n + 1) / 2)


def main(argv: list[str]) -> None:
    import numpy as np
    import pandas as pd
    import torch

    import ntk
    from ntk import fused
    from ntk.utils import best_time
    from scripts.common import Worker, calls_per_round, parse_kv, write_bench

    args = parse_kv(argv, dict(nt_python="/tmp/nt/bin/python", cases=[0, 1, 2], rounds=5, min_time=0.25, out_name="cnn_limits"))
    worker = Worker(args["nt_python"], __file__, "neural-tangents")
    neural_tangents = worker.request

    rows = []
    try:
        for index in args["cases"]:
            head, n = CASES[index]
            g = torch.Generator().manual_seed(0)
            layers = []
            for c_in, stride in ((CHANNELS, 1), (1, 2), (1, 2)):
                layers += [ntk.Conv(c_in, 1, 3, stride, 1, bias=False, generator=g), ntk.Elementwise("relu")]
            spatial = 7  # 28 -> 28 -> 14 -> 7
            layers += (
                [ntk.GlobalAvgPool(), ntk.Dense(1, 1, 0.0, bias=False, generator=g)]
                if head == "gap"
                else [
                    ntk.Flatten(),
                    ntk.Dense(spatial * spatial, 1, 0.0, bias=False, generator=g),
                ]
            )
            model = torch.nn.Sequential(*layers)
            x = torch.randn(n, CHANNELS, SIZE, SIZE, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

            def ours(calls: int, mode: str = "on") -> float:
                start = time.perf_counter()
                for _ in range(calls):
                    ntk.limiting_kernels(model, x, compile=mode)
                return (time.perf_counter() - start) / calls

            neural_tangents(index, 1)  # warm-up: JAX compiles here
            fused.reset_stats()
            warm = time.perf_counter()
            ours(1, "on")  # warm-up: torch.compile compiles here (or loads from its cache)
            compile_s, first_s = fused.compile_stats()["compile_s"], time.perf_counter() - warm
            ours(1, "off")
            contenders = {
                "neural_tangents": lambda calls: neural_tangents(index, calls),
                "ours": lambda calls: ours(calls, "on"),
                "ours_eager": lambda calls: ours(calls, "off"),
            }
            calls = {name: calls_per_round(args["min_time"], _seconds(fn(1))) for name, fn in contenders.items()}
            times = {name: [] for name in contenders}
            for r in range(args["rounds"]):
                for name in contenders if r % 2 == 0 else reversed(contenders):
                    result = contenders[name](calls[name])
                    if name == "neural_tangents":
                        info = result
                    times[name].append(_seconds(result))
            ratios = np.array(times["neural_tangents"]) / np.array(times["ours"])
            eager_ratios = np.array(times["neural_tangents"]) / np.array(times["ours_eager"])
            med = {k: float(np.median(v)) for k, v in times.items()}
            flops = cntk_flops(head, n)
            pairs = n * (n + 1) // 2
            a, w = torch.randn(512, 512, dtype=torch.float64), torch.randn(512, 512, dtype=torch.float64)
            rows.append(
                dict(
                    model=f"3 conv + {head}, 28 x 28",
                    N=n,
                    rounds=args["rounds"],
                    neural_tangents_s=med["neural_tangents"],
                    neural_tangents_min_s=min(times["neural_tangents"]),
                    neural_tangents_max_s=max(times["neural_tangents"]),
                    ours_s=med["ours"],
                    ours_min_s=min(times["ours"]),
                    ours_max_s=max(times["ours"]),
                    ours_eager_s=med["ours_eager"],
                    speedup=float(np.median(ratios)),
                    speedup_min=float(ratios.min()),
                    speedup_max=float(ratios.max()),
                    speedup_eager=float(np.median(eager_ratios)),
                    ms_per_pair=1e3 * med["ours"] / pairs,
                    compile_s=compile_s,
                    first_call_s=first_s,
                    gflop=flops / 1e9,
                    ours_gflops=flops / med["ours"] / 1e9,
                    neural_tangents_gflops=flops / med["neural_tangents"] / 1e9,
                    gemm_f64_gflops=2 * 512**3 / best_time(lambda: a @ w, torch.device("cpu"), 5) / 1e9,
                    ours_peak_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
                    neural_tangents_peak_gb=info["peak_bytes"] / 1e9,
                    jax=info["jax"],
                    neural_tangents=info["neural_tangents"],
                )
            )
            print(
                f"{head} N={n}: neural-tangents {med['neural_tangents']:.4g} s, ours {med['ours']:.4g} s ({np.median(ratios):.3g}x), "
                f"eager {med['ours_eager']:.4g} s ({np.median(eager_ratios):.3g}x); compile {compile_s:.1f} s",
                flush=True,
            )
    finally:
        worker.close()
    write_bench(pd.DataFrame(rows), str(args["out_name"]), argv)


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        worker()
    else:
        main(sys.argv[1:])
