"""Golden values of infinite-width CNN kernels from neural-tangents, for tests/test_limits.py.

neural-tangents runs in its own environment (as `scripts.bench_neural_tangents` says how to make it):

    /tmp/nt/bin/python scripts/neural_tangents_cnn_golden.py tests/data/neural_tangents_cnn.json

This file imports only the standard library, numpy, jax and neural_tangents. For every architecture
of `ARCHITECTURES` (layer specifications that tests/test_limits.py builds from `ntk.blocks` in the
same way) it draws inputs with numpy (seed 0, stored in the JSON, channels first as torch takes
them), builds the network with `stax` (parameterization="ntk", float64, channels last), and stores
the NNGP kernel and the NTK of x1 with itself and of x1 with x2. Paddings are chosen where
neural-tangents' "SAME" agrees with torch's symmetric zero padding (odd kernels; with stride 2, an
input size for which SAME pads 1 on each side), else "VALID" (no padding).

Layer specifications: ["conv", channels, kernel, stride, padding, W_std, b_std or null],
["dense", outputs, W_std, b_std or null], ["relu"], ["erf"], ["gelu"], ["avgpool", window],
["gap"], ["flatten"], ["residual", [branch specifications]].
"""

from __future__ import annotations

import json
import sys

ARCHITECTURES = {
    "no_pooling": dict(
        input=[2, 6, 6],
        layers=[["conv", 8, 3, 1, 1, 1.5, 0.1], ["relu"], ["conv", 8, 3, 1, 0, 1.0, 0.1], ["relu"], ["flatten"], ["dense", 1, 1.0, 0.1]],
    ),
    "strided_gap": dict(
        input=[1, 7, 7],
        layers=[["conv", 8, 3, 1, 1, 1.0, None], ["relu"], ["conv", 8, 3, 2, 1, 1.0, None], ["relu"], ["gap"], ["dense", 1, 1.0, None]],
    ),
    "bias_erf_avgpool": dict(
        input=[2, 8, 8],
        layers=[
            ["conv", 8, 3, 1, 1, 1.2, 0.3],
            ["erf"],
            ["avgpool", 2],
            ["conv", 8, 3, 1, 1, 1.0, 0.2],
            ["erf"],
            ["flatten"],
            ["dense", 1, 1.0, 0.1],
        ],
    ),
    "residual": dict(
        input=[2, 6, 6],
        layers=[
            ["conv", 8, 3, 1, 1, 1.0, 0.1],
            ["residual", [["relu"], ["conv", 8, 3, 1, 1, 1.0, 0.1]]],
            ["residual", [["relu"], ["conv", 8, 3, 1, 1, 1.3, None], ["relu"], ["conv", 8, 3, 1, 1, 1.0, 0.2]]],
            ["relu"],
            ["gap"],
            ["dense", 1, 1.0, 0.1],
        ],
    ),
    "conv1d_gelu": dict(
        input=[3, 11],
        layers=[["conv", 8, 3, 1, 1, 1.0, 0.1], ["gelu"], ["conv", 8, 3, 2, 1, 1.0, 0.1], ["gelu"], ["flatten"], ["dense", 1, 1.0, 0.1]],
    ),
    "deep_gap": dict(
        input=[1, 8, 8],
        layers=[x for _ in range(5) for x in (["conv", 8, 3, 1, 1, 1.0, 0.1], ["relu"])] + [["gap"], ["dense", 1, 1.0, 0.1]],
    ),
    "mlp": dict(
        input=[5],
        layers=[["dense", 16, 1.0, 0.1], ["relu"], ["dense", 16, 1.0, 0.1], ["erf"], ["dense", 1, 1.0, 0.1]],
    ),
}
N1, N2 = 5, 3


def stax_layers(specs, spatial_dims):
    from neural_tangents import stax

    numbers = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC")}.get(spatial_dims)
    out = []
    for spec in specs:
        kind = spec[0]
        if kind == "conv":
            _, channels, k, stride, pad, w_std, b_std = spec
            padding = "SAME" if pad else "VALID"
            out.append(
                stax.Conv(
                    channels, (k,) * spatial_dims, (stride,) * spatial_dims, padding, W_std=w_std, b_std=b_std, dimension_numbers=numbers
                )
            )
        elif kind == "dense":
            _, outputs, w_std, b_std = spec
            out.append(stax.Dense(outputs, W_std=w_std, b_std=b_std))
        elif kind == "relu":
            out.append(stax.Relu())
        elif kind == "erf":
            out.append(stax.Erf())
        elif kind == "gelu":
            out.append(stax.Gelu(approximate=False))
        elif kind == "avgpool":
            out.append(stax.AvgPool((spec[1],) * spatial_dims, strides=(spec[1],) * spatial_dims))  # torch: stride = window
        elif kind == "gap":
            out.append(stax.GlobalAvgPool())
        elif kind == "flatten":
            out.append(stax.Flatten())
        elif kind == "residual":
            branch = stax.serial(*stax_layers(spec[1], spatial_dims))
            out.append(stax.serial(stax.FanOut(2), stax.parallel(stax.Identity(), branch), stax.FanInSum()))
        else:
            raise ValueError(f"unknown layer {kind!r}")
    return out


def main(path: str) -> None:
    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    from neural_tangents import stax

    rng = np.random.default_rng(0)
    golden = {}
    for name, arch in ARCHITECTURES.items():
        shape = arch["input"]
        x1 = rng.standard_normal((N1, *shape))
        x2 = rng.standard_normal((N2, *shape))
        _, _, kernel_fn = stax.serial(*stax_layers(arch["layers"], len(shape) - 1))
        last = lambda x: np.moveaxis(x, 1, -1) if x.ndim > 2 else x  # noqa: E731  channels last for stax
        k11 = kernel_fn(last(x1), None, ("nngp", "ntk"))
        k12 = kernel_fn(last(x1), last(x2), ("nngp", "ntk"))
        golden[name] = dict(
            input=shape,
            layers=arch["layers"],
            x1=x1.tolist(),
            x2=x2.tolist(),
            nngp=np.asarray(k11.nngp).tolist(),
            ntk=np.asarray(k11.ntk).tolist(),
            nngp_12=np.asarray(k12.nngp).tolist(),
            ntk_12=np.asarray(k12.ntk).tolist(),
        )
        print(name, "done", flush=True)
    import neural_tangents

    meta = dict(
        neural_tangents=neural_tangents.__version__, jax=jax.__version__, command="python scripts/neural_tangents_cnn_golden.py " + path
    )
    with open(path, "w") as fh:
        json.dump(dict(meta=meta, architectures=golden), fh)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/data/neural_tangents_cnn.json")
