"""Render the depth-width figure from saved tables: log(E[K^2] / E[K]^2) of the on-diagonal NTK against
beta = (L - 1) / n for every (setting, depth, width) cell with the fitted slopes and Hanin & Nica's 5,
and E[K] over their exact formula for their network.

    python -m scripts.make_figures dir=<run directory>

Reads cells.csv and fits.csv; writes depth_width.png and .pdf.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from experiments.figures.style import read_table, save_figure

COLORS = {"he_relu": "tab:blue", "ntk_relu": "tab:orange", "ntk_tanh": "tab:red"}
LABELS = {"he_relu": "ReLU, Hanin & Nica's network", "ntk_relu": "ReLU, NTK MLP (beta = 0.1)", "ntk_tanh": "tanh, NTK MLP (beta = 0.1)"}
MARKERS = "os^vDPX*"


def render(run_dir: str | Path) -> list[Path]:
    run_dir = Path(run_dir)
    cells = read_table(run_dir / "cells.csv", {"setting", "depth", "width", "beta", "log_moment2", "mean_over_formula"}, "cells.csv")
    fits = read_table(run_dir / "fits.csv", {"setting", "slope", "ci_low", "ci_high", "intercept", "beta_max"}, "fits.csv").set_index(
        "setting"
    )
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw=dict(width_ratios=[2, 1]))
    depths = sorted(cells.depth.unique())
    for setting, group in cells.groupby("setting", sort=False):
        color = COLORS.get(setting)
        for k, depth in enumerate(depths):
            g = group[group.depth == depth]
            err = None
            if {"log_moment2_low", "log_moment2_high"} <= set(g.columns):
                err = np.vstack([g.log_moment2 - g.log_moment2_low, g.log_moment2_high - g.log_moment2])
            ax.errorbar(g.beta, g.log_moment2, yerr=err, fmt=MARKERS[k % len(MARKERS)], color=color, ms=4, capsize=2, lw=0.8)
        if setting in fits.index and np.isfinite(fits.loc[setting, "slope"]):
            f = fits.loc[setting]
            grid = np.linspace(0, f.beta_max, 20)
            ax.plot(
                grid,
                f.intercept + f.slope * grid,
                "-",
                color=color,
                lw=1,
                label=f"{LABELS.get(setting, setting)}: slope {f.slope:.2f} [{f.ci_low:.2f}, {f.ci_high:.2f}]",
            )
    grid = np.linspace(0, cells.beta.max(), 50)
    ax.plot(grid, 5 * grid, "k:", lw=1, label=r"Hanin & Nica: $5\beta$")
    for k, depth in enumerate(depths):
        ax.plot([], [], MARKERS[k % len(MARKERS)], color="grey", ms=4, label=f"L = {depth}")
    ax.set_xscale("symlog", linthresh=0.05)
    ax.set_xlabel(r"$\beta = (L - 1) / n$")
    ax.set_ylabel(r"$\log(E[K^2] / E[K]^2)$")
    ax.legend(fontsize=7, frameon=False)
    he = cells[cells.setting == "he_relu"]
    if len(he) and he.mean_over_formula.notna().any():
        for k, depth in enumerate(depths):
            g = he[he.depth == depth]
            ax2.plot(
                g.width, g.mean_over_formula, MARKERS[k % len(MARKERS)] + "-", color=COLORS["he_relu"], ms=4, lw=0.8, label=f"L = {depth}"
            )
        ax2.axhline(2.0, color="k", ls=":", lw=1)
        ax2.set_xscale("log", base=2)
        ax2.set_ylim(1.5, 2.5)
        ax2.set_xlabel("width n")
        ax2.set_ylabel(r"$E[K] \,/\, L(1/2 + \|x\|^2/n_0)$")
        ax2.set_title("their network: E[K] against Theorem 1\n(2: derivatives by the N(0, 1) weights)", fontsize=8)
        ax2.legend(fontsize=7, frameon=False)
    fig.suptitle("How wide is wide enough: the NTK's fluctuations grow with depth / width", fontsize=10)
    return save_figure(fig, run_dir / "depth_width")
