"""Recommendations per user: Triton's session model, with a popularity fallback.

The ``recommender`` model takes the user's 20 most recent items (newest first, padded
with ``b""``) and returns 20 items not in that history. When the model knows none of
the history (``KNOWN == 0``) or Triton is unavailable, the user gets the currently most
viewed items (``ss:popular``) minus the history, marked ``cold_start`` (and
``degraded`` when Triton failed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from scorers.triton import ScoringUnavailable, TritonScorer
from streamscore.settings import Settings

HISTORY_LEN = 20
POPULAR_VERSION = "popular"


@dataclass(frozen=True)
class RecList:
    items: list[str]
    scores: list[float]
    model_version: str
    cold_start: bool
    degraded: bool = False


def popular_fallback(history: Sequence[str], popular: Sequence[tuple[str, float]], k: int,
                     degraded: bool = False) -> RecList:
    seen = set(history)
    picked = [(i, s) for i, s in popular if i not in seen][:k]
    return RecList([i for i, _ in picked], [float(s) for _, s in picked], POPULAR_VERSION, True, degraded)


class Recommender:
    def __init__(self, triton: TritonScorer, settings: Settings):
        self.triton = triton
        self.settings = settings

    async def recommend(self, histories: dict[str, list[str]],
                        popular: Sequence[tuple[str, float]]) -> dict[str, RecList]:
        """``histories``: user -> recent items, newest first. One Triton call for the batch."""
        if not histories:
            return {}
        users = list(histories)
        k = self.settings.rec_top_k
        x = np.full((len(users), HISTORY_LEN), b"", dtype=object)
        for row, u in enumerate(users):
            items = histories[u][:HISTORY_LEN]
            x[row, :len(items)] = [i.encode() for i in items]
        try:
            result = await self.triton.infer(self.settings.model_recommender, {"ITEM_HISTORY": x},
                                             ["ITEMS", "SCORES", "KNOWN"])
        except ScoringUnavailable:
            self.triton.metrics.degraded.labels("recommendation").inc(len(users))
            return {u: popular_fallback(histories[u], popular, k, degraded=True) for u in users}
        version = f"{self.settings.model_recommender}:{result.model_version}"
        out = {}
        for row, u in enumerate(users):
            if int(result.outputs["KNOWN"][row].reshape(-1)[0]) == 0:
                out[u] = popular_fallback(histories[u], popular, k)
                continue
            items = [i.decode() for i in result.outputs["ITEMS"][row][:k] if i]
            scores = [float(s) for s in result.outputs["SCORES"][row][:len(items)]]
            out[u] = RecList(items, scores, version, False)
        return out
