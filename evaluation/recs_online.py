"""Recommendations with an online signal: co-visitation counts updated per click, blended with the
Triton recommender by rank fusion, on replays of two real click streams.

``python -m evaluation.recs_online`` replays each dataset in time order through
:class:`CoVisitation`, a Python mirror of what the live worker writes to Redis (the CLICKS script
of :mod:`features.lua`: per first-delivered view, +1/d both ways with the user's d-th previous
distinct view of the last 30 min, d <= 5; time-decayed weights; 100 neighbours kept per item).
Every target click is ranked **before** it is counted, by

* **triton**: the recommender's served computation (``triton_repo/recommender/1/model.py``) on the
  session's distinct recent items: its top 20 (what Triton returns live), or its popularity
  ranking when it knows none of the history (``KNOWN == 0``, the live cold start);
* **covis**: :func:`scorers.recommender.covis_candidates` alone;
* **blend**: :func:`scorers.recommender.blend` of the two: the code the live worker runs.

Datasets: ``taobao`` (the live stream: the served model, its own test period, clicks as
``models.sessions.taobao_events`` prepares them, sessions cut at 30 min; every behaviour counts as
a click of the session, views train the co-visitation) and ``yoochoose`` (``yoochoose-rsc15-samples``:
denser sessions; the same model code trained in-process on ``train_full``; targets = every next
click of the ``test`` day). No arm recommends an item already in the session (the serving
contract), so re-clicks are misses for all; the ``new`` reading leaves them out. The triton arm is
the served computation with the history masked (``repeat=False``): a repeat-aware model
(``models/recommender.py``) can also put session items back in its live lists, which this
experiment, about new items reaching users, leaves aside.

Honest choice of the blend's parameters: each dataset's targets are cut in time at their median;
the **earlier half (validation)** picks the blend weight and the half-life from
:data:`WEIGHTS` x :data:`HALF_LIVES` by MRR@20; the **later half (test)** is reported with that
choice. The RRF constant is fixed a priori (60). Writes the ``recs`` section of ``docs/ONLINE.md``.
The cold-start slice (popularity vs the trending items of the user's categories, on the same
replay) is :mod:`evaluation.recs_coldstart`'s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from evaluation.common import md_table, write_section
from features.store import COVIS_GAP_S, COVIS_KEEP, COVIS_READ, COVIS_RESCALE, COVIS_WINDOW, decay_factor
from scorers.recommender import blend, covis_candidates
from streamscore.settings import ROOT, Settings

HISTORY = 20
TOP_K = 20
WEIGHTS = (0.1, 0.2, 0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7, 0.8, 0.9)
HALF_LIVES = (0.0, 3600.0, 86400.0)  # 0 = no decay
DATASETS = ("taobao", "yoochoose")


class CoVisitation:
    """The live co-visitation store (``ss:cv:{item}`` and ``ss:cv:{item}:t``) in memory.

    ``weights[a][b]`` is the raw weight of neighbour b of item a relative to ``epoch[a]`` (the event
    time of a's first write, moved forward when a's weights are rescaled): its value at time t is
    raw * 2 ** ((epoch - t) / half_life) (:func:`scorers.recommender.decay_factor`).
    """

    def __init__(self, half_life_s: float, keep: int = COVIS_KEEP, window: int = COVIS_WINDOW,
                 gap_s: float = COVIS_GAP_S):
        self.half_life_s, self.keep, self.window, self.gap_s = half_life_s, keep, window, gap_s
        self.weights: dict[str, dict[str, float]] = {}
        self.epoch: dict[str, float] = {}
        self.recent: dict[str, dict[str, float]] = {}  # user -> item -> newest view ts

    def _add(self, a: str, b: str, w: float, ts: float) -> None:
        nb = self.weights.setdefault(a, {})
        epoch = self.epoch.setdefault(a, ts)
        if self.half_life_s > 0 and (ts - epoch) > COVIS_RESCALE * self.half_life_s:
            f = decay_factor(epoch, ts, self.half_life_s)
            for j in nb:
                nb[j] *= f
            self.epoch[a] = epoch = ts
        nb[b] = nb.get(b, 0.0) + w / decay_factor(epoch, ts, self.half_life_s)
        if len(nb) > self.keep:  # ZREMRANGEBYRANK 0 -(keep+1): lowest weight, ties smallest id
            for j, _ in sorted(nb.items(), key=lambda kv: (kv[1], kv[0]))[: len(nb) - self.keep]:
                del nb[j]

    def view(self, user: str, item: str, ts: float) -> None:
        """Count a first-delivered view."""
        rec = self.recent.setdefault(user, {})
        rec[item] = max(rec.get(item, -np.inf), ts)  # first, as the script does: a re-viewed item is no neighbour
        prev = sorted(((t, j) for j, t in rec.items() if ts - self.gap_s <= t < ts), reverse=True)[: self.window]
        for d, (_, p) in enumerate(prev, start=1):
            self._add(p, item, 1.0 / d, ts)
            self._add(item, p, 1.0 / d, ts)

    def neighbours(self, items, ts: float, n: int = COVIS_READ) -> dict[str, list[tuple[str, float]]]:
        """Each item's ``n`` strongest neighbours with their weights decayed to ``ts`` (the COVIS read)."""
        out = {}
        for a in items:
            nb = self.weights.get(a)
            if nb:
                f = decay_factor(self.epoch[a], ts, self.half_life_s)
                out[a] = [(j, w * f) for j, w in sorted(nb.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:n]]
        return out


