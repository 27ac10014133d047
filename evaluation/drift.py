"""Fraud drift experiment: a static model, River alone and the served blend, replayed in time order
with late labels.

``python -m evaluation.drift`` replays the point-in-time fraud snapshots
(``build/features/fraud_snapshots.parquet``, built from ``../shared/data/ecommerce-fraud`` by the
live feature code; rebuilt with ``python -m features.snapshot fraud`` when missing) order by order:

* every order is scored when it happens by three arms: **static** (the Triton fraud network of
  ``triton_repo/fraud/1/model.py``, trained once with ``models.fraud.fit_net`` on the labels known
  at deployment, never updated), **River** (``OnlineFraud.predict``: the River model the worker
  keeps) and **blend** (``OnlineFraud.blend(static, River)``: the score the worker serves);
* each order's label arrives ``--delay-days`` (default 3) after the order; only then does
  ``OnlineFraud.learn`` see it, with the static score the order was served with (exactly what
  ``streams.processors`` stores and joins). Scores are therefore prequential: an order is scored
  before its label is learned, and no label is learned before its delay;
* rolling PR-AUC (average precision) and log loss over the last ``--window`` scored orders, and
  how many orders after the regime change each arm needs to recover.

Two scenarios (the constants below): ``natural`` (January's fraud wave ends on 2015-01-13) and
``injected`` (real February-September orders with a seeded, synthetic fraud-ring signature that
changes on 2015-06-01). Writes ``docs/img/drift.png`` and the ``drift`` section of
``docs/ONLINE.md``. Deterministic (seeded).
"""

from __future__ import annotations

import argparse
import heapq
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from evaluation.common import IMG, average_precision, md_table, relative_log_loss, write_section
from features.definitions import DAY, FRAUD_VECTOR
from scorers.online import OnlineFraud
from streamscore.settings import ROOT

SEED = 20240607
DELAY_DAYS = 3.0
WINDOW = 1000  # orders in each rolling window
MIN_WINDOW = 250  # the first rolling points use the orders so far, from this many
STEP = 25  # rolling metrics are evaluated every STEP orders
HOLD = WINDOW  # a recovery must hold this many orders
RECOVER_SHARE = 0.9  # PR-AUC recovery: back to 90% of the best pre-change level
LOSS_SLACK = 1.2  # log-loss recovery: log loss <= 1.2 x that of a constant predictor at the window's fraud rate
ARMS = ("static", "river", "blend")
COLORS = {"static": "#d62728", "river": "#1f77b4", "blend": "#2ca02c"}


def _ts(day: str) -> float:
    return pd.Timestamp(day, tz="UTC").timestamp()


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    start: str  # first order of the stream (UTC day)
    deploy: str  # the static model and River start serving; the replay is scored from here
    change: str  # the regime change
    val_days: float  # the static model's Platt calibration slice: the last days of its training data
    recovery: str  # "rel_log_loss" or "pr_auc": what "recovered" means here (see run_scenario)
    injected: bool = False


NATURAL = Scenario("natural", "natural drift: January's fraud wave ends (real data)", "2015-01-01", "2015-01-10",
                   "2015-01-13", 1.0, "rel_log_loss")
INJECTED = Scenario("injected", "injected drift: the fraud-ring signature changes (real orders, synthetic signature)",
                    "2015-02-01", "2015-04-01", "2015-06-01", 7.0, "pr_auc", injected=True)
SCENARIOS = {s.name: s for s in (NATURAL, INJECTED)}

# Injected drift: a share of fraud orders (and a few legitimate ones, as noise) carry a fraud-ring
# signature; before the change it is a shared device, after it large night-time orders.
RING_SHARE = 0.6
RING_NOISE = 0.01
NIGHT_HOURS = (1.0, 5.0)
AMOUNT_SHIFT = 1.2  # + on amount_log: about 3.3x the amount


