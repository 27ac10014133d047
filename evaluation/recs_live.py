"""Live evaluation of recommendations on YooChoose: the served model through the live stack.

``python -m evaluation.recs_live`` (``streamscore evaluate-recs-live``) writes the
``recs-yoochoose`` section of docs/EVALUATION.md (between its ``BEGIN/END generated`` markers;
``python -m replay.evaluate`` keeps that section when it rewrites the rest of the page):

1. trains the recommender on YooChoose's ``train_full`` exactly as ``streamscore
   train-recommender --dataset yoochoose`` does (re-visit weight chosen on a validation split of
   ``train_full``), into a scratch model repository, and computes its offline HR@20 / MRR@20 on
   the ``test`` day (the served computation, ``model.py``'s ``Recommender``);
2. starts a tritonserver of its own over that repository and a clicks worker of its own (own
   topics, consumer group and Redis database; ``REC_TOP_K=20``, ``REC_ONLINE_BLEND=off``, so the
   lists are the model's alone, as offline);
3. replays the ``test`` day's clicks (ids ``yc:<id>``, as the replay's column mapping
   :data:`MAPPING` reads the file) into the clicks topic at a fixed rate, session-interleaved:
   the k-th click of every session in wave k (sessions in order of their first click), waves in
   order, each at least :data:`MIN_WAVE_S` long. Event times are re-stamped 1/rate apart in
   publish order (monotone, so nothing is "too late"). Why not wall-clock order: the test day is
   24 h of clicks; replayed in time order at any rate the box sustains, two clicks of one session
   arrive milliseconds apart, before the worker can have refreshed the list the second one is
   scored against, while offline every next click is scored against the full prefix. The
   sessions are independent for the model (no online blend), so the interleaving changes nothing
   else;
4. scores every next click of every session (every click after the session's first, repeats
   included, as offline) against the newest list the worker emitted for that session before the
   click was sent (list ``ts`` <= the click's broker timestamp; no list yet: a miss), and compares
   with the offline figures within :data:`TOLERANCES` (fixed before the first run).

Readings: **all**: every next click; **new**: the next clicks on an item not yet in the session.
Live there is one list per session state (the served one, re-visits included), so the offline
figure it is held to is the served list's on the same targets (docs/MODELS.md's ``new`` column
masks the history for every method; it is shown for reference).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Optional

from streamscore.settings import ROOT, Settings

DOC = ROOT / "docs" / "EVALUATION.md"
SECTION = "recs-yoochoose"
# the replay's column mapping of YooChoose's files (replay/files.py): a session is a user
MAPPING = {"topic": "clicks", "namespace": "yc", "map": {"user_id": "SessionId", "item_id": "ItemId", "ts": "Time"},
           "const": {"action": "view"}, "sort": True}
MIN_WAVE_S = 1.0
# |live - offline| allowed, stated before the first run: the only expected differences are lists not
# yet refreshed when a click was sent and tie order between Triton's and the in-process computation
TOLERANCES = {"hr@20": 0.01, "mrr@20": 0.01}


def day_clicks(data_dir) -> list:
    """The ``test`` day as Click events through the replay's file reader (ids ``yc:...``)."""
    from models.sessions import YOOCHOOSE_TEST
    from replay.files import FileSource, read_file

    return list(read_file(FileSource(file=str(Path(data_dir) / YOOCHOOSE_TEST), **json.loads(json.dumps(MAPPING)))))


def waves(clicks: list, rate: float, t0: float) -> list[list]:
    """Session-interleaved publish order (module doc, step 3): wave k holds the k-th click of every
    session with at least k + 1 clicks, sessions in order of their first click; event times re-stamped
    ``t0 + i / rate`` in that order (the original order within each session is kept).

    >>> from streamscore.events import Click
    >>> cs = [Click(event_id=f"e{i}", user_id=u, item_id=it, action="view", ts=1e9 + i)
    ...       for i, (u, it) in enumerate([("a", "x"), ("b", "y"), ("a", "z"), ("a", "x")])]
    >>> [[(c.user_id, c.item_id, round(c.ts - 1e9, 3)) for c in w] for w in waves(cs, 10.0, 1e9)]
    [[('a', 'x', 0.0), ('b', 'y', 0.1)], [('a', 'z', 0.2)], [('a', 'x', 0.3)]]
    """
    per: dict[str, list] = defaultdict(list)
    for c in sorted(clicks, key=lambda c: c.ts):  # stable: file order among equal times
        per[c.user_id].append(c)
    sessions = sorted(per.values(), key=lambda cs: cs[0].ts)
    out, i = [], 0
    for k in range(max((len(s) for s in sessions), default=0)):
        wave = []
        for s in sessions:
            if k < len(s):
                wave.append(s[k].model_copy(update={"ts": round(t0 + i / rate, 6)}))
                i += 1
        out.append(wave)
    return out


