"""Helpers shared by the experiments: plain-numpy ranking metrics and generated doc sections."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from models import scores
from streamscore.settings import ROOT

DOC = ROOT / "docs" / "ONLINE.md"
IMG = ROOT / "docs" / "img"
EPS = 1e-6


def average_precision(y, s) -> float:
    """PR-AUC as average precision (:mod:`models.scores`, scikit-learn's); NaN without positives.

    >>> average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1])
    0.8333333333333333
    >>> average_precision([0, 1], [0.5, 0.5])
    0.5
    """
    return scores.average_precision(y, s)


def log_loss(y, p) -> float:
    return scores.log_loss(y, p, eps=EPS)


def write_section(name: str, body: str, doc: Path = DOC) -> None:
    """Replace the generated block ``name`` of ``doc`` (between its BEGIN/END markers) with
    ``body``; append the block when the doc has none yet."""
    begin, end = f"<!-- BEGIN generated:{name} -->", f"<!-- END generated:{name} -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    text = doc.read_text() if doc.exists() else ""
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text)
    else:
        text = text.rstrip() + ("\n\n" if text else "") + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


def md_table(header: list[str], rows: list[list]) -> str:
    def cell(v):
        if isinstance(v, float):
            return "—" if np.isnan(v) else f"{v:.3f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def relative_log_loss(y, p) -> float:
    """Log loss of ``p`` divided by that of the constant predictor at the fraud rate of ``y`` itself:
    1 = no skill, below 1 = skill, above 1 = worse than knowing only the rate (NaN when ``y`` has one
    class only)."""
    y = np.asarray(y, dtype=np.float64)
    q = y.mean() if len(y) else float("nan")
    if not 0 < q < 1:
        return float("nan")
    return log_loss(y, p) / float(-(q * np.log(q) + (1 - q) * np.log(1 - q)))
