"""Reference timing of neural-tangents (JAX) on the cases of `scripts.bench_ntk`.

Not part of requirements.txt: run it from a separate environment that has JAX and neural-tangents,

    python3 -m venv /tmp/nt && /tmp/nt/bin/pip install neural-tangents==0.6.5 jax==0.4.23 jaxlib==0.4.23 \
        tf2jax==0.3.6 "numpy<2" "scipy<1.14"
    /tmp/nt/bin/python -m scripts.bench_neural_tangents 3 0 1 2     # repeats, then case indices

(newer JAX releases break neural-tangents 0.6.5's structured derivatives).

It builds the same NTK-parameterised MLPs with `stax.Dense(parameterization="ntk")`, takes the
empirical NTK (N, N) with the structured-derivatives implementation under `jax.jit` (compile time
excluded: best of `repeats` after a warm-up call), and measures a float32 GEMM in the same process.
Writes results/bench/neural_tangents.csv and .md. It only imports jax, neural_tangents, numpy and
the standard library.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

CASES = [(1000, 4, 256), (2000, 4, 256), (4000, 4, 128), (10000, 5, 512)]


def best(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str]) -> None:
    import jax
    import jax.numpy as jnp
    import neural_tangents as nt
    from neural_tangents import stax

    repeats = int(argv[0]) if argv else 3
    cases = [CASES[int(i)] for i in argv[1:]] if len(argv) > 1 else CASES[:3]
    rows = []
    for width, depth, n in cases:
        layers = []
        for _ in range(depth - 1):
            layers += [stax.Dense(width, W_std=1.0, b_std=0.1, parameterization="ntk"), stax.Relu()]
        layers += [stax.Dense(1, W_std=1.0, b_std=0.1, parameterization="ntk")]
        init_fn, apply_fn, _ = stax.serial(*layers)
        key = jax.random.PRNGKey(0)
        _, params = init_fn(key, (-1, 784))
        x = jax.random.uniform(jax.random.PRNGKey(1), (n, 784), dtype=jnp.float32)
        kernel_fn = jax.jit(
            nt.empirical_ntk_fn(apply_fn, trace_axes=(-1,), vmap_axes=0, implementation=nt.NtkImplementation.STRUCTURED_DERIVATIVES)
        )
        t = best(lambda: kernel_fn(x, None, params).block_until_ready(), repeats)
        a = jax.random.normal(key, (n, width), dtype=jnp.float32)
        w = jax.random.normal(key, (width, width), dtype=jnp.float32)
        mm = jax.jit(lambda a, w: a @ w)
        rate = 2 * n * width * width / best(lambda: mm(a, w).block_until_ready(), repeats) / 1e9
        arch = "-".join(map(str, [784] + [width] * (depth - 1) + [1]))
        print(f"{arch} N={n} neural-tangents structured derivatives: {t:.4g} s (GEMM {rate:.0f} GFLOP/s)")
        rows.append(dict(model=arch, N=n, method="neural_tangents_structured", dtype="float32", device="cpu", time_s=t, gemm_gflops=rate))
    out = Path("results/bench")
    out.mkdir(parents=True, exist_ok=True)
    cols = list(rows[0])
    csv = ",".join(cols) + "\n" + "".join(",".join(str(r[c]) for c in cols) + "\n" for r in rows)
    (out / "neural_tangents.csv").write_text(csv)
    md = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    md += "".join("| " + " | ".join(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |\n" for r in rows)
    (out / "neural_tangents.md").write_text(md)
    rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    (out / "neural_tangents.provenance.json").write_text(
        json.dumps(
            dict(
                command="python -m scripts.bench_neural_tangents " + " ".join(argv),
                git_revision=rev,
                jax=jax.__version__,
                neural_tangents=getattr(nt, "__version__", "?"),
                python=platform.python_version(),
                platform=platform.platform(),
            ),
            indent=2,
        )
        + "\n"
    )
    print(md)


if __name__ == "__main__":
    main(sys.argv[1:])
