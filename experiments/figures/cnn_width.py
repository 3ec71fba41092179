"""Render the CNN width figure from saved tables: the NTK's spread across seeds at t = 0 and its
change during training, against the channel count, with the fitted power laws.

    python -m scripts.make_figures dir=<run directory>

Reads summary.csv and fits.csv (and limit.csv with kernel.csv, for the distance to the n = inf CNTK
and the kernels beside their limit, as Figure 1); writes cnn_width.png and .pdf.
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
    has_limit = (run_dir / "limit.csv").exists() and "dist_to_limit" in summary
    fig, axes = plt.subplots(2, 2, figsize=(9, 7)) if has_limit else plt.subplots(1, 2, figsize=(9, 3.6))
    axes = axes.ravel()
    c = summary.channels.to_numpy(float)
    panels = [
        ("spread", summary.spread, None, r"spread of $\Theta_0$ across seeds (relative)"),
        ("change", summary.change, summary.change_sd, r"$\|\Theta_T - \Theta_0\|_F / \|\Theta_0\|_F$"),
    ]
    if has_limit:
        panels.append(
            ("dist_to_limit", summary.dist_to_limit, summary.dist_to_limit_sd, r"$\|\Theta_0 - \Theta_\infty\|_F / \|\Theta_\infty\|_F$")
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
    if has_limit:  # as Figure 1: the kernel at t = 0 of the narrowest and widest networks, and the n = inf limit
        ax = axes[3]
        limit = read_table(run_dir / "limit.csv", {"i", "j", "ntk"}, "limit.csv")
        kernel = read_table(run_dir / "kernel.csv", {"channels", "seed", "t", "i", "j", "ntk"}, "kernel.csv")
        row = limit[limit.i == 0].sort_values("ntk")
        order = row.j.to_numpy()
        x = np.arange(len(order))
        start = kernel[(kernel.t == kernel.t.min()) & (kernel.i == 0)]
        for channels, color in ((start.channels.min(), "tab:orange"), (start.channels.max(), "tab:blue")):
            table = start[start.channels == channels].pivot_table(index="j", columns="seed", values="ntk").loc[order]
            for k, seed in enumerate(table.columns):
                ax.plot(x, table[seed], "-", color=color, lw=0.7, alpha=0.5, label=f"C = {channels}, t = 0" if k == 0 else None)
        ax.plot(x, row.ntk, "k-", lw=2, label=r"$n = \infty$ (exact CNTK)")
        ax.set_xlabel("probe digit j (sorted by the limit)")
        ax.set_ylabel(r"$\Theta(x_0, x_j)$")
        ax.legend(fontsize=8, frameon=False)
    fig.suptitle("NTK-parameterised CNN on MNIST: the kernel freezes and approaches its limit as the channel count grows", fontsize=10)
    return save_figure(fig, run_dir / "cnn_width")
