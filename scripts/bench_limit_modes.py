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
answered) and timed by `scripts.common.interleaved` (calls per round for at least `min_time` seconds,
each round in its own order). Reported: medians with min and max, the speed-ups over float64 eager
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
    from experiments.persistence import gemm_gflops
    from ntk import fused
    from scripts.common import interleaved, parse_kv, spread, write_bench

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
        contenders = {
            "compiled": lambda: ntk.limiting_kernels(model, x, compile="on"),
            "eager": lambda: ntk.limiting_kernels(model, x, compile="off"),
            "float32": lambda: ntk.limiting_kernels(model, x32, dtype=torch.float32, compile="on"),
        }
        fused.reset_stats()
        warm = time.perf_counter()
        kernels = {"compiled": contenders["compiled"]()}  # torch.compile compiles here (or loads from its cache)
        compile_s, first_s = fused.compile_stats()["compile_s"], time.perf_counter() - warm
        kernels |= {name: contenders[name]() for name in ("eager", "float32")}
        difference = max(float((a - b).norm() / b.norm()) for a, b in zip(kernels["compiled"], kernels["eager"]))  # NNGP and NTK
        single_error = [float((a.double() - b).norm() / b.norm()) for a, b in zip(kernels["float32"], kernels["compiled"])]
        times, _ = interleaved(contenders, args["rounds"], torch.device("cpu"), args["min_time"])
        ratios = np.array(times["eager"]) / np.array(times["compiled"])
        single_ratios = np.array(times["compiled"]) / np.array(times["float32"])
        pairs = n * (n + 1) // 2
        row = dict(activation=activation, size=size, N=n, rounds=args["rounds"])
        for name in contenders:
            stats = spread(times[name])
            row |= {f"{name}_s": stats["median_s"], f"{name}_min_s": stats["min_s"], f"{name}_max_s": stats["max_s"]}
        row |= dict(
            speedup=float(np.median(ratios)),
            speedup_min=float(ratios.min()),
            speedup_max=float(ratios.max()),
            float32_speedup=float(np.median(single_ratios)),
            float32_speedup_min=float(single_ratios.min()),
            float32_speedup_max=float(single_ratios.max()),
            **{f"{name}_ms_per_pair": 1e3 * row[f"{name}_s"] / pairs for name in contenders},
            rel_difference=difference,
            float32_nngp_error=single_error[0],
            float32_ntk_error=single_error[1],
            compile_s=compile_s,
            first_call_s=first_s,
            gemm_f64_gflops=gemm_gflops(512, torch.float64, rounds=5),
        )
        rows.append(row)
        print(
            f"{activation}: compiled {row['compiled_s']:.4g} s, eager {row['eager_s']:.4g} s ({row['speedup']:.3g}x, "
            f"range {ratios.min():.3g}-{ratios.max():.3g}); difference {difference:.1e}; compile {compile_s:.1f} s; "
            f"float32 {row['float32_s']:.4g} s ({row['float32_speedup']:.3g}x), errors {single_error[0]:.1e} / {single_error[1]:.1e}",
            flush=True,
        )
    write_bench(pd.DataFrame(rows), str(args["out_name"]), argv)


if __name__ == "__main__":
    main(sys.argv[1:])
