"""Ours against neural-tangents (JAX), alternating over rounds in one invocation.

neural-tangents is not part of requirements.txt: it runs in a worker process of a separate
environment,

    python3 -m venv /tmp/nt && /tmp/nt/bin/pip install neural-tangents==0.6.5 jax==0.4.23 jaxlib==0.4.23 \
        tf2jax==0.3.6 "numpy<2" "scipy<1.14"
    python -m scripts.bench_neural_tangents nt_python=/tmp/nt/bin/python          # cases 0 1 2, 11 rounds
    python -m scripts.bench_neural_tangents cases=[4] out_name=neural_tangents_cnn  # the CNN, structured

(newer JAX releases break neural-tangents 0.6.5's structured derivatives).

The worker (this file run with `--worker` by that interpreter; it imports only jax, neural_tangents
and the standard library) builds the same NTK-parameterised MLPs with
`stax.Dense(parameterization="ntk")` and the empirical NTK (N, N) by structured derivatives under
`jax.jit`. Per case both sides are warmed up (JAX's compilation excluded) and one timed call of
each contender sets its calls per round, enough for a round to last `min_time` (0.25 s) seconds;
then in every round the worker computes its kernels on request, and this process computes ours
(`empirical_ntk`, layer-wise) and a float32 GEMM (N x n) @ (n x n), the order alternating between
rounds; a round's time is the mean over its calls. The two
processes never compute at the same time. Reported: medians with min and max, the speed-up as the
median of the per-round ratios (each round's two times are adjacent, so the machine's drift between
rounds cancels) with their range, the GEMM rate of the same rounds, and both kernels' rates at the
layer-wise FLOP count as fractions of it: the ceiling of the speed-up is their ratio at 100%.
Writes results/bench/neural_tangents.csv and .md.
"""

from __future__ import annotations

import json
import sys
import time

CASES = [(1000, 4, 256), (2000, 4, 256), (4000, 4, 128), (10000, 5, 512), ("cnn", None, 64)]
# case 4: the CNN of scripts.bench_structured (conv 1->32 3x3, ReLU, 2x2 average pool, conv 32->64 3x3,
# ReLU, pool, linear 3136->1) on 28 x 28 images, ours by method="structured" (images NHWC for stax)


def worker() -> None:
    """Serve `<case index> <calls>` requests on stdin: `calls` kernels, timed together (mean per call)."""
    import jax
    import jax.numpy as jnp
    import neural_tangents as nt
    from neural_tangents import stax

    built = {}
    for line in sys.stdin:
        index, calls = map(int, line.split())
        if index not in built and CASES[index][0] == "cnn":
            n = CASES[index][2]
            layers = [stax.Conv(32, (3, 3), padding="SAME"), stax.Relu(), stax.AvgPool((2, 2), (2, 2))]
            layers += [stax.Conv(64, (3, 3), padding="SAME"), stax.Relu(), stax.AvgPool((2, 2), (2, 2)), stax.Flatten(), stax.Dense(1)]
            init_fn, apply_fn, _ = stax.serial(*layers)
            _, params = init_fn(jax.random.PRNGKey(0), (-1, 28, 28, 1))
            x = jax.random.uniform(jax.random.PRNGKey(1), (n, 28, 28, 1), dtype=jnp.float32)
            kernel_fn = jax.jit(
                nt.empirical_ntk_fn(apply_fn, trace_axes=(-1,), vmap_axes=0, implementation=nt.NtkImplementation.STRUCTURED_DERIVATIVES)
            )
            built = {index: (kernel_fn, x, params)}
        if index not in built:
            width, depth, n = CASES[index]
            layers = []
            for _ in range(depth - 1):
                layers += [stax.Dense(width, W_std=1.0, b_std=0.1, parameterization="ntk"), stax.Relu()]
            layers += [stax.Dense(1, W_std=1.0, b_std=0.1, parameterization="ntk")]
            init_fn, apply_fn, _ = stax.serial(*layers)
            _, params = init_fn(jax.random.PRNGKey(0), (-1, 784))
            x = jax.random.uniform(jax.random.PRNGKey(1), (n, 784), dtype=jnp.float32)
            kernel_fn = jax.jit(
                nt.empirical_ntk_fn(apply_fn, trace_axes=(-1,), vmap_axes=0, implementation=nt.NtkImplementation.STRUCTURED_DERIVATIVES)
            )
            built = {index: (kernel_fn, x, params)}  # one case at a time in memory
        kernel_fn, x, params = built[index]
        start = time.perf_counter()
        for _ in range(calls):
            kernel_fn(x, None, params).block_until_ready()
        elapsed = (time.perf_counter() - start) / calls
        print(json.dumps(dict(time_s=elapsed, jax=jax.__version__, neural_tangents=getattr(nt, "__version__", "?"))), flush=True)