def session_targets(clicks) -> list[tuple[str, str, float, bool]]:
    """``clicks``: (user, item, sent_ts) in each session's click order. Every click after the
    session's first is a target (repeats included, as :mod:`models.sessions` reads YooChoose):
    (user, item, sent_ts, new) with ``new`` = the item is not among the session's earlier clicks."""
    seen: dict[str, list[str]] = defaultdict(list)
    out = []
    for user, item, sent in clicks:
        history = seen[user]
        if history:
            out.append((user, item, sent, item not in history))
        history.append(item)
    return out


def offline_readings(rec, data) -> dict:
    """The served list's HR@20 / MRR@20 on every next click and on the new ones (what the live lists
    are), and docs/MODELS.md's ``new`` reading (history masked) for reference."""
    from models import recommender

    top = recommender.served_top(rec, data, id_prefix=recommender.NAMED["yoochoose"])
    served = recommender.readings(top, data)
    masked = recommender.served_readings(rec, data, recommender.NAMED["yoochoose"])["new"]
    return {"all": served["all"], "new": served["new"], "new_history_masked": masked}


def start_triton(base: Settings, repo: Path, name: str, timeout_s: float = 240.0) -> Settings:
    """A tritonserver of its own over ``repo`` on free ports (registered as ``name`` in the run
    dir). -> ``base`` with its Triton URLs."""
    from streamscore import stack as stk

    s = base.replace(triton_repo=str(repo), triton_http_url=f"127.0.0.1:{stk.free_port()}",
                            triton_grpc_url=f"127.0.0.1:{stk.free_port()}", triton_metrics_url=f"127.0.0.1:{stk.free_port()}")
    # its own backend directory: the stub of the stack's tritonserver is busy (running), not overwritable
    argv, env = stk.LocalStack(s.replace(run_dir=str(Path(base.run_dir) / name)))._argv("triton")
    stk.start_process(name, argv, env, s.run_dir)

    def died() -> None:
        if stk.process_alive(name, s.run_dir) is None:
            raise stk.StackError(f"{name} exited:\n{stk.log_tail(name, s.run_dir)}")

    try:
        stk.wait_triton(s.triton_http_url, timeout_s, died)
    except BaseException:
        stk.stop_process(name, s.run_dir)
        raise
    return s


