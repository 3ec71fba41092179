"""Matplotlib helpers shared by the plotting scripts (headless backend, same output everywhere)."""

from __future__ import annotations

import io
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


# A re-rendered PNG within this of the file on disk is the same figure (font rasterisation differs
# by a few levels on a few pixels between machines): the file is kept, so the tree stays unchanged.
PIXEL_TOLERANCE = 8 / 255  # largest difference of one colour channel
PIXEL_FRACTION = 1e-3  # fraction of the pixels that may differ at all


def same_image(new_png: bytes, path: Path) -> bool:
    """Whether the PNG `new_png` shows what the PNG file at `path` shows, within the tolerances."""
    if not path.exists():
        return False
    new = plt.imread(io.BytesIO(new_png))
    try:
        old = plt.imread(path)
    except (OSError, ValueError, SyntaxError):
        return False
    if new.shape != old.shape:
        return False
    diff = np.abs(new.astype(np.float64) - old.astype(np.float64))
    return bool(diff.max() <= PIXEL_TOLERANCE and (diff.max(-1) > 0).mean() <= PIXEL_FRACTION)


def save_figure(fig: plt.Figure, out: str | Path) -> list[Path]:
    """Write `out`.png and `out`.pdf (PDF without a creation date, so reruns give the same bytes).

    When the PNG on disk already shows the same figure (`same_image`), both files are left as they
    are: re-rendering on another machine leaves the tree unchanged.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    paths = [out.with_suffix(".png"), out.with_suffix(".pdf")]
    try:
        rendered = {}
        for path, options in zip(paths, (dict(dpi=150), dict(metadata={"CreationDate": None}))):
            buf = io.BytesIO()
            fig.savefig(buf, format=path.suffix[1:], **options)
            rendered[path] = buf.getvalue()
    finally:
        plt.close(fig)
    if same_image(rendered[paths[0]], paths[0]) and paths[1].exists():
        return paths
    for path, data in rendered.items():
        tmp = path.with_name(f".{path.name}.tmp")  # through a rename: an interruption leaves no half figure
        try:
            tmp.write_bytes(data)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
    return paths


def gamma_axis(ax: plt.Axes) -> None:
    """x axis of the circle figures: gamma in [-pi, pi] with ticks at multiples of pi/2."""
    ax.set_xlabel(r"$\gamma$")
    ax.set_xlim(-np.pi, np.pi)
    ax.set_xticks([-np.pi, -np.pi / 2, 0, np.pi / 2, np.pi], [r"$-\pi$", r"$-\pi/2$", "0", r"$\pi/2$", r"$\pi$"])
