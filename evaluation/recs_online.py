"""Recommendations with an online signal: co-visitation counts updated per click, blended with the
Triton recommender, on a replay of the Taobao click stream.

``python -m evaluation.recs_online`` replays ``taobao-userbehavior-sample`` in time order (the
clicks as ``models.sessions.taobao_events`` prepares them for the model: consecutive repeats of
an item collapsed, sessions cut at 30 min). Every click of the test period (the model's own split,
``meta.json`` ``split.t_split``: it never trained on these) whose session has earlier clicks is a
target, ranked **before** the click is counted by

* **triton**: the served recommender (``triton_repo/recommender/1/model.py``, loaded in-process
  as Triton loads it) on the session's distinct recent items (``models.sessions.recency_history``);
* **covis**: co-visitation counts learned from every click so far (training period included):
  each click adds 1/d to the pair (item, the d-th previous distinct item of its session, d <= 5),
  both ways; a candidate's score is sum over the history's r-th most recent item (r <= 5) of
  count / r, normalised to a distribution;
* **blend**: the mixture (1 - ALPHA) x triton's probabilities + ALPHA x covis's distribution,
  over triton's top 200 and every co-visited candidate.

All three never recommend an item already in the session (the serving contract). MRR@20 and
HR@20 over all targets, over targets new to the session, and over targets the model's vocabulary
lacks (items that appeared after its training). Writes the ``recs`` section of ``docs/ONLINE.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from evaluation.common import md_table, write_section
from streamscore.settings import ROOT, Settings

ALPHA = 0.5  # fixed a priori (not tuned on the test period); the sweep below is sensitivity only
SWEEP = (0.1, 0.25, 0.5, 0.75, 0.9)
WINDOW = 5  # co-visitation pairs: up to the 5 previous distinct items of the session
HISTORY = 20
TOP_K = 20
MODEL_K = 200  # triton candidates for the blend


class CoVisitation:
    """Symmetric co-visitation counts within sessions, updated one click at a time."""

    def __init__(self, window: int = WINDOW):
        self.window = window
        self.counts: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))

    def add(self, recent: list[str], item: str) -> None:
        """Count ``item`` clicked after ``recent`` (the session's distinct items, most recent first)."""
        for d, prev in enumerate(recent[: self.window], start=1):
            if prev != item:
                self.counts[prev][item] += 1.0 / d
                self.counts[item][prev] += 1.0 / d

    def scores(self, recent: list[str], exclude: set[str]) -> dict[str, float]:
        """Candidates -> normalised score for a history (most recent first)."""
        out: dict[str, float] = defaultdict(float)
        for r, h in enumerate(recent[: self.window], start=1):
            for j, c in self.counts.get(h, {}).items():
                if j not in exclude:
                    out[j] += c / r
        total = sum(out.values())
        return {j: v / total for j, v in out.items()} if total > 0 else {}


def _rank(scores: dict[str, float], k: int = TOP_K) -> list[str]:
    return [j for j, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


def replay(events, t_split: float, limit: int | None = None):
    """Sequential pass: per target (test-period click with a non-empty session prefix) its recent
    history, the target and the co-visitation scores as they were just before the click.
    -> (targets, histories, covis score dicts, CoVisitation at the end)."""
    order = np.lexsort((events.index.to_numpy(), events["timestamp"].to_numpy()))
    sess = events["session"].to_numpy()[order]
    items = events["item_id"].to_numpy()[order]
    ts = events["timestamp"].to_numpy()[order]
    covis = CoVisitation()
    recent: dict[int, list[str]] = {}
    targets, histories, cands = [], [], []
    for n in range(len(order) if limit is None else min(limit, len(order))):
        s, item = int(sess[n]), str(items[n])
        hist = recent.get(s, [])
        if ts[n] >= t_split and hist:
            targets.append(item)
            histories.append(list(hist[:HISTORY]))
            cands.append(covis.scores(hist, set(hist)))
        covis.add(hist, item)
        recent[s] = [item] + [h for h in hist if h != item][: HISTORY - 1]
    return targets, histories, cands, covis


def model_scores(recommender, histories: list[list[str]], k: int = MODEL_K, batch: int = 1024):
    """Triton's top-k (ids and probabilities) per history, as model.py computes them."""
    import torch

    out = []
    for i in range(0, len(histories), batch):
        chunk = histories[i : i + batch]
        h = np.full((len(chunk), HISTORY), b"", dtype=object)
        for r, hist in enumerate(chunk):
            h[r, : len(hist)] = [x.encode() for x in hist]
        with torch.no_grad():
            idx, sc, _ = recommender.net.recommend(torch.from_numpy(recommender.encode(h)), k=k)
        ids = recommender.items[idx.numpy()]
        for row_ids, row_sc in zip(ids, sc.numpy()):
            out.append({b.decode(): float(p) for b, p in zip(row_ids, row_sc) if b})
    return out


def blend(p_model: dict[str, float], p_covis: dict[str, float], alpha: float) -> dict[str, float]:
    out = {j: (1 - alpha) * p for j, p in p_model.items()}
    for j, p in p_covis.items():
        out[j] = out.get(j, 0.0) + alpha * p
    return out


def mrr_hr(ranked: list[list[str]], targets: list[str], mask=None) -> tuple[float, float, int]:
    rr, hit = [], []
    for i, (top, t) in enumerate(zip(ranked, targets)):
        if mask is not None and not mask[i]:
            continue
        r = top.index(t) + 1 if t in top else 0
        rr.append(1.0 / r if r else 0.0)
        hit.append(1.0 if r else 0.0)
    return (float(np.mean(rr)) if rr else float("nan"), float(np.mean(hit)) if hit else float("nan"), len(rr))


def run(data_dir: Path, repo: Path, limit: int | None = None) -> dict:
    from models import common
    from models.sessions import TAOBAO, taobao_events

    mod = common.load_model_py(repo, "recommender")
    vdir = common.version_dir(repo, "recommender")
    rec = mod.Recommender(str(vdir))
    meta = json.loads((vdir / "meta.json").read_text())
    t_split = float(meta["split"]["t_split"])
    from models.recommender import LIVE_ITEM_PREFIX

    events = taobao_events(Path(data_dir) / TAOBAO)
    events["item_id"] = LIVE_ITEM_PREFIX + events["item_id"]  # the served vocabulary uses the live stream's ids
    targets, histories, cands, covis = replay(events, t_split, limit)
    p_model = model_scores(rec, histories)
    ranked = {"triton": [_rank(p) for p in p_model], "covis": [_rank(c) for c in cands],
              "blend": [_rank(blend(p, c, ALPHA)) for p, c in zip(p_model, cands)]}
    new = [t not in h for t, h in zip(targets, histories)]
    unknown = [t.encode() not in rec.index for t in targets]
    with_covis = [bool(c) for c in cands]
    readings = {}
    for arm, r in ranked.items():
        readings[arm] = {name: mrr_hr(r, targets, m) for name, m in
                         (("all", None), ("new", new), ("unknown", unknown), ("with_covis", with_covis))}
    sweep = {a: mrr_hr([_rank(blend(p, c, a)) for p, c in zip(p_model, cands)], targets)[0] for a in SWEEP}
    return {"n_targets": len(targets), "n_events": int(len(events)), "t_split": t_split, "readings": readings,
            "sweep": sweep, "share_unknown": float(np.mean(unknown)), "share_new": float(np.mean(new)),
            "share_with_covis": float(np.mean(with_covis)), "model_version": meta["version"],
            "model_test_mrr": meta.get("metrics", {}).get("test", {}).get("model", {}).get("all", {}).get("mrr@20")}


def report(r: dict, seconds: float, argv: list[str]) -> str:
    cmd = "python -m evaluation.recs_online" + ("" if not argv else " " + " ".join(argv))
    rows = []
    for arm in ("triton", "covis", "blend"):
        x = r["readings"][arm]
        rows.append([arm] + [f"{x[k][0]:.4f} / {x[k][1]:.4f}" for k in ("all", "new", "unknown", "with_covis")])
    n = {k: r["readings"]["triton"][k][2] for k in ("all", "new", "unknown", "with_covis")}
    out = [f"Generated by `{cmd}` ({seconds:.0f} s on this machine's CPU), served model {r['model_version']} "
           f"(its own test MRR@20 in meta.json: {r['model_test_mrr']}). {r['n_events']:,} clicks replayed; "
           f"{r['n_targets']:,} targets in the test period ({r['share_new']:.1%} new to their session, "
           f"{r['share_unknown']:.1%} unknown to the model's vocabulary, {r['share_with_covis']:.1%} with at least "
           f"one co-visited candidate). Blend weight ALPHA = {ALPHA} (fixed beforehand).", "",
           "MRR@20 / HR@20:", "",
           md_table(["arm", f"all ({n['all']:,})", f"new to the session ({n['new']:,})",
                     f"unknown to the model ({n['unknown']:,})", f"with a co-visited candidate ({n['with_covis']:,})"],
                    rows), "",
           "Sensitivity of the blend's MRR@20 (all targets) to ALPHA (reported, not used to choose it): "
           + ", ".join(f"{a:g}: {v:.4f}" for a, v in r["sweep"].items()) + "."]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m evaluation.recs_online", description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, default=ROOT / "triton_repo")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    r = run(Path(Settings.from_env().data_dir), args.repo)
    text = report(r, time.perf_counter() - t0, list(argv if argv is not None else sys.argv[1:]))
    print(text)
    if not args.no_write:
        write_section("recs", text)
    return r


if __name__ == "__main__":
    main()