def inject(frame: pd.DataFrame, change_ts: float, seed: int = SEED) -> pd.DataFrame:
    """A copy of ``frame`` with the synthetic fraud-ring signature (column ``ring``: '', 'A', 'B').

    Ring A (orders before ``change_ts``): the device was shared with 1 + Poisson(1.5) other
    accounts in the last 30 days, with a few orders from it in the last hours. Ring B (from
    ``change_ts``): the amount is ~3.3x larger (amount_log + 1.2) and the order is placed between
    01:00 and 05:00 UTC. Each fraud order carries the ring's signature with probability
    ``RING_SHARE``, each legitimate order with probability ``RING_NOISE``.
    """
    rng = np.random.default_rng(seed)
    f = frame.copy()
    fraud = f["label"].to_numpy() == 1
    u = rng.random(len(f))
    ring = np.where(fraud, u < RING_SHARE, u < RING_NOISE)
    before = f["ts"].to_numpy() < change_ts
    a, b = ring & before, ring & ~before
    users = 1 + rng.poisson(1.5, a.sum())
    orders_24h = users + rng.poisson(0.5, a.sum())
    f.loc[a, "device_users_30d"] = users
    f.loc[a, "device_orders_24h"] = orders_24h
    f.loc[a, "device_orders_1h"] = np.minimum(orders_24h, 1 + rng.poisson(0.3, a.sum()))
    hour = rng.uniform(*NIGHT_HOURS, b.sum())
    f.loc[b, "amount_log"] = f.loc[b, "amount_log"] + AMOUNT_SHIFT
    f.loc[b, "hour_sin"] = np.sin(2 * np.pi * hour / 24)
    f.loc[b, "hour_cos"] = np.cos(2 * np.pi * hour / 24)
    f["ring"] = np.where(a, "A", np.where(b, "B", ""))
    return f


def load_frame(snapshot: Path | None = None) -> pd.DataFrame:
    from models.fraud import DEFAULT_SNAPSHOT, ensure_snapshot, load_snapshot

    return load_snapshot(ensure_snapshot(Path(snapshot or DEFAULT_SNAPSHOT)))


def scenario_frame(frame: pd.DataFrame, sc: Scenario, seed: int = SEED) -> pd.DataFrame:
    f = frame[frame["ts"] >= _ts(sc.start)].reset_index(drop=True)
    return inject(f, _ts(sc.change), seed) if sc.injected else f


def train_static(frame: pd.DataFrame, train_end: float, val_days: float, seed: int = SEED) -> np.ndarray:
    """Train the Triton fraud network (``models.fraud.fit_net``, the production recipe) on the
    orders before ``train_end`` (Platt calibration on their last ``val_days``); return its
    calibrated score for every row of ``frame``."""
    from models import common
    from models.fraud import fit_net

    mod = common.load_model_py(ROOT / "triton_repo", "fraud")
    X = frame[list(FRAUD_VECTOR)].to_numpy(dtype=np.float32)
    y = frame["label"].to_numpy().astype(np.float32)
    ts = frame["ts"].to_numpy()
    va = (ts >= train_end - val_days * DAY) & (ts < train_end)
    tr = ts < train_end - val_days * DAY
    if tr.sum() < 50 or va.sum() < 20 or len(set(y[tr])) < 2:
        raise ValueError(f"too little training data before {pd.Timestamp(train_end, unit='s')}")
    net, _info = fit_net(mod, X, y, tr, va, seed=seed)
    score, _ = mod.predict(net, X)
    return score[:, 0].astype(np.float64)


def online_vector(row: dict[str, float]) -> dict[str, float]:
    """The River input the worker builds (streams.processors.online_vector: NaN features left out)."""
    return {name: float(row[name]) for name in FRAUD_VECTOR if not math.isnan(row[name])}


@dataclass
class Trace:
    """What one replay did: per scored order its three scores, River's blend weight and how many
    labels had been learned when it was scored; per learned label (in learning order) its arrival
    time and the index of its order; the order indices after which ADWIN flagged drift."""

    p_static: np.ndarray
    p_river: np.ndarray
    p_blend: np.ndarray
    w_river: np.ndarray
    learned_before: np.ndarray
    learned: list[tuple[float, int]] = field(default_factory=list)
    drifts: list[int] = field(default_factory=list)


