"""The three Triton models: artefacts, meta vs config.pbtxt, and served == in-process.

The artefacts are built by ``make models`` (``python -m models``) before the tests run; these
tests do not train (except the small reproducibility check, into a temporary repository).
The serving tests go over the session's real local stack (``stack_settings``: tritonserver
from the nvidia-pytriton wheel over the real ``triton_repo/``), and compare every output with
the same model evaluated in this process from the same artefacts, within 1e-4.
"""

from __future__ import annotations

import json
import queue
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from models import MODEL_NAMES, common, fraud, pricing, recommender
from streamscore.settings import Settings

REPO = Path(Settings.from_env().triton_repo)
DATA_DIR = Path(Settings.from_env().data_dir)
TOL = 1e-4

ARTEFACTS = {
    "fraud": ["meta.json", "fraud.pt"],
    "recommender": ["meta.json", "recommender.pt", "items.npy"],
    "pricing": ["meta.json", "pricing.pt"],
}


def _require_artefacts(name: str) -> Path:
    vdir = common.version_dir(REPO, name)
    missing = [f for f in ARTEFACTS[name] if not (vdir / f).exists()]
    if missing:
        pytest.fail(f"{vdir} lacks {missing}: build the models first (make models / python -m models)")
    return vdir


@pytest.fixture(scope="module")
def local_models():
    """Each model loaded in this process from the artefacts, exactly as model.py loads it."""
    out = {}
    for name in MODEL_NAMES:
        vdir = _require_artefacts(name)
        mod = common.load_model_py(REPO, name)
        if name == "recommender":
            out[name] = mod.Recommender(str(vdir))
        else:
            out[name] = mod.load(str(vdir))[0]
        out[name + ".mod"] = mod
    return out


# --- artefacts and meta ---------------------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_artefacts_exist_and_meta_is_complete(name):
    vdir = _require_artefacts(name)
    meta = common.read_meta(REPO, name)
    assert meta["model"] == name
    assert re.fullmatch(rf"{name}-v1-[0-9a-f]{{12}}", meta["version"])
    assert meta["weights_sha256"].startswith(meta["version"].rsplit("-", 1)[1])
    assert re.fullmatch(r"[0-9a-f]{64}", meta["data_sha256"])
    assert meta["data_files"] and meta["data_files"][0]["sha256"] == meta["data_sha256"]
    assert meta["metrics"]
    # weights only: the artefacts load without pickle
    import torch

    state = torch.load(vdir / ARTEFACTS[name][1], map_location="cpu", weights_only=True)
    assert common.state_digest(state) == meta["weights_sha256"]
    # gitignored artefact kinds only (.gitignore: *.pt, *.json, *.npy under triton_repo/*/[0-9]*/)
    for f in vdir.iterdir():
        assert f.suffix in {".pt", ".json", ".npy", ".py"} or f.name == "__pycache__", f


@pytest.mark.parametrize("name", ["recommender", "pricing"])
def test_meta_records_the_training_data(name):
    meta = common.read_meta(REPO, name)
    module = {"recommender": recommender, "pricing": pricing}[name]
    assert meta["data_sha256"] == common.sha256_file(DATA_DIR / module.DATA)


def test_fraud_meta_records_its_snapshot_and_thresholds():
    meta = common.read_meta(REPO, "fraud")
    snap = fraud.DEFAULT_SNAPSHOT
    if snap.exists():
        assert meta["data_sha256"] == common.sha256_file(snap), "fraud artefacts older than the snapshot: make models"
    th = meta["thresholds"]
    # the thresholds the lead reads into settings, derived from the documented costs
    assert th["settings"] == {"FRAUD_REVIEW_THRESHOLD": th["review"], "FRAUD_DECLINE_THRESHOLD": th["decline"]}
    assert 0 < th["review"] < th["decline"] < 1
    assert th["costs_usd"] == fraud.COSTS
    expected = fraud.decision_thresholds(th["costs_usd"])
    assert th["review"] == pytest.approx(expected["review"], abs=1e-6)
    assert th["decline"] == pytest.approx(expected["decline"], abs=1e-6)
    # precision / recall / F1 at both thresholds are recorded on the test months
    test = meta["metrics"]["test"]
    for name in ("review", "decline"):
        at = test[f"at_{name}"]
        assert at["threshold"] == pytest.approx(th[name], abs=1e-6)
        assert {"precision", "recall", "f1", "tp", "fp", "fn", "tn"} <= set(at)
        assert at["tp"] + at["fp"] + at["fn"] + at["tn"] == test["n"]
    assert {"roc_auc", "pr_auc", "recall_at_0.01_fpr", "brier", "ece", "cost"} <= set(test)