def live_yoochoose(base: Settings, data_dir, *, rate: float = 200.0, redis_db: int = 9, wait_s: float = 240.0,
                   start_stack: bool = True, model_repo: Optional[Path] = None, progress=None) -> dict:
    """Steps 1-4 of the module doc. ``model_repo``: a repository that holds the YooChoose-trained
    recommender (step 1 skipped), or where to train it and keep it (default: a scratch one, removed)."""
    import redis

    from models import common, recommender
    from replay.evaluate import _db, _wait_committed
    from replay.publish import publish
    from streamscore import stack as stk

    say = progress or (lambda msg: None)
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    run = uuid.uuid4().hex[:8]
    if start_stack:
        say("starting the local stack (broker, valkey, tritonserver) ...")
        stk.LocalStack(base).up(timeout_s=120)
    log = recommender.named_log("yoochoose", data_dir)
    scratch = None
    trained = model_repo is not None and (common.version_dir(model_repo, "recommender") / "meta.json").exists()
    if trained and common.read_meta(model_repo, "recommender").get("dataset") != "yoochoose":
        raise ValueError(f"{model_repo}: its recommender is not trained on yoochoose")
    if not trained:
        say("training the recommender on YooChoose train_full (streamscore train-recommender --dataset yoochoose) ...")
        if model_repo is None:
            scratch = model_repo = common.scratch_repo(base.triton_repo, "recommender")
        else:
            common.scratch_repo(base.triton_repo, "recommender", model_repo)
        recommender.train_log(log, model_repo, base)
    meta = common.read_meta(model_repo, "recommender")
    timings["train_s"] = round(time.monotonic() - t0, 1)
    data = log.load(False)
    mod = common.load_model_py(model_repo, "recommender")
    rec = mod.Recommender(str(common.version_dir(model_repo, "recommender")))
    clicks = day_clicks(data_dir)
    offline = offline_readings(rec, data)
    timings["offline_s"] = round(time.monotonic() - t0 - timings["train_s"], 1)
    triton_name = f"eval-triton-{run}"
    say(f"starting a tritonserver over {model_repo} ...")
    st = start_triton(base, model_repo, triton_name)
    worker = f"eval-recs-worker-{run}"
    s = st.replace(
        app_id=f"eval-recs-{run}", redis_url=_db(base.redis_url, redis_db), worker_metrics_port=stk.free_port(),
        rec_top_k=20, rec_online_blend=False, dev_mode=start_stack or base.dev_mode,
        **{f: f"eval-recs-{run}-{getattr(base, f)}" for f in ("topic_clicks", "topic_recommendations",
                                                             "topic_dead_letter")})
    try:
        stk.create_topics(s, {s.topic_clicks: s.topic_partitions, s.topic_recommendations: s.topic_partitions,
                              s.topic_dead_letter: s.topic_partitions})
        redis.Redis.from_url(s.redis_url).flushdb()
        stk.start_process(worker, [sys.executable, "-m", "streamscore", "worker", "--role", "clicks"], s.to_env(),
                          s.run_dir)
        plan = waves(clicks, rate, t0=min(c.ts for c in clicks))
        say(f"replaying {len(clicks):,} test-day clicks of {len(plan[0]):,} sessions in {len(plan)} waves at "
            f"{rate:g}/s ...")
        t = time.monotonic()
        for wave in plan:
            w0 = time.monotonic()
            publish([(s.topic_clicks, c.user_id, c) for c in wave], s, rate=rate)
            time.sleep(max(0.0, MIN_WAVE_S - (time.monotonic() - w0)))
        done = _wait_committed(s, s.deciding_group(s.topic_clicks), s.topic_clicks, len(clicks), wait_s, worker)
        time.sleep(2 * s.rec_refresh_interval_s + 1.0)  # the last refresh
        timings["replay_s"] = round(time.monotonic() - t, 1)
        live = read_back(s, len(clicks), done)
    finally:
        tail = stk.log_tail(worker, s.run_dir, lines=20)
        stk.stop_process(worker, s.run_dir)
        stk.stop_process(triton_name, s.run_dir)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    timings["total_s"] = round(time.monotonic() - t0, 1)
    checks = {reading: {k: _check(live["metrics"][reading][k], offline[reading][k], TOLERANCES[k])
                        for k in ("hr@20", "mrr@20")} for reading in ("all", "new")}
    return {"run": run, "rate": rate, "min_wave_s": MIN_WAVE_S, "waves": len(plan), "sessions": len(plan[0]),
            "model": {"version": meta["version"], "repeat": meta["repeat"], "data_sha256": meta["data_sha256"],
                      "train_seconds": meta.get("train_seconds")},
            "offline": offline, "offline_targets": int(len(data.targets)), "live": live, "checks": checks,
            "pass": all(c["pass"] for r in checks.values() for c in r.values()), "timings": timings,
            "worker_log_tail": tail}


def _check(live: Optional[float], offline: float, tol: float) -> dict:
    from replay.evaluate import check

    return check(live, round(offline, 4), tol)


def read_back(s: Settings, published: int, committed: int) -> dict:
    """The replayed clicks (their send times) and the emitted lists, read back from the topics, and
    HR@20 / MRR@20 of every next click against the session's newest list before it was sent."""
    from replay.evaluate import read_clicks_and_lists, rec_metrics

    clicks, lists, msgs, recs = read_clicks_and_lists(s)
    versions: dict[str, int] = defaultdict(int)
    cold = 0
    for m in recs:
        r = json.loads(m.value())
        cold += bool(r["cold_start"])
        versions[r["model_version"]] += 1
    return {"clicks_published": published, "clicks_read": len(msgs), "clicks_committed": committed,
            "sessions": len({u for u, _, _ in clicks}), "lists": len(recs), "cold_start_lists": cold,
            "list_versions": dict(versions), "metrics": rec_metrics(session_targets(clicks), lists, 20)}


