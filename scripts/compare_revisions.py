"""Nothing changes for users: compare this checkout with an earlier revision, tables and speed.

    python -m scripts.compare_revisions base=048117f                     # tables of every tiny run, then the benchmarks
    python -m scripts.compare_revisions base=HEAD~3 bench=false names=[circle_width] rtol=1e-12

1. Tables. The base revision is checked out beside this one (`git worktree`, removed at the end);
   every experiment runs at its tiny size (`Experiment.tiny`) on the CPU in both trees, in fresh
   processes, and every CSV is compared column by column (`scripts.compare_devices.compare_tables`:
   floating columns by their largest |a - b| relative to the column's scale, everything else
   exactly). Held to `rtol` (default 1e-12); accuracy columns included.
2. Speed. The base revision's `ntk` package is loaded in this process under the name `ntk_base`
   (a copy with its own imports renamed), so that both versions of `empirical_ntk` run on the same
   models and inputs and alternate within every round (`scripts.common.interleaved`), with a float32
   GEMM as the rate reference: the cases of `scripts.bench_ntk` (the layer-wise kernel at widths
   1000 and 2000, Jacobian contraction and NTK-vector products at 1000) and the models of
   `scripts.bench_structured` (the structured method). Reported: median and range per version and
   the median of the per-round ratios base / this.

Writes <out_dir>/revisions_tables.md, revisions_bench.md and .csv with provenance; exits 1 when a
column is off or a run failed.
"""

from __future__ import annotations

import functools
import importlib
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from experiments.persistence import atomic_write_json, atomic_write_text, provenance
from experiments.runner import experiment_names, load_experiment
from scripts.bench_structured import build
from scripts.common import BENCH_DIR, interleaved, parse_kv, spread
from scripts.compare_devices import as_list, compare_run_dirs

ROOT = Path(__file__).resolve().parent.parent
MLP_CASES = [
    dict(width=1000, depth=4, n=256, methods=("layerwise", "jacobian", "ntk_vp")),
    dict(width=2000, depth=4, n=256, methods=("layerwise",)),
]
STRUCTURED_MODELS = ("mlp", "cnn", "lenet", "resnet18", "transformer")


def run_tiny_in(tree: Path, name: str, out: Path) -> None:
    """Experiment `name` at its tiny size on the CPU, run from the checkout `tree` into `out`."""
    tiny = load_experiment(name).tiny
    cmd = [sys.executable, "-m", "experiments.run", f"+exp={name}", *tiny, "device=cpu", "progress=false", f"out_dir={out}"]
    proc = subprocess.run(cmd, cwd=tree, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} in {tree} failed: {(proc.stderr.strip().splitlines() or ['(no output)'])[-1]}")


def compare_runs(base_tree: Path, names: list[str], work: Path, rtol: float) -> tuple[pd.DataFrame, list[str]]:
    rows, failures = [], []
    for name in names:
        try:
            for tag, tree in (("base", base_tree), ("head", ROOT)):
                run_tiny_in(tree, name, work / tag / name)
        except RuntimeError as err:
            failures.append(str(err))
            continue
        try:
            compared = compare_run_dirs(work / "base" / name, work / "head" / name)
        except ValueError as err:
            failures.append(f"{name}: {err}")
            continue
        rows += [row | dict(experiment=name, ok=bool(row["rel_diff"] <= rtol)) for row in compared]
        first = {r["table"] for r in compared}
        worst = max((r["rel_diff"] for r in rows if r["experiment"] == name and r["kind"] == "float"), default=0.0)
        print(f"{name}: {len(first)} table(s), largest relative difference {worst:.3g}", flush=True)
    return pd.DataFrame(rows, columns=["experiment", "table", "column", "kind", "rel_diff", "max_abs_diff", "ok", "note"]), failures


def load_base_package(base_tree: Path, work: Path):
    """The base revision's `ntk` as the package `ntk_base` (a copy whose imports say ntk_base)."""
    target = work / "pkg" / "ntk_base"
    shutil.copytree(base_tree / "ntk", target, ignore=shutil.ignore_patterns("__pycache__"))
    for path in target.rglob("*.py"):
        text = path.read_text()
        text = re.sub(r"\bfrom ntk(?=[. ])", "from ntk_base", text)
        text = re.sub(r"\bimport ntk\b", "import ntk_base", text)
        path.write_text(text)
    sys.path.insert(0, str(work / "pkg"))
    return importlib.import_module("ntk_base.empirical"), importlib.import_module("ntk_base.model")