# --- datasets: one click stream in time order, targets, a served-model function ------------------


def _taobao(data_dir: Path, repo: Path):
    from models import common
    from models.recommender import LIVE_ITEM_PREFIX
    from models.sessions import TAOBAO, taobao_events

    mod = common.load_model_py(repo, "recommender")
    vdir = common.version_dir(repo, "recommender")
    rec = mod.Recommender(str(vdir))
    meta = json.loads((vdir / "meta.json").read_text())
    ev = taobao_events(Path(data_dir) / TAOBAO)
    stream = pd.DataFrame({"session": ev["session"].to_numpy(), "user": ev["user_id"].to_numpy(),
                           "item": LIVE_ITEM_PREFIX + ev["item_id"], "ts": ev["timestamp"].astype(float).to_numpy(),
                           "view": (ev["behavior_type"] == "pv").to_numpy()})
    stream["target_period"] = stream["ts"] >= float(meta["split"]["t_split"])
    info = {"model": f"served {meta['version']} (its own test MRR@20 in meta.json: "
                     f"{meta['metrics']['test']['model']['all']['mrr@20']})"}
    return stream, rec, info


def _yoochoose(data_dir: Path, repo: Path):
    from models import recommender, sessions

    rec = recommender.fit_in_memory(sessions.load_yoochoose(data_dir), repo, recommender.PARAMS["yoochoose"])
    frames = []
    for path, is_test in ((sessions.YOOCHOOSE_TRAIN, False), (sessions.YOOCHOOSE_TEST, True)):
        df = pd.read_csv(Path(data_dir) / path, dtype={"SessionId": np.int64, "ItemId": str, "Time": np.float64})
        frames.append(pd.DataFrame({"session": df["SessionId"].to_numpy(), "user": "s" + df["SessionId"].astype(str),
                                    "item": df["ItemId"].to_numpy(), "ts": df["Time"].to_numpy(),
                                    "view": True, "target_period": is_test}))
    info = {"model": f"the same code trained in-process on train_full, parameters {recommender.PARAMS['yoochoose']}"}
    return pd.concat(frames, ignore_index=True), rec, info


def replay(stream: pd.DataFrame, half_life_s: float):
    """-> (targets, histories, target ts, covis candidates) with the co-visitation as it was just
    before each target click. A target: a click of the target period whose session has earlier clicks."""
    order = np.lexsort((np.arange(len(stream)), stream["ts"].to_numpy()))
    cols = [stream[c].to_numpy()[order] for c in ("session", "user", "item", "ts", "view", "target_period")]
    covis = CoVisitation(half_life_s)
    recent: dict = {}
    targets, histories, times, cands = [], [], [], []
    for s, u, item, ts, view, is_target in zip(*(c.tolist() for c in cols)):
        hist = recent.get(s, [])
        if is_target and hist:
            targets.append(item)
            histories.append(hist)
            times.append(ts)
            cands.append(covis_candidates(hist, covis.neighbours(hist[:COVIS_WINDOW], ts)))
        if view:
            covis.view(u, item, ts)
        recent[s] = [item] + [h for h in hist if h != item][: HISTORY - 1]
    return targets, histories, np.asarray(times), cands


def model_lists(recommender, histories: list[list[str]], batch: int = 1024) -> tuple[list[list[str]], np.ndarray]:
    """Triton's ranked top 20 per history (the served computation) and KNOWN."""
    lists, known = [], []
    for i in range(0, len(histories), batch):
        chunk = histories[i: i + batch]
        h = np.full((len(chunk), HISTORY), b"", dtype=object)
        for r, hist in enumerate(chunk):
            h[r, : len(hist)] = [x.encode() for x in hist]
        items, _, kn = recommender(h, repeat=False)  # the never-repeat lists this experiment compares
        lists += [[b.decode() for b in row if b] for row in items]
        known.append(kn.reshape(-1))
    return lists, np.concatenate(known) if known else np.zeros(0, np.int32)


def mrr_hr(ranked: list[list[str]], targets: list[str], mask) -> tuple[float, float, int]:
    rr = [(1.0 / (top.index(t) + 1) if t in top else 0.0) for top, t, m in zip(ranked, targets, mask) if m]
    if not rr:
        return float("nan"), float("nan"), 0
    return float(np.mean(rr)), float(np.mean([x > 0 for x in rr])), len(rr)


