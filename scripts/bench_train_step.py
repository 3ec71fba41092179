"""Benchmark: one fused gradient-descent step against the matrix products it needs.

    python -m scripts.bench_train_step                      # width 10000, depth 4, N = 16, 64
    python -m scripts.bench_train_step width=1000 depth=5 in_dim=784 batches=[512] name=train_step_mnist

For every batch size N, times in one process and on the same model:
- the three matrix products of each layer, each alone: forward (N, n_l) x W^T, backward to the
  inputs (N, n_{l+1}) x W, and the in-place rank-N update W += d^T a;
- one fused step of `ntk.train` (forward with cache, backward, in-place update);
- one step of plain autograd + torch.optim.SGD on the same model.
Prints a table and writes results/bench/<name>.csv (+ .md) with the ratio of the fused step to
the sum of its products, the achieved rate, and the step time against its FLOP count at the rate of
a reference GEMM (N, width) @ (width, width) measured in the same run.
"""

from __future__ import annotations

import sys

import pandas as pd
import torch

from ntk.model import NTKMLP, forward_with_cache
from ntk.train import fused_step, mse_cost
from ntk.utils import best_time, resolve_device
from scripts.common import parse_kv, write_bench


def main(argv: list[str]) -> None:
    args = parse_kv(argv, dict(width=10000, depth=4, in_dim=2, batches=[16, 64], device="auto", repeats=5, name="train_step"))
    device = resolve_device(args["device"])
    torch.manual_seed(0)
    model = NTKMLP(args["in_dim"], args["width"], args["depth"], generator=torch.Generator(device).manual_seed(0), device=device)
    rows = []
    for n in args["batches"]:
        x = torch.randn(n, args["in_dim"], device=device)
        y = torch.randn(n, 1, device=device)
        _, acts, _ = forward_with_cache(model, x)
        flops = 0
        t_products = 0.0
        for l, layer in enumerate(model.layers):
            w, a = layer.weight.detach(), acts[l]
            d = torch.randn(n, w.shape[0], device=device)
            t_products += best_time(lambda: torch.addmm(layer.bias, a, w.T), device, args["repeats"])
            flops += 2 * n * w.numel()
            if l > 0:
                t_products += best_time(lambda: d @ w, device, args["repeats"])
                flops += 2 * n * w.numel()
            t_products += best_time(lambda: w.addmm_(d.T, a, alpha=-1e-3), device, args["repeats"])
            flops += 2 * n * w.numel()

        def fused() -> None:
            _, _, update = fused_step(model, x, y)
            update(1.0)  # a real step (alpha = 0 may skip the GEMM, tiny alpha hits subnormals)

        t_fused = best_time(fused, device, args["repeats"])
        opt = torch.optim.SGD(model.parameters(), lr=1.0)

        def autograd_sgd() -> None:
            opt.zero_grad(set_to_none=False)
            mse_cost(model(x), y).backward()
            opt.step()

        t_autograd = best_time(autograd_sgd, device, max(2, args["repeats"] // 2))
        opt.zero_grad(set_to_none=True)
        a_ref = torch.randn(n, args["width"], device=device)
        w_ref = torch.randn(args["width"], args["width"], device=device)
        gemm = 2 * n * args["width"] ** 2 / best_time(lambda: a_ref @ w_ref, device, args["repeats"]) / 1e9
        a_ref = w_ref = None  # free the operands
        rows.append(
            dict(
                width=args["width"],
                depth=args["depth"],
                N=n,
                device=str(device),
                dtype="float32",
                products_s=t_products,
                fused_step_s=t_fused,
                autograd_sgd_s=t_autograd,
                fused_over_products=t_fused / t_products,
                autograd_over_fused=t_autograd / t_fused,
                products_gflops=flops / t_products / 1e9,
                fused_gflops=flops / t_fused / 1e9,
                gemm_gflops=gemm,
                fused_over_flop_time=t_fused / (flops / gemm / 1e9),
            )
        )
    write_bench(pd.DataFrame(rows), args["name"], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
