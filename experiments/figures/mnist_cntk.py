"""Render the MNIST CNTK figure from saved tables: test accuracy of the infinite-width kernels (CNN-GP
and CNTK with global average pooling and with flatten, the MLP's NTK) beside trained NTKCNNs of
growing width, each network's distance to its n = inf prediction against width, and the networks
trained on by Adam towards convergence (test accuracy and training loss against epochs) beside the
CNTK at t = inf.

Reads limits.csv, table.csv, fits.csv and converge.csv (when present); writes mnist_cntk.png and .pdf.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from experiments.figures.style import read_table, save_figure

LABELS = {"cntk_gap": "CNN, global avg pool", "cntk_flatten": "CNN, flatten", "mlp": "MLP (paper's NTK)"}


def render(run_dir: str | Path) -> list[Path]:
    run_dir = Path(run_dir)
    limits = read_table(run_dir / "limits.csv", {"kernel", "predictor", "t", "test_accuracy"}, "limits.csv")
    table = read_table(run_dir / "table.csv", {"width", "seed", "t", "test_accuracy", "dist_to_limit"}, "table.csv")
    fits = read_table(run_dir / "fits.csv", {"quantity", "exponent", "ci_low", "ci_high", "intercept"}, "fits.csv").set_index("quantity")
    t_end = table.t.max()
    converge_path = run_dir / "converge.csv"
    converge = (
        read_table(converge_path, {"width", "seed", "epoch", "train_mse", "test_accuracy"}, "converge.csv")
        if converge_path.exists()
        else None
    )
    panels = 3 if converge is not None and len(converge) else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.8))
    ax = axes[0]
    kernels = [k for k in LABELS if k in set(limits.kernel)]
    bars = (("ntk", math.inf, "NTK, t = inf"), ("ntk", t_end, f"NTK, t = {t_end:g}"), ("nngp", math.inf, "NNGP mean"))
    for k, (predictor, t, label) in enumerate(bars):
        rows = limits[(limits.predictor == predictor) & (limits.t == t)]  # (inf == inf)
        values = [rows[rows.kernel == name].test_accuracy.iloc[0] if (rows.kernel == name).any() else np.nan for name in kernels]
        ax.bar(np.arange(len(kernels)) + (k - 1) * 0.27, values, width=0.27, label=label)
    end = table[table.t == t_end].groupby("width").test_accuracy.agg(["mean", "min", "max"]).reset_index()
    for i, row in end.iterrows():
        ax.errorbar(
            len(kernels) + 0.2 * (i - (len(end) - 1) / 2),
            row["mean"],
            yerr=[[row["mean"] - row["min"]], [row["max"] - row["mean"]]],
            fmt="ko",
            ms=4,
            capsize=2,
            label=f"CNN at t = {t_end:g}" if i == 0 else None,
        )
    if converge is not None and len(converge):
        last = converge[converge.epoch == converge.epoch.max()].groupby("width").test_accuracy.mean()
        for i, width in enumerate(end.width):
            if width in last.index:
                x = len(kernels) + 0.2 * (i - (len(end) - 1) / 2)
                ax.plot(x, last[width], "r*", ms=7, label="CNN after Adam" if i == 0 else None)
    ax.set_xticks(list(range(len(kernels))) + [len(kernels)])
    ax.set_xticklabels([LABELS[k] for k in kernels] + [f"trained CNNs\nC = {', '.join(map(str, end.width))}"], fontsize=7)
    low = np.nanmin([limits.test_accuracy.min(), end["min"].min()])
    ax.set_ylim(max(0.0, low - 0.05), 1.0)
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=6, ncol=2, framealpha=0.9, loc="lower left")
    ax = axes[1]
    ends = table[table.t == t_end]
    ax.plot(ends.width, ends.dist_to_limit, "o", color="tab:blue", label="each network")
    if "dist_to_limit" in fits.index and np.isfinite(fits.loc["dist_to_limit", "exponent"]):
        f = fits.loc["dist_to_limit"]
        grid = np.geomspace(ends.width.min(), ends.width.max(), 50)
        ax.plot(
            grid, np.exp(f.intercept) * grid**f.exponent, "k--", lw=1, label=f"fit: C^{f.exponent:.2f} [{f.ci_low:.2f}, {f.ci_high:.2f}]"
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("channels C")
    ax.set_ylabel("RMS distance to its n = inf prediction")
    ax.set_title(f"trained CNNs at t = {t_end:g}", fontsize=9)
    ax.legend(fontsize=8, frameon=False)
    if panels == 3:
        converge_panel(axes[2], converge, limits)
    fig.suptitle("MNIST: infinite-width convolutional kernels against the MLP's NTK and trained CNNs", fontsize=10)
    return save_figure(fig, run_dir / "mnist_cntk")


def converge_panel(ax, converge, limits) -> None:
    """Test accuracy (solid) and training loss (dashed, right axis) against Adam epochs after T, per
    width (mean over seeds), with the pooled CNTK's t = inf accuracy."""
    loss_ax = ax.twinx()
    colours = plt.cm.viridis(np.linspace(0.0, 0.85, converge.width.nunique()))
    for colour, (width, rows) in zip(colours, converge.groupby("width")):
        mean = rows.groupby("epoch")[["test_accuracy", "train_mse"]].mean()
        epochs = mean.index.to_numpy() + 1  # epoch 0 (the network at T) at 1 on the log axis
        ax.plot(epochs, mean.test_accuracy, "o-", color=colour, ms=3, label=f"C = {width}")
        loss_ax.plot(epochs, mean.train_mse, "s--", color=colour, ms=2, lw=1)
    cntk = limits[(limits.kernel == "cntk_gap") & (limits.predictor == "ntk") & np.isinf(limits.t)]
    if len(cntk):
        ax.axhline(cntk.test_accuracy.iloc[0], color="k", lw=1, ls=":", label="CNTK (pool), t = inf")
    ax.set_xscale("log")
    loss_ax.set_yscale("log")
    ax.set_xlabel("1 + Adam epochs after T")
    ax.set_ylabel("test accuracy (solid)")
    loss_ax.set_ylabel("training MSE (dashed)")
    ax.set_title("towards convergence: Adam on minibatches", fontsize=9)
    ax.legend(fontsize=7, frameon=False, loc="center left")
