"""Render the learning-rate check of Figure 3 from a saved mnist_lr_equivalence run.

    python -m scripts.make_figures dir=<run directory>     # this figure alone, from the saved tables

mnist_lr_equivalence.png: (left) the largest difference from the reference lr of ||g_t||, ||h_t||
and the component amplitudes against lr, per width, with the tolerance; (right) ||g_t|| and ||h_t||
of the widest network (first seed) at every lr against t. Reads summary.csv, table.csv, config.yaml.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from omegaconf import OmegaConf

from experiments.figures.style import read_table, save_figure

MARKERS = {"g_diff": ("o", r"$\|g_t\|$"), "h_diff": ("s", r"$\|h_t\|$"), "amplitude_diff": ("^", r"$c_i(t)$")}


def render(run_dir: str | Path) -> list[Path]:
    run_dir = Path(run_dir)
    summary = read_table(run_dir / "summary.csv", {"width", "lr", "g_diff", "h_diff", "amplitude_diff"}, "summary.csv")
    table = read_table(run_dir / "table.csv", {"width", "seed", "lr", "t", "g_norm", "h_norm"}, "table.csv")
    tolerance = OmegaConf.load(run_dir / "config.yaml").tolerance
    reference = table.lr.min()
    widths = sorted(summary.width.unique())
    colours = plt.cm.viridis(np.linspace(0.1, 0.8, len(widths)))
    fig, (ax_d, ax_c) = plt.subplots(1, 2, figsize=(10, 3.8))
    others = summary[summary.lr != reference]
    for colour, width in zip(colours, widths):
        sel = others[others.width == width].sort_values("lr")
        for column, (marker, name) in MARKERS.items():
            ax_d.plot(sel.lr, sel[column].clip(lower=1e-7), marker=marker, color=colour, lw=1, ms=4, label=f"{name}, n = {width}")
    ax_d.axhline(tolerance, color="k", ls="--", lw=0.8, label=f"tolerance {tolerance:g}")
    ax_d.set(xscale="log", yscale="log", xlabel="learning rate", ylabel=f"max |difference from lr = {reference:g}|")
    ticks = sorted(others.lr.unique())
    ax_d.set_xticks(ticks, [f"{lr:g}" for lr in ticks])
    ax_d.minorticks_off()
    ax_d.set_title("same t = lr x steps, different lr", fontsize=9)
    ax_d.legend(fontsize=6, frameon=False, ncol=2)
    widest = table[(table.width == widths[-1]) & (table.seed == table.seed.min())]
    lrs = sorted(widest.lr.unique())
    shades = plt.cm.plasma(np.linspace(0, 0.85, len(lrs)))
    for shade, lr in zip(shades, lrs):
        run = widest[widest.lr == lr]
        ax_c.plot(run.t, run.g_norm, color=shade, lw=1, label=f"lr = {lr:g}")
        ax_c.plot(run.t, run.h_norm, color=shade, lw=1, ls=":")
    ax_c.set(xlabel="t", ylabel=r"$\|g_t\|$ (solid), $\|h_t\|$ (dotted)")
    ax_c.set_title(f"n = {widths[-1]}, seed {table.seed.min()}", fontsize=9)
    ax_c.legend(fontsize=7, frameon=False)
    return save_figure(fig, run_dir / "mnist_lr_equivalence")
