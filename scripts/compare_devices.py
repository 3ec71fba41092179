"""Run every experiment at its tiny size on two devices and compare their tables (part of the GPU check).

    python -m scripts.compare_devices                                   # cpu against cuda (cpu against cpu without CUDA)
    python -m scripts.compare_devices devices=[cpu,cuda:0] names=[circle_width] out_dir=/tmp/cmp rtol=1e-4

Each experiment runs in a fresh process as
    python -m experiments.run +exp=<name> <its tiny overrides> device=<device> progress=false out_dir=<out_dir>/<device>/<name>
(`Experiment.tiny`, declared by each experiment module). The networks are the same on every device (drawn on the CPU, then moved), so
the two runs differ only by floating-point arithmetic. Every CSV of one run is compared with the
same CSV of the other: the same columns and rows; strings, integers and booleans equal; floating
columns by their largest |a - b| relative to the column's largest |a| (`rel_diff`). A floating column
is within tolerance when rel_diff <= rtol; accuracy columns (fractions of test digits whose argmax
matches) are reported but not held to it, since a digit whose two top outputs lie within float error
of each other may flip. Writes <out_dir>/compare.csv and compare.md, prints the table, and exits 1
if any column is off (or a run failed).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.persistence import atomic_write_json, atomic_write_text, provenance
from experiments.runner import experiment_names, load_experiment
from scripts.common import parse_kv

NOT_HELD = ("accuracy",)  # substrings of column names reported but not held to rtol


def run_tiny(name: str, device: str, out: Path) -> float:
    """Run experiment `name` at its tiny size on `device` into `out`; return the wall time (raises on failure)."""
    cmd = [
        sys.executable,
        "-m",
        "experiments.run",
        f"+exp={name}",
        *load_experiment(name).tiny,
        f"device={device}",
        "progress=false",
        f"out_dir={out}",
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"{name} on {device} failed with exit status {proc.returncode}: {tail}")
    return time.perf_counter() - start


def tables_of(run_dir: Path) -> dict[str, Path]:
    """The CSV files of a run by a device-independent name (the drift job files are named by a key
    that contains the device: they are numbered in their sorted order instead)."""
    out = {}
    for path in sorted(run_dir.rglob("*.csv")):
        rel = path.relative_to(run_dir)
        out[str(rel)] = path
    jobs = sorted({p.name.split(".")[0] for p in (run_dir / "jobs").glob("*.csv")}) if (run_dir / "jobs").is_dir() else []
    for i, key in enumerate(jobs):
        for rel in [r for r in out if r.startswith(f"jobs/{key}.")]:
            out[rel.replace(f"jobs/{key}.", f"jobs/job{i}.")] = out.pop(rel)
    return out


def compare_tables(a: pd.DataFrame, b: pd.DataFrame) -> list[dict]:
    """Column-by-column differences of two tables that should agree up to floating-point error."""
    if list(a.columns) != list(b.columns) or len(a) != len(b):
        return [
            dict(
                column="(shape)",
                kind="shape",
                rel_diff=np.inf,
                max_abs_diff=np.nan,
                note=f"{a.shape} {list(a.columns)} vs {b.shape} {list(b.columns)}",
            )
        ]
    rows = []
    for column in a.columns:
        x, y = a[column], b[column]
        if pd.api.types.is_float_dtype(x) and pd.api.types.is_numeric_dtype(y):
            xv, yv = x.to_numpy(float), y.to_numpy(float)
            same_nan = np.array_equal(np.isnan(xv), np.isnan(yv))
            finite = np.isfinite(xv) & np.isfinite(yv)
            diff = np.abs(xv[finite] - yv[finite])
            scale = np.abs(xv[finite]).max() if finite.any() else 0.0
            max_abs = float(diff.max()) if diff.size else 0.0
            rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else np.inf)
            if not same_nan or not np.array_equal(xv[~finite & ~np.isnan(xv)], yv[~finite & ~np.isnan(yv)]):
                rel = np.inf  # NaN or inf in different places
            rows.append(dict(column=column, kind="float", rel_diff=rel, max_abs_diff=max_abs, note=""))
        else:
            equal = bool((x.astype(str).to_numpy() == y.astype(str).to_numpy()).all())
            rows.append(
                dict(
                    column=column,
                    kind="exact",
                    rel_diff=0.0 if equal else np.inf,
                    max_abs_diff=np.nan,
                    note="" if equal else "values differ",
                )
            )
    return rows


def compare_run_dirs(first_dir: Path, second_dir: Path) -> list[dict]:
    """`compare_tables` of every CSV two runs wrote (rows tagged with the table's name); a ValueError
    when they wrote different tables."""
    first, second = tables_of(first_dir), tables_of(second_dir)
    if set(first) != set(second):
        raise ValueError(f"the runs wrote different tables: {sorted(first)} vs {sorted(second)}")
    rows = []
    for table in sorted(first):
        a = pd.read_csv(first[table], float_precision="round_trip")
        b = pd.read_csv(second[table], float_precision="round_trip")
        rows += [row | dict(table=table) for row in compare_tables(a, b)]
    return rows


def as_list(value: object) -> list[str]:
    """A list argument given as a Python list or as bare names, `[cpu,cuda]` or `cpu,cuda`."""
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [v.strip() for v in str(value).strip("[]").split(",") if v.strip()]


def main(argv: list[str]) -> int:
    import torch

    default_devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu", "cpu"]
    args = parse_kv(argv, dict(devices=default_devices, names=experiment_names(), out_dir="gpu_check/compare", rtol=1e-3))
    devices, names = as_list(args["devices"]), as_list(args["names"])
    out_dir, rtol = Path(args["out_dir"]), float(args["rtol"])
    if len(devices) != 2:
        sys.exit(f"error: devices must name two devices, got {devices}")
    unknown = sorted(set(names) - set(experiment_names()))
    if unknown:
        sys.exit(f"error: unknown experiment(s) {', '.join(unknown)}; allowed: {', '.join(experiment_names())}")
    tags = [f"{i}_{d.replace(':', '')}" for i, d in enumerate(devices)]
    rows, failures = [], []
    for name in names:
        walls = {}
        try:
            for device, tag in zip(devices, tags):
                walls[device] = run_tiny(name, device, out_dir / tag / name)
        except RuntimeError as err:
            failures.append(str(err))
            print(f"FAILED {err}", flush=True)
            continue
        try:
            compared = compare_run_dirs(out_dir / tags[0] / name, out_dir / tags[1] / name)
        except ValueError as err:
            failures.append(f"{name}: {err}")
            continue
        for row in compared:
            held = not any(s in row["column"] for s in NOT_HELD)
            rows.append(row | dict(experiment=name, held=held, ok=bool(row["rel_diff"] <= rtol or not held)))
        first = {r["table"] for r in compared}
        worst = max((r["rel_diff"] for r in rows if r["experiment"] == name and r["kind"] == "float" and r["held"]), default=0.0)
        times = ", ".join(f"{d} {walls[d]:.1f} s" for d in devices)
        print(f"{name}: largest relative difference {worst:.3g} over {len(first)} table(s) ({times})", flush=True)
    table = pd.DataFrame(rows, columns=["experiment", "table", "column", "kind", "rel_diff", "max_abs_diff", "held", "ok", "note"])
    summary = (
        table[table.kind == "float"]
        .groupby(["experiment", "table"], sort=True)
        .agg(
            columns=("column", "size"),
            worst_rel_diff=("rel_diff", "max"),
            worst_column=("rel_diff", lambda s: table.loc[s.idxmax(), "column"]),
        )
        .reset_index()
        if len(table)
        else pd.DataFrame()
    )
    off = table[~table.ok]
    md = [
        f"Tiny experiments on {devices[0]} and {devices[1]}: floating columns within rtol = {rtol:g} of each column's scale "
        f"(accuracy columns reported only); {len(off)} column(s) off, {len(failures)} run(s) failed.",
        "",
    ]
    md.append(summary.to_markdown(index=False, floatfmt=".3g") if len(summary) else "(no tables)")
    if len(off):
        md += ["", "Columns off:", "", off.to_markdown(index=False, floatfmt=".3g")]
    if failures:
        md += ["", "Failed runs:", ""] + [f"- {f}" for f in failures]
    text = "\n".join(md) + "\n"
    print(text)
    atomic_write_text(out_dir / "compare.csv", table.to_csv(index=False))
    atomic_write_text(out_dir / "compare.md", text)
    atomic_write_json(
        out_dir / "compare.provenance.json", provenance(command=["python", "-m", "scripts.compare_devices", *argv], devices=devices)
    )
    return 1 if len(off) or failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
