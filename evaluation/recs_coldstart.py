"""Cold-start recommendations: global popularity vs the trending items of the user's categories,
on replays of two real click streams with categories (the cold-start slice of :mod:`evaluation.recs_online`).

``python -m evaluation.recs_coldstart`` replays the Taobao stream exactly as
:mod:`evaluation.recs_online` does (same order, same targets: every click of the model's test
period whose session has earlier clicks; the served model's ``KNOWN`` says which are cold), and
Diginetica's view sample the same way (its sessions as users, a model trained in-process), and,
before each target click is counted, builds the lists the live worker would serve a user whose
history the model does not know (``KNOWN == 0``) or when Triton is down:

* **popular**: the most viewed items so far (``ss:g:popular``), the live fallback before this change;
* **trending**: the global trending items (views decayed with the half-life, ``ss:g:trend:{cat.n}``),
  then popular;
* **categories**: :func:`scorers.recommender.category_candidates` alone (the user's category view
  counts, ``ss:u:{h}:state``, x each category's trending items, ``ss:cat:{c}:trend``);
* **categories + popular**, **categories + trending**: :func:`scorers.recommender.cold_list` with
  that fill (the second is what the worker serves).

:class:`Trends` is a Python mirror of the CATEGORY_TRENDS_ADD script (tests/test_cold_start.py
checks it equals Redis on real clicks), so what is measured is what runs live. The category lists
are exact at every target; the two global lists (popularity, global trending) are recomputed every
:data:`GLOBAL_EVERY_S` seconds of event time (the full sort of ~60,000 items per target would take
hours; the live worker refreshes them per batch). Every arm leaves the session's items out.

Honest choice: the targets are cut in time at their median, as in :mod:`evaluation.recs_online`;
the half-life, the items kept per category and the number of the user's categories mixed are
chosen on the **earlier half's cold targets** by MRR@20 of the served arm (categories + trending);
the later half is reported with that choice; the settings' defaults are Taobao's (the live stream).
Diginetica's times are a day plus the offset within the session, so its half-life is about days.
YooChoose's files carry no categories (its SOURCE.txt), so it has no such slice. Writes the
``recs-cold`` section of ``docs/ONLINE.md``.
"""

from __future__ import annotations

import argparse
import heapq
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from evaluation.common import md_table, write_section
from evaluation.recs_online import TOP_K, model_lists, mrr_hr, replay
from features.keys import BUCKETS, bucket, esc
from features.store import CATS_KEEP, TREND_RESCALE, TREND_SHARD_KEEP, decay_factor
from scorers.recommender import POPULAR_VERSION, category_candidates, cold_list, merged_fill
from streamscore.settings import ROOT, Settings

HALF_LIVES = (600.0, 1800.0, 3600.0, 4 * 3600.0, 86400.0, 7 * 86400.0, 0.0)  # 0 = no decay
KEEPS = (20, 50, 100)
N_CATEGORIES = (1, 3, 10)
GLOBAL_EVERY_S = 30.0
READ = TOP_K + 20  # items read per trend key (the live read: top k + history length)
ONLINE_DOC = ROOT / "docs" / "ONLINE.md"  # docs/MODELS.md is rendered from models_results.json only


class Decayed:
    """One decayed-count ZSET of the store (``ss:cat:{c}:trend`` or ``ss:g:trend:{cat.n}``) in memory: the
    ``_DECAYED`` Lua helper's ``decayed_add`` (raw weights relative to ``epoch``, rescaled past
    TREND_RESCALE half-lives, the ``keep`` strongest kept, ties: the smaller member leaves first)."""

    __slots__ = ("w", "epoch", "heap", "keep", "hl")

    def __init__(self, keep: int, half_life_s: float):
        self.w: dict[str, float] = {}
        self.epoch: float | None = None
        self.heap: list[tuple[float, str]] = []  # (weight, member), stale entries skipped (weights only grow)
        self.keep, self.hl = keep, half_life_s

    def add(self, member: str, ts: float, w: float = 1.0) -> None:
        if self.epoch is None:
            self.epoch = ts
        if self.hl > 0 and ts - self.epoch > TREND_RESCALE * self.hl:
            f = 2.0 ** ((self.epoch - ts) / self.hl)
            self.w = {j: x * f for j, x in self.w.items()}
            self.heap = [(x, j) for j, x in self.w.items()]
            heapq.heapify(self.heap)
            self.epoch = ts
        inc = w * 2.0 ** ((ts - self.epoch) / self.hl) if self.hl > 0 else w
        new = self.w.get(member, 0.0) + inc
        self.w[member] = new
        heapq.heappush(self.heap, (new, member))
        while len(self.w) > self.keep:
            x, j = heapq.heappop(self.heap)
            if self.w.get(j) == x:
                del self.w[j]
        if len(self.heap) > 4 * self.keep + 64:  # drop the stale entries now and then
            self.heap = [(x, j) for j, x in self.w.items()]
            heapq.heapify(self.heap)

    def top(self, ts: float, n: int = READ) -> list[tuple[str, float]]:
        """The TRENDS read: the ``n`` strongest, decayed to ``ts`` (ties by member desc, as ZREVRANGE)."""
        if not self.w:
            return []
        f = decay_factor(self.epoch, ts, self.hl)
        return [(j, x * f) for j, x in heapq.nlargest(n, self.w.items(), key=lambda kv: (kv[1], kv[0]))]