def replay(xs: list[dict[str, float]], ts: np.ndarray, y: np.ndarray, p_static: np.ndarray, online: OnlineFraud,
           delay_s: float | np.ndarray) -> Trace:
    """Score each order in time order, then learn each label once ``delay_s`` has passed.

    Before order ``i`` (time ``ts[i]``) is scored, every label whose arrival time
    ``ts[j] + delay`` is ``<= ts[i]`` is learned (in arrival order) and no other; the order is then
    scored with the model as it is and its label is queued. Labels still in flight at the end are
    never learned. ``delay_s`` may be one number or one per order.
    """
    n = len(xs)
    if np.any(np.diff(ts) < 0):
        raise ValueError("orders must be in event-time order")
    delays = np.broadcast_to(np.asarray(delay_s, dtype=np.float64), (n,))
    if np.any(delays <= 0):
        raise ValueError("label delays must be positive")
    out = Trace(np.asarray(p_static, dtype=np.float64), np.empty(n), np.empty(n), np.empty(n),
                np.empty(n, dtype=np.int64))
    pending: list[tuple[float, int]] = []
    for i in range(n):
        while pending and pending[0][0] <= ts[i]:
            arrival, j = heapq.heappop(pending)
            if online.learn(xs[j], bool(y[j]), float(p_static[j])):
                out.drifts.append(i)
            out.learned.append((arrival, j))
        p_river = online.predict(xs[i])
        out.p_river[i] = p_river
        out.p_blend[i] = online.blend(float(p_static[i]), p_river)
        out.w_river[i] = online.weights()["river"]
        out.learned_before[i] = online.n_learned
        heapq.heappush(pending, (float(ts[i] + delays[i]), i))
    return out


def rolling(y: np.ndarray, score: np.ndarray, window: int = WINDOW, step: int = STEP, first: int = MIN_WINDOW,
            also: tuple[int, ...] = ()):
    """(ends, PR-AUC, relative log loss) over the orders [max(0, end - window), end) for end = first,
    first + step, ... and the ends in ``also`` (the first windows are shorter: the orders so far)."""
    ends = np.unique(np.r_[np.arange(min(first, len(y)), len(y) + 1, step), [e for e in also if 0 < e <= len(y)]])
    ends = ends.astype(np.int64)
    ap = np.array([average_precision(y[max(0, e - window):e], score[max(0, e - window):e]) for e in ends])
    ll = np.array([relative_log_loss(y[max(0, e - window):e], score[max(0, e - window):e]) for e in ends])
    return ends, ap, ll


def events_to_recover(ends: np.ndarray, values: np.ndarray, change_n: int, bar: float, higher_is_better: bool,
                      hold: int = HOLD) -> int | None:
    """Orders after the change until the rolling value meets ``bar`` and keeps meeting it for the
    next ``hold`` orders (``None``: not within the replay). Windows straddling the change count,
    so an arm that never drops below the bar recovers in 0 orders; the number includes the
    window's lag (at most ``window`` orders), the same for every arm.

    >>> events_to_recover(np.array([10, 20, 30, 40, 50, 60]), np.array([.9, .5, .6, .8, .9, .85]), 10, .8, True, 20)
    30
    >>> events_to_recover(np.array([10, 20, 30]), np.array([.9, .5, .6]), 10, .8, True, 10) is None
    True
    """
    ok = values >= bar if higher_is_better else values <= bar
    for k in np.nonzero((ends >= change_n) & ok)[0]:
        span = (ends >= ends[k]) & (ends <= ends[k] + hold)
        if ends[k] + hold <= ends[-1] and ok[span].all():
            return int(ends[k] - change_n)
    return None


