"""Matplotlib helpers shared by the plotting scripts (headless backend, same output everywhere)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def read_table(table: pd.DataFrame | str | Path, columns: set[str], name: str = "table") -> pd.DataFrame:
    """A saved table (CSV path) or DataFrame, refused with a one-line error if it lacks `columns`."""
    df = table if isinstance(table, pd.DataFrame) else pd.read_csv(table)
    missing = columns - set(df.columns)
    if missing:
        raise ValueError(f"{name} lacks columns {sorted(missing)}; expected {sorted(columns)}")
    return df


def save_figure(fig: plt.Figure, out: str | Path) -> list[Path]:
    """Write `out`.png and `out`.pdf (PDF without a creation date, so reruns give the same bytes)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    paths = [out.with_suffix(".png"), out.with_suffix(".pdf")]
    try:
        for path, options in zip(paths, (dict(dpi=150), dict(metadata={"CreationDate": None}))):
            tmp = path.with_name(f".{path.name}.tmp")  # through a rename: an interruption leaves no half figure
            try:
                fig.savefig(tmp, format=path.suffix[1:], **options)
                tmp.replace(path)
            finally:
                tmp.unlink(missing_ok=True)
    finally:
        plt.close(fig)
    return paths


def gamma_axis(ax: plt.Axes) -> None:
    """x axis of the circle figures: gamma in [-pi, pi] with ticks at multiples of pi/2."""
    ax.set_xlabel(r"$\gamma$")
    ax.set_xlim(-np.pi, np.pi)
    ax.set_xticks([-np.pi, -np.pi / 2, 0, np.pi / 2, np.pi], [r"$-\pi$", r"$-\pi/2$", "0", r"$\pi/2$", r"$\pi$"])