class Trends:
    """The live trend store in memory, for one half-life and keep: per category its
    :class:`Decayed` (``ss:cat:{c}:trend``) and per category bucket a global shard
    (``ss:g:trend:{cat.n}``, TREND_SHARD_KEEP kept). A view without a category counts in the shard of
    its item's bucket only (``FeatureKeys.trend_tag``)."""

    def __init__(self, half_life_s: float, keep: int, shards: bool = True, categories: bool = True):
        self.hl, self.keep = half_life_s, keep
        self.cats: dict[str, Decayed] | None = {} if categories else None
        self.shards: dict[int, Decayed] | None = {} if shards else None

    def view(self, category: str | None, item: str, ts: float) -> None:
        """Count a first-delivered view."""
        if category is not None and self.cats is not None:
            d = self.cats.get(category)
            if d is None:
                d = self.cats[category] = Decayed(self.keep, self.hl)
            d.add(item, ts)
        if self.shards is not None:
            b = bucket(esc(category if category is not None else item))
            s = self.shards.get(b)
            if s is None:
                s = self.shards[b] = Decayed(TREND_SHARD_KEEP, self.hl)
            s.add(item, ts)

    def category(self, category: str, ts: float, n: int = READ) -> list[tuple[str, float]]:
        d = self.cats.get(category)
        return d.top(ts, n) if d is not None else []

    def trending(self, ts: float, n: int = READ) -> list[tuple[str, float]]:
        """The global trending items as ``FeatureClient.cold_start_reads`` merges them (per shard top n,
        decayed to ``ts``, summed)."""
        merged: dict[str, float] = {}
        for s in self.shards.values():
            for j, x in s.top(ts, n):
                merged[j] = merged.get(j, 0.0) + x
        return sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def _user_categories(counts: dict[str, int]) -> list[tuple[str, float]]:
    return sorted(((c, float(v)) for c, v in counts.items()), key=lambda r: (-r[1], r[0]))


def _count_category(counts: dict[str, int], category: str) -> None:
    """CLICKS_USERS' category counts: +1, then the CATS_KEEP largest kept (ties: the smaller name)."""
    counts[category] = counts.get(category, 0) + 1
    if len(counts) > CATS_KEEP:
        for c, _ in _user_categories(counts)[CATS_KEEP:]:
            del counts[c]


def _taobao(data_dir: Path, repo: Path):
    """The Taobao replay of :mod:`evaluation.recs_online` with each click's category (``tb:<id>``)."""
    from evaluation.recs_online import _taobao as taobao
    from models.sessions import TAOBAO, taobao_events

    stream, rec, info = taobao(data_dir, repo)
    ev = taobao_events(Path(data_dir) / TAOBAO)
    assert len(ev) == len(stream)
    stream["category"] = ("tb:" + ev["category_id"].astype(str)).to_numpy()
    return stream, rec, info


def _diginetica(data_dir: Path, repo: Path):
    """Diginetica's view sample as :func:`models.sessions.load_diginetica` reads it (sessions are the
    users: the sample is anonymous; categories from ``product-categories``), every view in time order;
    the target period is its test period (the last 20 % of the time range). The model: the same code
    trained in-process on the training period, fixed parameters (``models.recommender.DEFAULT_PARAMS``,
    as docs/MODELS.md)."""
    from models import recommender, sessions

    data = sessions.load_diginetica(data_dir)
    rec = recommender.fit_in_memory(data, repo, recommender.DEFAULT_PARAMS)
    path = Path(data_dir) / sessions.DIGINETICA
    df = pd.read_csv(path, sep=";", dtype={"session_id": str, "item_id": str, "user_id": str})
    day = pd.to_datetime(df["eventdate"], utc=True).astype("int64") // 10**9
    ts = day.astype(float) + df["timeframe"].astype(float) / 1000.0
    cats = pd.read_csv(Path(data_dir) / sessions.DIGINETICA.parent / "product-categories.csv.gz", sep=";", dtype=str)
    category = df["item_id"].map(dict(zip(cats["itemId"], cats["categoryId"])))
    stream = pd.DataFrame({"session": df["session_id"].to_numpy(), "user": df["session_id"].to_numpy(),
                           "item": df["item_id"].to_numpy(), "ts": ts.to_numpy(), "view": True,
                           "category": [None if pd.isna(c) else f"dg:{c}" for c in category]})
    stream["target_period"] = stream["ts"] >= float(data.info["t_split"])
    info = {"model": f"the same code trained in-process on the training period, parameters {recommender.DEFAULT_PARAMS}"}
    return stream, rec, info


