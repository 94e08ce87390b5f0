"""Dev-set scores (numpy only): accuracy, macro-F1, MCC; Pearson, Spearman, MSE for regression.

MCC is the multi-class generalisation (Gorodkin 2004, the formula scikit-learn's
`matthews_corrcoef` uses); it is 0 for a constant prediction and equals the binary MCC for two
classes. Macro-F1 averages per-class F1 over the classes present in the labels or predictions
(a class never predicted and never true is not counted), as scikit-learn's `average="macro"`.
"""

from __future__ import annotations

import math

import numpy as np

CLASSIFICATION = ("accuracy", "macro_f1", "mcc")
REGRESSION = ("pearson", "spearman", "mse")


def classification_scores(y: np.ndarray, pred: np.ndarray, k: int) -> dict[str, float]:
    c = np.zeros((k, k), dtype=np.float64)  # confusion: rows true, columns predicted
    np.add.at(c, (y, pred), 1)
    tp = np.diag(c)
    t, p, n = c.sum(1), c.sum(0), c.sum()
    present = (t + p) > 0
    f1 = np.where(present, 2 * tp / np.maximum(t + p, 1), 0.0)
    cov_yp = tp.sum() * n - (t * p).sum()
    denom = math.sqrt((n * n - (p * p).sum()) * (n * n - (t * t).sum()))
    return {
        "accuracy": float(tp.sum() / n),
        "macro_f1": float(f1[present].mean()),
        "mcc": float(cov_yp / denom) if denom > 0 else 0.0,
    }


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (what Spearman's rho needs)."""
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x), dtype=np.float64)
    r[order] = np.arange(len(x), dtype=np.float64)
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=r)
    return sums[inv] / counts[inv]


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    d = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / d) if d > 0 else 0.0


def regression_scores(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    return {
        "pearson": _pearson(y, pred),
        "spearman": _pearson(_ranks(y), _ranks(pred)),
        "mse": float(((y - pred) ** 2).mean()),
    }


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


__all__ = ["CLASSIFICATION", "REGRESSION", "classification_scores", "mean_std", "regression_scores"]