def _io(cfg) -> dict[str, tuple[str, list[int]]]:
    from tritonclient.grpc import model_config_pb2 as pb

    return {t.name: (pb.DataType.Name(t.data_type), list(t.dims)) for t in list(cfg.input) + list(cfg.output)}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_is_warmed_up_with_its_inputs_at_batch_1_and_a_stream_batch(name):
    from tritonclient.grpc import model_config_pb2 as pb

    cfg = common.read_config(REPO, name)
    inputs = {t.name: (t.data_type, list(t.dims)) for t in cfg.input}
    assert sorted(w.batch_size for w in cfg.model_warmup) == [1, 64]
    for w in cfg.model_warmup:
        assert w.batch_size <= cfg.max_batch_size
        assert {k: (v.data_type, list(v.dims)) for k, v in w.inputs.items()} == inputs  # every input, as declared
        assert all(v.WhichOneof("input_data_type") == "zero_data" for v in w.inputs.values())
    assert pb.DataType.Name(next(iter(inputs.values()))[0]).startswith("TYPE_")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_config_pbtxt_matches_meta(name):
    from tritonclient.grpc import model_config_pb2 as pb

    cfg = common.read_config(REPO, name)
    meta = common.read_meta(REPO, name)
    assert cfg.name == name and cfg.backend == "python"
    assert 1 <= cfg.max_batch_size <= 1024
    assert cfg.HasField("dynamic_batching") and cfg.dynamic_batching.max_queue_delay_microseconds > 0
    assert [g.kind for g in cfg.instance_group] == [pb.ModelInstanceGroup.KIND_AUTO]
    io = _io(cfg)
    expected = {k: (v["dtype"], v["dims"]) for k, v in {**meta["inputs"], **meta["outputs"]}.items()}
    assert io == expected
    if name == "fraud":
        assert meta["features"] == fraud.FEATURES
        assert io["FEATURES"][1] == io["CONTRIB"][1] == [len(fraud.FEATURES)] == [29]
        assert io["SCORE"] == ("TYPE_FP32", [1])
        assert len(meta["mean"]) == len(meta["std"]) == 29
    elif name == "recommender":
        assert io == {"ITEM_HISTORY": ("TYPE_STRING", [20]), "ITEMS": ("TYPE_STRING", [20]),
                      "SCORES": ("TYPE_FP32", [20]), "KNOWN": ("TYPE_INT32", [1])}
        assert meta["history"] == meta["top_k"] == 20
        items = np.load(common.version_dir(REPO, name) / "items.npy", allow_pickle=False)
        assert len(items) == meta["vocab_size"] and list(items[:20]) == meta["popular_items"]
        assert meta["weights_bytes"] < 5 * 2**20
    else:
        assert meta["features"] == pricing.FEATURES
        assert io["FEATURES"] == ("TYPE_FP32", [5])
        assert io["MULTIPLIERS"] == io["DEMAND"] == ("TYPE_FP32", [len(meta["multipliers"])])
        assert 1.0 in meta["multipliers"]
        assert meta["elasticity"] < 0  # demand falls as the price rises


