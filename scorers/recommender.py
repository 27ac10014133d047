"""Recommendations per user: Triton's session model, an online co-visitation signal, a
popularity fallback.

The ``recommender`` model takes the user's 20 most recent items (newest first, padded
with ``b""``) and returns 20 items; a repeat-aware model (``meta.json`` ``repeat.weight`` > 0,
the default where its validation split says so) may put history items back in, ranked by its
re-visit mixture (``triton_repo/recommender/1/model.py``), otherwise none of the history is
returned. Whatever the model returns is the list: this module adds no repeat logic of its own,
so the offline evaluation of ``model.py``'s ``Recommender`` is what runs live. When the model knows none of
the history (``KNOWN == 0``) or Triton is unavailable, the base list is the currently most
viewed items (``ss:g:popular``) minus the history, marked ``cold_start`` (and
``degraded`` when Triton failed).

Online signal (``REC_ONLINE_BLEND=on``): co-visitation counts updated per click in Redis
(``ss:cv:{item}``, see :mod:`features.store`) give candidates for the user's recent items
(:func:`covis_candidates`); they are merged into the base list by weighted reciprocal-rank
fusion (:func:`blend`), so items the model cannot know (new since its training) and sudden
trends reach users within a refresh. The same two functions serve the offline experiment
(:mod:`evaluation.recs_online`), so what is measured there is what runs live.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from features.store import COVIS_READ, COVIS_WINDOW
from scorers.triton import ScoringUnavailable, TritonScorer
from streamscore.settings import Settings

HISTORY_LEN = 20
POPULAR_VERSION = "popular"
COVIS_VERSION_SUFFIX = "+covis"
RRF_C = 60  # reciprocal-rank-fusion constant (Cormack et al. 2009's default, fixed a priori)


def covis_candidates(history: Sequence[str], neighbours: dict[str, Sequence[tuple[str, float]]],
                     n: int = COVIS_READ, window: int = COVIS_WINDOW) -> list[tuple[str, float]]:
    """Co-visited candidates of a user, strongest first: sum over the ``r``-th newest history item
    (r <= ``window``) of its neighbours' decayed weights / r; history items are never candidates.
    ``history``: newest first; ``neighbours``: item -> [(neighbour, decayed weight)]. Ties by id.

    >>> nb = {"a": [("x", 2.0), ("b", 1.0)], "b": [("x", 1.0), ("y", 3.0), ("a", 1.0)]}
    >>> covis_candidates(["a", "b"], nb)
    [('x', 2.5), ('y', 1.5)]
    >>> covis_candidates(["z"], nb)
    []
    """
    seen = set(history)
    scores: dict[str, float] = {}
    for r, h in enumerate(history[:window], start=1):
        for j, w in neighbours.get(h, ()):
            if j not in seen:
                scores[j] = scores.get(j, 0.0) + w / r
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def blend(base: Sequence[str], covis: Sequence[tuple[str, float]], k: int, weight: float,
          c: float = RRF_C) -> list[tuple[str, float]]:
    """Weighted reciprocal-rank fusion of a ranked ``base`` list (Triton's, or popular items) and
    ranked co-visitation candidates: score(j) = (1 - weight) / (c + rank in base) + weight /
    (c + rank in covis), ranks from 1, a list missing j adds 0. -> the top ``k`` (item, score),
    ties by base order then id. ``weight`` 0 returns the base list; a candidate in both lists
    rises; one only co-visited (e.g. an item newer than the model) enters when its co-visitation
    rank is good enough.

    >>> [j for j, _ in blend(["a", "b", "c"], [("x", 9.0), ("c", 1.0)], k=3, weight=0.5, c=1)]
    ['c', 'a', 'x']
    >>> [j for j, _ in blend(["a", "b"], [("x", 9.0)], k=3, weight=0.0)]
    ['a', 'b']
    >>> [j for j, _ in blend([], [("x", 9.0), ("y", 1.0)], k=3, weight=0.2)]
    ['x', 'y']
    """
    pos = {j: r for r, j in enumerate(base, start=1)}
    scores = {j: (1 - weight) / (c + r) for j, r in pos.items()}
    for r, (j, _) in enumerate(covis if weight > 0 else (), start=1):
        scores[j] = scores.get(j, 0.0) + weight / (c + r)
    order = sorted(scores, key=lambda j: (-scores[j], pos.get(j, len(pos) + 1), j))
    return [(j, scores[j]) for j in order[:k]]


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

    def _with_covis(self, rec: RecList, history: Sequence[str], base: Sequence[str],
                    neighbours: dict[str, Sequence[tuple[str, float]]] | None) -> RecList:
        """``rec`` with the user's co-visited candidates fused in (:func:`blend`), when there are any;
        the version gains ``+covis`` and the scores become the fusion's."""
        cands = covis_candidates(history, neighbours) if neighbours else []
        if not cands:
            return rec
        fused = blend(base, cands, self.settings.rec_top_k, self.settings.rec_online_weight)
        return RecList([i for i, _ in fused], [s for _, s in fused], rec.model_version + COVIS_VERSION_SUFFIX,
                       rec.cold_start, rec.degraded)

    async def recommend(self, histories: dict[str, list[str]], popular: Sequence[tuple[str, float]],
                        neighbours: dict[str, Sequence[tuple[str, float]]] | None = None) -> dict[str, RecList]:
        """``histories``: user -> recent items, newest first. One Triton call for the batch.
        ``neighbours``: co-visitation of the history items (item -> [(neighbour, weight)]), or None
        (``REC_ONLINE_BLEND=off``): fused into the model's list, or into the popular list when the
        model knows none of the history or Triton failed (still marked ``cold_start``)."""
        if not histories:
            return {}
        users = list(histories)
        k = self.settings.rec_top_k
        x = np.full((len(users), HISTORY_LEN), b"", dtype=object)
        for row, u in enumerate(users):
            items = histories[u][:HISTORY_LEN]
            x[row, :len(items)] = [i.encode() for i in items]

        def fallback(u: str, degraded: bool = False) -> RecList:
            rec = popular_fallback(histories[u], popular, k, degraded)
            wide = popular_fallback(histories[u], popular, HISTORY_LEN, degraded).items
            return self._with_covis(rec, histories[u], wide, neighbours)

        try:
            result = await self.triton.infer(self.settings.model_recommender, {"ITEM_HISTORY": x},
                                             ["ITEMS", "SCORES", "KNOWN"])
        except ScoringUnavailable:
            self.triton.metrics.degraded.labels("recommendation").inc(len(users))
            return {u: fallback(u, degraded=True) for u in users}
        version = f"{self.settings.model_recommender}:{result.model_version}"
        out = {}
        for row, u in enumerate(users):
            if int(result.outputs["KNOWN"][row].reshape(-1)[0]) == 0:
                out[u] = fallback(u)
                continue
            ranked = [i.decode() for i in result.outputs["ITEMS"][row] if i]
            scores = [float(s) for s in result.outputs["SCORES"][row][:len(ranked)]]
            out[u] = self._with_covis(RecList(ranked[:k], scores[:k], version, False), histories[u], ranked,
                                      neighbours)
        return out
