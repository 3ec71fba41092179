"""Render the generalisation experiment from a saved mnist_generalization run.

    python -m scripts.make_figures dir=<run directory>     # this figure alone, from the saved tables

mnist_generalization.png: (a) test accuracy at the final time T against width: every network
(dots), the seed mean of the networks and of their linearisations, the seed-mean network, and the
n = inf predictors as horizontal lines (NTK at T and at t = inf, NNGP); (b) the distances at T on
log-log axes with their fitted exponents [95% interval] and n^-1/2, n^-1 guides; (c) test accuracy
against t for the widest networks and their linearisations with the n = inf NTK predictor.
Linearisations trained above their stability bound (lr >= lin_lr_max, where table.csv has it) are
left out of every linearisation curve and point, as they are from the fits, and counted in the legend.
Reads table.csv, mean.csv, limits.csv and fits.csv.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from experiments.figures.style import read_table, save_figure

DISTANCES = {  # quantity in fits.csv: (table, column, marker, label)
    "dist_to_linearised": ("table", "dist_to_linearised", "o", "network - its linearisation"),
    "dist_to_limit": ("table", "dist_to_limit", "s", r"network - $n=\infty$ from the same $f_0$"),
    "mean_dist_to_ntk": ("mean", "dist_to_ntk", "^", r"seed mean - $n=\infty$ mean"),
    "mean_dist_excess": ("mean", "dist_excess", "v", "the same, above the seed-noise floor"),
}


def render(run_dir: str | Path) -> list[Path]:
    run_dir = Path(run_dir)
    tables = {
        "table": read_table(
            run_dir / "table.csv", {"width", "seed", "t", "test_accuracy", "lin_test_accuracy", "dist_to_linearised"}, "table.csv"
        ),
        "mean": read_table(run_dir / "mean.csv", {"width", "t", "test_accuracy", "dist_to_ntk", "noise_floor"}, "mean.csv"),
    }
    limits = read_table(run_dir / "limits.csv", {"predictor", "t", "test_accuracy"}, "limits.csv")
    fits = read_table(run_dir / "fits.csv", {"quantity", "t", "exponent", "ci_low", "ci_high", "intercept"}, "fits.csv")
    table, mean = tables["table"], tables["mean"]
    t_end = table.t.max()
    at_end = table[table.t == t_end]
    widths = np.array(sorted(at_end.width.unique()), float)
    if {"lr", "lin_lr_max"} <= set(table.columns):
        unstable = table.lr >= table.lin_lr_max
    else:  # tables from before lin_lr_max was recorded
        unstable = pd.Series(False, index=table.index)
    stable_end = at_end[~unstable[at_end.index]]
    left_out = int(unstable[at_end.index].sum())
    note = f" ({left_out} left out: lr above its stability bound)" if left_out else ""
    fig, (ax_a, ax_b, ax_c) = plt.subplots(1, 3, figsize=(15, 4.2))

    per_width = at_end.groupby("width")
    ax_a.scatter(at_end.width, at_end.test_accuracy, s=10, color="C0", alpha=0.5, label="networks")
    ax_a.plot(widths, per_width.test_accuracy.mean(), "o-", color="C0", ms=4, label="networks, mean over seeds")
    lin = stable_end.groupby("width").lin_test_accuracy.mean()
    ax_a.plot(lin.index, lin.values, "s--", color="C1", ms=4, label="linearisations, mean" + note)
    seed_mean = mean[mean.t == t_end].sort_values("width")
    ax_a.plot(seed_mean.width, seed_mean.test_accuracy, "^-", color="C2", ms=4, label="seed-mean network")
    lines = [
        ("ntk_gd", t_end, "k", "-", rf"$n=\infty$ NTK, t = {t_end:g}"),
        ("ntk_gd", math.inf, "k", ":", r"$n=\infty$ NTK, t = $\infty$"),
    ]
    lines.append(("nngp", math.inf, "C3", "--", "NNGP regression"))
    for predictor, t, colour, style, label in lines:
        row = limits[(limits.predictor == predictor) & np.isclose(limits.t, t)]
        if len(row):
            ax_a.axhline(row.test_accuracy.iloc[0], color=colour, ls=style, lw=1, label=f"{label}: {row.test_accuracy.iloc[0]:.3f}")
    ax_a.set(xscale="log", xlabel="width n", ylabel=f"test accuracy at t = {t_end:g}")
    ax_a.set_xticks(widths, [f"{w:g}" for w in widths])
    ax_a.minorticks_off()
    ax_a.legend(fontsize=7, frameon=False)

    fits_end = fits[fits.t == t_end].set_index("quantity")
    for k, (quantity, (source, column, marker, label)) in enumerate(DISTANCES.items()):
        frame = stable_end if quantity == "dist_to_linearised" else tables[source]
        sel = frame[(frame.t == t_end) & (frame[column] > 0)]
        if sel.empty:
            continue
        colour = f"C{k}"
        ax_b.scatter(sel.width, sel[column], marker=marker, s=14, color=colour, alpha=0.7)
        if quantity in fits_end.index and np.isfinite(fits_end.loc[quantity].exponent):
            fit = fits_end.loc[quantity]
            ax_b.plot(widths, np.exp(fit.intercept) * widths**fit.exponent, color=colour, lw=1)
            label += f": {fit.exponent:.2f} [{fit.ci_low:.2f}, {fit.ci_high:.2f}]"
        ax_b.plot([], [], marker=marker, color=colour, lw=1, label=label + (note if quantity == "dist_to_linearised" else ""))
    floor = mean[mean.t == t_end].sort_values("width")
    ax_b.plot(floor.width, floor.noise_floor, color="C2", ls=":", lw=1, label="seed-noise floor of the mean")
    anchor = stable_end.groupby("width").dist_to_linearised.mean().iloc[0]
    for power, style in ((0.5, "--"), (1.0, "-.")):
        ax_b.plot(widths, anchor * (widths / widths[0]) ** -power, color="grey", ls=style, lw=0.8, label=rf"$\propto n^{{-{power:g}}}$")
    ax_b.set(xscale="log", yscale="log", xlabel="width n", ylabel=f"RMS distance on test digits at t = {t_end:g}")
    ax_b.set_title("fitted exponent [95% CI]", fontsize=9)
    ax_b.legend(fontsize=6.5, frameon=False)

    widest = table[table.width == table.width.max()]
    for seed, run in widest.groupby("seed"):
        first = seed == widest.seed.min()
        ax_c.plot(run.t, run.test_accuracy, "o-", color="C0", ms=3, lw=1, label=f"n = {widths[-1]:g} networks" if first else None)
        if not unstable[run.index].any():
            ax_c.plot(run.t, run.lin_test_accuracy, "s--", color="C1", ms=3, lw=1, label="their linearisations" if first else None)
    for predictor, style in (("ntk_gd", "-"), ("ntk_flow", ":")):
        sel = limits[(limits.predictor == predictor) & np.isfinite(limits.t) & (limits.t > 0)].sort_values("t")
        ax_c.plot(sel.t, sel.test_accuracy, color="k", ls=style, lw=1, label=rf"$n=\infty$ NTK mean ({predictor[4:]})")
    ax_c.set(xscale="log", xlabel="t", ylabel="test accuracy")
    ax_c.legend(fontsize=7, frameon=False)
    return save_figure(fig, run_dir / "mnist_generalization")
