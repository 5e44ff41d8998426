"""Evaluation: object discovery, QA, influence graphs, PHYRE metrics."""

from __future__ import annotations

import numpy as np


def mean_std(values) -> tuple[float, float | None]:
    """Mean and sample std over repeats (seeds, folds). One repeat has no spread: std None
    (JSON null), never 0.0, which would read as a measured spread of zero."""
    v = np.asarray(values, np.float64)
    return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else None)


def plus_minus(mean: float, std: float | None, digits: int = 1, sign: bool = False) -> str:
    """'mean ± std' at ``digits`` decimals, the mean alone where there is no spread (std None)."""
    text = f"{mean:{'+' if sign else ''}.{digits}f}"
    return text if std is None else f"{text} ± {std:.{digits}f}"
