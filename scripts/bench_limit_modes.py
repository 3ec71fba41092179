"""Which modes of the infinite-width CNN kernels pay? NTKCNN's shape, three contenders alternating in
one invocation: float64 with the fused steps (`compile="on"`, the default mode where it pays),
float64 eager (`compile="off"`) and float32 compiled. It answers two questions: does compiling the
Hermite maps pay (activations whose Gaussian maps have no closed form here), and does float32?

    python -m scripts.bench_limit_modes                       # gelu, softplus (Hermite), relu (closed form)
    python -m scripts.bench_limit_modes activations=relu size=28 n=16 rounds=3

The model: three 3 x 3 convolutions (stride 1, 2, 2) with the activation, global average pooling, a
dense read-out, on N random size x size images, the NNGP kernel and NTK of the N inputs with
themselves in float64. GELU and softplus take `ntk.analytic`'s Hermite path (series up to
`ntk.limits.FUSED_TERMS` terms are compiled with the product by Theta, `ntk.fused.hermite_step`);
ReLU's closed form is the reference for what fusing gives where the map is cheap. Every contender
is warmed up (the float64 compilation is reported as `compile_s`, 0 when inductor's cache
answered); one timed call of each sets its calls per round (at least `min_time` seconds); the order
is reversed every other round. Reported: medians with min and max, the speed-ups over float64 eager
(`speedup`, compiled) and over float64 compiled (`float32_speedup`) as medians of per-round ratios,
milliseconds per pair of inputs (N (N + 1) / 2 pairs), the relative Frobenius difference of the
compiled and eager kernels (the larger of NNGP and NTK) and of float32 from float64 (NNGP and NTK
apart), and a float64 GEMM rate of this process for scale.
Writes results/bench/limit_modes.csv and .md.
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

    args = parse_kv(argv, dict(activations="gelu,softplus,relu", size=28, n=4, rounds=5, min_time=0.25, out_name="limit_modes"))
    rows = []
    for activation in str(args["activations"]).split(","):
        g = torch.Generator().manual_seed(0)
        layers = []
        for c_in, stride in ((1, 1), (1, 2), (1, 2)):
            layers += [ntk.Conv(c_in, 1, 3, stride, 1, bias=False, generator=g), ntk.Elementwise(activation)]
        model = torch.nn.Sequential(*layers, ntk.GlobalAvgPool(), ntk.Dense(1, 1, 0.0, bias=False, generator=g))
        n, size = args["n"], args["size"]
        x = torch.randn(n, 1, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

        x32 = x.float()

        def run(calls: int, mode: str, single: bool = False) -> float:
            start = time.perf_counter()
            for _ in range(calls):
                if single:
                    ntk.limiting_kernels(model, x32, dtype=torch.float32, compile=mode)
                else:
                    ntk.limiting_kernels(model, x, compile=mode)
            return (time.perf_counter() - start) / calls

        fused.reset_stats()
        warm = time.perf_counter()
        compiled_kernels = ntk.limiting_kernels(model, x, compile="on")  # warm-up: torch.compile compiles here
        compile_s, first_s = fused.compile_stats()["compile_s"], time.perf_counter() - warm
        eager_kernels = ntk.limiting_kernels(model, x, compile="off")
        single_kernels = ntk.limiting_kernels(model, x32, dtype=torch.float32, compile="on")
        difference = max(float((a - b).norm() / b.norm()) for a, b in zip(compiled_kernels, eager_kernels))  # NNGP and NTK
        single_error = [float((a.double() - b).norm() / b.norm()) for a, b in zip(single_kernels, compiled_kernels)]
        contenders = {
            "compiled": lambda calls: run(calls, "on"),
            "eager": lambda calls: run(calls, "off"),
            "float32": lambda calls: run(calls, "on", True),
        }
        calls = {name: calls_per_round(args["min_time"], fn(1)) for name, fn in contenders.items()}
        times = {name: [] for name in contenders}
        for r in range(args["rounds"]):
            for name in contenders if r % 2 == 0 else reversed(contenders):
                times[name].append(contenders[name](calls[name]))
        ratios = np.array(times["eager"]) / np.array(times["compiled"])
        single_ratios = np.array(times["compiled"]) / np.array(times["float32"])
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
                float32_s=med["float32"],
                float32_speedup=float(np.median(single_ratios)),
                float32_speedup_min=float(single_ratios.min()),
                float32_speedup_max=float(single_ratios.max()),
                compiled_ms_per_pair=1e3 * med["compiled"] / pairs,
                eager_ms_per_pair=1e3 * med["eager"] / pairs,
                float32_ms_per_pair=1e3 * med["float32"] / pairs,
                rel_difference=difference,
                float32_nngp_error=single_error[0],
                float32_ntk_error=single_error[1],
                compile_s=compile_s,
                first_call_s=first_s,
                gemm_f64_gflops=2 * 512**3 / best_time(lambda: a @ w, torch.device("cpu"), 5) / 1e9,
            )
        )
        print(
            f"{activation}: compiled {med['compiled']:.4g} s, eager {med['eager']:.4g} s ({np.median(ratios):.3g}x, "
            f"range {ratios.min():.3g}-{ratios.max():.3g}); difference {difference:.1e}; compile {compile_s:.1f} s; "
            f"float32 {med['float32']:.4g} s ({np.median(single_ratios):.3g}x), errors {single_error[0]:.1e} / {single_error[1]:.1e}",
            flush=True,
        )
    write_bench(pd.DataFrame(rows), str(args["out_name"]), argv)


if __name__ == "__main__":
    main(sys.argv[1:])