def report(r: dict, command: str, seconds: float) -> str:
    """The ``recs-yoochoose`` section of docs/EVALUATION.md."""
    off, live = r["offline"], r["live"]
    lm = live["metrics"]
    rep = r["model"]["repeat"]
    lines = ["## Recommendations on YooChoose: the served model through the live stack", "",
             f"Generated by `{command}` ({seconds:.0f} s; `python -m replay.evaluate` keeps this section). "
             f"Model: `streamscore train-recommender --dataset yoochoose` (train_full, re-visit weight "
             f"{rep['weight']:g} chosen on `{rep['validation']}`), version `{r['model']['version']}`, data sha256 "
             f"`{r['model']['data_sha256'][:12]}`, served by a tritonserver of its own; a clicks worker of its own "
             f"with `REC_TOP_K=20` and `REC_ONLINE_BLEND=off` (the model's lists alone, as offline).", "",
             f"Replay: the `test` day ({live['clicks_published']:,} clicks of {r['sessions']:,} sessions, ids `yc:<id>` "
             f"through the replay's column mapping) at {r['rate']:g} clicks/s, session-interleaved in {r['waves']} "
             f"waves (the k-th click of every session in wave k, each wave at least {r['min_wave_s']:g} s; event "
             "times re-stamped in publish order). In wall-clock order two clicks of one session would arrive "
             "milliseconds apart, before the worker could refresh the list the second is scored against; the "
             "model has no state across sessions (no online blend), so the interleaving changes nothing else. "
             f"The worker committed {live['clicks_committed']:,} clicks and emitted {live['lists']:,} lists "
             f"({live['cold_start_lists']:,} cold-start; versions {json.dumps(live['list_versions'])}).", "",
             "Method: every click after a session's first is a target (repeats included, as offline); it is scored "
             "against the newest list the worker had emitted for that session before the click was sent (list `ts` "
             "<= the click's broker timestamp; none yet: a miss). **new**: the targets not among the session's "
             "earlier clicks. The offline figure is the same served computation (`model.py` `Recommender`) on the "
             f"same {r['offline_targets']:,} targets; live there is one list per session state, the served one with "
             "re-visits, so both readings compare that list. Tolerances (fixed before the first run in "
             "`evaluation/recs_live.py` `TOLERANCES`): |live - offline| <= "
             + ", ".join(f"{v:g} for {k.upper()}" for k, v in TOLERANCES.items()) + ".", "",
             "| reading | targets (live / offline) | with a list | metric | live | offline | delta | tolerance | result |",
             "|---|---|---|---|---|---|---|---|---|"]
    for reading in ("all", "new"):
        for k in ("hr@20", "mrr@20"):
            c = r["checks"][reading][k]
            lines.append(f"| {reading} | {lm[reading]['targets']:,} / {off[reading]['n']:,} | "
                         f"{lm[reading]['with_list']:,} | {k.upper()} | {c['live']:.4f} | {c['offline']:.4f} | "
                         f"{c['delta']:+.4f} | <= {c['tolerance']:g} | **{'PASS' if c['pass'] else 'FAIL'}** |")
    m = off["new_history_masked"]
    lines += ["", f"For reference, docs/MODELS.md's **new** column (every method with the session's items excluded) "
              f"for this model: HR@20 {m['hr@20']:.4f}, MRR@20 {m['mrr@20']:.4f}.", "",
              f"Result: **{'PASS' if r['pass'] else 'FAIL'}**.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import shlex

    from evaluation.common import write_section

    settings = Settings.for_command(argv, "evaluation.recs_live")
    ap = argparse.ArgumentParser(prog="streamscore evaluate-recs-live", description=__doc__.split("\n")[0])
    ap.add_argument("--report", type=Path, default=DOC, help="the page whose recs-yoochoose section is rewritten")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw result here")
    ap.add_argument("--rate", type=float, default=200.0, help="clicks/s")
    ap.add_argument("--redis-db", type=int, default=9)
    ap.add_argument("--wait", type=float, default=240.0)
    ap.add_argument("--model-repo", type=Path, default=None,
                    help="a repository with the YooChoose-trained recommender, or where to train and keep it "
                         "(default: train into a scratch one)")
    ap.add_argument("--no-stack", action="store_true", help="do not start the local stack (it is running)")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    r = live_yoochoose(settings, settings.data_dir, rate=args.rate, redis_db=args.redis_db, wait_s=args.wait,
                       start_stack=not args.no_stack, model_repo=args.model_repo,
                       progress=lambda msg: print(f"evaluate-recs-live: {msg}", file=sys.stderr, flush=True))
    command = "python -m evaluation.recs_live" + (" " + shlex.join(argv if argv is not None else sys.argv[1:])
                                                  if (argv if argv is not None else sys.argv[1:]) else "")
    text = report(r, command, time.monotonic() - t0)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(r, indent=1, default=str))
    if not args.no_write:
        write_section(SECTION, text, args.report)
    return 0 if r["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
