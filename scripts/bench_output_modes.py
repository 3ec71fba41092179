"""The output modes of the empirical NTK against the torch.func NTK tutorial's two recipes, on the
tutorial's own CNN.

    python -m scripts.bench_output_modes                 # 7 rounds, float32, CPU
    python -m scripts.bench_output_modes rounds=3 device=cuda

The model and inputs are those of the PyTorch tutorial "Neural Tangent Kernels" (torch.func): three
3 x 3 convolutions 3 -> 32 -> 32 -> 32 with ReLU, a linear read-out of 10 outputs, x1 = 20 images and
x2 = 5 images of 3 x 32 x 32, float32. Its two recipes, written here from the tutorial's description:

  jacobian   vmap(jacrev) per-sample Jacobians of both inputs, contracted by einsum: "full" (N1, N2,
             O, O), "trace" (N1, N2), "diagonal" (N1, N2, O)
  ntk_vp     per pair of inputs, a vjp at x_i for each of the O basis vectors and a jvp at x_j
             (NTK-vector products), vmapped over the basis and over both inputs; then the full
             kernel's trace or diagonal

against `ntk.empirical_ntk(model, x1, x2, method="auto")` with trace=False, trace=True and
diagonal_axes=-1 (the output diagonal). Each mode's contenders alternate with a float32 GEMM over
`rounds` rounds (`scripts.common.interleaved`); reported: median and range per contender, auto over the
faster recipe (median of the per-round ratios), and the largest difference from the jacobian recipe.
Writes results/bench/output_modes.csv and .md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

from ntk.empirical import empirical_ntk
from ntk.utils import resolve_device
from scripts.common import BENCH_DIR, interleaved, parse_kv, spread, write_bench

MODES = ("full", "trace", "diagonal")


class TutorialCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, (3, 3))
        self.conv2 = nn.Conv2d(32, 32, (3, 3))
        self.conv3 = nn.Conv2d(32, 32, (3, 3))
        self.fc = nn.Linear(21632, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.conv1(x).relu()).relu()
        return self.fc(self.conv3(x).flatten(1))


def recipes(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor, mode: str) -> dict:
    """The tutorial's two recipes for `mode`, as functions of no arguments."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def f(p, x):
        return functional_call(model, p, (x,))

    def one(p, xi):
        return f(p, xi.unsqueeze(0)).squeeze(0)

    def jacobian():
        j1 = vmap(jacrev(one), (None, 0))(params, x1)
        j2 = vmap(jacrev(one), (None, 0))(params, x2)
        j1, j2 = [j.flatten(2) for j in j1.values()], [j.flatten(2) for j in j2.values()]
        form = {"full": "Naf,Mbf->NMab", "trace": "Naf,Maf->NM", "diagonal": "Naf,Maf->NMa"}[mode]
        return sum(torch.einsum(form, a, b) for a, b in zip(j1, j2))

    def ntk_vp():
        def pair(xi, xj):  # Theta(x_i, x_j) (O, O): a vjp at x_i per basis vector, a jvp at x_j
            out, pull = vjp(lambda p: one(p, xi), params)

            def row(e):
                (tangent,) = pull(e)
                return jvp(lambda p: one(p, xj), (params,), (tangent,))[1]

            return vmap(row)(torch.eye(out.numel(), dtype=out.dtype, device=out.device))

        k = vmap(vmap(pair, (None, 0)), (0, None))(x1, x2)  # (N1, N2, O, O)
        if mode == "trace":
            return k.diagonal(dim1=2, dim2=3).sum(-1)
        if mode == "diagonal":
            return k.diagonal(dim1=2, dim2=3)
        return k

    return {"tutorial_jacobian": jacobian, "tutorial_ntk_vp": ntk_vp}


def main(argv: list[str]) -> None:
    args = parse_kv(argv, dict(rounds=7, device="cpu", out_dir=str(BENCH_DIR)))
    device = resolve_device(args["device"])
    torch.manual_seed(0)
    model = TutorialCNN().to(device).eval()
    g = torch.Generator().manual_seed(1)
    x1, x2 = torch.randn(20, 3, 32, 32, generator=g).to(device), torch.randn(5, 3, 32, 32, generator=g).to(device)
    a, w = torch.randn(64, 1024, device=device), torch.randn(1024, 1024, device=device)
    rows = []
    for mode in MODES:
        options = {"full": {}, "trace": {"trace": True}, "diagonal": {"diagonal_axes": -1}}[mode]
        contenders = {"gemm": lambda: a @ w, "auto": lambda: empirical_ntk(model, x1, x2, dtype=torch.float32, **options)}
        contenders |= recipes(model, x1, x2, mode)
        reference = contenders["tutorial_jacobian"]()
        errors = {name: float((fn() - reference).abs().max() / reference.abs().max()) for name, fn in contenders.items() if name != "gemm"}
        times, calls = interleaved(contenders, args["rounds"], device)
        faster = np.minimum(np.array(times["tutorial_jacobian"]), np.array(times["tutorial_ntk_vp"]))
        gemm = 2 * 64 * 1024 * 1024 / np.array(times["gemm"])
        for name in contenders:
            if name == "gemm":
                continue
            row = dict(mode=mode, contender=name, device=str(device), dtype="float32") | spread(times[name])
            row |= dict(calls_per_round=calls[name], max_rel_diff=errors[name], gemm_gflops=float(np.median(gemm) / 1e9))
            if name == "auto":
                ratio = np.array(times[name]) / faster
                row |= dict(over_faster_recipe=float(np.median(ratio)), ratio_min=ratio.min(), ratio_max=ratio.max())
            rows.append(row)
            print(f"{mode} {name}: median {row['median_s']:.4g} s [{row['min_s']:.4g}, {row['max_s']:.4g}]", flush=True)
    write_bench(pd.DataFrame(rows), "output_modes", argv, Path(args["out_dir"]))


if __name__ == "__main__":
    main(sys.argv[1:])
