"""Benchmark of the structured empirical NTK of general modules against the other exact methods.

    python -m scripts.bench_structured                               # every model, float32, 5 rounds
    python -m scripts.bench_structured models=[resnet18] rounds=3 nngeometry_path=/tmp/ngsite

Models (scalar output, the full (N, N) kernel):
  mlp          nn.Sequential of nn.Linear 784-1000-1000-1 (ReLU), N = 256; also our layer-wise kernel
               on the NTK MLP of the same widths (the same maths: the target is within 1.2x of it)
  cnn          conv 1->32 3x3, pool, conv 32->64 3x3, pool, linear, on 28 x 28 images, N = 64 (22,000
               parameters: a small Jacobian)
  lenet        the same convolutions, then a hidden linear layer of 512 (LeNet's shape), N = 64
  resnet18     torchvision's resnet18 (eval mode), 32 x 32 images, N = 16
  transformer  nn.TransformerEncoderLayer (d = 64, 4 heads, eval mode) + mean + linear, 16 tokens, N = 32
  mobilenet    torchvision's mobilenet_v3_small (depthwise convolutions), 32 x 32 images, N = 16; and
               mobilenet_f64, the same in float64 at N = 4
  gru_text     embedding (1000 x 64) -> GRU (128) -> linear, 32 tokens, N = 32
  vit          a ViT: 4 x 4 patches of 32 x 32 images, d = 64, 2 pre-norm layers, class token, N = 32
  unet         a UNet block (GroupNorm, SiLU, strided convolution, ConvTranspose2d, skip), 32 x 32, pooled, N = 16
  lora         784-512-512-1 frozen linear layers with rank-8 trainable updates (LoRA), N = 64
  img2img      an image-to-image network (Conv2d, GroupNorm, ConvTranspose2d, 1 x 1 Conv2d), 3 x 8 x 8 to
               1 x 16 x 16, the whole (N, N, 256, 256) kernel, N = 16
  gru_text_x2  gru_text with x2 given: 32 x 32 inputs, not symmetric
  pinn         a PINN's residual u_xx of a tanh MLP [1, 64, 64, 1] (torch.func.hessian inside forward,
               `ntk.OperatorModel`), 32 points for u and 32 for the residual, N = 64
(the last eight from `scripts.model_zoo`, float32 unless named _f64). The test zoo: `models=test_zoo`
runs every family of `scripts.model_zoo` at the size the tests use ("<family>_test", float64,
N = 16; out_name=structured_test_zoo keeps it apart), where a call's fixed costs weigh most.
Contenders per model: method="auto" (with the method it takes), "auto_first" (auto's first call on
the model: the model's measurements, the rules' check, the probes and the kernel, its cache cleared
before every call), method="structured", torch.func Jacobian contraction and NTK-vector products
(the PyTorch NTK tutorial's two methods, `ntk.empirical`), plain autograd, nngeometry's Gram matrix (PyPI
nngeometry 0.4, given by `nngeometry_path`: `pip install --no-deps --target <path> nngeometry==0.4`),
and a float32 GEMM (N x 1024) @ (1024 x 1024) as the rate reference. A contender whose first call
takes longer than `slow_limit` seconds, or whose memory estimate exceeds the budget, is left out of
the rounds with the reason. The rest alternate over `rounds` rounds (`scripts.common.interleaved`:
each round repeats a contender for at least 0.25 s, mean per call). Reported: median, min and max;
the speed-up over the faster torch.func method as the median of per-round ratios; auto over the best
of the exact methods in the same round (`over_best`: the fastest of structured, jacobian, ntk_vp
and autograd on the same model; at most 1.1 is the goal for repeated calls); the FLOPs of one
call by formula (`ntk.methods.flop_counts` for the structured method, with its per-layer choice,
and the two torch.func methods; `scripts.bench_ntk.layerwise_flops` for the layer-wise kernel;
torch's profiler for nngeometry) and the achieved rate as a fraction of the same rounds' GEMM rate;
and, from the memory planner, the largest N each method handles within this machine's budget. The structured method's check of its rules against autograd
runs once per model (in the warm-up), as in any repeated use. Writes results/bench/structured.csv and .md.
"""

