"""Render Figure 3a from saved tables: the MNIST batch in the (f(2), f(3)) plane, by digit.

    python -m scripts.make_figures dir=<run directory>     # this figure alone, from the saved tables

Uses the first batch and seed of the widest network (or the limit when no network was run),
and writes the eigenvalues of every source (mean -/+ sd over batches and seeds) in the legend.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from experiments.figures.style import read_table, save_figure


def render(run_dir: str | Path) -> list[Path]:
    """mnist_pca.png/.pdf from run_dir/components.csv and run_dir/table.csv."""
    run_dir = Path(run_dir)
    components, eigen, out = run_dir / "components.csv", run_dir / "table.csv", run_dir / "mnist_pca"
    comps = read_table(components, {"source", "width", "batch", "seed", "label", "f2", "f3"}, "components table")
    eig = read_table(eigen, {"source", "width", "component", "lambda"}, "eigenvalues table")
    emp = comps[comps.source == "empirical"]
    pick = emp[emp.width == emp.width.max()] if len(emp) else comps[comps.source == "limit"]
    pick = pick[(pick.batch == pick.batch.min()) & (pick.seed == pick.seed.min())]
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    sc = ax.scatter(pick.f2, pick.f3, c=pick.label, cmap="tab10", vmin=-0.5, vmax=9.5, s=10)
    fig.colorbar(sc, ax=ax, ticks=range(10), label="digit")
    src = pick.source.iloc[0]
    title = "n = inf" if src == "limit" else f"n = {int(pick.width.iloc[0])}"
    ax.set_title(f"MNIST, {len(pick)} digits: 2nd and 3rd NTK principal components ({title})", fontsize=9)
    ax.set_xlabel(r"$f^{(2)}(x)$")
    ax.set_ylabel(r"$f^{(3)}(x)$")
    lines = []
    for (source, width), group in eig.groupby(["source", "width"]):
        stats = group.groupby("component")["lambda"].agg(["mean", "std"])
        label = "n = inf" if source == "limit" else f"n = {int(width)}"
        lines.append(label + ": " + ", ".join(f"{m:.3g}" for m in stats["mean"]))
    ax.text(0.02, 0.02, "lambda_1..k (mean)\n" + "\n".join(lines), transform=ax.transAxes, fontsize=7, va="bottom")
    return save_figure(fig, out)
