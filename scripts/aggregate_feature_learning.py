"""Merge the jobs of a feature_learning sweep into tables, fit the exponents, draw the figures.

    python -m scripts.aggregate_feature_learning                    # results/feature_learning/
    python -m scripts.aggregate_feature_learning dir=path/to/sweep

Runs `experiments.feature_learning.aggregate` (what a finished `-m +exp=feature_learning` multirun does by itself),
also on a half-finished sweep: reads only <dir>/jobs/*.csv and writes table.csv, fits.csv,
crossover.csv, regimes.csv and the figures atomically.
"""

from __future__ import annotations

import sys

from experiments.feature_learning import aggregate
from scripts.common import aggregate_sweep

if __name__ == "__main__":
    aggregate_sweep(aggregate, "results/feature_learning", sys.argv[1:])
