"""Merge the jobs of a drift sweep into tables, fit width exponents, draw the figures.

    python -m scripts.aggregate_drift                    # results/drift_sweep/
    python -m scripts.aggregate_drift dir=path/to/sweep

Runs `experiments.drift_sweep.aggregate` (what a finished `-m +exp=drift_sweep` multirun does by itself),
also on a half-finished sweep: reads only <dir>/jobs/*.csv and writes table.csv, fits.csv,
spread.csv and the figures atomically.
"""

from __future__ import annotations

import sys

from experiments.drift_sweep import aggregate
from scripts.common import aggregate_sweep

if __name__ == "__main__":
    aggregate_sweep(aggregate, "results/drift_sweep", sys.argv[1:])