def run_scenario(frame: pd.DataFrame, sc: Scenario, delay_days: float = DELAY_DAYS, window: int = WINDOW,
                 seed: int = SEED, warm_start: bool = True) -> dict:
    """Train the static model, warm-start River on the same labels, replay from deployment."""
    f = scenario_frame(frame, sc, seed)
    delay = delay_days * DAY
    deploy, change = _ts(sc.deploy), _ts(sc.change)
    train_end = deploy - delay  # only orders whose labels have arrived by deployment
    p_static = train_static(f, train_end, sc.val_days, seed)
    ts = f["ts"].to_numpy()
    y = f["label"].to_numpy().astype(np.int8)
    xs = [online_vector(r) for r in f[list(FRAUD_VECTOR)].to_dict("records")]
    online = OnlineFraud()
    known = np.nonzero(ts < train_end)[0]
    if warm_start:  # the labels the static model was trained on, in time order, as the worker would learn them
        for j in known:
            online.learn(xs[j], bool(y[j]), float(p_static[j]))
    ev = np.nonzero(ts >= deploy)[0]
    trace = replay([xs[j] for j in ev], ts[ev], y[ev], p_static[ev], online, delay)
    yv, tv = y[ev], ts[ev]
    change_n = int(np.searchsorted(tv, change))
    scores = {"static": trace.p_static, "river": trace.p_river, "blend": trace.p_blend}
    series = {}
    for arm, s in scores.items():
        ends, ap, rll = rolling(yv, s, window, also=(change_n,))
        series[arm] = {"pr_auc": ap, "rel_log_loss": rll}
    pre, post, last = slice(0, change_n), slice(change_n, None), slice(-window, None)
    pre_ap = {arm: average_precision(yv[pre], s[pre]) for arm, s in scores.items()}
    if sc.recovery == "pr_auc":
        bar, higher = RECOVER_SHARE * max(pre_ap.values()), True
        criterion = (f"rolling PR-AUC back to >= {RECOVER_SHARE:.0%} of the best arm's PR-AUC over the orders "
                     f"scored before the change ({bar:.3f}), held {HOLD:,} orders")
    else:
        bar, higher = LOSS_SLACK, False
        criterion = (f"rolling relative log loss <= {LOSS_SLACK:.1f} (log loss at most {LOSS_SLACK - 1:.0%} above "
                     f"that of a constant predictor at the window's own fraud rate), held {HOLD:,} orders")
    arms = {}
    for arm, s in scores.items():
        k = events_to_recover(ends, series[arm][sc.recovery], change_n, bar, higher)
        arms[arm] = {
            "pr_auc_pre": pre_ap[arm],
            "pr_auc_post": average_precision(yv[post], s[post]),
            "pr_auc_last": average_precision(yv[last], s[last]),
            "rll_pre": relative_log_loss(yv[pre], s[pre]),
            "rll_post": relative_log_loss(yv[post], s[post]),
            "rll_last": relative_log_loss(yv[last], s[last]),
            "calib_post": float(s[post].mean() / yv[post].mean()),
            "recover": k,
            "recover_days": None if k is None else float((tv[min(change_n + k, len(tv) - 1)] - change) / DAY),
        }
    drifts_after = [d for d in trace.drifts if d >= change_n]
    w = trace.w_river
    return {
        "scenario": sc, "delay_days": delay_days, "window": window, "warm_start": warm_start,
        "train_end": train_end, "deploy": deploy,
        "n_train": int(len(known)), "train_fraud_rate": float(y[known].mean()),
        "n_eval": int(len(ev)), "n_pre": change_n, "n_post": int(len(ev) - change_n),
        "rate_pre": float(yv[pre].mean()), "rate_post": float(yv[post].mean()),
        "criterion": criterion, "arms": arms, "trace": trace, "ts": tv, "y": yv, "ends": ends, "series": series,
        "change_n": change_n, "drifts": trace.drifts,
        "first_drift_after": drifts_after[0] - change_n if drifts_after else None,
        "w_river": {"pre": float(w[pre].mean()), "first_1000_after": float(w[change_n:change_n + 1000].mean()),
                    "last_1000": float(w[-1000:].mean())},
        "learned": len(trace.learned),
    }


def _smooth(v: np.ndarray, n: int = 200) -> np.ndarray:
    c = np.cumsum(np.r_[0.0, v])
    idx = np.arange(1, len(v) + 1)
    lo = np.maximum(0, idx - n)
    return (c[idx] - c[lo]) / (idx - lo)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, ScalarFormatter

    fig, axes = plt.subplots(len(results), 3, figsize=(16, 4.3 * len(results)), squeeze=False)
    for row, r in zip(axes, results):
        sc, ts = r["scenario"], r["ts"]
        day = FuncFormatter(lambda v, _p, ts=ts: pd.Timestamp(ts[int(min(max(v, 0), len(ts) - 1))], unit="s")
                            .strftime("%b %d"))
        panels = (("pr_auc", "rolling PR-AUC"), ("rel_log_loss", "rolling log loss / constant predictor's"))
        for ax, (metric, label) in zip(row, panels):
            for arm in ARMS:
                ax.plot(r["ends"], r["series"][arm][metric], color=COLORS[arm], lw=1.2, label=arm)
            if metric == "pr_auc":
                ax.set_ylim(0, 1.02)
            else:
                ax.axhline(1.0, color="grey", ls=":", lw=1, label="no skill (constant at the window's rate)")
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(ScalarFormatter())
                ax.yaxis.set_minor_formatter(ScalarFormatter())
                ax.tick_params(axis="y", which="both", labelsize=7)
            ax.set_title(f"{sc.name}: {label} (last {r['window']:,} orders)", fontsize=10)
        ax = row[2]
        ax.plot(np.arange(len(ts)), _smooth(r["trace"].w_river), color=COLORS["river"], lw=1.2,
                label="River's weight in the blend (mean of 200 orders)")
        for d in r["drifts"]:
            ax.axvline(d, color="orange", lw=0.8)
        ax.set_ylim(0, 1)
        ax.set_title(f"{sc.name}: River's blend weight (orange: ADWIN drift)", fontsize=10)
        for ax in row:
            ax.axvline(r["change_n"], color="k", ls="--", lw=1)
            ax.xaxis.set_major_formatter(day)
            ax.tick_params(axis="x", labelrotation=30, labelsize=8)
            ax.set_xlabel("order (ticks: its date)", fontsize=8)
            ax.legend(fontsize=8, loc="best")
    fig.suptitle(f"Fraud drift replay, labels {results[0]['delay_days']:g} days late; x = orders since deployment; "
                 "dashed line = regime change", fontsize=12)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _recover_text(v) -> str:
    return "not within the replay" if v is None else f"{v:,}"


