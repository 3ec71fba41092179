"""Does compiling the Hermite maps pay? NTKCNN's shape with activations whose Gaussian maps have no
closed form here, the infinite-width kernels with the fused steps (`compile="on"`) against eager
(`compile="off"`), alternating in one invocation.

    python -m scripts.bench_hermite                          # gelu, softplus (Hermite), relu (closed form)
    python -m scripts.bench_hermite activations=[gelu] size=14 n=8 rounds=3

The model: three 3 x 3 convolutions (stride 1, 2, 2) with the activation, global average pooling, a
dense read-out, on N random size x size images, the NNGP kernel and NTK of the N inputs with
themselves in float64. GELU and softplus take `ntk.analytic`'s Hermite path (series up to
`ntk.limits.FUSED_TERMS` terms are compiled with the product by Theta, `ntk.fused.hermite_step`);
ReLU's closed form is the reference for what fusing gives where the map is cheap. Both contenders
are warmed up (the compilation is reported as `compile_s`, 0 when inductor's cache answered); one
timed call of each sets its calls per round (at least `min_time` seconds); the order is reversed
every other round. Reported: medians with min and max, the speed-up as the median of per-round
ratios, milliseconds per pair of inputs (N (N + 1) / 2 pairs), the largest relative difference of
the two kernels, and a float64 GEMM rate of this process for scale.
Writes results/bench/hermite_compiled.csv and .md.
"""

from __future__ import annotations

import sys
import time


def main(argv: list[str]) -> None:
    import numpy as np
    import pandas as pd
    import torch

    import ntk
    from ntk import fused
    from ntk.utils import best_time
    from scripts.common import calls_per_round, parse_kv, write_bench

    args = parse_kv(
        argv, dict(activations=["gelu", "softplus", "relu"], size=28, n=4, rounds=5, min_time=0.25, out_name="hermite_compiled")
    )
    rows = []
    for activation in args["activations"]:
        g = torch.Generator().manual_seed(0)
        layers = []
        for c_in, stride in ((1, 1), (1, 2), (1, 2)):
            layers += [ntk.Conv(c_in, 1, 3, stride, 1, bias=False, generator=g), ntk.Elementwise(activation)]
        model = torch.nn.Sequential(*layers, ntk.GlobalAvgPool(), ntk.Dense(1, 1, 0.0, bias=False, generator=g))
        n, size = args["n"], args["size"]
        x = torch.randn(n, 1, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

        def run(calls: int, mode: str) -> float:
            start = time.perf_counter()
            for _ in range(calls):
                ntk.limiting_kernels(model, x, compile=mode)
            return (time.perf_counter() - start) / calls

        fused.reset_stats()
        warm = time.perf_counter()
        compiled_kernels = ntk.limiting_kernels(model, x, compile="on")  # warm-up: torch.compile compiles here
        compile_s, first_s = fused.compile_stats()["compile_s"], time.perf_counter() - warm
        eager_kernels = ntk.limiting_kernels(model, x, compile="off")
        difference = max(
            float((a - b).norm() / b.norm()) for a, b in zip(compiled_kernels, eager_kernels)
        )  # relative Frobenius, NNGP and NTK
        contenders = {"compiled": lambda calls: run(calls, "on"), "eager": lambda calls: run(calls, "off")}
        calls = {name: calls_per_round(args["min_time"], fn(1)) for name, fn in contenders.items()}
        times = {name: [] for name in contenders}
        for r in range(args["rounds"]):
            for name in contenders if r % 2 == 0 else reversed(contenders):
                times[name].append(contenders[name](calls[name]))
        ratios = np.array(times["eager"]) / np.array(times["compiled"])
        med = {k: float(np.median(v)) for k, v in times.items()}
        pairs = n * (n + 1) // 2
        a, w = torch.randn(512, 512, dtype=torch.float64), torch.randn(512, 512, dtype=torch.float64)
        rows.append(
            dict(
                activation=activation,
                size=size,
                N=n,
                rounds=args["rounds"],
                compiled_s=med["compiled"],
                compiled_min_s=min(times["compiled"]),
                compiled_max_s=max(times["compiled"]),
                eager_s=med["eager"],
                eager_min_s=min(times["eager"]),
                eager_max_s=max(times["eager"]),
                speedup=float(np.median(ratios)),
                speedup_min=float(ratios.min()),
                speedup_max=float(ratios.max()),
                compiled_ms_per_pair=1e3 * med["compiled"] / pairs,
                eager_ms_per_pair=1e3 * med["eager"] / pairs,
                rel_difference=difference,
                compile_s=compile_s,
                first_call_s=first_s,
                gemm_f64_gflops=2 * 512**3 / best_time(lambda: a @ w, torch.device("cpu"), 5) / 1e9,
            )
        )
        print(
            f"{activation}: compiled {med['compiled']:.4g} s, eager {med['eager']:.4g} s ({np.median(ratios):.3g}x, "
            f"range {ratios.min():.3g}-{ratios.max():.3g}); difference {difference:.1e}; compile {compile_s:.1f} s",
            flush=True,
        )
    write_bench(pd.DataFrame(rows), str(args["out_name"]), argv)


if __name__ == "__main__":
    main(sys.argv[1:])