def bench(base_empirical, base_model, rounds: int) -> pd.DataFrame:
    import ntk

    device = torch.device("cpu")
    rows = []

    def race(label: str, n: int, base_fn, head_fn) -> None:
        a, w = torch.randn(n, 1024), torch.randn(1024, 1024)
        base_fn(), head_fn()  # warm-up (the structured method checks its rules once per model)
        times, _ = interleaved({"base": base_fn, "head": head_fn, "gemm": lambda: a @ w}, rounds, device)
        ratio = np.array(times["base"]) / np.array(times["head"])
        gemm = float(np.median(2 * n * 1024 * 1024 / np.array(times["gemm"]) / 1e9))
        row = dict(case=label, N=n)
        row |= {f"base_{k}": v for k, v in spread(times["base"]).items() if k != "rounds"}
        row |= {f"head_{k}": v for k, v in spread(times["head"]).items()}
        row |= dict(speedup=float(np.median(ratio)), speedup_min=float(ratio.min()), speedup_max=float(ratio.max()), gemm_gflops=gemm)
        rows.append(row)
        print(f"{label}: base {row['base_median_s']:.4g} s, head {row['head_median_s']:.4g} s, base/head {row['speedup']:.3f}", flush=True)

    for case in MLP_CASES:
        x = torch.rand(case["n"], 784, generator=torch.Generator().manual_seed(1))
        twins = [
            cls(784, case["width"], case["depth"], generator=torch.Generator().manual_seed(0)) for cls in (base_model.NTKMLP, ntk.NTKMLP)
        ]
        for method in case["methods"]:
            race(
                f"bench_ntk {case['width']}x{case['depth']} {method}",
                case["n"],
                functools.partial(base_empirical.empirical_ntk, twins[0], x, method=method, dtype=torch.float32),
                functools.partial(ntk.empirical_ntk, twins[1], x, method=method, dtype=torch.float32),
            )
    for name in STRUCTURED_MODELS:
        model, x = build(name, device)
        race(
            f"bench_structured {name} structured",
            x.shape[0],
            functools.partial(base_empirical.empirical_ntk, model, x, method="structured", dtype=torch.float32),
            functools.partial(ntk.empirical_ntk, model, x, method="structured", dtype=torch.float32),
        )
    return pd.DataFrame(rows)


def main(argv: list[str]) -> int:
    args = parse_kv(
        argv, dict(base="HEAD~1", names=experiment_names(), rtol=1e-12, rounds=5, bench=True, tables=True, out_dir=str(BENCH_DIR))
    )
    names, out_dir = as_list(args["names"]), Path(args["out_dir"])
    for key in ("bench", "tables"):  # True/False, or true/false as typed on a command line
        args[key] = str(args[key]).lower() not in ("false", "0", "no")
    unknown = sorted(set(names) - set(experiment_names()))
    if unknown:
        sys.exit(f"error: unknown experiment(s) {', '.join(unknown)}; allowed: {', '.join(experiment_names())}")
    rev = subprocess.run(["git", "rev-parse", "--verify", f"{args['base']}^{{commit}}"], cwd=ROOT, capture_output=True, text=True)
    if rev.returncode != 0:
        sys.exit(f"error: base={args['base']} is not a revision of this repository")
    base = rev.stdout.strip()
    work = Path(tempfile.mkdtemp(prefix="compare_revisions_"))
    tree = work / "base"
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), base], cwd=ROOT, check=True, capture_output=True)
    status = 0
    try:
        prov = dict(base_revision=base)
        if args["tables"]:
            table, failures = compare_runs(tree, names, work / "runs", float(args["rtol"]))
            off = table[~table.ok]
            worst = table[table.kind == "float"].groupby("experiment").rel_diff.max()
            md = [
                f"Tiny runs of {len(names)} experiment(s) at {base[:7]} (base) and at this revision: {len(table)} columns compared, "
                f"{len(off)} off rtol = {float(args['rtol']):g}, {len(failures)} run(s) failed. Largest relative difference "
                "of a floating column per experiment:",
                "",
                worst.reset_index().to_markdown(index=False, floatfmt=".3g") if len(worst) else "(no floating columns)",
            ]
            if len(off):
                md += ["", off.to_markdown(index=False, floatfmt=".3g")]
            md += [f"- {f}" for f in failures]
            print("\n".join(md))
            atomic_write_text(out_dir / "revisions_tables.md", "\n".join(md) + "\n")
            atomic_write_json(
                out_dir / "revisions_tables.provenance.json",
                provenance(command=["python", "-m", "scripts.compare_revisions", *argv], **prov),
            )
            status = 1 if len(off) or failures else 0
        if args["bench"]:
            base_empirical, base_model = load_base_package(tree, work)
            results = bench(base_empirical, base_model, int(args["rounds"]))
            md = results.to_markdown(index=False, floatfmt=".4g")
            print(md)
            atomic_write_text(out_dir / "revisions_bench.csv", results.to_csv(index=False))
            atomic_write_text(out_dir / "revisions_bench.md", md + "\n")
            atomic_write_json(
                out_dir / "revisions_bench.provenance.json",
                provenance(command=["python", "-m", "scripts.compare_revisions", *argv], **prov),
            )
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
