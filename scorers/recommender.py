"""Recommendations per user: Triton's session model, an online co-visitation signal, a
popularity fallback.

The ``recommender`` model takes the user's 20 most recent items (newest first, padded
with ``b""``) and returns 20 items; a repeat-aware model (``meta.json`` ``repeat.weight`` > 0,
the default where its validation split says so) may put history items back in, ranked by its
re-visit mixture (``triton_repo/recommender/1/model.py``), otherwise none of the history is
returned. Whatever the model returns is the list: this module adds no repeat logic of its own,
so the offline evaluation of ``model.py``'s ``Recommender`` is what runs live. When the model knows none of
the history (``KNOWN == 0``) or Triton is unavailable, the list is a cold-start list minus the
history, marked ``cold_start`` (and ``degraded`` when Triton failed): with ``REC_COLD_TRENDS=on``
and a user who has viewed items with a category, the trending items of the user's most viewed
categories (:func:`category_candidates`: views decayed with ``REC_TREND_HALF_LIFE_S``, counted per
view in ``ss:cat:{c}:trend``), filled from the global trending items then the most viewed ones
(:func:`cold_list`, ``model_version`` ``trending-categories``); otherwise the global trending items
then the most viewed (``trending``), or only the most viewed (``ss:g:popular``, ``popular``).

Online signal (``REC_ONLINE_BLEND=on``): co-visitation counts updated per click in Redis
(``ss:cv:{item}``, see :mod:`features.store`) give candidates for the user's recent items
(:func:`covis_candidates`); they are merged into the base list by weighted reciprocal-rank
fusion (:func:`blend`), so items the model cannot know (new since its training) and sudden
trends reach users within a refresh. The same two functions serve the offline experiment
(:mod:`evaluation.recs_online`), so what is measured there is what runs live.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Awaitable, Callable, Sequence

import numpy as np

from features.store import COVIS_READ, COVIS_WINDOW
from scorers.triton import ScoringUnavailable, TritonScorer
from streamscore.settings import Settings

HISTORY_LEN = 20
POPULAR_VERSION = "popular"
TRENDING_VERSION = "trending"  # global trending items (decayed views), then popular ones
CATEGORIES_VERSION = "trending-categories"  # the trending items of the user's categories, then the global ones
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


def category_candidates(categories: Sequence[tuple[str, float]], trends: dict[str, Sequence[tuple[str, float]]],
                        n_categories: int) -> list[tuple[str, float]]:
    """Cold-start candidates from a user's categories, strongest first: the mixture
    score(j) = sum over the user's ``n_categories`` most viewed categories c (those of them with
    trending items) of P(c | user) * P(j | c), with P(c | user) = the user's views of c / their views of those
    categories, P(j | c) = j's decayed views in c / the decayed views of c's kept items (the time
    decay cancels: every item of c shares its epoch). ``categories``: [(category, views)], largest
    first; ``trends``: category -> [(item, decayed views)]. Ties by id.

    >>> trends = {"a": [("x", 3.0), ("y", 1.0)], "b": [("z", 1.0)]}
    >>> category_candidates([("a", 3.0), ("b", 1.0)], trends, 2)
    [('x', 0.5625), ('z', 0.25), ('y', 0.1875)]
    >>> category_candidates([("a", 3.0), ("b", 1.0)], trends, 1)
    [('x', 0.75), ('y', 0.25)]
    >>> gone = [("gone", 9.0), ("b", 1.0)]  # a category without trends counts for nothing
    >>> category_candidates(gone, trends, 2), category_candidates(gone, trends, 1)
    ([('z', 1.0)], [])
    """
    cats = [(c, v) for c, v in list(categories)[:n_categories] if v > 0 and trends.get(c)]
    views = sum(v for _, v in cats)
    scores: dict[str, float] = {}
    for c, v in cats:
        rows = trends[c]
        mass = sum(w for _, w in rows)
        if mass <= 0:
            continue
        for j, w in rows:
            scores[j] = scores.get(j, 0.0) + (v / views) * (w / mass)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


def cold_list(history: Sequence[str], candidates: Sequence[tuple[str, float]], fill: Sequence[tuple[str, float]],
              k: int, fill_version: str = POPULAR_VERSION, degraded: bool = False) -> RecList:
    """A cold-start list: the ``candidates`` (:func:`category_candidates`) then the ``fill`` items
    (global trending, then popular), history items and repeats left out, ``k`` at most. Version
    ``trending-categories`` when a candidate is in it, else ``fill_version``; fill items score 0 after
    candidates (their own scores when the list is all fill).

    >>> r = cold_list(["x"], [("x", 0.5), ("y", 0.3)], [("p", 9.0), ("y", 8.0), ("q", 7.0)], 3)
    >>> r.items, r.scores, r.model_version, r.cold_start
    (['y', 'p', 'q'], [0.3, 0.0, 0.0], 'trending-categories', True)
    >>> cold_list([], [], [("p", 9.0)], 3, "trending").model_version
    'trending'
    """
    seen = set(history)
    picked = [(i, float(s)) for i, s in candidates if i not in seen][:k]
    version = CATEGORIES_VERSION if picked else fill_version
    taken = seen | {i for i, _ in picked}
    for i, s in fill:
        if len(picked) >= k:
            break
        if i not in taken:
            picked.append((i, 0.0 if version == CATEGORIES_VERSION else float(s)))
            taken.add(i)
    return RecList([i for i, _ in picked], [s for _, s in picked], version, True, degraded)


def merged_fill(trending: Sequence[tuple[str, float]], popular: Sequence[tuple[str, float]]) -> list[tuple[str, float]]:
    """The global trending items, then the popular ones not among them (each with its own score).

    >>> merged_fill([("a", 2.0)], [("b", 9.0), ("a", 5.0)])
    [('a', 2.0), ('b', 9.0)]
    """
    have = {i for i, _ in trending}
    return list(trending) + [(i, s) for i, s in popular if i not in have]


def cold_fill(trending: Sequence[tuple[str, float]], popular: Sequence[tuple[str, float]]
              ) -> tuple[list[tuple[str, float]], str]:
    """What fills a cold-start list, and its version: the global trending items then the popular ones
    (``trending``), or the popular ones alone when nothing is trending (``popular``). The worker's lists
    and the HTTP service's answer for a user without a stored list both take it from here.

    >>> cold_fill([("a", 2.0)], [("b", 9.0)]), cold_fill([], [("b", 9.0)])
    (([('a', 2.0), ('b', 9.0)], 'trending'), ([('b', 9.0)], 'popular'))
    """
    return (merged_fill(trending, popular), TRENDING_VERSION) if trending else (list(popular), POPULAR_VERSION)


@dataclass(frozen=True)
class ColdStart:
    """What the cold-start lists of a batch are built from (``REC_COLD_TRENDS=on``).

    ``categories``: user -> their category view counts, largest first (``ss:u:{h}:state``);
    ``trends``: reads the trending items of categories (``ss:cat:{c}:trend``), called at most once
    per batch with the categories of the batch's cold users (one round trip); ``trending``: the
    global trending items (``ss:g:trend:{cat.n}``), strongest first."""
    categories: dict[str, Sequence[tuple[str, float]]]
    trends: Callable[[list[str]], Awaitable[dict[str, Sequence[tuple[str, float]]]]]
    trending: Sequence[tuple[str, float]] = field(default_factory=list)


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

    async def _cold_candidates(self, users: Sequence[str], cold: ColdStart | None) -> dict[str, list[tuple[str, float]]]:
        """Category-trending candidates of the cold ``users``: one read of their categories' trends."""
        if cold is None or not users:
            return {}
        n_cat = self.settings.rec_trend_categories
        cats = list(dict.fromkeys(c for u in users for c, _ in list(cold.categories.get(u, ()))[:n_cat]))
        trends = await cold.trends(cats) if cats else {}
        if not trends:
            return {}
        return {u: category_candidates(cold.categories.get(u, ()), trends, n_cat) for u in users}

    async def recommend(self, histories: dict[str, list[str]], popular: Sequence[tuple[str, float]],
                        neighbours: dict[str, Sequence[tuple[str, float]]] | None = None,
                        cold: ColdStart | None = None) -> dict[str, RecList]:
        """``histories``: user -> recent items, newest first. One Triton call for the batch.
        ``neighbours``: co-visitation of the history items (item -> [(neighbour, weight)]), or None
        (``REC_ONLINE_BLEND=off``): fused into the model's list, or into the cold-start list when the
        model knows none of the history or Triton failed (still marked ``cold_start``). ``cold``
        (None: popularity only): the inputs of category-trending cold-start lists; its ``trends`` read
        runs once, after Triton, for the batch's cold users only."""
        if not histories:
            return {}
        users = list(histories)
        k = self.settings.rec_top_k
        x = np.full((len(users), HISTORY_LEN), b"", dtype=object)
        for row, u in enumerate(users):
            items = histories[u][:HISTORY_LEN]
            x[row, :len(items)] = [i.encode() for i in items]
        fill, fill_version = cold_fill(list(cold.trending) if cold is not None else [], popular)

        def fallback(u: str, cands: dict[str, list[tuple[str, float]]], degraded: bool = False) -> RecList:
            mine = cands.get(u, [])
            rec = cold_list(histories[u], mine, fill, k, fill_version, degraded)
            wide = cold_list(histories[u], mine, fill, HISTORY_LEN, fill_version, degraded).items
            return self._with_covis(rec, histories[u], wide, neighbours)

        try:
            result = await self.triton.infer(self.settings.model_recommender, {"ITEM_HISTORY": x},
                                             ["ITEMS", "SCORES", "KNOWN"])
        except ScoringUnavailable:
            self.triton.metrics.degraded.labels("recommendation").inc(len(users))
            cands = await self._cold_candidates(users, cold)
            return {u: fallback(u, cands, degraded=True) for u in users}
        version = f"{self.settings.model_recommender}:{result.model_version}"
        known = [int(result.outputs["KNOWN"][row].reshape(-1)[0]) for row in range(len(users))]
        cands = await self._cold_candidates([u for u, kn in zip(users, known) if kn == 0], cold)
        out = {}
        for row, u in enumerate(users):
            if known[row] == 0:
                out[u] = fallback(u, cands)
                continue
            ranked = [i.decode() for i in result.outputs["ITEMS"][row] if i]
            scores = [float(s) for s in result.outputs["SCORES"][row][:len(ranked)]]
            out[u] = self._with_covis(RecList(ranked[:k], scores[:k], version, False), histories[u], ranked,
                                      neighbours)
        return out
