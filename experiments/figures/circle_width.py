"""Render Figure 1 from a saved table: Theta(x0, x(gamma)) against gamma.

    python -m scripts.make_figures dir=<run directory>     # this figure alone, from the saved tables

Paper layout: one thin line per network, colour by width, line style by time t (solid at t = 0,
dashed at the last recorded t). Writes <out>.png and <out>.pdf. Reads only the table.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from experiments.figures.style import gamma_axis, read_table, save_figure

COLUMNS = {"width", "seed", "t", "gamma", "ntk"}
STYLES = ["-", "--", ":", "-."]


def render(run_dir: str | Path) -> list[Path]:
    """circle_width.png/.pdf from run_dir/table.csv."""
    run_dir = Path(run_dir)
    table, out = run_dir / "table.csv", run_dir / "circle_width"
    df = read_table(table, COLUMNS)
    widths, times = sorted(df.width.unique()), sorted(df.t.unique())
    colours = plt.cm.viridis(np.linspace(0.1, 0.8, len(widths))) if len(widths) > 2 else ["tab:green", "tab:red"][: len(widths)]
    fig, ax = plt.subplots(figsize=(6, 4))
    for colour, width in zip(colours, widths):
        for style, t in zip(STYLES, times):
            sel = df[(df.width == width) & (df.t == t)]
            for i, (_, curve) in enumerate(sel.groupby("seed")):
                curve = curve.sort_values("gamma")
                ax.plot(curve.gamma, curve.ntk, style, color=colour, lw=0.8, alpha=0.8, label=f"n = {width}, t = {t:g}" if i == 0 else None)
    if "limit" in df.columns:
        lim = df.drop_duplicates("gamma").sort_values("gamma")
        ax.plot(lim.gamma, lim.limit, color="black", lw=1.5, label=r"$n \to \infty$")
    ax.set_ylabel(r"$\Theta(x_0, x)$")
    gamma_axis(ax)
    ax.set_title(r"NTK on the unit circle, $x_0 = (1, 0)$, $x = (\cos\gamma, \sin\gamma)$", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    return save_figure(fig, out)
