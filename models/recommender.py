"""Train the `recommender` model: next-item prediction on the Taobao user-behaviour sample.

Data: ``<data_dir>/taobao-userbehavior-sample/UserBehavior_first96k.csv.gz`` (a contiguous
~2 h slice; every behaviour type counts as an interaction). Each user's events are sorted
by time and consecutive repeats of the same item collapsed (view -> cart of one item is one
step). A pair is (the user's previous <= 20 items, most recent first; the next item), kept when
the next item is not already in that history (the model never recommends history items) and
at least one history item is in the vocabulary (otherwise serving falls back to popularity).

Split: events in the last 20 % of the time range are the test targets (their histories may
reach back into the training period); the vocabulary is every item with >= 2 events in the
training period, ordered by training popularity (that order is the cold-start ranking).

Model (RecNet in triton_repo/recommender/1/model.py): tied item + category embeddings (the
category of each vocabulary item is a buffer of the weights), position-weighted
mean pooling + most recent item -> user vector, full softmax over the vocabulary with the
history items masked, bias initialised to log popularity; Adam, fixed epochs, seeded.

Metrics: HR@20 and MRR@20 on the test pairs for the model and for the popularity baseline
(top-20 training-popularity items minus the history); test targets outside the vocabulary
count as misses for both.

Usage: ``python -m models.recommender [--repo DIR]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from models import common
from streamscore.settings import Settings

NAME = "recommender"
DATA = Path("taobao-userbehavior-sample") / "UserBehavior_first96k.csv.gz"

SEED = 20240602
HISTORY = 20
TOP_K = 20
DIM = 32
EPOCHS = 3
BATCH = 256
LR = 5e-3
MIN_COUNT = 2
TEST_FRACTION = 0.2


def load_events(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, dtype={"user_id": str, "item_id": str, "category_id": str, "behavior_type": str})
    df = df.reset_index().sort_values(["user_id", "timestamp", "index"], kind="mergesort").reset_index(drop=True)
    return df


def build_pairs(df: pd.DataFrame, index: dict[str, int], t_split: float):
    """-> (train_hist, train_tgt, test_hist, test_tgt, counts); hist as [N, H] int64 indices."""
    same_user = df["user_id"].to_numpy()[1:] == df["user_id"].to_numpy()[:-1]
    same_item = df["item_id"].to_numpy()[1:] == df["item_id"].to_numpy()[:-1]
    keep = np.r_[True, ~(same_user & same_item)]
    d = df[keep]
    users = d["user_id"].to_numpy()
    items = d["item_id"].to_numpy()
    ts = d["timestamp"].to_numpy()
    idx = np.array([index.get(i, 0) for i in items], dtype=np.int64)
    starts = np.r_[0, np.nonzero(users[1:] != users[:-1])[0] + 1, len(users)]

    out = {"train": ([], []), "test": ([], [])}
    counts = {"train_pairs": 0, "test_pairs": 0, "test_cold_start": 0, "test_target_in_history": 0,
              "test_target_oov": 0, "train_skipped_oov_target": 0}
    for s, e in zip(starts[:-1], starts[1:]):
        for j in range(s + 1, e):
            lo = max(s, j - HISTORY)
            hist_items = items[lo:j][::-1]
            is_test = ts[j] >= t_split
            if items[j] in set(hist_items):
                if is_test:
                    counts["test_target_in_history"] += 1
                continue
            h = np.zeros(HISTORY, dtype=np.int64)
            h[: j - lo] = idx[lo:j][::-1]
            if not (h > 0).any():
                if is_test:
                    counts["test_cold_start"] += 1
                continue
            if is_test:
                counts["test_target_oov"] += int(idx[j] == 0)
                out["test"][0].append(h)
                out["test"][1].append(idx[j])
            elif idx[j] > 0:
                out["train"][0].append(h)
                out["train"][1].append(idx[j])
            else:
                counts["train_skipped_oov_target"] += 1
    arr = {}
    for k, (hs, tg) in out.items():
        arr[k] = (np.stack(hs) if hs else np.zeros((0, HISTORY), np.int64), np.asarray(tg, dtype=np.int64))
        counts[f"{k}_pairs"] = len(tg)
    return arr["train"][0], arr["train"][1], arr["test"][0], arr["test"][1], counts


def rank_metrics(top: np.ndarray, target: np.ndarray) -> dict:
    hit = top == target[:, None]
    hr = hit.any(1)
    rank = hit.argmax(1) + 1
    mrr = np.where(hr, 1.0 / rank, 0.0)
    return {"hr@20": round(float(hr.mean()), 5), "mrr@20": round(float(mrr.mean()), 5)}


def train(data_path: Path, repo: Path, settings: Settings) -> dict:
    import torch

    t = common.timer()
    common.seed_everything(SEED)
    mod = common.load_model_py(repo, NAME)
    df = load_events(data_path)
    tmin, tmax = float(df["timestamp"].min()), float(df["timestamp"].max())
    t_split = tmin + (1 - TEST_FRACTION) * (tmax - tmin)

    train_counts = df.loc[df["timestamp"] < t_split, "item_id"].value_counts()
    train_counts = train_counts[train_counts >= MIN_COUNT]
    vocab = sorted(train_counts.index.tolist(), key=lambda i: (-int(train_counts[i]), i))
    index = {item: i + 1 for i, item in enumerate(vocab)}
    pop = np.r_[0, [int(train_counts[i]) for i in vocab]].astype(np.float64)

    # each item's category (Taobao items have one; take the most frequent to be safe)
    tr_df = df[df["timestamp"] < t_split]
    item_cat = tr_df[tr_df["item_id"].isin(index)].groupby("item_id")["category_id"].agg(lambda c: c.mode().iloc[0])
    categories = sorted(set(item_cat.tolist()))
    cat_index = {c: i + 1 for i, c in enumerate(categories)}
    item_cat_idx = np.zeros(len(vocab) + 1, dtype=np.int64)
    item_cat_idx[1:] = [cat_index[item_cat[i]] for i in vocab]

    htr, ytr, hte, yte, counts = build_pairs(df, index, t_split)

    net = mod.RecNet(len(vocab), len(categories), DIM, HISTORY)
    net.item_cat.copy_(torch.from_numpy(item_cat_idx))
    log_pop = np.log(np.maximum(pop, 1e-12) / pop.sum()).astype(np.float32)
    log_pop[0] = -1e9
    with torch.no_grad():
        net.log_pop.copy_(torch.from_numpy(log_pop))
        net.bias.copy_(torch.from_numpy(np.where(pop > 0, log_pop, 0.0).astype(np.float32)))
        net.emb.weight.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(SEED))
        net.emb.weight[0].zero_()
        net.cat_emb.weight.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(SEED + 1))
        net.cat_emb.weight[0].zero_()

    Htr, Ytr = torch.from_numpy(htr), torch.from_numpy(ytr)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(SEED)
    net.train()
    for _epoch in range(EPOCHS):
        perm = torch.randperm(len(Htr), generator=gen)
        for i in range(0, len(perm), BATCH):
            b = perm[i : i + BATCH]
            h = Htr[b]
            logits = net.user_logits(h)
            logits = logits.scatter(1, h, float("-inf"))  # history items (and padding) are never targets
            loss = torch.nn.functional.cross_entropy(logits, Ytr[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()

    with torch.no_grad():
        Hte = torch.from_numpy(hte)
        top_model = np.concatenate([net.recommend(Hte[i : i + 1024])[0].numpy() for i in range(0, len(Hte), 1024)])
        pop_logits = torch.from_numpy(log_pop).expand(len(Hte), -1).clone()
        pop_logits.scatter_(1, Hte, float("-inf"))
        top_pop = torch.topk(pop_logits, TOP_K, dim=1).indices.numpy()
    metrics = {
        "test": {"model": rank_metrics(top_model, yte), "popularity": rank_metrics(top_pop, yte)},
        "test_in_vocab_targets": {
            "model": rank_metrics(top_model[yte > 0], yte[yte > 0]),
            "popularity": rank_metrics(top_pop[yte > 0], yte[yte > 0]),
        },
        "counts": counts,
    }

    state = net.state_dict()
    digest = common.state_digest(state)
    vdir = common.version_dir(repo, NAME)
    common.save_state(vdir, mod.WEIGHTS, state)
    np.save(vdir / mod.VOCAB, np.asarray(vocab, dtype=str), allow_pickle=False)
    meta = {
        "model": NAME,
        "version": common.model_version_string(NAME, digest),
        "triton_version": common.TRITON_VERSION,
        "weights_sha256": digest,
        "inputs": {"ITEM_HISTORY": {"dtype": "TYPE_STRING", "dims": [HISTORY],
                                    "meaning": "most recent item ids first, padded with b''"}},
        "outputs": {
            "ITEMS": {"dtype": "TYPE_STRING", "dims": [TOP_K], "meaning": "top-k item ids, none from the history"},
            "SCORES": {"dtype": "TYPE_FP32", "dims": [TOP_K], "meaning": "P(next item) over the vocabulary minus the history"},
            "KNOWN": {"dtype": "TYPE_INT32", "dims": [1], "meaning": "history items in the vocabulary; 0 = cold start (popularity)"},
        },
        "history": HISTORY,
        "top_k": TOP_K,
        "dim": DIM,
        "vocab_size": len(vocab),
        "n_categories": len(categories),
        "vocab_min_count": MIN_COUNT,
        "popular_items": vocab[:TOP_K],
        "split": {"t_min": tmin, "t_split": t_split, "t_max": tmax, "test_fraction": TEST_FRACTION},
        "data_sha256": common.sha256_file(data_path),
        "data_files": [common.data_file_entry(data_path, settings)],
        "metrics": metrics,
        "hyperparams": {"seed": SEED, "epochs": EPOCHS, "batch": BATCH, "lr": LR},
        "weights_bytes": int(sum(v.numel() * v.element_size() for v in state.values())),
        "torch": torch.__version__,
        "train_seconds": t.seconds(),
    }
    common.write_meta(vdir, meta)
    return meta


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m models.recommender", description=__doc__.split("\n")[0])
    ap.add_argument("--repo", type=Path, default=None, help="Triton model repository (default: settings.triton_repo)")
    args = ap.parse_args(argv)
    settings = Settings.from_env()
    repo = args.repo or Path(settings.triton_repo)
    meta = train(Path(settings.data_dir) / DATA, repo, settings)
    print(json.dumps({"model": NAME, "version": meta["version"], "train_seconds": meta["train_seconds"],
                      "test": meta["metrics"]["test"], "vocab_size": meta["vocab_size"]}))
    return meta


if __name__ == "__main__":
    main()
