"""Tiled kernel figure from a run directory: seconds per tile over the blocks, and the test accuracy
of each predictor from the stored kernel.

    python -m scripts.make_figures dir=results/kernel_tiles

Reads timing_tiles.csv and table.csv (written by `experiments.kernel_tiles.aggregate`).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from experiments.figures.style import save_figure


def render(run_dir: str | Path) -> list[Path]:
    """tiles.png: the seconds each tile took (upper triangle of blocks) and the predictors' test accuracy."""
    run_dir = Path(run_dir)
    tiles, table = pd.read_csv(run_dir / "timing_tiles.csv"), pd.read_csv(run_dir / "table.csv")
    blocks = int(tiles.j.max()) + 1
    seconds = np.full((blocks, blocks), np.nan)
    seconds[tiles.i, tiles.j] = tiles.seconds
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.2))
    im = a.imshow(seconds, cmap="viridis")
    fig.colorbar(im, ax=a, label="seconds")
    a.set(xlabel="column block j", ylabel="row block i", title=f"{len(tiles)} tiles, {tiles.seconds.sum():.0f} s of compute")
    scored = table[table.test_accuracy.notna()]
    b.bar(scored.predictor, 100 * scored.test_accuracy, color="tab:blue")
    for k, v in enumerate(100 * scored.test_accuracy):
        b.text(k, v, f"{v:.1f}%", ha="center", va="bottom")
    b.set(ylabel="test accuracy (%)", ylim=(0, 105), title=f"from the stored kernel ({scored.solver.iloc[0] if len(scored) else ''})")
    fig.tight_layout()
    paths = save_figure(fig, run_dir / "tiles.png")
    plt.close(fig)
    return paths