LOADERS = {"taobao": _taobao, "diginetica": _diginetica}


def cold_replay(stream: pd.DataFrame, configs: list[tuple[float, int]]):
    """-> per target (the targets of :func:`evaluation.recs_online.replay`, same order): the user's
    category counts, popular and per half-life global trending lists, and per config (half-life,
    keep) the trending items of the user's categories, all as they were just before the click."""
    order = np.lexsort((np.arange(len(stream)), stream["ts"].to_numpy()))
    cols = [stream[c].to_numpy()[order] for c in ("session", "user", "item", "ts", "view", "target_period", "category")]
    trends = {cfg: Trends(cfg[0], cfg[1], shards=False) for cfg in configs}
    hls = sorted({hl for hl, _ in configs})
    globals_ = {hl: Trends(hl, 1, categories=False) for hl in hls}  # the shards, one set per half-life
    popular: dict[str, int] = {}
    user_cats: dict[str, dict[str, int]] = {}
    recent: dict = {}
    out = []
    cached_at, cache = -np.inf, None
    for s, u, item, ts, view, is_target, cat in zip(*(c.tolist() for c in cols)):
        hist = recent.get(s, [])
        if is_target and hist:
            if ts - cached_at >= GLOBAL_EVERY_S:
                pop = heapq.nlargest(READ, popular.items(), key=lambda kv: (kv[1], kv[0]))  # ties: id desc
                cache = ([(j, float(v)) for j, v in pop], {hl: g.trending(ts, READ) for hl, g in globals_.items()})
                cached_at = ts
            cats = _user_categories(user_cats.get(u, {}))
            mine = {cfg: {c: t.category(c, ts) for c, _ in cats[:max(N_CATEGORIES)]} for cfg, t in trends.items()}
            out.append((hist, cats, cache[0], cache[1], mine))
        if view:
            popular[item] = popular.get(item, 0) + 1
            for t in trends.values():
                t.view(cat, item, ts)
            for g in globals_.values():
                g.view(cat, item, ts)
            _count_category(user_cats.setdefault(u, {}), cat)
        recent[s] = [item] + [h for h in hist if h != item][:19]
    return out


def arms(snap, hl: float, keep: int, n_cat: int) -> dict[str, list[str]]:
    hist, cats, pop, trending, mine = snap
    cands = category_candidates(cats, mine[(hl, keep)], n_cat)
    fill = merged_fill(trending[hl], pop)
    return {
        "popular": cold_list(hist, [], pop, TOP_K, POPULAR_VERSION).items,
        "trending": cold_list(hist, [], fill, TOP_K).items,
        "categories": cold_list(hist, cands, [], TOP_K).items,
        "categories + popular": cold_list(hist, cands, pop, TOP_K).items,
        "categories + trending": cold_list(hist, cands, fill, TOP_K).items,
    }


SERVED = "categories + trending"


def evaluate(name: str, data_dir: Path, repo: Path) -> dict:
    stream, rec, info = LOADERS[name](data_dir, repo)
    targets, histories, times, _ = replay(stream, 0.0)
    _, known = model_lists(rec, histories)
    configs = [(hl, k) for hl in HALF_LIVES for k in KEEPS]
    snaps = cold_replay(stream, configs)
    assert len(snaps) == len(targets) and all(s[0] == h for s, h in zip(snaps, histories))
    split = float(np.median(times))
    val, test = times < split, times >= split
    cold = known == 0
    with_cats = np.array([bool(s[1]) for s in snaps])
    grid = {}
    for hl, keep in configs:
        for n_cat in N_CATEGORIES:
            lists = [arms(s, hl, keep, n_cat)[SERVED] if m else [] for s, m in zip(snaps, val & cold)]
            grid[(hl, keep, n_cat)] = mrr_hr(lists, targets, val & cold)[0]
    best = max(grid, key=lambda key: (grid[key], -key[1], -key[2]))
    per = [arms(s, *best) for s in snaps]
    names = list(per[0])
    masks = {"validation, cold": val & cold, "test, cold": test & cold,
             "test, cold, with category views": test & cold & with_cats, "test, all (Triton down)": test}
    readings = {a: {m: mrr_hr([p[a] for p in per], targets, mask) for m, mask in masks.items()} for a in names}
    new = np.array([t not in h for t, h in zip(targets, histories)])
    return {"name": name, "info": info, "n_clicks": len(stream), "n_targets": len(targets), "best": best, "readings": readings,
            "grid": {f"{hl:g}|{k}|{c}": v for (hl, k, c), v in grid.items()},
            "shares": {"cold": float(cold[test].mean()), "cats": float(with_cats[test & cold].mean()),
                       "new": float(new[test & cold].mean())}}


