"""Drift sweep figures from a run directory: drift_vs_width, spread_vs_width, drift_vs_depth.

    python -m scripts.make_figures dir=results/drift_sweep

Reads table.csv, fits.csv and spread.csv (written by `experiments.drift_sweep.aggregate`).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from experiments.figures.style import save_figure


def _read(run_dir: Path, name: str) -> pd.DataFrame:
    try:
        return pd.read_csv(run_dir / f"{name}.csv")
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def _reference(ax, x: np.ndarray, y0: float) -> None:
    for slope, style in ((-0.5, ":"), (-1.0, "--")):
        ax.plot(x, y0 * (x / x[0]) ** slope, style, color="grey", lw=1, label=f"slope {slope:g}")


def render(run_dir: str | Path) -> list[Path]:
    """The three drift figures from the aggregated tables of `run_dir`."""
    run_dir = Path(run_dir)
    table, fits, spread = _read(run_dir, "table"), _read(run_dir, "fits"), _read(run_dir, "spread")
    paths = []
    last = table[table.t == table.groupby("job").t.transform("max")]
    depths = sorted(last.depth.unique())
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(depths)))
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for colour, depth in zip(colours, depths):
        g = last[last.depth == depth].groupby("width").ntk_drift_train.agg(["mean", "min", "max"])
        ax.errorbar(g.index, g["mean"], yerr=[g["mean"] - g["min"], g["max"] - g["mean"]], fmt="o", color=colour, ms=4)
        f = fits[(fits.quantity == "ntk_drift_train") & (fits.depth == depth)].iloc[0]
        if np.isfinite(f.exponent):
            xs = np.array(sorted(g.index), float)
            ax.plot(
                xs,
                np.exp(f.intercept) * xs**f.exponent,
                color=colour,
                lw=1,
                label=f"L = {depth}: {f.exponent:.2f} [{f.ci_low:.2f}, {f.ci_high:.2f}]",
            )
    widths = np.array(sorted(last.width.unique()), float)
    _reference(ax, widths, last[last.width == widths[0]].ntk_drift_train.max() * 1.5)
    ax.set(xscale="log", yscale="log", xlabel="width n", ylabel=r"$\|\Theta_t - \Theta_0\|_F / \|\Theta_0\|_F$ (training inputs)")
    ax.set_title(f"kernel drift at t = {last.t.max():g}: fitted exponent [95% CI]", fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    paths += save_figure(fig, run_dir / "drift_vs_width")

    if len(spread):
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for colour, depth in zip(colours, depths):
            g = spread[spread.depth == depth]
            f = fits[(fits.quantity == "theta0_spread") & (fits.depth == depth)]
            label = f"L = {depth}" + (f": {f.exponent.iloc[0]:.2f} [{f.ci_low.iloc[0]:.2f}, {f.ci_high.iloc[0]:.2f}]" if len(f) else "")
            ax.plot(g.width, g.spread, "o-", color=colour, ms=4, lw=1, label=label)
        _reference(ax, widths, spread.spread.max() * 1.2)
        ax.set(xscale="log", yscale="log", xlabel="width n", ylabel=r"spread of $\Theta_0(x_0, x)$ across seeds (sd / mean)")
        ax.set_title("fluctuations of the initial kernel: fitted exponent [95% CI]", fontsize=9)
        ax.legend(fontsize=7, frameon=False)
        paths += save_figure(fig, run_dir / "spread_vs_width")

    fig, ax = plt.subplots(figsize=(6, 4.5))
    wcolours = plt.cm.plasma(np.linspace(0, 0.85, len(widths)))
    for colour, width in zip(wcolours, widths):
        g = last[last.width == width].groupby("depth").ntk_drift_train.mean()
        ax.plot(g.index, g.values, "o-", color=colour, ms=4, lw=1, label=f"n = {int(width)}")
    ax.set(yscale="log", xlabel="depth L (weight layers)", ylabel="relative kernel drift (training inputs)")
    ax.set_title(f"kernel drift at t = {last.t.max():g} against depth", fontsize=9)
    ax.legend(fontsize=7, frameon=False, ncol=2)
    paths += save_figure(fig, run_dir / "drift_vs_depth")
    return paths
