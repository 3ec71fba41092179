"""Render the kernel velocity figure from saved tables: d Theta / dt at initialisation against width
per activation (seed mean and seed spread), with the fitted power laws and the predicted 1/width.

    python -m scripts.make_figures dir=<run directory>

Reads summary.csv and fits.csv; writes kernel_velocity.png and .pdf.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from experiments.figures.style import read_table, save_figure

COLORS = {"identity": "tab:green", "relu": "tab:blue", "tanh": "tab:red"}
LABELS = {"mean": r"RMS of the seed mean of $d\Theta/dt$", "spread": r"RMS of the seed sd of $d\Theta/dt$"}


def render(run_dir: str | Path) -> list[Path]:
    run_dir = Path(run_dir)
    summary = read_table(run_dir / "summary.csv", {"activation", "width", "mean", "spread"}, "summary.csv")
    fits = read_table(run_dir / "fits.csv", {"activation", "quantity", "exponent", "ci_low", "ci_high", "intercept"}, "fits.csv")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, quantity in zip(axes, ("mean", "spread")):
        for activation, group in summary.groupby("activation", sort=False):
            color = COLORS.get(activation, None)
            w = group.width.to_numpy(float)
            f = fits[(fits.activation == activation) & (fits.quantity == quantity)]
            label = activation
            if len(f) and np.isfinite(f.exponent.iloc[0]):
                f = f.iloc[0]
                label += f": n^{f.exponent:.2f} [{f.ci_low:.2f}, {f.ci_high:.2f}]"
                ax.plot(w, np.exp(f.intercept) * w**f.exponent, "--", color=color, lw=1)
            ax.plot(w, group[quantity], "o", color=color, label=label)
        w = summary.width.to_numpy(float)
        first = summary[summary.width == w.min()][quantity].max()
        grid = np.geomspace(w.min(), w.max(), 20)
        ax.plot(grid, first * 2.0 * w.min() / grid, ":", color="grey", lw=1, label="slope -1 (Dyer & Gur-Ari)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("width n")
        ax.set_ylabel(LABELS[quantity])
        ax.legend(fontsize=7, frameon=False)
    fig.suptitle(r"The NTK's velocity at initialisation falls as $1/n$ (3 hidden layers, input dimension 4)", fontsize=10)
    return save_figure(fig, run_dir / "kernel_velocity")