def evaluate(name: str, data_dir: Path, repo: Path) -> dict:
    stream, rec, info = {"taobao": _taobao, "yoochoose": _yoochoose}[name](data_dir, repo)
    runs = {hl: replay(stream, hl) for hl in HALF_LIVES}
    targets, histories, times, _ = runs[HALF_LIVES[0]]
    base, known = model_lists(rec, histories)
    split = float(np.median(times))
    val, test = times < split, times >= split
    new = np.array([t not in h for t, h in zip(targets, histories)])
    unknown = np.array([t.encode() not in rec.index for t in targets])
    cold = known == 0
    grid = {}
    for hl, (_, _, _, cands) in runs.items():
        for w in WEIGHTS:
            ranked = [[j for j, _ in blend(b, c, TOP_K, w)] for b, c in zip(base, cands)]
            grid[(hl, w)] = {"val": mrr_hr(ranked, targets, val)[0], "test": mrr_hr(ranked, targets, test)[0]}
    hl_best, w_best = max(grid, key=lambda key: (grid[key]["val"], -key[1], key[0]))
    cands = runs[hl_best][3]
    ranked = {"triton": base, "covis": [[j for j, _ in c[:TOP_K]] for c in cands],
              "blend": [[j for j, _ in blend(b, c, TOP_K, w_best)] for b, c in zip(base, cands)]}
    masks = {"validation": val, "test": test, "test_new": test & new, "test_unknown": test & unknown,
             "test_cold": test & cold, "test_with_covis": test & np.array([bool(c) for c in cands])}
    readings = {arm: {m: mrr_hr(r, targets, mask) for m, mask in masks.items()} for arm, r in ranked.items()}
    return {"name": name, "info": info, "n_clicks": int(len(stream)), "n_targets": len(targets), "split_ts": split,
            "half_life": hl_best, "weight": w_best, "readings": readings,
            "grid": {f"{hl:g}|{w:g}": v for (hl, w), v in grid.items()},
            "shares": {"new": float(new[test].mean()), "unknown": float(unknown[test].mean()),
                       "cold": float(cold[test].mean())}}


def run(data_dir: Path, repo: Path, datasets=DATASETS) -> dict:
    return {name: evaluate(name, Path(data_dir), repo) for name in datasets}


def _hl(x: float) -> str:
    return "none" if x <= 0 else f"{x / 3600:g} h"


def report(results: dict, seconds: float, argv: list[str]) -> str:
    cmd = "python -m evaluation.recs_online" + ("" if not argv else " " + " ".join(argv))
    out = [f"Generated by `{cmd}` ({seconds:.0f} s on this machine's CPU). RRF constant c = 60 (fixed a "
           f"priori); blend weight and half-life chosen per dataset on the validation half (grid: weights "
           f"{', '.join(f'{w:g}' for w in WEIGHTS)}; half-lives {', '.join(_hl(h) for h in HALF_LIVES)})."]
    for name, r in results.items():
        cols = ("validation", "test", "test_new", "test_unknown", "test_cold", "test_with_covis")
        n = {c: r["readings"]["triton"][c][2] for c in cols}
        rows = [[arm] + [f"{r['readings'][arm][c][0]:.4f} / {r['readings'][arm][c][1]:.4f}"
                         if r['readings'][arm][c][2] else "— (no targets)" for c in cols]
                for arm in ("triton", "covis", "blend")]
        tri, bl = r["readings"]["triton"]["test"][0], r["readings"]["blend"]["test"][0]
        hl = r["half_life"]
        sweep = ", ".join(f"{w:g}: {r['grid'][f'{hl:g}|{w:g}']['test']:.4f}" for w in WEIGHTS)
        out += ["", f"**{name}**: {r['n_clicks']:,} clicks replayed, {r['n_targets']:,} targets (model: "
                f"{r['info']['model']}). Test half: {r['shares']['new']:.1%} new to the session, "
                f"{r['shares']['unknown']:.1%} unknown to the model's vocabulary, {r['shares']['cold']:.1%} cold "
                f"(the model knows none of the history). Chosen on validation: weight {r['weight']:g}, half-life "
                f"{_hl(r['half_life'])}. Blend vs triton on the test half, MRR@20: {bl:.4f} vs {tri:.4f} "
                f"({(bl - tri) / tri:+.0%}).", "", "MRR@20 / HR@20:", "",
                md_table(["arm", f"validation ({n['validation']:,})", f"test ({n['test']:,})",
                          f"test, new to the session ({n['test_new']:,})",
                          f"test, unknown to the model ({n['test_unknown']:,})",
                          f"test, cold for the model ({n['test_cold']:,})",
                          f"test, with a co-visited candidate ({n['test_with_covis']:,})"], rows), "",
                f"Sensitivity of the blend's test MRR@20 to the weight (half-life {_hl(r['half_life'])}; reported, "
                f"not used to choose): {sweep}."]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="streamscore evaluate-recs", description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, default=ROOT / "triton_repo")
    ap.add_argument("--dataset", choices=DATASETS, action="append", help="default: both")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    r = run(Path(Settings.from_env().data_dir), args.repo, tuple(args.dataset or DATASETS))
    text = report(r, time.perf_counter() - t0, list(argv if argv is not None else sys.argv[1:]))
    print(text)
    if not args.no_write:
        write_section("recs", text)
    return r


if __name__ == "__main__":
    main()
