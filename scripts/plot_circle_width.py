"""Render Figure 1 from a saved table: Theta(x0, x(gamma)) against gamma.

    python -m scripts.plot_circle_width                                   # results/circle_width/table.csv
    python -m scripts.plot_circle_width table=path/to/table.csv out=path/to/figure

Paper layout: one thin line per network, colour by width, line style by time t (solid at t = 0,
dashed at the last recorded t). Writes <out>.png and <out>.pdf. Reads only the table.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from scripts.figures import gamma_axis, read_table, save_figure

COLUMNS = {"width", "seed", "t", "gamma", "ntk"}
STYLES = ["-", "--", ":", "-."]


def render(table: pd.DataFrame | str | Path, out: str | Path) -> list[Path]:
    """Draw the figure from `table` (a DataFrame or CSV path); write `out`.png and `out`.pdf."""
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


def main(argv: list[str]) -> None:
    from scripts.common import parse_kv

    args = parse_kv(argv, dict(table="results/circle_width/table.csv", out=None))
    table = Path(args["table"])
    if not table.exists():
        sys.exit(f"error: table {table} not found; run `python -m experiments.run +exp=circle_width` first")
    out = args["out"] or table.parent / "circle_width"
    for path in render(table, out):
        print(path)


if __name__ == "__main__":
    main(sys.argv[1:])
