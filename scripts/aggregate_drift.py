"""Merge the jobs of a drift sweep into tables, fit width exponents, draw the figures.

    python -m scripts.aggregate_drift                    # results/drift_sweep/
    python -m scripts.aggregate_drift dir=path/to/sweep

Reads only <dir>/jobs/*.csv (one file per finished job; a sweep killed half-way leaves a subset,
never a partial file) and writes, atomically:
  table.csv    every job's drift at every logged t (one row per job key and t: no duplicates)
  fits.csv     per depth and quantity, the exponent b of drift ~ width^b at the last t, fitted by
               least squares on log-log axes over all seeds, with its 95% confidence interval
  spread.csv   per width and depth, the relative spread of Theta_0(x0, probe) across seeds:
               the RMS over the probe of the sd across seeds, over the RMS of the seed mean
               (its fitted exponent is in fits.csv)
  drift_vs_width.png/.pdf, spread_vs_width.png/.pdf, drift_vs_depth.png/.pdf
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from experiments.fits import fit_exponent
from scripts.figures import save_figure

QUANTITIES = ("ntk_drift_train", "ntk_drift_probe", "weight_drift")


def load_jobs(jobs: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All finished jobs; if one (width, depth, seed) was run under several configs, the newest wins."""
    files = sorted((p for p in jobs.glob("*.csv") if not p.name.endswith(".theta0.csv")), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no finished jobs in {jobs}/; run `python -m experiments.run -m +exp=drift_sweep` first")
    tables, thetas = [], []
    for path in files:
        key = path.name[: -len(".csv")]
        tables.append(pd.read_csv(path).assign(job=key))
        theta = path.with_name(f"{key}.theta0.csv")
        if theta.exists():
            thetas.append(pd.read_csv(theta).assign(job=key))
    table = pd.concat(tables, ignore_index=True)
    newest = table.drop_duplicates(["width", "depth", "seed"], keep="last")[["width", "depth", "seed", "job"]]
    if len(newest) < table.job.nunique():
        print(f"note: {table.job.nunique() - len(newest)} older job(s) with the same width, depth and seed are ignored")
    table = table.merge(newest, on=["width", "depth", "seed", "job"]).drop_duplicates(["job", "t"])
    theta0 = pd.concat(thetas, ignore_index=True).merge(newest, on=["width", "depth", "seed", "job"]) if thetas else pd.DataFrame()
    return table.sort_values(["depth", "width", "seed", "t"], ignore_index=True), theta0


def aggregate(run_dir: Path) -> dict[str, pd.DataFrame]:
    from experiments.provenance import atomic_write_json, atomic_write_text, provenance

    run_dir = Path(run_dir)
    table, theta0 = load_jobs(run_dir / "jobs")
    last = table[table.t == table.groupby("job").t.transform("max")]
    fits = [dict(quantity=q, depth=d) | fit_exponent(g.width, g[q]) for q in QUANTITIES for d, g in last.groupby("depth")]
    spread = pd.DataFrame()
    if len(theta0):
        per = theta0.groupby(["depth", "width", "gamma"]).theta0.agg(["mean", "var", "count"]).reset_index()
        per = per[per["count"] >= 2]
        if len(per):
            per["mean2"] = per["mean"] ** 2
            spread = per.groupby(["depth", "width"]).agg(var=("var", "mean"), mean2=("mean2", "mean"), seeds=("count", "min")).reset_index()
            spread["spread"] = np.sqrt(spread["var"] / spread["mean2"])  # RMS sd over the probe / RMS mean kernel
            spread = spread[["depth", "width", "spread", "seeds"]]
            fits += [dict(quantity="theta0_spread", depth=d) | fit_exponent(g.width, g.spread) for d, g in spread.groupby("depth")]
    fits = pd.DataFrame(fits)
    out = {"table": table, "fits": fits, "spread": spread}
    for name, frame in out.items():
        atomic_write_text(run_dir / f"{name}.csv", frame.to_csv(index=False, float_format="%.8g"))
    atomic_write_json(
        run_dir / "provenance.json",
        provenance(command=["python", "-m", "scripts.aggregate_drift", f"dir={run_dir}"], jobs=int(table.job.nunique())),
    )
    render(run_dir, table, fits, spread)
    return out


def _reference(ax, x: np.ndarray, y0: float) -> None:
    for slope, style in ((-0.5, ":"), (-1.0, "--")):
        ax.plot(x, y0 * (x / x[0]) ** slope, style, color="grey", lw=1, label=f"slope {slope:g}")


def render(run_dir: Path, table: pd.DataFrame, fits: pd.DataFrame, spread: pd.DataFrame) -> None:
    """drift_vs_width, spread_vs_width and drift_vs_depth figures from the aggregated tables."""
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
    save_figure(fig, run_dir / "drift_vs_width")

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
        save_figure(fig, run_dir / "spread_vs_width")

    fig, ax = plt.subplots(figsize=(6, 4.5))
    wcolours = plt.cm.plasma(np.linspace(0, 0.85, len(widths)))
    for colour, width in zip(wcolours, widths):
        g = last[last.width == width].groupby("depth").ntk_drift_train.mean()
        ax.plot(g.index, g.values, "o-", color=colour, ms=4, lw=1, label=f"n = {int(width)}")
    ax.set(yscale="log", xlabel="depth L (weight layers)", ylabel="relative kernel drift (training inputs)")
    ax.set_title(f"kernel drift at t = {last.t.max():g} against depth", fontsize=9)
    ax.legend(fontsize=7, frameon=False, ncol=2)
    save_figure(fig, run_dir / "drift_vs_depth")


def render_dir(run_dir: Path) -> None:
    """Redraw the figures from the saved table.csv, fits.csv and spread.csv of `run_dir`."""
    run_dir = Path(run_dir)

    def read(name: str) -> pd.DataFrame:
        try:
            return pd.read_csv(run_dir / f"{name}.csv")
        except pd.errors.EmptyDataError:
            return pd.DataFrame()

    render(run_dir, read("table"), read("fits"), read("spread"))


def main(argv: list[str]) -> None:
    from scripts.common import parse_kv

    args = parse_kv(argv, dict(dir="results/drift_sweep"))
    try:
        out = aggregate(Path(args["dir"]))
    except FileNotFoundError as err:
        sys.exit(f"error: {err}")
    print(out["fits"].to_string(index=False))


if __name__ == "__main__":
    main(sys.argv[1:])
