"""Render the Figure 3c forecast from saved tables: ||g_t|| and ||h_t|| of every width (seed mean, solid),
the forecast of its second-order Taylor model from t = 0 (dashed), its frozen Theta_0 (dotted, h only
where it differs visibly) and the n = inf curve (black).

    python -m scripts.make_figures dir=<run directory>

Reads curves.csv and summary.csv; writes mnist_forecast.png and .pdf.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from experiments.figures.style import read_table, save_figure


def render(run_dir: str | Path) -> list[Path]:
    run_dir = Path(run_dir)
    columns = {"width", "seed", "t", "g_network", "h_network", "g_forecast", "h_forecast", "g_frozen", "h_frozen", "g_inf", "h_inf"}
    curves = read_table(run_dir / "curves.csv", columns, "curves.csv")
    summary = read_table(run_dir / "summary.csv", {"width", "g_explained_forecast", "h_explained_forecast"}, "summary.csv")
    mean = curves.groupby(["width", "t"], as_index=False).mean(numeric_only=True)
    widths = sorted(mean.width.unique())
    colors = plt.cm.viridis([i / max(1, len(widths) - 1) * 0.85 for i in range(len(widths))])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, q in zip(axes, ("g", "h")):
        for width, color in zip(widths, colors):
            c = mean[mean.width == width]
            explained = summary[summary.width == width][f"{q}_explained_forecast"].mean()
            ax.plot(c.t, c[f"{q}_network"], "-", color=color, lw=1.5, label=f"n = {width} (forecast explains {100 * explained:.0f}%)")
            ax.plot(c.t, c[f"{q}_forecast"], "--", color=color, lw=1.2)
            ax.plot(c.t, c[f"{q}_frozen"], ":", color=color, lw=1)
        inf = mean[mean.width == widths[-1]]
        ax.plot(inf.t, inf[f"{q}_inf"], "k-", lw=1, label="n = inf")
        ax.plot([], [], "k--", lw=1.2, label="forecast: second-order Taylor model from t = 0")
        ax.plot([], [], "k:", lw=1, label=r"frozen $\Theta_0$ of the network")
        ax.set_xlabel("t")
        ax.set_ylabel(rf"$\|{q}_t\|$")
        ax.legend(fontsize=7, frameon=False)
    axes[0].set_title("along the 2nd kernel principal component", fontsize=9)
    axes[1].set_title("the rest of the residual", fontsize=9)
    fig.suptitle("Figure 3c forecast: each finite network's deviation from n = inf, predicted from t = 0", fontsize=10)
    return save_figure(fig, run_dir / "mnist_forecast")
