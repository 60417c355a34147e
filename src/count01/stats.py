"""The one interval the study reports shares with: Wilson's, numpy only (plots and the question
rules import it without torch)."""

from __future__ import annotations

import numpy as np

Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal


def wilson(k, n, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a binomial proportion k / n (nan where n = 0). Unlike k/n +- z*se,
    it stays inside [0, 1] and is not empty at 0 or n successes, where small sweeps often are."""
    k, n = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        center = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return np.clip(center - half, 0, 1), np.clip(center + half, 0, 1)