def test_metrics_recorded():
    f = common.read_meta(REPO, "fraud")["metrics"]["test"]
    assert 0 <= f["roc_auc"] <= 1 and 0 <= f["pr_auc"] <= 1 and f["n"] > 0
    r = common.read_meta(REPO, "recommender")["metrics"]["test"]
    assert set(r) == {"model", "popularity"}
    for v in r.values():
        assert set(v) == {"all", "new"}
        assert all({"hr@20", "mrr@20"} <= set(x) and 0 <= x["mrr@20"] <= x["hr@20"] <= 1 for x in v.values())
    # the served recommender is better than popularity on the new-item targets it is built for
    assert r["model"]["new"]["hr@20"] > r["popularity"]["new"]["hr@20"]
    p = common.read_meta(REPO, "pricing")["metrics"]["test"]
    assert set(p) >= {"model", "naive_last_week"}


def test_auc_and_average_precision_match_hand_computed_values():
    y = np.array([0, 0, 1, 1, 0, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.4, 0.9])
    # pairs (pos, neg): 9; pos 0.35 beats 0.1 only (1), 0.8 and 0.9 beat all three (6) -> 7/9
    assert common.roc_auc(y, s) == pytest.approx(7 / 9)
    # ranking 0.9+, 0.8+, {0.4-, 0.4-}, 0.35+, 0.1-: AP = (1 + 1 + 3/5) / 3
    assert common.average_precision(y, s) == pytest.approx((1 + 1 + 3 / 5) / 3)


@pytest.mark.parametrize("name", ["fraud", "recommender", "pricing"])
def test_training_is_reproducible(name, tmp_path):
    """Retraining into a scratch repository gives bit-identical weights (same version)."""
    for n in (name,):
        shutil.copytree(REPO / n, tmp_path / n, ignore=shutil.ignore_patterns("*.pt", "*.json", "*.npy", "__pycache__"))
    settings = Settings.from_env()
    if name == "fraud":
        if not fraud.DEFAULT_SNAPSHOT.exists():
            pytest.fail(f"{fraud.DEFAULT_SNAPSHOT} missing: make models builds it")
        meta = fraud.train(fraud.DEFAULT_SNAPSHOT, tmp_path, settings)
    else:
        module = {"recommender": recommender, "pricing": pricing}[name]
        meta = module.train(DATA_DIR / module.DATA, tmp_path, settings)
    assert meta["version"] == common.read_meta(REPO, name)["version"], "stale artefacts or non-deterministic training"


# --- served by a real tritonserver -------------------------------------------------------------


@pytest.fixture(scope="module")
def triton(stack_settings):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(stack_settings.triton_grpc_url)
    end = time.monotonic() + 60
    while not all(client.is_model_ready(n) for n in MODEL_NAMES):
        assert time.monotonic() < end, "models not ready"
        time.sleep(0.2)
    yield client
    client.close()


