"""Render Figure 2 from a saved table: trained networks against the limiting Gaussian.

    python -m scripts.make_figures dir=<run directory>     # this figure alone, from the saved tables

One thin line per trained network (colour by width); the exact n = infinity percentiles P10, P50,
P90 in black (P50 solid, P10/P90 dashed); the paper's approximation from one wide network in grey
dotted; the training points as dots. Writes <out>.png and <out>.pdf. Reads only the table.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from experiments.figures.style import gamma_axis, read_table, save_figure

COLUMNS = {"kind", "width", "seed", "gamma", "f"}
COLOURS = ["tab:green", "tab:red", "tab:blue", "tab:orange"]


def render(run_dir: str | Path) -> list[Path]:
    """circle_regression.png/.pdf from run_dir/table.csv."""
    run_dir = Path(run_dir)
    table, out = run_dir / "table.csv", run_dir / "circle_regression"
    df = read_table(table, COLUMNS)
    fig, ax = plt.subplots(figsize=(6, 4))
    nets = df[df.kind == "network"]
    for colour, (width, group) in zip(COLOURS, nets.groupby("width")):
        for i, (_, curve) in enumerate(group.groupby("seed")):
            ax.plot(curve.gamma, curve.f, color=colour, lw=0.7, alpha=0.7, label=f"n = {width:g}" if i == 0 else None)
    for prefix, colour, label in (
        ("limit", "black", r"$n = \infty$: $P_{10}, P_{50}, P_{90}$"),
        ("approx", "grey", "kernels of one wide net"),
    ):
        for p, style in (("p50", "-"), ("p10", "--"), ("p90", "--")):
            sel = df[df.kind == f"{prefix}_{p}"].sort_values("gamma")
            if len(sel):
                width = sel.width.iloc[0]
                extra = f" (n = {width:g})" if prefix == "approx" else ""
                ax.plot(
                    sel.gamma,
                    sel.f,
                    style if prefix == "limit" else ":",
                    color=colour,
                    lw=1.6 if prefix == "limit" else 1.2,
                    label=label + extra if p == "p50" else None,
                )
    pts = df[df.kind == "train"]
    ax.plot(pts.gamma, pts.f, "o", color="black", ms=5, label="training points")
    ax.set_ylabel(r"$f(\cos\gamma, \sin\gamma)$")
    gamma_axis(ax)
    ax.legend(fontsize=7, frameon=False, loc="lower left")
    return save_figure(fig, out)
