"""Train the `recommender` model: session-based next-item prediction, on any click log.

Data (:mod:`models.sessions`): a named dataset (``--dataset taobao`` is what ``python -m models``
serves: every behaviour type is a click, consecutive repeats of an item collapsed, sessions cut
at 30 min of inactivity, the last 20 % of the time range held out as the test period;
``yoochoose``: the published ``train_full`` / ``test`` files; ``diginetica``: the view sample),
or any click file with the replay's column mapping (``--file F --map user_id=COL,item_id=COL,ts=COL
[--namespace NS]`` or ``--mapping M.yaml``, :mod:`replay.files`), cut and split like Taobao.
The vocabulary is written in the live click stream's id space: ``tb:<id>`` for Taobao (as
:func:`replay.sources.taobao_clicks` names items), ``yc:<id>`` / ``dg:<id>`` for YooChoose /
Diginetica (:data:`NAMED`), and a file's ids exactly as the replay of that file with the same
mapping puts them on the topic. ``meta.json`` records the data files' sha256 (``data_sha256``)
and the model version (content hash of the weights).

Input of the model, in training as in serving: the session's distinct items, most recent
first, at most 20 (the live feature store keeps each item once, at its newest click). A
training pair is (that history, the next item) for every next click of every training session
whose next item is in the vocabulary, is not already in the history (the model never
recommends history items) and whose history holds at least one vocabulary item.

Vocabulary: the training items with >= ``min_count`` clicks, ordered by training popularity
(that order is the cold-start ranking).

Model (RecNet in triton_repo/recommender/1/model.py): tied item + category embeddings,
most recent item + a residual of (most recent item, position-weighted pooling) -> user
vector, full softmax over the vocabulary with the history masked, bias initialised to log
popularity, a learned category-affinity term. Adam, fixed epochs, seeded, single-threaded
(bit-reproducible).

Repeat-aware lists (``--repeat auto``, the default): the network never scores history items;
a re-visit model does: :func:`repeat_table` counts, on the training sessions, how often the next
click re-visits the r-th newest distinct history item given L history items, and the served
list mixes P(re-visit of each history item) with (1 - P(any re-visit)) x the network's
softmax, the re-visit part weighted by ``repeat.weight`` from :data:`REPEAT_WEIGHTS`; history
items outside the vocabulary can come back too (``repeat.unknown``). Both are chosen by MRR@20
over every next click of a validation split of the training data (the same model code trained
on its earlier part, :func:`choose_repeat_weight`), never on the test targets; 0 (the old
never-repeat contract) is one of the choices. ``--repeat off`` keeps the never-repeat contract;
``on`` leaves 0 out of the choices.

Hyper-parameters (:data:`PARAMS`) and the architecture were chosen on validation splits carved
out of the training data (``sessions.load(..., validation=True)``), never on the test targets
(``diginetica`` and click files use :data:`DEFAULT_PARAMS`, fixed a priori, not tuned).
A learned blend of item-kNN co-occurrence scores inside the model was tried there and left out:
it changed validation HR@20 / MRR@20 by < 0.001 and made training 3x slower.

Usage: ``python -m models.recommender [--dataset NAME | --file F --map ... | --mapping M] [--repeat
auto|on|off] [--repo DIR]`` (``streamscore train-recommender``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from models import common, metrics, sessions
from models.sessions import SessionData, recency_history
from streamscore.settings import Settings

NAME = "recommender"
DATA = sessions.TAOBAO
LIVE_ITEM_PREFIX = "tb:"  # how the click stream names Taobao items (replay.sources.taobao_clicks)

SEED = 20240602
HISTORY = 20
TOP_K = 20
BATCH = 256

# per dataset (chosen on validation splits); the served model of `python -m models` is "taobao"
PARAMS = {
    "taobao": {"dim": 32, "epochs": 3, "lr": 5e-3, "min_count": 2},
    "yoochoose": {"dim": 64, "epochs": 12, "lr": 2e-3, "min_count": 1},
}
DEFAULT_PARAMS = {"dim": 32, "epochs": 5, "lr": 5e-3, "min_count": 1}  # other click logs: fixed a priori
REPEAT_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)  # re-visit weights tried on the validation split
REPEAT_PRIOR = 10.0  # pseudo-count pulling a sparse (L, r) cell of the re-visit table to its rank's pooled rate
# live id namespace of each named dataset's items (replay.sources / evaluation of the live path)
NAMED = {"taobao": "tb:", "yoochoose": "yc:", "diginetica": "dg:"}


def vocabulary(data: SessionData, min_count: int) -> list[str]:
    """Training items with >= min_count clicks, most popular first (data.items is in that order)."""
    return [i for i, c in zip(data.items.tolist(), data.counts[1:].tolist()) if c >= min_count]


def encode_history(prefix_ids: list[str], index: dict[str, int], history: int = HISTORY) -> np.ndarray:
    h = np.zeros(history, dtype=np.int64)
    hist = recency_history(prefix_ids, history)
    h[: len(hist)] = [index.get(i, 0) for i in hist]
    return h


def training_pairs(train_raw: list[list[str]], index: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    hs, ys = [], []
    for s in train_raw:
        for j in range(1, len(s)):
            target = index.get(s[j], 0)
            if target == 0:
                continue
            h = encode_history(s[:j], index)
            if not (h > 0).any() or target in h:
                continue
            hs.append(h)
            ys.append(target)
    if not hs:
        return np.zeros((0, HISTORY), np.int64), np.zeros(0, np.int64)
    return np.stack(hs), np.asarray(ys, dtype=np.int64)


def fit(data: SessionData, mod, params: dict, seed: int = SEED):
    """Train a RecNet on ``data``'s training sessions. -> (net, vocab, info)."""
    import torch

    common.seed_everything(seed)
    vocab = vocabulary(data, params["min_count"])
    index = {s: i + 1 for i, s in enumerate(vocab)}
    pop = data.counts[: len(vocab) + 1].astype(np.float64)  # index order of vocab == data's
    if data.item_category is not None:
        item_cat = data.item_category[: len(vocab) + 1].copy()
        n_categories = len(data.categories)
    else:  # no categories: one shared category (its affinity is then a constant)
        item_cat = np.r_[0, np.ones(len(vocab), dtype=np.int64)]
        n_categories = 1
    htr, ytr = training_pairs(data.train_raw, index)

    net = mod.RecNet(len(vocab), n_categories, params["dim"], HISTORY)
    log_pop = np.log(np.maximum(pop, 1e-12) / pop.sum()).astype(np.float32)
    log_pop[0] = -1e9
    with torch.no_grad():
        net.item_cat.copy_(torch.from_numpy(item_cat))
        net.log_pop.copy_(torch.from_numpy(log_pop))
        net.bias.copy_(torch.from_numpy(np.where(pop > 0, log_pop, 0.0).astype(np.float32)))
        net.emb.weight.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(seed))
        net.emb.weight[0].zero_()
        net.cat_emb.weight.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(seed + 1))
        net.cat_emb.weight[0].zero_()

    Htr, Ytr = torch.from_numpy(htr), torch.from_numpy(ytr)
    opt = torch.optim.Adam(net.parameters(), lr=params["lr"])
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _epoch in range(params["epochs"]):
        perm = torch.randperm(len(Htr), generator=gen)
        for i in range(0, len(perm), BATCH):
            b = perm[i : i + BATCH]
            h = Htr[b]
            logits = net.user_logits(h).scatter(1, h, float("-inf"))  # history items are never targets
            loss = torch.nn.functional.cross_entropy(logits, Ytr[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    info = {"vocab_size": len(vocab), "n_categories": n_categories, "train_pairs": int(len(ytr)),
            "cat_gain": float(net.cat_gain.detach())}
    return net, vocab, info


def served_top(recommender, data: SessionData, batch: int = 1024, id_prefix: str = "",
               repeat: bool = True) -> np.ndarray:
    """Top-20 of a model.py Recommender (string ids in, the served computation) for every
    prefix, as ``data`` indices (-1 = an item ``data`` does not know). ``id_prefix``: how the
    recommender names ``data``'s items (the served artefact: :data:`LIVE_ITEM_PREFIX`).
    ``repeat=False``: the session's items excluded (the ``new`` reading)."""
    index = data.index()
    out = []
    for i in range(0, len(data.prefix_ids), batch):
        chunk = data.prefix_ids[i : i + batch]
        h = np.full((len(chunk), HISTORY), b"", dtype=object)
        for r, p in enumerate(chunk):
            hist = recency_history(p, HISTORY)
            h[r, : len(hist)] = [(id_prefix + s).encode() for s in hist]
        items, _, _ = recommender(h, repeat=repeat)
        out.append(np.vectorize(lambda b: index.get(b.decode().removeprefix(id_prefix), -1),
                                otypes=[np.int64])(items))
    return np.concatenate(out) if out else np.zeros((0, TOP_K), np.int64)


def readings(top: np.ndarray, data: SessionData, top_new: np.ndarray | None = None) -> dict:
    """HR@20 / MRR@20 on every next click ("all", of ``top``) and on the targets new to the session
    ("new", of ``top_new``: the lists with the session's items excluded; default ``top``)."""
    new = data.new_mask()
    top_new = top if top_new is None else top_new
    a = metrics.hr_mrr(top, data.targets)
    b = metrics.hr_mrr(top_new[new], data.targets[new])
    return {"all": {"hr@20": a["hr"], "mrr@20": a["mrr"], "n": a["n"]},
            "new": {"hr@20": b["hr"], "mrr@20": b["mrr"], "n": b["n"]}}


def served_readings(recommender, data: SessionData, id_prefix: str = "") -> dict:
    """Both readings of a model.py Recommender: its served lists ("all") and the same computation
    with the session's items excluded ("new", as every baseline is read)."""
    return readings(served_top(recommender, data, id_prefix=id_prefix), data,
                    served_top(recommender, data, id_prefix=id_prefix, repeat=False))


def popularity_top(data: SessionData, exclude_history: bool) -> np.ndarray:
    from models.rec_baselines import Popularity

    pop = Popularity(data)
    return np.stack([pop.recommend(p, TOP_K, p if exclude_history else None) for p in data.prefixes])


def repeat_table(train_raw: list[list[str]], history: int = HISTORY, prior: float = REPEAT_PRIOR) -> np.ndarray:
    """[H + 1, H] P(the next click re-visits the r-th newest distinct history item | L items in the
    served history), counted over every next click of ``train_raw`` (the served history: distinct,
    newest first, at most H); a cell is pulled to its rank's pooled rate by ``prior`` pseudo-counts.

    >>> t = repeat_table([["a", "b", "a"], ["a", "a"]], history=3, prior=0.0)
    >>> t[1, 0], t[2, 1]  # after one item: a re-click of it once in 2; after (b, a): back to a
    (0.5, 1.0)
    """
    counts = np.zeros((history + 1, history))
    totals = np.zeros(history + 1)
    for s in train_raw:
        for j in range(1, len(s)):
            hist = recency_history(s[:j], history)
            totals[len(hist)] += 1
            if s[j] in hist:
                counts[len(hist), hist.index(s[j])] += 1
    table = np.zeros((history + 1, history))
    for r in range(history):
        eligible = totals[r + 1:].sum()
        pooled = counts[:, r].sum() / eligible if eligible else 0.0
        rows = np.arange(r + 1, history + 1)
        denom = totals[rows] + prior
        table[rows, r] = np.where(denom > 0, (counts[rows, r] + prior * pooled) / np.maximum(denom, 1e-12), 0.0)
    return table


def set_repeat(net, table: np.ndarray, weight: float, unknown: bool = True) -> None:
    """Install the re-visit table and its weight in a RecNet (weight 0: never-repeat contract;
    ``unknown``: history items outside the vocabulary may be re-visited too)."""
    import torch

    with torch.no_grad():
        net.repeat_table.copy_(torch.from_numpy(table.astype(np.float32)))
        net.repeat_weight.fill_(float(weight))
        net.repeat_unknown.fill_(1.0 if unknown else 0.0)


def choose_repeat_weight(validation: SessionData, mod, params: dict, mode: str, id_prefix: str = "") -> dict:
    """Fit the model code on ``validation``'s training part and pick the re-visit weight with the best
    MRR@20 over every next click of its held-out part (ties: the smaller weight), then whether
    history items outside the vocabulary are re-visited too at that weight (ties: they are).
    -> {"weight", "unknown", "grid": {weight: MRR@20}, "known_only": MRR@20, "validation": name}."""
    if mode == "off":
        return {"weight": 0.0, "unknown": False, "grid": {}, "validation": None}
    net, vocab, _ = fit(validation, mod, params)
    table = repeat_table(validation.train_raw)
    rec = in_memory_recommender(mod, net, vocab)
    grid = {}
    for w in REPEAT_WEIGHTS:
        if mode == "on" and w == 0:
            continue
        set_repeat(net, table, w)
        grid[w] = readings(served_top(rec, validation), validation)["all"]["mrr@20"]
    best = max(grid, key=lambda w: (grid[w], -w))
    known_only = None
    if best > 0:
        set_repeat(net, table, best, unknown=False)
        known_only = readings(served_top(rec, validation), validation)["all"]["mrr@20"]
    return {"weight": best, "unknown": known_only is None or grid[best] >= known_only,
            "grid": {f"{w:g}": round(v, 5) for w, v in grid.items()},
            "known_only": None if known_only is None else round(known_only, 5), "validation": validation.name}


def fit_in_memory(data: SessionData, repo, params: dict):
    """Train the repository's ``model.py`` on ``data`` without touching ``repo``: the model code is
    loaded from a temporary copy (no artefacts), the net trained in-process; -> the model.py
    Recommender around it (the offline experiments' way to serve "the same code" in memory)."""
    import shutil
    import tempfile

    tmp = tempfile.mkdtemp(prefix="streamscore-recs-")
    try:
        shutil.copytree(common.model_dir(repo, "recommender"), Path(tmp) / "recommender",
                        ignore=shutil.ignore_patterns("*.pt", "*.json", "*.npy", "__pycache__"))
        mod = common.load_model_py(tmp, "recommender")
        net, vocab, _ = fit(data, mod, params)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return in_memory_recommender(mod, net, vocab)


def in_memory_recommender(mod, net, vocab: list[str]):
    """A model.py Recommender around an in-memory net (no artefacts written)."""
    rec = mod.Recommender.__new__(mod.Recommender)
    rec.device = "cpu"
    rec.net = net
    rec.meta = {}
    rec.items = np.empty(len(vocab) + 1, dtype=object)
    rec.items[0] = b""
    rec.items[1:] = [s.encode() for s in vocab]
    rec.index = {s: i for i, s in enumerate(rec.items.tolist()) if i > 0}
    return rec


@dataclass
class ClickLog:
    """What a recommender is trained on: sessions (``load(validation)``), the live id namespace of
    their items (``id_prefix``: data ids + prefix = the ids on the clicks topic) and the files."""

    name: str
    load: Callable[[bool], SessionData]
    id_prefix: str
    files: list[Path]
    params: dict
    source: dict = field(default_factory=dict)


def named_log(name: str, data_dir: str | Path) -> ClickLog:
    """A dataset of :mod:`models.sessions` by name (taobao, yoochoose, diginetica)."""
    files = {"taobao": [sessions.TAOBAO], "yoochoose": [sessions.YOOCHOOSE_TRAIN, sessions.YOOCHOOSE_TEST],
             "diginetica": [sessions.DIGINETICA]}[name]
    return ClickLog(name, lambda validation: sessions.load(name, data_dir, validation=validation), NAMED[name],
                    [Path(data_dir) / f for f in files], PARAMS.get(name, DEFAULT_PARAMS), {"dataset": name})


def file_log(sources) -> ClickLog:
    """Click files with the replay's column mapping (:class:`replay.files.FileSource`, topic clicks):
    read exactly as ``streamscore replay`` reads them, so the ids are the live stream's."""
    from replay.files import MappingError, read_file

    bad = [s.file for s in sources if s.topic != "clicks"]
    if bad or not sources:
        raise MappingError(f"the recommender trains on clicks: {bad or 'no file given'}")
    clicks = [c for src in sources for c in read_file(src)]
    name = Path(sources[0].file).name
    return ClickLog(name, lambda validation: sessions.load_events(clicks, name, validation=validation), "",
                    [Path(s.file) for s in sources], DEFAULT_PARAMS, {"files": [s.to_spec() for s in sources]})


def data_sha256(files: list[Path]) -> str:
    """sha256 of the one data file; for several, of their "name sha256" lines in order."""
    digests = [common.sha256_file(f) for f in files]
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256("\n".join(f"{Path(f).name} {d}" for f, d in zip(files, digests)).encode()).hexdigest()


def train_log(log: ClickLog, repo: Path, settings: Settings, repeat: str = "auto") -> dict:
    """Train on ``log`` into ``<repo>/recommender/1`` (weights, vocabulary in the live id space,
    meta.json with the data's sha256, the version and out-of-time metrics of the served computation)."""
    import torch

    t = common.timer()
    mod = common.load_model_py(repo, NAME)
    params = log.params
    chosen = choose_repeat_weight(log.load(True), mod, params, repeat)
    data = log.load(False)
    net, vocab, info = fit(data, mod, params)
    set_repeat(net, repeat_table(data.train_raw), chosen["weight"], chosen["unknown"])
    prefix = log.id_prefix

    state = net.state_dict()
    digest = common.state_digest(state)
    vdir = common.version_dir(repo, NAME)
    common.save_state(vdir, mod.WEIGHTS, state)
    np.save(vdir / mod.VOCAB, np.asarray([prefix + v for v in vocab], dtype=str), allow_pickle=False)
    repeats = chosen["weight"] > 0
    meta = {
        "model": NAME,
        "version": common.model_version_string(NAME, digest),
        "triton_version": common.TRITON_VERSION,
        "weights_sha256": digest,
        "inputs": {"ITEM_HISTORY": {"dtype": "TYPE_STRING", "dims": [HISTORY],
                                    "meaning": "the user's distinct recent item ids, most recent first, padded with b''"}},
        "outputs": {
            "ITEMS": {"dtype": "TYPE_STRING", "dims": [TOP_K],
                      "meaning": "top-k item ids" + (" (history items re-visited included)" if repeats else
                                                     ", none from the history")},
            "SCORES": {"dtype": "TYPE_FP32", "dims": [TOP_K],
                       "meaning": "P(next item): re-visit mixture" if repeats else
                       "P(next item) over the vocabulary minus the history"},
            "KNOWN": {"dtype": "TYPE_INT32", "dims": [1], "meaning": "history items in the vocabulary; 0 = cold start (popularity)"},
        },
        "history": HISTORY,
        "top_k": TOP_K,
        "dim": params["dim"],
        "vocab_size": len(vocab),
        "n_categories": info["n_categories"],
        "vocab_min_count": params["min_count"],
        "popular_items": [prefix + v for v in vocab[:TOP_K]],
        "item_id_prefix": prefix,
        "dataset": log.name,
        "source": log.source,
        "repeat": {"mode": repeat, **chosen, "weights_tried": list(REPEAT_WEIGHTS), "prior": REPEAT_PRIOR},
        "split": {k: data.info[k] for k in ("t_min", "t_split", "t_max", "session_gap_s") if k in data.info}
        | {"how": data.info.get("split")},
        "data_sha256": data_sha256(log.files),
        "data_files": [common.data_file_entry(f, settings) for f in log.files],
        "metrics": {},
        "hyperparams": {"seed": SEED, "batch": BATCH, **params},
        "weights_bytes": int(sum(v.numel() * v.element_size() for v in state.values())),
        "torch": torch.__version__,
    }
    common.write_meta(vdir, meta)  # the Recommender below loads it
    # out-of-time metrics of the served computation (model.py's Recommender on the artefacts)
    meta["metrics"] = metrics.rounded({
        "test": {
            "model": served_readings(mod.Recommender(str(vdir)), data, prefix),
            "popularity": {"all": readings(popularity_top(data, False), data)["all"],
                           "new": readings(popularity_top(data, True), data)["new"]},
        },
        "counts": {k: v for k, v in data.info.items() if isinstance(v, int)} | {"train_pairs": info["train_pairs"]},
        "learned": {"cat_gain": info["cat_gain"]},
    })
    meta["train_seconds"] = t.seconds()
    common.write_meta(vdir, meta)
    return meta


def train(data_path: Path, repo: Path, settings: Settings) -> dict:
    """The served model of ``python -m models``: Taobao (``data_path``: its file under the data dir)."""
    data_dir = Path(data_path).resolve().parents[1]  # <data_dir>/taobao-userbehavior-sample/<file>
    return train_log(named_log("taobao", data_dir), repo, settings)


def main(argv: list[str] | None = None) -> dict:
    import argparse
    import json

    from replay.files import add_file_arguments, file_sources

    ap = argparse.ArgumentParser(prog="streamscore train-recommender", description=__doc__.split("\n")[0],
                                 epilog="Example: streamscore train-recommender --file clicks.csv "
                                        "--map user_id=user,item_id=item,ts=time --const action=view --namespace shop")
    ap.add_argument("--dataset", choices=sorted(NAMED), default=None,
                    help="a named dataset of the data dir (default taobao when no file is given)")
    add_file_arguments(ap.add_argument_group("a click file with the replay's column mapping (replay/files.py)"),
                       topic=False)
    ap.add_argument("--repeat", choices=["auto", "on", "off"], default="auto",
                    help="re-visit history items: weight chosen on a validation split (auto, 0 allowed), "
                         "forced on, or the never-repeat contract (off)")
    ap.add_argument("--repo", type=Path, default=None, help="Triton model repository (default: settings.triton_repo)")
    args = ap.parse_args(argv)
    settings = Settings.from_env()
    files = file_sources(args, topic="clicks")
    if files and args.dataset:
        ap.error("--dataset or a file, not both")
    log = file_log(files) if files else named_log(args.dataset or "taobao", settings.data_dir)
    meta = train_log(log, args.repo or Path(settings.triton_repo), settings, args.repeat)
    print(json.dumps({"model": meta["model"], "version": meta["version"], "dataset": meta["dataset"],
                      "data_sha256": meta["data_sha256"], "vocab_size": meta["vocab_size"],
                      "repeat_weight": meta["repeat"]["weight"], "train_seconds": meta["train_seconds"],
                      "test": meta["metrics"]["test"]}))
    return meta


if __name__ == "__main__":
    main()
