"""Session datasets and the next-click evaluation protocol of the recommender table.

Datasets, one shape (:class:`SessionData`):

* ``yoochoose``: ``yoochoose-rsc15-samples`` as published (session-rec's GRU4Rec-style
  preprocessing: sessions >= 2 clicks, items >= 5 clicks); training sessions = the
  ``train_full`` file, test sessions = the ``test`` file (the following day). Clicks are used
  verbatim (repeated clicks on one item stay, as in the published benchmark).
* ``taobao``: ``taobao-userbehavior-sample`` (every behaviour type is a click). Per user, in time
  order, consecutive events on the same item are collapsed (a view then cart of one item is
  one step), and a gap over :data:`SESSION_GAP_S` starts a new session. Time split: the
  last :data:`TEST_FRACTION` of the time range is the test period; training uses only events
  before it (a session crossing the split is cut there); the test targets are the clicks in
  the test period, each with its session's earlier clicks (also those before the split) as
  the prefix. This is the live situation: the model sees the user's recent items.
* ``diginetica``: ``diginetica-partial``'s view sample (``sample_train-item-views``): sessions
  by ``session_id`` in ``timeframe`` order; the sessions of the last :data:`TEST_FRACTION` of
  the date range are the test sessions (a small sample: most items are seen once).
* any click log (:func:`load_events`: typed :class:`~streamscore.events.Click` events, e.g. a
  file read with the replay's column mapping, ids already in the live stream's id space): cut and
  split as Taobao (per user, consecutive repeats collapsed, 30-min gap, the last 20 % of the time
  range is the test period).

Items are indexed 1..V by training popularity (number of training clicks, ties by id), so
index order is the popularity order; 0 = an item never seen in training. A test target that
is 0 is a miss for every method.

Protocol ("every next click of every test session"): for a test session x_0 .. x_{n-1},
each x_i (i >= 1; on Taobao only those in the test period) is a target and x_0 .. x_{i-1}
the prefix. Two readings, both in the table:

* ``all``: every target; the baselines rank every item (an item already in the session can
  be recommended, as in the published benchmarks), the served model ranks under its
  contract (never an item of the history);
* ``new``: only targets that are not in the prefix; every method excludes the prefix's
  items (the serving contract applied to all).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

YOOCHOOSE_TRAIN = Path("yoochoose-rsc15-samples") / "yoochoose-clicks-100k_train_full.csv.gz"
YOOCHOOSE_TEST = Path("yoochoose-rsc15-samples") / "yoochoose-clicks-100k_test.csv.gz"
TAOBAO = Path("taobao-userbehavior-sample") / "UserBehavior_first96k.csv.gz"
DIGINETICA = Path("diginetica-partial") / "sample_train-item-views.csv.gz"
SESSION_GAP_S = 30 * 60
TEST_FRACTION = 0.2


@dataclass
class SessionData:
    name: str
    items: np.ndarray  # [V] raw item ids (str) of indices 1..V, most popular first
    counts: np.ndarray  # [V + 1] training clicks per index (0 for index 0)
    train: list[np.ndarray]  # training sessions: item indices in time order
    train_time: np.ndarray  # [S] each training session's last timestamp
    prefixes: list[np.ndarray]  # per target: the session's earlier clicks (indices, 0 = unseen), in time order
    prefix_ids: list[list[str]]  # the same prefixes as raw ids (what the served model receives)
    targets: np.ndarray  # [N] target index (0 = not in training: a miss for everyone)
    target_ids: list[str]  # [N] the targets as raw ids
    item_category: np.ndarray | None = None  # [V + 1] category index (0 = none)
    categories: list[str] = field(default_factory=list)  # category index c -> categories[c - 1]
    train_raw: list[list[str]] = field(default_factory=list)  # training sessions as raw ids
    info: dict = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return len(self.items)

    def index(self) -> dict[str, int]:
        return {s: i + 1 for i, s in enumerate(self.items.tolist())}

    def new_mask(self) -> np.ndarray:
        """[N] True where the target is not in its prefix (the ``new`` reading)."""
        return np.array([t not in p for p, t in zip(self.prefix_ids, self.target_ids)], dtype=bool)


def _vocab(train_items: list[str]) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    vc = pd.Series(train_items).value_counts()
    ordered = sorted(vc.index.tolist(), key=lambda i: (-int(vc[i]), i))
    items = np.asarray(ordered, dtype=str)
    counts = np.r_[0, [int(vc[i]) for i in ordered]].astype(np.int64)
    return items, counts, {s: i + 1 for i, s in enumerate(ordered)}


def _build(name: str, train_sessions: list[tuple[list[str], float]],
           test_sessions: list[tuple[list[str], list[bool]]], info: dict,
           item_cat_raw: dict[str, str] | None = None) -> SessionData:
    """train_sessions: (raw items, last ts); test_sessions: (raw items, is_target flags)."""
    items, counts, index = _vocab([i for s, _ in train_sessions for i in s])
    train = [np.asarray([index[i] for i in s], dtype=np.int64) for s, _ in train_sessions]
    train_time = np.asarray([t for _, t in train_sessions], dtype=np.float64)
    prefixes, prefix_ids, targets, target_ids = [], [], [], []
    for raw, flags in test_sessions:
        idx = np.asarray([index.get(i, 0) for i in raw], dtype=np.int64)
        for j in range(1, len(raw)):
            if flags[j]:
                prefixes.append(idx[:j])
                prefix_ids.append(raw[:j])
                targets.append(idx[j])
                target_ids.append(raw[j])
    targets = np.asarray(targets, dtype=np.int64)
    item_category, categories = None, []
    if item_cat_raw is not None:
        categories = sorted({item_cat_raw[i] for i in items.tolist()})
        cidx = {c: k + 1 for k, c in enumerate(categories)}
        item_category = np.zeros(len(items) + 1, dtype=np.int64)
        item_category[1:] = [cidx[item_cat_raw[i]] for i in items.tolist()]
    data = SessionData(name, items, counts, train, train_time, prefixes, prefix_ids, targets, target_ids, item_category,
                       categories, [s for s, _ in train_sessions], dict(info))
    new = data.new_mask()
    data.info.update({
        "train_sessions": len(train), "train_clicks": int(sum(len(s) for s in train)), "items": len(items),
        "test_sessions": len(test_sessions), "targets": int(len(targets)),
        "targets_new": int(new.sum()), "targets_repeat": int((~new).sum()),
        "targets_unseen_in_training": int((targets == 0).sum()),
    })
    return data


def load_yoochoose(data_dir: str | Path, validation: bool = False) -> SessionData:
    """``validation``: only ``train_full``; its sessions ending in the last day are the test
    sessions (for choosing hyper-parameters without touching the test file)."""
    data_dir = Path(data_dir)

    def sessions(path: Path) -> list[tuple[list[str], float]]:
        df = pd.read_csv(path, dtype={"SessionId": np.int64, "ItemId": str, "Time": np.float64})
        df = df.reset_index().sort_values(["SessionId", "Time", "index"], kind="mergesort")
        sess = df["SessionId"].to_numpy()
        items = df["ItemId"].to_numpy()
        ts = df["Time"].to_numpy()
        bounds = np.r_[0, np.nonzero(sess[1:] != sess[:-1])[0] + 1, len(sess)]
        return [(items[a:b].tolist(), float(ts[a:b].max())) for a, b in zip(bounds[:-1], bounds[1:])]

    train = sessions(data_dir / YOOCHOOSE_TRAIN)
    if validation:
        end = max(t for _, t in train) - 86400
        test = [(s, [True] * len(s)) for s, t in train if t > end]
        train = [(s, t) for s, t in train if t <= end]
        return _build("yoochoose-validation", train, test, {"split": "train_full: sessions ending in its last day",
                                                            "files": [str(YOOCHOOSE_TRAIN)]})
    test = [(s, [True] * len(s)) for s, _ in sessions(data_dir / YOOCHOOSE_TEST)]
    return _build("yoochoose", train, test, {"split": "published train_full / test files (next day)",
                                             "files": [str(YOOCHOOSE_TRAIN), str(YOOCHOOSE_TEST)]})


def taobao_events(path: str | Path) -> pd.DataFrame:
    """Taobao events per user in time order, consecutive repeats of one item collapsed, with a
    ``session`` number (user + gap)."""
    df = pd.read_csv(path, dtype={"user_id": str, "item_id": str, "category_id": str, "behavior_type": str})
    return sessionize(df)


def _split_sessions(df: pd.DataFrame, with_times: bool = False):
    """Yield (items, last ts) or (items, ts array) per session of an events frame sorted by session."""
    sess = df["session"].to_numpy()
    items = df["item_id"].to_numpy()
    ts = df["timestamp"].to_numpy()
    bounds = np.r_[0, np.nonzero(sess[1:] != sess[:-1])[0] + 1, len(sess)]
    for a, b in zip(bounds[:-1], bounds[1:]):
        yield items[a:b].tolist(), (ts[a:b] if with_times else ts[b - 1])


def load_taobao(data_dir: str | Path, test_fraction: float = TEST_FRACTION, validation: bool = False) -> SessionData:
    """``validation``: only the training period, split again the same way (for choosing
    hyper-parameters without touching the test period)."""
    return time_split(taobao_events(Path(data_dir) / TAOBAO), "taobao", test_fraction, validation,
                      {"files": [str(TAOBAO)]})


def time_split(df: pd.DataFrame, name: str, test_fraction: float = TEST_FRACTION, validation: bool = False,
               info: dict | None = None) -> SessionData:
    """Sessions of an events frame (``item_id``, ``category_id`` or None, ``timestamp``, ``session``,
    sorted by session then time) split in time: the last ``test_fraction`` of the time range is the
    test period (see the module doc). ``validation``: only the training period, split again."""
    tmin, tmax = float(df["timestamp"].min()), float(df["timestamp"].max())
    t_split = tmin + (1 - test_fraction) * (tmax - tmin)
    if validation:
        df = df[df["timestamp"] < t_split]
        tmax = float(df["timestamp"].max())
        t_split = tmin + (1 - test_fraction) * (tmax - tmin)
    before = df[df["timestamp"] < t_split]
    train = [(list(s), float(last)) for s, last in _split_sessions(before)]
    item_cat = None
    if "category_id" in df and df["category_id"].notna().any():
        # one category per item: the first seen one, should an item ever have two
        first = before.drop_duplicates("item_id")
        item_cat = dict(zip(first["item_id"].tolist(), first["category_id"].fillna("").tolist()))
    test = []
    for s, ts in _split_sessions(df, with_times=True):
        if len(s) >= 2 and ts[-1] >= t_split:
            test.append((list(s), (ts >= t_split).tolist()))
    return _build(f"{name}-validation" if validation else name, train, test,
                  {"split": f"time: the last {test_fraction:.0%} of the time range is the test period",
                   "t_min": tmin, "t_split": t_split, "t_max": tmax, "session_gap_s": SESSION_GAP_S,
                   **(info or {})}, item_cat)


def sessionize(df: pd.DataFrame, collapse: bool = True, gap_s: float = SESSION_GAP_S) -> pd.DataFrame:
    """Events (``user_id``, ``item_id``, ``timestamp``, ...) per user in time order, consecutive
    repeats of one item collapsed (``collapse``), with a ``session`` number (user + ``gap_s``)."""
    df = df.reset_index(drop=True).reset_index().sort_values(["user_id", "timestamp", "index"], kind="mergesort")
    df = df.drop(columns="index").reset_index(drop=True)
    u = df["user_id"].to_numpy()
    if collapse:
        it = df["item_id"].to_numpy()
        keep = np.r_[True, ~((u[1:] == u[:-1]) & (it[1:] == it[:-1]))]
        df = df[keep].reset_index(drop=True)
        u = df["user_id"].to_numpy()
    ts = df["timestamp"].to_numpy()
    new_session = np.r_[True, (u[1:] != u[:-1]) | (np.diff(ts) > gap_s)]
    df["session"] = np.cumsum(new_session)
    return df


def load_events(clicks, name: str = "clicks", test_fraction: float = TEST_FRACTION,
                validation: bool = False) -> SessionData:
    """Any click log (an iterable of :class:`streamscore.events.Click`, ids as the live stream
    has them) as sessions split in time like Taobao's."""
    rows = [(c.user_id, c.item_id, c.category_id, float(c.ts)) for c in clicks]
    if not rows:
        raise ValueError(f"{name}: no clicks")
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "category_id", "timestamp"])
    return time_split(sessionize(df), name, test_fraction, validation)