def report(results: list[dict], seconds: float, argv: list[str]) -> str:
    cmd = "python -m evaluation.drift" + ("" if not argv else " " + " ".join(argv))
    out = [f"Generated by `{cmd}` ({seconds:.0f} s on this machine's CPU).", "", "![drift](img/drift.png)", ""]
    for r in results:
        sc = r["scenario"]
        out += [f"#### {sc.name}: {sc.title}", "",
                f"Stream from {sc.start}; static model trained on the {r['n_train']:,} orders before "
                f"{pd.Timestamp(_ts(sc.deploy) - r['delay_days'] * DAY, unit='s').date()} (fraud rate "
                f"{r['train_fraud_rate']:.1%}; their labels have all arrived at deployment), River "
                f"{'warm-started on the same labels' if r['warm_start'] else 'started empty'}; deployed "
                f"{sc.deploy}; change {sc.change}. Scored: {r['n_eval']:,} orders ({r['n_pre']:,} before the "
                f"change, {r['n_post']:,} after); labels learned during the replay: {r['learned']:,}. Fraud rate "
                f"of the orders scored before the change {r['rate_pre']:.1%}, after it {r['rate_post']:.1%}.",
                "", f"Recovered = {r['criterion']}.", ""]
        rows = []
        for arm in ARMS:
            a = r["arms"][arm]
            rows.append([arm, a["pr_auc_pre"], a["pr_auc_post"], a["pr_auc_last"], a["rll_pre"], a["rll_post"],
                         a["rll_last"], f"{a['calib_post']:.2f}", _recover_text(a["recover"]),
                         "—" if a["recover_days"] is None else f"{a['recover_days']:.1f}"])
        out.append(md_table(["arm", "PR-AUC before", "PR-AUC after", f"PR-AUC, last {r['window']:,}",
                             "rel. log loss before", "rel. log loss after", f"rel. log loss, last {r['window']:,}",
                             "mean score / fraud rate, after", "orders to recover", "days to recover"], rows))
        fd, w = r["first_drift_after"], r["w_river"]
        out += ["", f"River's mean weight in the blend: {w['pre']:.2f} before the change, "
                f"{w['first_1000_after']:.2f} over the 1,000 orders after it, {w['last_1000']:.2f} over the last "
                f"1,000. ADWIN (either of `OnlineFraud`'s two detectors) flagged drift {len(r['drifts'])} time{'' if len(r['drifts']) == 1 else 's'} during the replay; first after the change: "
                + ("never" if fd is None else f"{fd:,} orders after it") + ".", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(prog="streamscore evaluate-drift", description=__doc__.split("\n\n")[0])
    ap.add_argument("--snapshot", type=Path, default=None, help="fraud snapshot parquet (default: build/features/...)")
    ap.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    ap.add_argument("--delay-days", type=float, default=DELAY_DAYS)
    ap.add_argument("--window", type=int, default=WINDOW)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--no-warm-start", action="store_true", help="River starts empty at deployment")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    frame = load_frame(args.snapshot)
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    results = [run_scenario(frame, SCENARIOS[n], args.delay_days, args.window, args.seed, not args.no_warm_start)
               for n in names]
    seconds = time.perf_counter() - t0
    text = report(results, seconds, list(argv if argv is not None else sys.argv[1:]))
    print(text)
    if not args.no_write:
        plot(results, IMG / "drift.png")
        write_section("drift", text)
    return results


if __name__ == "__main__":
    main()
