"""Benchmark: one fused gradient-descent step against the matrix products it needs.

    python -m scripts.bench_train_step                      # width 10000, depth 4, N = 16, 64
    python -m scripts.bench_train_step width=1000 depth=5 in_dim=784 batches=[512] name=train_step_mnist

For every batch size N, times in one process and on the same model, the contenders alternating
over `rounds` rounds (`scripts.common.interleaved`; medians, with min and max):
- the three matrix products of each layer, one after the other: forward (N, n_l) x W^T, backward to the
  inputs (N, n_{l+1}) x W, and the in-place rank-N update W += d^T a;
- one fused step of `ntk.train` (forward with cache, backward, in-place update);
- one step of plain autograd + torch.optim.SGD on the same model.
Prints a table and writes results/bench/<name>.csv (+ .md) with the ratio of the fused step to
the sum of its products, the achieved rate, and the step time against its FLOP count at the rate of
a reference GEMM (N, width) @ (width, width) measured in the same run.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ntk.model import NTKMLP, forward_with_cache
from ntk.train import fused_step, largest_stable_lr, mse_cost
from ntk.utils import resolve_device
from scripts.common import BENCH_DIR, interleaved, parse_kv, write_bench


def main(argv: list[str]) -> None:
    args = parse_kv(
        argv, dict(width=10000, depth=4, in_dim=2, batches=[16, 64], device="auto", rounds=5, name="train_step", out_dir=str(BENCH_DIR))
    )
    device = resolve_device(args["device"])
    torch.manual_seed(0)
    model = NTKMLP(args["in_dim"], args["width"], args["depth"], generator=torch.Generator().manual_seed(0), device=device)
    rows = []
    for n in args["batches"]:
        x = torch.randn(n, args["in_dim"], device=device)
        y = torch.randn(n, 1, device=device)
        _, acts, _ = forward_with_cache(model, x)
        flops = 0
        products = []
        for l, layer in enumerate(model.layers):
            w, a = layer.weight.detach(), acts[l]
            d = torch.randn(n, w.shape[0], device=device)
            products.append(functools.partial(torch.addmm, layer.bias.detach(), a, w.T))
            flops += 2 * n * w.numel()
            if l > 0:
                products.append(functools.partial(torch.matmul, d, w))
                flops += 2 * n * w.numel()
            scratch = w.clone()  # the rank-N update on a copy: repeating it thousands of times must not move the model
            products.append(functools.partial(scratch.addmm_, d.T, a, alpha=-1e-3))
            flops += 2 * n * w.numel()

        def all_products() -> None:
            for product in products:
                product()

        # a real step at half the stability bound: alpha = 0 may skip the GEMM, tiny alpha hits subnormals, and
        # a step above the bound diverges over the thousands of calls of a fast device's rounds
        lr = 0.5 * largest_stable_lr(model, x)

        def fused() -> None:
            _, _, update = fused_step(model, x, y)
            update(lr)

        opt = torch.optim.SGD(model.parameters(), lr=lr)

        def autograd_sgd() -> None:
            opt.zero_grad(set_to_none=False)
            mse_cost(model(x), y).backward()
            opt.step()

        a_ref = torch.randn(n, args["width"], device=device)
        w_ref = torch.randn(args["width"], args["width"], device=device)
        contenders = dict(products=all_products, fused=fused, autograd_sgd=autograd_sgd, gemm=lambda: a_ref @ w_ref)
        times, calls = interleaved(contenders, args["rounds"], device)
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            sys.exit(f"error: the steps at N={n} diverged during the rounds; the times would be of non-finite arithmetic")
        opt.zero_grad(set_to_none=True)
        a_ref = w_ref = None  # free the operands
        med = {name: float(np.median(t)) for name, t in times.items()}
        gemm = 2 * n * args["width"] ** 2 / med["gemm"] / 1e9
        row = dict(width=args["width"], depth=args["depth"], N=n, device=str(device), dtype="float32", rounds=args["rounds"])
        row |= {f"{name}_calls_per_round": calls[name] for name in ("products", "fused", "autograd_sgd")}
        for name in ("products", "fused", "autograd_sgd"):
            row |= {f"{name}_s": med[name], f"{name}_min_s": min(times[name]), f"{name}_max_s": max(times[name])}
        row |= dict(
            fused_over_products=med["fused"] / med["products"],
            autograd_over_fused=med["autograd_sgd"] / med["fused"],
            products_gflops=flops / med["products"] / 1e9,
            fused_gflops=flops / med["fused"] / 1e9,
            gemm_gflops=gemm,
            fused_over_flop_time=med["fused"] / (flops / gemm / 1e9),
        )
        rows.append(row)
    write_bench(pd.DataFrame(rows), args["name"], argv, Path(args["out_dir"]))


if __name__ == "__main__":
    main(sys.argv[1:])