def load_diginetica(data_dir: str | Path, test_fraction: float = TEST_FRACTION, validation: bool = False) -> SessionData:
    """The view sample, sessions by ``session_id``; time = event date + ``timeframe`` (ms since the
    session started); categories from ``product-categories``."""
    path = Path(data_dir) / DIGINETICA
    df = pd.read_csv(path, sep=";", dtype={"session_id": str, "item_id": str, "user_id": str})
    day = pd.to_datetime(df["eventdate"], utc=True).astype("int64") // 10**9
    df = pd.DataFrame({"user_id": df["session_id"], "item_id": df["item_id"],
                       "timestamp": day.astype(float) + df["timeframe"].astype(float) / 1000.0})
    cats = pd.read_csv(Path(data_dir) / DIGINETICA.parent / "product-categories.csv.gz", sep=";", dtype=str)
    df["category_id"] = df["item_id"].map(dict(zip(cats["itemId"], cats["categoryId"])))
    df = sessionize(df, collapse=False, gap_s=float("inf"))
    return time_split(df, "diginetica", test_fraction, validation, {"files": [str(DIGINETICA)]})


def load(name: str, data_dir: str | Path, validation: bool = False) -> SessionData:
    return LOADERS[name](data_dir, validation=validation)


LOADERS = {"yoochoose": load_yoochoose, "taobao": load_taobao, "diginetica": load_diginetica}


def recency_history(prefix_ids: list[str], n: int = 20) -> list[str]:
    """The served model's input for a prefix: distinct items, most recent first, at most n (the
    live feature store keeps each item once, at its newest click)."""
    out, seen = [], set()
    for i in reversed(prefix_ids):
        if i not in seen:
            seen.add(i)
            out.append(i)
            if len(out) == n:
                break
    return out