from __future__ import annotations

import copy
import functools
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from ntk.empirical import empirical_ntk, memory_estimate
from ntk.forward import _CACHE as model_cache_of
from ntk.memory import available_memory
from ntk.methods import flop_counts
from ntk.model import NTKMLP
from ntk.report import kernel_report
from ntk.utils import best_time, resolve_device
from scripts import model_zoo
from scripts.bench_ntk import layerwise_flops
from scripts.common import BENCH_DIR, interleaved, parse_kv, spread, write_bench

MODELS = (
    "mlp",
    "cnn",
    "lenet",
    "resnet18",
    "transformer",
    "mobilenet",
    "mobilenet_f64",
    "gru_text",
    "gru_text_x2",
    "vit",
    "unet",
    "lora",
    "img2img",
    "pinn",
)
TEST_ZOO = tuple(f"{family}_test" for family in model_zoo.FAMILIES)  # the tests' sizes, float64, N = 16
ZOO_N = {
    "mobilenet": 16,
    "mobilenet_f64": 4,
    "gru_text": 32,
    "gru_text_x2": 32,
    "vit": 32,
    "unet": 16,
    "lora": 64,
    "img2img": 16,
    "pinn": 64,
}
TORCH_FUNC = ("jacobian", "ntk_vp")
EXACT = ("structured", "jacobian", "ntk_vp", "autograd")  # on the model itself (layerwise runs on a twin NTKMLP)


class CNN(nn.Module):
    def __init__(self, hidden: int = 0):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 32, 3, padding=1), nn.Conv2d(32, 64, 3, padding=1)
        self.head = (
            nn.Linear(64 * 7 * 7, 1) if not hidden else nn.Sequential(nn.Linear(64 * 7 * 7, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        )

    def forward(self, x):
        x = nn.functional.avg_pool2d(torch.relu(self.conv1(x)), 2)
        x = nn.functional.avg_pool2d(torch.relu(self.conv2(x)), 2)
        return self.head(x.flatten(1))


class Transformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(64, 4, dim_feedforward=128, dropout=0.0, batch_first=True)
        self.fc = nn.Linear(64, 1)

    def forward(self, x):
        return self.fc(self.layer(x).mean(1))


def build(name: str, device: torch.device) -> tuple[nn.Module, torch.Tensor, torch.Tensor | None, torch.dtype]:
    """The model (eval mode), its N inputs, the second inputs (None: the symmetric kernel) and the dtype of the kernel."""
    if name in ZOO_N or name in TEST_ZOO:
        small = name in TEST_ZOO
        family = name.removesuffix("_f64").removesuffix("_x2").removesuffix("_test")
        model, inputs = model_zoo.build(family, 1, "test" if small else "bench")
        n = 16 if small else ZOO_N[name]
        x = inputs(n, torch.Generator().manual_seed(1))
        x2 = inputs(n, torch.Generator().manual_seed(2)) if name.endswith("_x2") else None
        dtype = torch.float64 if name.endswith(("_f64", "_test")) else torch.float32
        if dtype == torch.float64:
            model, x = model.double(), (x.double() if x.is_floating_point() else x)
        return model.to(device).eval(), x.to(device), None if x2 is None else x2.to(device), dtype
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if name == "mlp":
        model = nn.Sequential(nn.Linear(784, 1000), nn.ReLU(), nn.Linear(1000, 1000), nn.ReLU(), nn.Linear(1000, 1))
        x = torch.rand(256, 784, generator=g)
    elif name in ("cnn", "lenet"):
        model, x = CNN(hidden=512 if name == "lenet" else 0), torch.rand(64, 1, 28, 28, generator=g)
    elif name == "resnet18":
        import torchvision

        model, x = torchvision.models.resnet18(num_classes=1), torch.rand(16, 3, 32, 32, generator=g)
    else:
        model, x = Transformer(), torch.randn(32, 16, 64, generator=g)
    return model.to(device).eval(), x.to(device), None, torch.float32


def nngeometry_gram(model: nn.Module, x: torch.Tensor):
    from nngeometry import GramMatrix  # from nngeometry_path

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(len(x))), batch_size=len(x))
    return lambda: GramMatrix(model, loader).data  # (O, N, O, N)


