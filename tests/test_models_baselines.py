"""Recommendation baselines and the session protocol (by hand and on the real data), and the
elasticity fits (synthetic recovery, real-data sanity)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models import elasticity, metrics, rec_baselines as rb, recommender, sessions
from streamscore.settings import Settings

DATA_DIR = Path(Settings.from_env().data_dir)


@pytest.fixture(scope="module")
def toy() -> sessions.SessionData:
    """Training sessions a b c | a b | b c | a d (times 1..4); one test session c a b d."""
    train = [(["a", "b", "c"], 1.0), (["a", "b"], 2.0), (["b", "c"], 3.0), (["a", "d"], 4.0)]
    test = [(["c", "a", "b", "d"], [True] * 4)]
    return sessions._build("toy", train, test, {})


def ids(data, top):
    return [data.items[i - 1] for i in top]


def test_toy_indexing_and_protocol(toy):
    # popularity a 3, b 3, c 2, d 1 (ties by id) -> indices 1..4
    assert toy.items.tolist() == ["a", "b", "c", "d"] and toy.counts.tolist() == [0, 3, 3, 2, 1]
    # every next click of the test session: 3 targets with growing prefixes
    assert toy.target_ids == ["a", "b", "d"]
    assert [p for p in toy.prefix_ids] == [["c"], ["c", "a"], ["c", "a", "b"]]
    assert toy.new_mask().tolist() == [True, True, True]
    assert toy.info["targets"] == 3 and toy.info["targets_unseen_in_training"] == 0


def test_popularity(toy):
    assert ids(toy, rb.Popularity(toy).recommend(np.array([1]), 4)) == ["a", "b", "c", "d"]
    assert ids(toy, rb.Popularity(toy).recommend(np.array([1]), 4, exclude=np.array([1, 3]))) == ["b", "d"]


def test_markov_uses_last_item_successors(toy):
    m = rb.Markov(toy)
    # after a: b twice, d once; then popularity fills (a, c)
    assert ids(toy, m.recommend(np.array([3, 1]), 4)) == ["b", "d", "a", "c"]
    assert ids(toy, m.recommend(np.array([3, 1]), 4, exclude=np.array([3, 1]))) == ["b", "d"]
    # an item never followed by anything: pure popularity
    assert ids(toy, m.recommend(np.array([4]), 2)) == ["a", "b"]


def test_item_knn_cosine_by_hand(toy):
    m = rb.ItemKNN(toy, lam=0.0, alpha=0.5)
    a, b, c, d = 1, 2, 3, 4
    # sessions with a: 3, b: 3, c: 2, d: 1; together: ab 2, ac 1, ad 1
    assert m.S[a, b] == pytest.approx(2 / 3)
    assert m.S[a, c] == pytest.approx(1 / np.sqrt(6))
    assert m.S[a, d] == pytest.approx(1 / np.sqrt(3))
    assert m.S[a, a] == pytest.approx(1.0)
    assert ids(toy, m.recommend(np.array([c, a]), 4)) == ["a", "b", "d", "c"]
    assert ids(toy, m.recommend(np.array([c, a]), 4, exclude=np.array([c, a]))) == ["b", "d"]
    # lambda shrinks rare items: (n_i + 20)^0.5 (n_j + 20)^0.5
    m20 = rb.ItemKNN(toy)
    assert m20.S[a, d] == pytest.approx(1 / np.sqrt(23 * 21))


def test_vsknn_by_hand(toy):
    # prefix c, a: weights c 1/2, a 1 -> sims s1 {a b c} 1.5, s2 {a b} 1, s3 {b c} 0.5, s4 {a d} 1
    m = rb.VSKNN(toy, k=2, sample_size=500)
    idx, val = m.scores(np.array([3, 1]))
    got = dict(zip(ids(toy, idx), val))
    # neighbours s1 and s2 (tie with s4 broken by session order): a 2.5, b 2.5, c 1.5
    assert got == pytest.approx({"a": 2.5, "b": 2.5, "c": 1.5})
    assert ids(toy, m.recommend(np.array([3, 1]), 4)) == ["a", "b", "c", "d"]
    assert ids(toy, m.recommend(np.array([3, 1]), 4, exclude=np.array([3, 1]))) == ["b", "d"]
    # sample_size 1: only the most recent candidate session (s4: a d)
    idx, val = rb.VSKNN(toy, k=2, sample_size=1).scores(np.array([3, 1]))
    assert dict(zip(ids(toy, idx), val)) == pytest.approx({"a": 1.0, "d": 1.0})


def test_top_k_never_returns_padding_or_excluded():
    top = rb.top_k(np.array([0, 5, 3, 7]), np.array([9.0, 1.0, 1.0, 0.0]), 4, 8, exclude=np.array([1]))
    assert top.tolist() == [3, 5, 2, 4]  # 0 dropped; 3 and 5 tie -> index order; then 2, 4 (1 excluded)


def test_recency_history_matches_the_live_store():
    assert sessions.recency_history(["a", "b", "a", "c"]) == ["c", "a", "b"]
    assert sessions.recency_history(["a", "b", "a", "c"], 2) == ["c", "a"]
    h = recommender.encode_history(["x", "a", "b", "a"], {"a": 1, "b": 2})
    assert h.tolist() == [1, 2, 0] + [0] * 17


# --- real data --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def yoochoose():
    return sessions.load("yoochoose", DATA_DIR)


def test_yoochoose_protocol_counts(yoochoose):
    i = yoochoose.info
    # SOURCE.txt: 70,278 training clicks in 17,794 sessions; 13,568 test clicks in 3,416 sessions
    assert (i["train_clicks"], i["train_sessions"], i["items"]) == (70278, 17794, 2933)
    assert i["test_sessions"] == 3416 and i["targets"] == 13568 - 3416  # every next click
    assert i["targets_unseen_in_training"] == 0
    assert i["targets_new"] + i["targets_repeat"] == i["targets"]


def test_markov_and_knn_beat_popularity_and_random_on_yoochoose(yoochoose):
    d = yoochoose
    n = 3000
    res = {}
    for cls in (rb.Popularity, rb.Markov, rb.ItemKNN, rb.VSKNN):
        m = cls(d)
        top = np.stack([m.recommend(p, 20) for p in d.prefixes[:n]])
        res[cls.name] = metrics.hr_mrr(top, d.targets[:n])["hr"]
    random_hr = 20 / d.n_items
    assert res["popularity"] > random_hr
    assert res["markov"] > 3 * res["popularity"]
    assert res["item_knn"] > res["popularity"] and res["v_sknn"] > res["popularity"]


def test_taobao_time_split_has_no_leakage():
    d = sessions.load("taobao", DATA_DIR)
    t_split = d.info["t_split"]
    assert (d.train_time < t_split).all()  # training sees nothing from the test period
    assert d.info["targets"] == len(d.targets) > 1000
    assert d.item_category is not None and (d.item_category[1:] > 0).all()
    # the served model's vocabulary is built from training clicks only
    vocab = set(recommender.vocabulary(d, 2))
    assert vocab <= set(d.items.tolist())


# --- elasticity ---------------------------------------------------------------------------------


def test_two_way_fixed_effects_recover_a_known_elasticity():
    rng = np.random.default_rng(3)
    items, weeks = np.repeat(np.arange(200), 30), np.tile(np.arange(30), 200)
    item_level = rng.normal(0, 2, 200)[items]  # dear items sell less: confounds a pooled fit
    log_p = -0.8 * item_level + rng.normal(0, 0.2, len(items))
    y = item_level + 0.3 * np.sin(weeks) - 1.3 * log_p + rng.normal(0, 0.1, len(items))
    x_t = elasticity.two_way_demean(log_p, items, weeks)
    y_t = elasticity.two_way_demean(y, items, weeks)
    assert float(x_t @ y_t / (x_t @ x_t)) == pytest.approx(-1.3, abs=0.05)
    pooled = np.polyfit(log_p, y, 1)[0]
    assert abs(pooled + 1.3) > 0.3  # the pooled slope is far off: why the within-item fit exists


def test_elasticity_fits_on_real_data_have_the_right_sign():
    av = elasticity.avocado(DATA_DIR)
    assert av["series"] == 108
    assert all(s["median"] < 0 for s in av["elasticity_by_type"].values())
    rp = elasticity.retail_price(DATA_DIR)
    assert rp["elasticity_common"] < 0 and rp["test_rows"] > 50