def _infer(client, name: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
    import tritonclient.grpc as grpcclient

    reqs = []
    for k, v in inputs.items():
        dtype = "BYTES" if v.dtype == object else "FP32"
        i = grpcclient.InferInput(k, list(v.shape), dtype)
        i.set_data_from_numpy(v)
        reqs.append(i)
    res = client.infer(name, reqs, outputs=[grpcclient.InferRequestedOutput(o) for o in outputs])
    return {o: res.as_numpy(o) for o in outputs}


def fraud_inputs(meta: dict, n: int = 8) -> np.ndarray:
    rng = np.random.default_rng(7)
    mean, std = np.array(meta["mean"], np.float32), np.array(meta["std"], np.float32)
    x = (mean + std * rng.standard_normal((n, len(mean)))).astype(np.float32)
    f = meta["features"]
    x[0] = mean
    x[1, f.index("account_age_log_s")] = 0.0  # purchase in the signup minute
    x[2, f.index("device_users_30d")] = 4.0  # shared device
    x[2, f.index("device_orders_1h")] = 3.0
    x[3, f.index("user_orders_1h")] = 5.0  # a feature constant in training: no effect
    return x


def rec_inputs(items: np.ndarray) -> np.ndarray:
    h = np.full((6, 20), b"", dtype=object)
    h[1, :3] = [items[0].encode(), items[5].encode(), items[10].encode()]
    h[2, :20] = [i.encode() for i in items[100:120]]
    h[3, :4] = [b"no-such-item", items[50].encode(), b"", b""]  # unknown + known
    h[4, :2] = [b"no-such-item", b"other-unknown"]  # unknown only: cold start
    h[5, 0] = items[-1].encode()  # least popular known item
    return h


def pricing_inputs() -> np.ndarray:
    rows = []
    for price, units, orders, month in [(2.55, 40, 6, 1), (0.85, 300, 20, 6), (12.75, 2, 1, 11),
                                        (4.95, 0, 0, 3), (1.25, 120, 15, 12), (7.5, 8, 4, 9)]:
        a = 2 * np.pi * (month - 1) / 12
        rows.append([np.log(price), np.log1p(units), np.log1p(orders), np.sin(a), np.cos(a)])
    return np.asarray(rows, dtype=np.float32)


def _check_rec(served: dict, local: tuple, history: np.ndarray) -> None:
    items_l, scores_l, known_l = local
    np.testing.assert_array_equal(served["KNOWN"], known_l)
    np.testing.assert_allclose(served["SCORES"], scores_l, rtol=0, atol=TOL)
    repeats = common.read_meta(REPO, "recommender").get("repeat", {}).get("weight", 0) > 0
    for r in range(len(history)):
        hist = {h for h in history[r] if h}
        if not repeats:  # the never-repeat contract; a repeat-aware model may re-list history items
            assert not hist & set(served["ITEMS"][r].tolist())
        for k in range(items_l.shape[1]):
            if served["ITEMS"][r, k] != items_l[r, k]:  # only a tie may swap two items
                assert abs(float(served["SCORES"][r, k]) - float(scores_l[r, k])) <= TOL
                assert items_l[r, k] in set(served["ITEMS"][r].tolist())


@pytest.mark.stack
def test_fraud_served_matches_in_process(triton, local_models):
    mod, net = local_models["fraud.mod"], local_models["fraud"]
    meta = common.read_meta(REPO, "fraud")
    x = fraud_inputs(meta)
    score_l, contrib_l = mod.predict(net, x)
    served = _infer(triton, "fraud", {"FEATURES": x}, ["SCORE", "CONTRIB"])
    assert served["SCORE"].shape == (len(x), 1) and served["CONTRIB"].shape == (len(x), 29)
    np.testing.assert_allclose(served["SCORE"], score_l, rtol=0, atol=TOL)
    np.testing.assert_allclose(served["CONTRIB"], contrib_l, rtol=0, atol=TOL)
    for i in range(3):  # one row per request gives the same answer as the batch
        one = _infer(triton, "fraud", {"FEATURES": x[i : i + 1]}, ["SCORE", "CONTRIB"])
        np.testing.assert_allclose(one["SCORE"], score_l[i : i + 1], rtol=0, atol=TOL)
    assert ((served["SCORE"] > 0) & (served["SCORE"] < 1)).all()
    f = meta["features"]
    assert np.abs(served["CONTRIB"][0]).max() < 1e-5  # the average order: nothing to explain
    assert served["SCORE"][1, 0] > served["SCORE"][0, 0]  # instant purchase raises the score
    assert served["CONTRIB"][1].argmax() == f.index("account_age_log_s")
    assert served["CONTRIB"][3, f.index("user_orders_1h")] == 0  # inactive feature


@pytest.mark.stack
def test_recommender_served_matches_in_process(triton, local_models):
    rec = local_models["recommender"]
    meta = common.read_meta(REPO, "recommender")
    items = np.load(common.version_dir(REPO, "recommender") / "items.npy", allow_pickle=False)
    h = rec_inputs(items)
    local = rec(h)
    served = _infer(triton, "recommender", {"ITEM_HISTORY": h}, ["ITEMS", "SCORES", "KNOWN"])
    assert served["ITEMS"].shape == served["SCORES"].shape == (len(h), 20) and served["KNOWN"].shape == (len(h), 1)
    _check_rec(served, local, h)
    assert served["KNOWN"][:, 0].tolist() == [0, 3, 20, 1, 0, 1]
    cold = [b.decode() for b in served["ITEMS"][0]]
    assert cold == meta["popular_items"]  # cold start = training popularity
    assert [b.decode() for b in served["ITEMS"][4]] == meta["popular_items"]
    assert np.all(np.diff(served["SCORES"], axis=1) <= 1e-7)  # sorted
    assert np.all(served["SCORES"] > 0) and np.all(served["SCORES"].sum(1) <= 1 + 1e-5)


@pytest.mark.stack
def test_pricing_served_matches_in_process(triton, local_models):
    mod, net = local_models["pricing.mod"], local_models["pricing"]
    meta = common.read_meta(REPO, "pricing")
    x = pricing_inputs()
    mult_l, demand_l = mod.predict(net, x)
    served = _infer(triton, "pricing", {"FEATURES": x}, ["MULTIPLIERS", "DEMAND"])
    np.testing.assert_allclose(served["MULTIPLIERS"], np.tile(meta["multipliers"], (len(x), 1)), rtol=0, atol=1e-7)
    np.testing.assert_allclose(served["DEMAND"], demand_l, rtol=TOL, atol=TOL)
    assert np.all(served["DEMAND"] > 0)
    assert np.all(np.diff(served["DEMAND"], axis=1) < 0)  # higher price, lower demand
    assert served["DEMAND"][1, 2] > served["DEMAND"][2, 2]  # a best seller beats a slow mover


PARITY_TOL = 1e-5


@pytest.mark.stack
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_parity_1000_inputs(name, triton, local_models):
    """1,000 inputs per model (in batches of max_batch_size): Triton's outputs equal the local
    torch model's within 1e-5."""
    rng = np.random.default_rng(11)
    n = 1000
    if name == "fraud":
        x = fraud_inputs(common.read_meta(REPO, "fraud"), n)
        x[rng.random(x.shape) < 0.01] = np.nan  # missing values: imputed with the training mean
        inp, outs = "FEATURES", ["SCORE", "CONTRIB"]
        local = dict(zip(outs, local_models["fraud.mod"].predict(local_models["fraud"], x)))
    elif name == "pricing":
        base = pricing_inputs()
        x = (base[rng.integers(0, len(base), n)] + rng.normal(0, 0.3, (n, base.shape[1]))).astype(np.float32)
        inp, outs = "FEATURES", ["MULTIPLIERS", "DEMAND"]
        local = dict(zip(outs, local_models["pricing.mod"].predict(local_models["pricing"], x)))
    else:
        items = np.load(common.version_dir(REPO, "recommender") / "items.npy", allow_pickle=False)
        x = np.full((n, 20), b"", dtype=object)
        for r in range(n):
            k = int(rng.integers(0, 21))
            picks = rng.choice(len(items), size=k, replace=False)
            x[r, :k] = [items[i].encode() if rng.random() > 0.1 else b"unknown-%d" % i for i in picks]
        inp, outs = "ITEM_HISTORY", ["ITEMS", "SCORES", "KNOWN"]
        local = dict(zip(outs, local_models["recommender"](x)))
    served = {o: [] for o in outs}
    for i in range(0, n, 256):
        got = _infer(triton, name, {inp: x[i : i + 256]}, outs)
        for o in outs:
            served[o].append(got[o])
    served = {o: np.concatenate(v) for o, v in served.items()}
    for o in outs:
        assert served[o].shape == local[o].shape, o
        if served[o].dtype == object:
            continue
        if name == "pricing" and o == "DEMAND":  # units: relative tolerance on large demands
            np.testing.assert_allclose(served[o], local[o], rtol=PARITY_TOL, atol=PARITY_TOL)
        else:
            np.testing.assert_allclose(served[o], local[o], rtol=0, atol=PARITY_TOL)
    if name == "recommender":
        np.testing.assert_array_equal(served["KNOWN"], local["KNOWN"])
        same = served["ITEMS"] == local["ITEMS"]
        # an item may differ only where two scores tie within the tolerance
        assert same.mean() > 0.99
        for r, k in zip(*np.nonzero(~same)):
            assert abs(float(served["SCORES"][r, k]) - float(local["SCORES"][r, k])) <= PARITY_TOL


def _stats(client, name: str) -> tuple[int, int]:
    s = client.get_inference_statistics(name, as_json=True)["model_stats"][0]
    return int(s.get("inference_count", 0)), int(s.get("execution_count", 0))


@pytest.mark.stack
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_dynamic_batching_with_concurrent_requests(name, triton, local_models):
    """64 concurrent single-row requests: all answered correctly, in fewer executions."""
    import tritonclient.grpc as grpcclient

    if name == "fraud":
        rows = fraud_inputs(common.read_meta(REPO, "fraud"), 64)
        inp, outs = "FEATURES", ["SCORE", "CONTRIB"]
    elif name == "pricing":
        rows = np.tile(pricing_inputs(), (11, 1))[:64]
        inp, outs = "FEATURES", ["MULTIPLIERS", "DEMAND"]
    else:
        items = np.load(common.version_dir(REPO, "recommender") / "items.npy", allow_pickle=False)
        rows = np.full((64, 20), b"", dtype=object)
        for r in range(64):
            rows[r, : 1 + r % 5] = [items[(r * 37 + j * 11) % len(items)].encode() for j in range(1 + r % 5)]
        inp, outs = "ITEM_HISTORY", ["ITEMS", "SCORES", "KNOWN"]

    batched = False
    for _attempt in range(3):
        inf0, exe0 = _stats(triton, name)
        results: queue.Queue = queue.Queue()
        for r in range(len(rows)):
            i = grpcclient.InferInput(inp, [1, rows.shape[1]], "BYTES" if rows.dtype == object else "FP32")
            i.set_data_from_numpy(rows[r : r + 1])
            triton.async_infer(name, [i], callback=lambda result, error, r=r: results.put((r, result, error)),
                               outputs=[grpcclient.InferRequestedOutput(o) for o in outs])
        got = {}
        for _ in range(len(rows)):
            r, res, err = results.get(timeout=30)
            assert err is None, err
            got[r] = {o: res.as_numpy(o) for o in outs}
        # every answer is the in-process answer for its own row
        order = sorted(got)
        served = {o: np.concatenate([got[r][o] for r in order]) for o in outs}
        if name == "fraud":
            s, c = local_models["fraud.mod"].predict(local_models["fraud"], rows)
            np.testing.assert_allclose(served["SCORE"], s, rtol=0, atol=TOL)
            np.testing.assert_allclose(served["CONTRIB"], c, rtol=0, atol=TOL)
        elif name == "pricing":
            _, d = local_models["pricing.mod"].predict(local_models["pricing"], rows)
            np.testing.assert_allclose(served["DEMAND"], d, rtol=TOL, atol=TOL)
        else:
            _check_rec(served, local_models["recommender"](rows), rows)
        inf1, exe1 = _stats(triton, name)
        assert inf1 - inf0 >= len(rows)
        if exe1 - exe0 < inf1 - inf0:  # at least one execution served several requests
            batched = True
            break
    assert batched, f"{name}: no request was batched with another in 3 rounds of {len(rows)} concurrent requests"


@pytest.mark.stack
def test_model_version_readable_from_meta(triton):
    """The lead stamps decisions with meta.json's version; Triton serves version dir 1."""
    for name in MODEL_NAMES:
        md = triton.get_model_metadata(name, as_json=True)
        assert md["versions"] == [str(common.TRITON_VERSION)]
        assert common.read_meta(REPO, name)["triton_version"] == common.TRITON_VERSION
        assert json.loads((common.version_dir(REPO, name) / "meta.json").read_text())["version"].startswith(name)
