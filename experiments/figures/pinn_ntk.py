"""Render the PINN NTK figure from saved tables: the kernel's change against width, the spectra of K_uu
and K_rr, the trace ratio, the errors with and without NTK weights beside the mean kernel's
prediction, the empirical blocks' distance to the mean kernel, and the error during training.

Reads table.csv, kernel.csv, history.csv, spectra.csv, limit.csv and fits.csv; writes pinn_ntk.png and .pdf.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from experiments.figures.style import read_table, save_figure

NOTEBOOK_ERROR_A4 = 4.2e-2  # the relative L2 error their notebook PINNsNTK_Poisson1D prints at a = 4 (plain gradient descent)


def _fit_line(ax, fits, quantity, x, color, label):
    if quantity in fits.index and np.isfinite(fits.loc[quantity, "exponent"]):
        f = fits.loc[quantity]
        grid = np.geomspace(min(x), max(x), 50)
        ax.plot(
            grid,
            np.exp(f.intercept) * grid**f.exponent,
            "--",
            color=color,
            lw=1,
            label=f"{label}n^{f.exponent:.2f} [{f.ci_low:.2f}, {f.ci_high:.2f}]",
        )


def render(run_dir: str | Path) -> list[Path]:
    run_dir = Path(run_dir)
    table = read_table(
        run_dir / "table.csv",
        {"a", "width", "weighting", "seed", "rel_l2_error", "predicted_rel_l2_error", "trace_ratio_0", "trace_ratio_T"},
        "table.csv",
    )
    kernel = read_table(run_dir / "kernel.csv", {"width", "seed", "kernel_change"}, "kernel.csv")
    history = read_table(run_dir / "history.csv", {"a", "width", "weighting", "seed", "t", "rel_l2_error"}, "history.csv")
    spectra = read_table(
        run_dir / "spectra.csv", {"a", "width", "weighting", "seed", "when", "block", "index", "eigenvalue"}, "spectra.csv"
    )
    limit = read_table(run_dir / "limit.csv", {"width", "seed", "block", "rel_distance"}, "limit.csv")
    fits = read_table(run_dir / "fits.csv", {"quantity", "exponent", "ci_low", "ci_high", "intercept"}, "fits.csv").set_index("quantity")
    width = int(table.width.iloc[0])
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))

    ax = axes[0, 0]
    ax.plot(kernel.width, kernel.kernel_change, "o", color="tab:blue", label="each network")
    _fit_line(ax, fits, "kernel_change", kernel.width, "k", "fit: ")
    ax.set(xscale="log", yscale="log", xlabel="width n", ylabel="||K_T - K_0|| / ||K_0||", title="(i) the kernel's change during training")
    ax.legend(fontsize=7, frameon=False)

    ax = axes[0, 1]
    first = table.sort_values(["a", "seed"]).iloc[0]
    one = spectra[(spectra.a == first.a) & (spectra.width == width) & (spectra.weighting == "none") & (spectra.seed == first.seed)]
    for block, color in (("K", "k"), ("K_uu", "tab:blue"), ("K_rr", "tab:red")):
        for when, style in (("init", "-"), ("end", ":")):
            rows = one[(one.block == block) & (one.when == when)].sort_values("index")
            ax.plot(
                rows["index"] + 1,
                rows.eigenvalue.clip(lower=1e-12),
                style,
                color=color,
                lw=1,
                label=f"{block}, {when}" if block != "K" or when == "init" else None,
            )
    ax.set(xscale="log", yscale="log", xlabel="index", ylabel="eigenvalue", title=f"(ii) spectra, width {width}")
    ax.legend(fontsize=7, frameon=False, ncol=2)

    ax = axes[0, 2]  # traces from the spectra (sums of eigenvalues): every job, all widths
    traces = spectra[spectra.block != "K"].groupby(["a", "width", "weighting", "seed", "when", "block"]).eigenvalue.sum().unstack("block")
    traces = (traces["K_rr"] / traces["K_uu"]).rename("ratio").reset_index()
    plain = traces[traces.weighting == "none"]
    init = plain[plain["when"] == "init"].groupby("width").ratio.agg(["mean", "min", "max"])
    ax.errorbar(
        init.index.to_numpy(),
        init["mean"].to_numpy(),
        yerr=np.vstack([init["mean"] - init["min"], init["max"] - init["mean"]]),  # arrays: one width is a 1-element Series
        fmt="o-",
        color="k",
        ms=4,
        capsize=2,
        label="t = 0 (any a)",
    )
    for a, color in zip(sorted(plain.a.unique()), ("tab:blue", "tab:green", "tab:red", "tab:purple")):
        end = plain[(plain["when"] == "end") & (plain.a == a)].groupby("width").ratio.mean()
        ax.plot(end.index, end.values, "x", color=color, ms=7, label=f"end, a = {a}")
    ax.set(xscale="log", yscale="log", xlabel="width n", ylabel="tr(K_rr) / tr(K_uu)", title="(ii) the imbalance: trace ratio")
    ax.legend(fontsize=7, frameon=False)

    ax = axes[1, 0]
    for shift, (weighting, color) in zip((-0.12, 0.12), (("none", "tab:blue"), ("ntk", "tab:orange"))):
        rows = table[table.weighting == weighting]
        ax.plot(rows.a + shift, rows.rel_l2_error, "o", color=color, label=f"trained, weights: {weighting}")
        ax.plot(rows.a + shift, rows.predicted_rel_l2_error, "_", ms=12, color=color, label=f"mean kernel, weights: {weighting}")
    ax.plot([4], [NOTEBOOK_ERROR_A4], "k*", ms=9, label="their notebook, a = 4")
    ax.set(yscale="log", xlabel="a", ylabel="relative L2 error of u", title=f"(iii) errors after {int(table.steps.iloc[0])} steps")
    ax.set_xticks(sorted(table.a.unique()))
    ax.legend(fontsize=6, frameon=False)

    ax = axes[1, 1]
    for block, color in (("K_uu", "tab:blue"), ("K_ur", "tab:green"), ("K_rr", "tab:red")):
        rows = limit[limit.block == block]
        ax.plot(rows.width, rows.rel_distance, "o", ms=3, color=color, label=block)
        _fit_line(ax, fits, f"limit_{block}", rows.width, color, "")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="width n",
        ylabel="||K_n - E K_n|| / ||E K_n||",
        title="(iv) empirical blocks against the mean kernel",
    )
    ax.legend(fontsize=6, frameon=False)

    ax = axes[1, 2]
    seed = history.seed.min()
    for a, color in zip(sorted(history.a.unique()), ("tab:blue", "tab:green", "tab:red", "tab:purple")):
        rows = history[(history.a == a) & (history.width == width) & (history.weighting == "none") & (history.seed == seed)]
        ax.plot(rows.t, rows.rel_l2_error, "-", color=color, label=f"a = {a}, trained")
        if "rel_l2_error_kernel" in rows:
            ax.plot(rows.t, rows.rel_l2_error_kernel, "--", color=color, label=f"a = {a}, mean kernel")
    ax.set(
        yscale="log",
        xlabel="t = lr x steps",
        ylabel="relative L2 error of u",
        title="(iv) training, no weights: network and mean kernel",
    )
    ax.legend(fontsize=6, frameon=False)
    fig.suptitle("The NTK of a physics-informed network: 1-D Poisson, tanh [1, n, 1] (Wang, Yu & Perdikaris 2022)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, run_dir / "pinn_ntk")
