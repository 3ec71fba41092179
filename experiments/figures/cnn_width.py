"""Render the CNN width figure from saved tables: the NTK's spread across seeds at t = 0 and its
change during training, against the channel count, with the fitted power laws.

    python -m scripts.make_figures dir=<run directory>

Reads summary.csv and fits.csv; writes cnn_width.png and .pdf.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from experiments.figures.style import read_table, save_figure


def render(run_dir: str | Path) -> list[Path]:
    run_dir = Path(run_dir)
    summary = read_table(run_dir / "summary.csv", {"channels", "spread", "change", "change_sd"}, "summary.csv")
    fits = read_table(run_dir / "fits.csv", {"quantity", "exponent", "ci_low", "ci_high", "intercept"}, "fits.csv").set_index("quantity")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    c = summary.channels.to_numpy(float)
    panels = (
        ("spread", summary.spread, None, r"spread of $\Theta_0$ across seeds (relative)"),
        ("change", summary.change, summary.change_sd, r"$\|\Theta_T - \Theta_0\|_F / \|\Theta_0\|_F$"),
    )
    for ax, (quantity, y, err, label) in zip(axes, panels):
        ax.errorbar(
            c, y, yerr=err, fmt="o", color="tab:blue", capsize=3, label="measured" + (" (mean, sd over seeds)" if err is not None else "")
        )
        if quantity in fits.index and np.isfinite(fits.loc[quantity, "exponent"]):
            f = fits.loc[quantity]
            grid = np.geomspace(c.min(), c.max(), 50)
            ax.plot(
                grid,
                np.exp(f.intercept) * grid**f.exponent,
                "k--",
                lw=1,
                label=f"fit: C^{f.exponent:.2f} [{f.ci_low:.2f}, {f.ci_high:.2f}]",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("channels C")
        ax.set_ylabel(label)
        ax.legend(fontsize=8, frameon=False)
    fig.suptitle("NTK-parameterised CNN on MNIST: the kernel freezes as the channel count grows", fontsize=10)
    return save_figure(fig, run_dir / "cnn_width")