def flops_of(fn) -> float:
    """FLOPs of one call as torch's profiler counts them (matrix products, convolutions; for a library
    we cannot count by formula)."""
    with torch.profiler.profile(with_flops=True) as prof:
        fn()
    return float(sum(e.flops or 0 for e in prof.key_averages()))


def largest_n(model: nn.Module, method: str, x: torch.Tensor, budget: float, dtype: torch.dtype) -> int:
    """The most inputs whose (N, N) kernel the memory planner lets `method` compute (up to 2^20)."""

    def fits(n: int) -> bool:
        block = None if method == "jacobian" else 1
        return memory_estimate(model, method, n, n, True, dtype, block, x[:1]) <= budget

    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= 2**20 and fits(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def main(argv: list[str]) -> None:
    args = parse_kv(
        argv,
        dict(
            models=list(MODELS),
            rounds=5,
            slow_limit=10.0,
            device="auto",
            nngeometry_path=None,
            out_dir=str(BENCH_DIR),
            out_name="structured",
        ),
    )
    names = [m.strip() for m in str(args["models"]).strip("[]").split(",")] if isinstance(args["models"], str) else list(args["models"])
    if names == ["test_zoo"]:
        names = list(TEST_ZOO)
    unknown = sorted(set(names) - set(MODELS) - set(TEST_ZOO))
    if unknown:
        sys.exit(f"error: unknown model(s) {', '.join(unknown)}; allowed: {', '.join(MODELS + TEST_ZOO)}, or test_zoo for all *_test")
    if args["nngeometry_path"]:
        sys.path.insert(0, str(args["nngeometry_path"]))
    device = resolve_device(args["device"])
    budget = available_memory(device)
    rows = []
    for name in names:
        model, x, x2, dtype = build(name, device)
        n = x.shape[0]
        a, w = torch.randn(n, 1024, device=device), torch.randn(1024, 1024, device=device)
        contenders = {"gemm": lambda: a @ w}
        notes: dict[str, str] = {}
        candidates = {
            m: functools.partial(empirical_ntk, model, x, x2, method=m, dtype=dtype)
            for m in ("auto", "structured", *TORCH_FUNC, "autograd")
        }

        def first_call(model=model, x=x, x2=x2, dtype=dtype):
            model_cache_of.pop(model, None)  # nothing measured, checked or chosen: a first call
            return empirical_ntk(model, x, x2, dtype=dtype)

        candidates = {"auto": candidates.pop("auto"), "auto_first": first_call, **candidates}
        report = kernel_report(model, x, x2, dtype=dtype)
        flops = flop_counts(model, x, n, None if x2 is None else x2.shape[0])  # what the report measured, before any cache is cleared
        takes = report.chosen
        notes["auto"] = f"takes {takes[0]}" if takes else "no method fits"
        failed = [f"{m.name}: {m.note}" for m in report.methods if m.note and not m.note.startswith(("not probed", "not tried"))]
        if failed:
            notes["auto"] += "; dropped " + "; ".join(failed)
        if name == "mlp":
            twin = NTKMLP(784, 1000, 3, generator=torch.Generator().manual_seed(0), device=device)
            candidates["layerwise"] = functools.partial(empirical_ntk, twin, x, method="layerwise", dtype=torch.float32)
        if args["nngeometry_path"]:
            try:
                candidates["nngeometry"] = nngeometry_gram(copy.deepcopy(model), x)  # a copy: a refusing nngeometry leaves its hooks on it
            except Exception as err:  # nngeometry raises a bare Exception for a layer it does not know
                notes["nngeometry"] = f"refused: {str(err).splitlines()[0]}"
        for method, fn in candidates.items():
            try:
                first = best_time(fn, device, 1, warmup=1 if method in ("auto", "structured") else 0)
            except Exception as err:  # out of memory (NTKMemoryError), or a library refusing the model
                notes[method] = f"refused: {str(err).splitlines()[0]}"
                continue
            if first > args["slow_limit"]:
                notes[method] = f"not in the rounds: one call takes {first:.1f} s (> slow_limit={args['slow_limit']:g} s)"
                continue
            contenders[method] = fn
        if takes:
            flops["auto"] = flops["auto_first"] = flops.get(takes[0], float("nan"))
        if "layerwise" in candidates:
            flops["layerwise"] = layerwise_flops(twin.widths, n)
        if "nngeometry" in contenders:
            flops["nngeometry"] = flops_of(contenders["nngeometry"])
        print(f"{name} N={n} GFLOP by formula: " + ", ".join(f"{m} {flops[m] / 1e9:.3g}" for m in candidates if m in flops), flush=True)
        times, calls = interleaved(contenders, args["rounds"], device)
        gemm_rate = 2 * n * 1024 * 1024 / np.array(times["gemm"])  # FLOP/s per round
        fastest_tf = min((m for m in TORCH_FUNC if m in times), key=lambda m: np.median(times[m]), default=None)
        for method in [*candidates, *[m for m in notes if m not in candidates]]:
            row = dict(model=name, N=n, method=method, device=str(device), dtype=str(dtype).removeprefix("torch."))
            if method in times:
                t = np.array(times[method])
                row |= spread(times[method]) | dict(calls_per_round=calls[method])
                row["fraction_of_gemm"] = float(np.median(flops[method] / t / gemm_rate))
                if fastest_tf is not None and method != fastest_tf:
                    ratio = np.array(times[fastest_tf]) / t
                    row |= dict(speedup_vs_torch_func=float(np.median(ratio)), speedup_min=ratio.min(), speedup_max=ratio.max())
                if method == "structured" and "layerwise" in times:
                    row["over_layerwise"] = float(np.median(t / np.array(times["layerwise"])))
                exact = [np.array(times[m]) for m in EXACT if m in times]
                if method in ("auto", "auto_first") and exact:
                    row["over_best"] = float(np.median(t / np.min(exact, axis=0)))  # per round: auto over that round's fastest
            if method in flops:
                row["gflop"] = flops[method] / 1e9
            row["note"] = notes.get(method, "")
            if method in ("structured", *TORCH_FUNC):
                try:
                    row["largest_N_in_budget"] = largest_n(model, method, x, budget, dtype)
                except ValueError:  # the method cannot take the model
                    pass
            row["gemm_gflops"] = float(np.median(gemm_rate) / 1e9)
            rows.append(row)
            if "median_s" in row:
                print(f"{name} N={n} {method}: median {row['median_s']:.4g} s [{row['min_s']:.4g}, {row['max_s']:.4g}]", flush=True)
        model = a = w = None
        write_bench(pd.DataFrame(rows).reindex(columns=COLUMNS), args["out_name"], argv, Path(args["out_dir"]))  # as each model finishes


COLUMNS = [
    "model",
    "N",
    "method",
    "device",
    "dtype",
    "median_s",
    "min_s",
    "max_s",
    "rounds",
    "calls_per_round",
    "speedup_vs_torch_func",
    "over_best",
    "speedup_min",
    "speedup_max",
    "over_layerwise",
    "gflop",
    "fraction_of_gemm",
    "gemm_gflops",
    "largest_N_in_budget",
    "note",
]


if __name__ == "__main__":
    main(sys.argv[1:])
