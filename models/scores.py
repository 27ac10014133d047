"""The one implementation of the binary ranking / probability metrics: scikit-learn's.

``average_precision`` (PR-AUC), ``roc_auc`` and ``log_loss`` wrap
:func:`sklearn.metrics.average_precision_score`, :func:`~sklearn.metrics.roc_auc_score` and
:func:`~sklearn.metrics.log_loss`; :mod:`models.metrics`, :mod:`models.common`,
:mod:`evaluation.common` and :mod:`replay.evaluate` call these, nothing else computes them.
Undefined cases return NaN (no positive for average precision; one class for ROC-AUC); callers
that report ``None`` convert (:func:`or_none`). Ties form one block (sklearn's definitions: ROC
ties count one half; average precision is not interpolated).

>>> average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1])
0.8333333333333333
>>> roc_auc([0, 1, 1], [0.2, 0.2, 0.9]), roc_auc([1, 1], [0.1, 0.2])
(0.75, nan)
>>> round(log_loss([1, 0], [0.8, 0.4]), 6), or_none(float("nan"))
(0.366985, None)
"""

from __future__ import annotations

import math

import numpy as np
from sklearn import metrics as _sk


def _arrays(y, s, weights=None):
    y = np.asarray(y).astype(bool).reshape(-1)
    s = np.asarray(s, dtype=np.float64).reshape(-1)
    w = None if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(y) != len(s) or (w is not None and len(w) != len(y)):
        raise ValueError(f"length mismatch: y {len(y)}, scores {len(s)}, weights {None if w is None else len(w)}")
    return y, s, w


def average_precision(y, s, weights=None) -> float:
    """PR-AUC as average precision; NaN without a positive."""
    y, s, w = _arrays(y, s, weights)
    pos = y.sum() if w is None else w[y].sum()
    if not len(y) or pos <= 0:
        return float("nan")
    return float(_sk.average_precision_score(y, s, sample_weight=w))


def roc_auc(y, s, weights=None) -> float:
    """Area under the ROC curve; NaN unless both classes are present."""
    y, s, w = _arrays(y, s, weights)
    if not len(y) or y.all() or not y.any():
        return float("nan")
    return float(_sk.roc_auc_score(y, s, sample_weight=w))


def log_loss(y, p, weights=None, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities ``p`` clipped to ``[eps, 1 - eps]``; NaN on no rows."""
    y, p, w = _arrays(y, p, weights)
    if not len(y):
        return float("nan")
    return float(_sk.log_loss(y, np.clip(p, eps, 1 - eps), sample_weight=w, labels=[False, True]))


def or_none(x: float):
    """NaN -> None (for reports that print a missing metric as null)."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x