def main(argv: list[str]) -> None:
    import numpy as np
    import pandas as pd
    import torch

    from ntk.empirical import empirical_ntk
    from ntk.methods import flop_counts
    from ntk.model import NTKMLP
    from scripts.bench_ntk import layerwise_flops
    from scripts.bench_structured import CNN
    from scripts.common import Worker, calls_per_round, parse_kv, write_bench

    args = parse_kv(argv, dict(nt_python="/tmp/nt/bin/python", cases=[0, 1, 2], rounds=11, min_time=0.25, out_name="neural_tangents"))
    worker = Worker(args["nt_python"], __file__, "neural-tangents")
    neural_tangents = worker.request

    rows = []
    try:
        for index in args["cases"]:
            width, depth, n = CASES[index]
            if width == "cnn":
                torch.manual_seed(0)
                model, method, arch = CNN().eval(), "structured", "cnn 1-32-64-1"
                x = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(1))
                flops, width = flop_counts(model, x, n)["structured"], 1024
            else:
                model, method = NTKMLP(784, width, depth, generator=torch.Generator().manual_seed(0)), "layerwise"
                x = torch.rand(n, 784, generator=torch.Generator().manual_seed(1))
                flops, arch = layerwise_flops(model.widths, n), "-".join(map(str, model.widths))
            a, w = torch.randn(n, width), torch.randn(width, width)

            def ours(calls: int) -> float:
                start = time.perf_counter()
                for _ in range(calls):
                    empirical_ntk(model, x, method=method, dtype=torch.float32)
                return (time.perf_counter() - start) / calls

            def gemm(calls: int) -> float:
                start = time.perf_counter()
                for _ in range(calls):
                    a @ w
                return (time.perf_counter() - start) / calls

            neural_tangents(index, 1)  # warm-up: JAX compiles here
            ours(1), gemm(1)
            # one timed call each sets the calls per round (each round lasts at least min_time)
            calls = dict(neural_tangents=neural_tangents(index, 1)["time_s"], ours=ours(1), gemm=gemm(1))
            calls = {name: calls_per_round(args["min_time"], seconds) for name, seconds in calls.items()}
            times = dict(neural_tangents=[], ours=[], gemm=[])
            for r in range(args["rounds"]):
                # ours always next to neural-tangents, the order reversed every other round
                order = ["neural_tangents", "ours", "gemm"] if r % 2 == 0 else ["gemm", "ours", "neural_tangents"]
                for name in order:
                    if name == "neural_tangents":
                        info = neural_tangents(index, calls[name])
                        times[name].append(info["time_s"])
                    else:
                        times[name].append((ours if name == "ours" else gemm)(calls[name]))
            ratios = np.array(times["neural_tangents"]) / np.array(times["ours"])
            gemm_gflops = 2 * n * width * width / float(np.median(times["gemm"])) / 1e9
            med = {k: float(np.median(v)) for k, v in times.items()}
            rows.append(
                dict(
                    model=arch,
                    N=n,
                    rounds=args["rounds"],
                    calls_per_round=f"{calls['neural_tangents']} / {calls['ours']}",
                    neural_tangents_s=med["neural_tangents"],
                    neural_tangents_min_s=min(times["neural_tangents"]),
                    neural_tangents_max_s=max(times["neural_tangents"]),
                    ours_s=med["ours"],
                    ours_min_s=min(times["ours"]),
                    ours_max_s=max(times["ours"]),
                    speedup=float(np.median(ratios)),
                    speedup_min=float(ratios.min()),
                    speedup_max=float(ratios.max()),
                    gemm_gflops=gemm_gflops,
                    method=method,
                    # both at our FLOP count (layer-wise: forward, input-gradient pass, Gram products;
                    # structured: ntk.methods.flop_counts)
                    ours_fraction_of_gemm=flops / med["ours"] / 1e9 / gemm_gflops,
                    neural_tangents_fraction_of_gemm=flops / med["neural_tangents"] / 1e9 / gemm_gflops,
                    jax=info["jax"],
                    neural_tangents=info["neural_tangents"],
                )
            )
            print(f"{arch} N={n}: neural-tangents {med['neural_tangents']:.4g} s, ours {med['ours']:.4g} s", flush=True)
            model = a = w = None
    finally:
        worker.close()
    write_bench(pd.DataFrame(rows), str(args["out_name"]), argv)


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        worker()
    else:
        main(sys.argv[1:])
