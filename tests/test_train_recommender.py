"""`streamscore train-recommender` on a shop's own click file, served by Triton, used by the live worker.

The click file is written at test time from real data (YooChoose ``train_full``: the first
sessions, columns renamed so that the replay's column mapping has work to do); nothing of it
is kept in the repository.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import redis
from confluent_kafka import Producer

from conftest import free_port, isolated
from evaluation.recs_live import start_triton
from features.keys import FeatureKeys
from features.privacy import Pseudonymiser
from models import common, recommender, sessions
from replay.files import FileSource, read_file
from streamscore import stack as stk
from streamscore.settings import ROOT, Settings
from streamscore.topics import committed

MAP = "user_id=visitor,item_id=product,ts=when"


@pytest.fixture(scope="module")
def shop_file(tmp_path_factory):
    """A small mapped click file: 1,500 YooChoose sessions as visitor / product / when (ms), unsorted."""
    data_dir = Settings.from_env().data_dir
    df = pd.read_csv(f"{data_dir}/{sessions.YOOCHOOSE_TRAIN}", dtype={"SessionId": np.int64, "ItemId": str})
    df = df[df["SessionId"].isin(sorted(df["SessionId"].unique())[:1500])]
    out = pd.DataFrame({"visitor": "v" + df["SessionId"].astype(str), "product": df["ItemId"],
                        "when": (df["Time"] * 1000).round().astype(np.int64)})
    path = tmp_path_factory.mktemp("shop") / "shop-clicks.csv.gz"
    with gzip.open(path, "wt") as fh:
        out.to_csv(fh, index=False)
    return path


@pytest.fixture(scope="module")
def trained(shop_file, tmp_path_factory):
    """`streamscore train-recommender --file ... --map ...` into a scratch repository."""
    repo = common.scratch_repo(ROOT / "triton_repo", "recommender", tmp_path_factory.mktemp("repo"))
    # the installed command line, in its own process (as a user runs it)
    run = subprocess.run([sys.executable, "-m", "streamscore", "train-recommender", "--file", str(shop_file),
                          "--map", MAP, "--const", "action=view", "--namespace", "shop", "--time-unit", "ms",
                          "--sort", "--repo", str(repo)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1])["dataset"] == shop_file.name
    return repo


def _clicks(shop_file) -> list:
    """The file's clicks as the replay reads them with the same mapping (the live stream's ids)."""
    return list(read_file(FileSource(file=str(shop_file), topic="clicks", namespace="shop", sort=True,
                                     map={"user_id": "visitor", "item_id": "product", "ts": "when"},
                                     const={"action": "view"}, time={"unit": "ms"})))


def test_artefacts_record_the_data_and_live_ids(trained, shop_file):
    meta = common.read_meta(trained, "recommender")
    assert meta["data_sha256"] == common.sha256_file(shop_file)
    assert meta["version"] == common.model_version_string("recommender", meta["weights_sha256"])
    assert meta["dataset"] == shop_file.name and meta["source"]["files"][0]["namespace"] == "shop"
    items = np.load(common.version_dir(trained, "recommender") / "items.npy").tolist()
    clicked = {c.item_id for c in _clicks(shop_file)}
    assert len(items) == meta["vocab_size"] > 100 and set(items) <= clicked  # the live stream's ids: shop:<id>
    assert all(i.startswith("shop:") for i in items)
    assert meta["repeat"]["mode"] == "auto" and meta["repeat"]["validation"].endswith("-validation")
    assert set(meta["repeat"]["grid"]) == {f"{w:g}" for w in recommender.REPEAT_WEIGHTS}
    m = meta["metrics"]["test"]
    assert m["model"]["all"]["n"] > 0
    # re-visits are common in these sessions: the validated re-visit weight is on, and the model beats
    # popularity on both readings of its own held-out period
    assert meta["repeat"]["weight"] > 0
    for reading in ("all", "new"):
        assert m["model"][reading]["hr@20"] > m["popularity"][reading]["hr@20"]


def test_repeat_aware_lists_can_hold_history_items(trained):
    mod = common.load_model_py(trained, "recommender")
    rec = mod.Recommender(str(common.version_dir(trained, "recommender")))
    a, b = rec.items[1].decode(), rec.items[2].decode()
    h = np.full((1, 20), b"", dtype=object)
    h[0, :2] = [a.encode(), b.encode()]
    with_repeat = [x.decode() for x in rec(h)[0][0]]
    masked = [x.decode() for x in rec(h, repeat=False)[0][0]]
    # click files are cut like Taobao (consecutive repeats collapsed): the newest item is never the next
    # click, the one before it is the likeliest re-visit
    assert with_repeat[0] == b and a not in with_repeat
    assert a not in masked and b not in masked
    scores = rec(h)[1][0]
    assert np.all(np.diff(scores) <= 1e-7) and 0 < scores.sum() <= 1 + 1e-5
    # an item the vocabulary does not hold can be re-visited too (it comes back as its own id) when
    # repeat.unknown is on (the validation split chooses; both settings checked here)
    h[0, :3] = [a.encode(), b"shop:never-in-training", b.encode()]
    unknown = rec.net.repeat_unknown.clone()
    try:
        rec.net.repeat_unknown.fill_(1.0)
        items, _, known = rec(h)
        assert b"shop:never-in-training" in items[0].tolist() and known[0, 0] == 2
        assert b"shop:never-in-training" not in rec(h, repeat=False)[0][0].tolist()
        rec.net.repeat_unknown.fill_(0.0)
        assert b"shop:never-in-training" not in rec(h)[0][0].tolist()
    finally:
        rec.net.repeat_unknown.copy_(unknown)


@pytest.mark.stack
def test_live_worker_serves_the_trained_model(stack_settings, trained, shop_file):
    """Triton over the trained repository, a clicks worker on it: the file's users get the model's
    lists (not the popularity fallback), in the file's id space."""
    name = "trainrec-triton"
    st = start_triton(stack_settings, trained, name)
    s = isolated(st, "trainrec", 14, worker_metrics_port=free_port(), rec_online_blend=False)
    try:
        clicks = _clicks(shop_file)
        vocab = set(np.load(common.version_dir(trained, "recommender") / "items.npy").tolist())
        users = sorted({c.user_id for c in clicks if c.item_id in vocab})[:40]  # users the model can know
        sent = [c for c in clicks if c.user_id in set(users)]
        stk.start_process("trainrec-worker", [sys.executable, "-m", "streamscore", "worker", "--role", "clicks"],
                          s.to_env(), s.run_dir)
        producer = Producer({"bootstrap.servers": s.kafka_bootstrap})
        for c in sent:
            producer.produce(s.topic_clicks, key=c.user_id.encode(), value=c.to_bytes())
        assert producer.flush(30) == 0
        end = time.monotonic() + 120
        while committed(s, s.deciding_group(s.topic_clicks), s.topic_clicks) < len(sent):
            assert time.monotonic() < end and stk.process_alive("trainrec-worker", s.run_dir), \
                stk.log_tail("trainrec-worker", s.run_dir)
            time.sleep(0.2)
        r, pseudo = redis.Redis.from_url(s.redis_url), Pseudonymiser(s.pii_secret.get_secret_value())
        keys = FeatureKeys(pseudo)
        stored, end = {}, time.monotonic() + 30
        while len(stored) < len(users) and time.monotonic() < end:
            for u in users:
                raw = r.get(keys.recommendations(pseudo("user", u)))
                if raw:
                    stored[u] = json.loads(raw)
            time.sleep(0.2)
        assert len(stored) == len(users), stk.log_tail("trainrec-worker", s.run_dir)
        from_model = [u for u, v in stored.items() if not v["cold_start"] and v["model_version"].startswith("recommender:")]
        assert len(from_model) == len(users), {u: v["model_version"] for u, v in stored.items()}
        assert all(set(v["items"]) <= vocab and len(v["items"]) == s.rec_top_k for v in stored.values())
    finally:
        stk.stop_processes(["trainrec-worker", name], s.run_dir)
