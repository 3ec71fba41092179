"""Power-law fits of measured quantities against width (drift sweep, Figure 3 deviations)."""

from __future__ import annotations

import numpy as np
from scipy import stats


def fit_exponent(x: np.ndarray, y: np.ndarray, level: float = 0.95) -> dict[str, float]:
    """Least-squares fit of log y = a + b log x: the exponent b, its standard error and CI.

    Points with x <= 0 or y <= 0 are left out; fewer than 3 points or a single x give NaNs.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = (x > 0) & (y > 0)
    if keep.sum() < 3 or np.unique(x[keep]).size < 2:
        return dict(exponent=np.nan, stderr=np.nan, ci_low=np.nan, ci_high=np.nan, intercept=np.nan, points=int(keep.sum()))
    fit = stats.linregress(np.log(x[keep]), np.log(y[keep]))
    half = stats.t.ppf(0.5 + level / 2, keep.sum() - 2) * fit.stderr
    return dict(
        exponent=fit.slope,
        stderr=fit.stderr,
        ci_low=fit.slope - half,
        ci_high=fit.slope + half,
        intercept=fit.intercept,
        points=int(keep.sum()),
    )