def _hl(x: float) -> str:
    if x <= 0:
        return "none"
    return f"{x / 86400:g} d" if x >= 86400 else (f"{x / 3600:g} h" if x >= 3600 else f"{x / 60:g} min")


def _section(r: dict) -> list[str]:
    hl, keep, n_cat = r["best"]
    cols = list(next(iter(r["readings"].values())))
    n = {c: r["readings"]["popular"][c][2] for c in cols}
    rows = [[a] + [f"{r['readings'][a][c][0]:.4f} / {r['readings'][a][c][1]:.4f}" for c in cols] for a in r["readings"]]
    pop, cat = r["readings"]["popular"]["test, cold"], r["readings"][SERVED]["test, cold"]
    sweep = ", ".join(f"{_hl(h)}: {r['grid'][f'{h:g}|{keep}|{n_cat}']:.4f}" for h in HALF_LIVES)
    keeps = ", ".join(f"{k}: {r['grid'][f'{hl:g}|{k}|{n_cat}']:.4f}" for k in KEEPS)
    cats = ", ".join(f"{c}: {r['grid'][f'{hl:g}|{keep}|{c}']:.4f}" for c in N_CATEGORIES)
    return [
        f"**{r['name']}**: {r['n_clicks']:,} clicks replayed, {r['n_targets']:,} targets (model: {r['info']['model']}); "
        f"cold = the model knows none of the session's items ({r['shares']['cold']:.1%} of the test half; "
        f"{r['shares']['cats']:.1%} of those users have category views before the click, {r['shares']['new']:.1%} "
        f"click an item new to the session). Chosen on the validation half's cold targets: half-life {_hl(hl)}, "
        f"{keep} items kept per category, the user's {n_cat} most viewed categories mixed. Test half, cold users: "
        f"MRR@20 {cat[0]:.4f} ({SERVED}) vs {pop[0]:.4f} (popular), HR@20 {cat[1]:.4f} vs {pop[1]:.4f}.",
        "", "MRR@20 / HR@20:", "",
        md_table(["arm"] + [f"{c} ({n[c]:,})" for c in cols], rows), "",
        f"Validation MRR@20 of `{SERVED}` (the choice; reported): half-life ({keep} kept, {n_cat} categories) {sweep}; "
        f"kept per category ({_hl(hl)}) {keeps}; categories mixed {cats}.", ""]


def report(results: dict, seconds: float) -> str:
    out = [f"Generated by `python -m evaluation.recs_coldstart` ({seconds:.0f} s on this machine's CPU). The served arm "
           f"is `{SERVED}`; the choice (grid: half-lives {', '.join(_hl(h) for h in HALF_LIVES)}; kept "
           f"{', '.join(map(str, KEEPS))}; categories {', '.join(map(str, N_CATEGORIES))}) by its MRR@20 on the "
           f"validation half's cold targets. Every arm leaves the session's items out; global lists recomputed every "
           f"{GLOBAL_EVERY_S:g} s of event time.", ""]
    for r in results.values():
        out += _section(r)
    out.append("YooChoose: its files carry no categories (SOURCE.txt), so no category slice; its sessions are all "
               "known to the model (0.0% cold in docs/ONLINE.md).")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="streamscore evaluate-recs-cold", description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, default=ROOT / "triton_repo")
    ap.add_argument("--dataset", choices=tuple(LOADERS), action="append", help="default: both")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    r = {name: evaluate(name, Path(Settings.from_env().data_dir), args.repo) for name in (args.dataset or LOADERS)}
    text = report(r, time.perf_counter() - t0)
    print(text)
    if not args.no_write:
        write_section("recs-cold", text, ONLINE_DOC)
    return r


if __name__ == "__main__":
    main(sys.argv[1:])
