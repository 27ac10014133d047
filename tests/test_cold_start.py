"""Cold start beyond global popularity: per-category trending items counted per view in Redis
(CATEGORY_TRENDS_ADD, features/lua.py) and the cold-start lists built from them (scorers/recommender.py).

* the pure functions: the category mixture, the list with its fill, the version;
* the Redis counts on a real Valkey: once per event under redelivery (with and without Kafka
  positions), decayed exactly as a hand computation (epoch rescaling included), bounded to the
  kept N, TTL'd, and equal to the offline evaluation's mirror (evaluation/recs_coldstart.py) on real
  Taobao clicks; hostile category ids (``:``, ``{``, ``}``, 128 characters, unicode, names of internal
  keys) get keys of their own, one hash slot per call;
* over the real stack (its Valkey and tritonserver, the clicks role's processor in-process): a
  user the model cannot know who viewed a category gets that category's trending items
  (``trending-categories``), not the global list; one without category views gets the global
  trending items; with Triton down (a dead port) the same users still get safe lists (``degraded``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from redis.crc import key_slot

from evaluation.recs_coldstart import Trends
from features.client import FeatureClient
from features.keys import FeatureKeys
from features.snapshot import temporary_redis
from features.store import TREND_SHARD_KEEP
from monitoring.metrics import Metrics
from replay.sources import taobao_clicks
from scorers.recommender import CATEGORIES_VERSION, TRENDING_VERSION, Recommender, category_candidates, cold_list
from scorers.triton import TritonScorer
from streams.clicks import ClickProcessor
from streams.validation import RawMessage
from streamscore.events import Click
from streamscore.settings import Settings

from conftest import free_port, isolated
from test_keys import HOSTILE, OneSlotClient

T0 = 1.7e9


@pytest.fixture(scope="module")
def redis_url():
    with temporary_redis() as url:
        yield url


def _run(url: str, fn, client_cls=FeatureClient, **overrides):
    async def go():
        client = client_cls.connect(Settings.from_env({}, redis_url=url, **overrides))
        await client.redis.flushdb()
        try:
            return await fn(client)
        finally:
            await client.close()
    return asyncio.run(go())


def _views(pairs, t0=T0, step=1.0, prefix="e"):
    return [Click(event_id=f"{prefix}{n}", user_id=f"u{n % 7}", item_id=item, category_id=cat, action="view",
                  ts=t0 + step * n) for n, (cat, item) in enumerate(pairs)]


# -- pure functions ---------------------------------------------------------------------------------------

def test_the_mixture_weighs_categories_by_the_users_views_and_items_by_their_share():
    trends = {"a": [("x", 6.0), ("y", 2.0)], "b": [("z", 10.0), ("x", 10.0)]}
    got = dict(category_candidates([("a", 1.0), ("b", 1.0)], trends, 2))
    assert got == pytest.approx({"x": 0.5 * 0.75 + 0.5 * 0.5, "y": 0.5 * 0.25, "z": 0.5 * 0.5})
    # the time decay cancels: the same category trends scaled by any factor give the same scores
    scaled = {c: [(j, w * 1e-6) for j, w in rows] for c, rows in trends.items()}
    assert dict(category_candidates([("a", 1.0), ("b", 1.0)], scaled, 2)) == pytest.approx(got)
    assert category_candidates([("none", 5.0)], trends, 3) == []


def test_a_cold_list_leaves_history_out_fills_and_says_where_it_came_from():
    r = cold_list(["x", "p"], [("x", 0.9), ("y", 0.1)], [("p", 5.0), ("q", 4.0), ("y", 3.0), ("r", 2.0)], 3,
                  TRENDING_VERSION)
    assert r.items == ["y", "q", "r"] and r.cold_start and r.model_version == CATEGORIES_VERSION
    only_fill = cold_list(["p"], [("p", 1.0)], [("p", 5.0), ("q", 4.0)], 3, TRENDING_VERSION, degraded=True)
    assert only_fill.items == ["q"] and only_fill.model_version == TRENDING_VERSION and only_fill.degraded
    assert cold_list([], [], [], 3).items == []


# -- the Redis counts -------------------------------------------------------------------------------------

def test_trends_count_each_view_once_under_redelivery(redis_url):
    clicks = _views([("c1", f"i{n % 4}") for n in range(30)] + [(None, "i9")] * 3)
    clicks.append(Click(event_id="cart", user_id="u0", item_id="i0", category_id="c1", action="add_to_cart", ts=T0))
    pos = [("clicks:0", n) for n in range(len(clicks))]

    async def scenario(client):
        key = client.keys.category_trend("c1")
        first = await client.apply_category_trends(clicks, pos)
        state = await client.redis.zrange(key, 0, -1, withscores=True)
        again = await client.apply_category_trends(clicks[10:], pos[10:])  # redelivered after a crash
        again += await client.apply_category_trends(clicks, pos)
        same = await client.redis.zrange(key, 0, -1, withscores=True)
        await client.redis.flushdb()
        nopos = await client.apply_category_trends(clicks)  # a replay from files: deduplicated by event id
        nopos_again = await client.apply_category_trends(clicks[5:])
        replayed = await client.redis.zrange(key, 0, -1, withscores=True)
        return first, state, again, same, nopos, nopos_again, replayed

    first, state, again, same, nopos, nopos_again, replayed = _run(redis_url, scenario, rec_trend_half_life_s=0.0)
    assert first == 33 and again == 0 and same == state  # the cart event is no view
    assert nopos == 33 and nopos_again == 0 and replayed == state
    assert dict(state) == {b"": -T0, b"i0": 8.0, b"i1": 8.0, b"i2": 7.0, b"i3": 7.0}  # epoch member, then the counts


def test_decay_matches_a_hand_computation_across_epoch_rescales(redis_url):
    hl = 10.0
    # views of 'a' at 0 s, 5 s, 400 s (past 32 half-lives: rescaled to a new epoch) and of 'b' at 405 s
    clicks = _views([("c", "a"), ("c", "a"), ("c", "a"), ("c", "b")])
    clicks = [c.model_copy(update={"ts": T0 + dt}) for c, dt in zip(clicks, (0.0, 5.0, 400.0, 405.0))]
    at = T0 + 410.0

    async def scenario(client):
        await client.apply_category_trends(clicks[:2], [("clicks:0", 0), ("clicks:0", 1)])
        await client.apply_category_trends(clicks[2:], [("clicks:0", 2), ("clicks:0", 3)])
        return (await client.category_trends(["c"], 10, at))["c"], await client.redis.zscore(
            client.keys.category_trend("c"), "")

    got, epoch = _run(redis_url, scenario, rec_trend_half_life_s=hl)
    hand = {"a": 2 ** (-410 / hl) + 2 ** (-405 / hl) + 2 ** (-10 / hl), "b": 2 ** (-5 / hl)}
    assert dict(got) == pytest.approx(hand, rel=1e-12) and [j for j, _ in got] == ["b", "a"]
    assert epoch == -(T0 + 400.0)  # the epoch moved to the view that crossed 32 half-lives


def test_trends_are_bounded_to_the_kept_n_and_ttld(redis_url):
    # rounds r = 0..39 view every item k >= r: item k is viewed k + 1 times, the 5 kept are the 5 most viewed
    pairs = [("c", f"i{k:02d}") for r in range(40) for k in range(r, 40)]
    clicks = _views(pairs, step=0.01)

    async def scenario(client):
        pos = [("clicks:0", n) for n in range(len(clicks))]
        for i in range(0, len(clicks), 97):  # batches cutting through the rounds
            await client.apply_category_trends(clicks[i:i + 97], pos[i:i + 97])
        key = client.keys.category_trend("c")
        shards = [await client.redis.zcard(k) for k in client.keys.shards("trend", "cat")]
        return (await client.redis.zcard(key), await client.category_trends(["c"], 50, clicks[-1].ts),
                await client.redis.ttl(key), max(shards), [await client.redis.ttl(k) async for k in
                                                           client.redis.scan_iter("ss:*")])

    card, top, ttl, shard_card, ttls = _run(redis_url, scenario, rec_trend_keep=5, rec_trend_half_life_s=0.0)
    assert card == 6 and [j for j, _ in top["c"]] == [f"i{k}" for k in range(39, 34, -1)]  # 5 + the epoch member
    assert [w for _, w in top["c"]] == [40.0, 39.0, 38.0, 37.0, 36.0]
    assert 0 < ttl <= Settings.from_env({}).feature_ttl_s and all(t > 0 for t in ttls)
    assert shard_card <= TREND_SHARD_KEEP + 1



def test_a_full_trending_shard_stays_compact_and_keeps_the_strongest(redis_url):
    """Past TREND_SHARD_KEEP items a global shard keeps the strongest (a newcomer enters in the weakest's
    place only when stronger, ties: the greater id stays) without ever passing TREND_SHARD_KEEP + 1 entries,
    so Redis keeps it in its compact encoding (listpack) rather than a skiplist, ~4x the bytes."""
    n_items = TREND_SHARD_KEEP + 60
    # item k viewed 1 + (k % 3) times, in one category (one shard), in batches cutting through the items
    pairs = [("c", f"i{k:03d}") for k in range(n_items) for _ in range(1 + k % 3)]
    clicks = _views(pairs, step=0.01)

    async def scenario(client):
        pos = [("clicks:0", n) for n in range(len(clicks))]
        for i in range(0, len(clicks), 89):
            await client.apply_category_trends(clicks[i:i + 89], pos[i:i + 89])
        shard = client.keys.trend_shard(client.keys.trend_tag("c", "i000"))
        return (await client.redis.zrange(shard, 0, -1, withscores=True),
                await client.redis.object("encoding", shard))

    rows, encoding = _run(redis_url, scenario, rec_trend_half_life_s=0.0)
    assert encoding == b"listpack" and len(rows) == TREND_SHARD_KEEP + 1  # the items and the epoch member
    kept = {m.decode(): w for m, w in rows if m}
    # what adding every view and trimming to the strongest would keep: each item's count, the largest,
    # but an item in once a newcomer passed it is gone: the 3-view items all, then 2-view ones, latest first
    views = {f"i{k:03d}": 1 + k % 3 for k in range(n_items)}
    assert set(kept.values()) <= {1.0, 2.0, 3.0} and all(kept[i] == views[i] for i in kept)
    assert sum(1 for v in views.values() if v == 3) <= len(kept)
    assert all(i in kept for i, v in views.items() if v == 3)

def test_a_full_category_renews_itself_through_the_decay(redis_url):
    """A new view weighs 2x more per half-life than an old one: a newcomer displaces the weakest of a full
    category once its decayed weight exceeds it (no decay: the first kept stay until they age out by TTL)."""
    old = _views([("c", i) for i in ("a", "b", "c") for _ in range(3)], step=0.1)
    late = _views([("c", "d")], t0=T0 + 100.0, prefix="late")  # 10 half-lives later: weighs 1024 old views

    async def scenario(client):
        await client.apply_category_trends(old + late)
        return (await client.category_trends(["c"], 10, T0 + 100.0))["c"]

    top = _run(redis_url, scenario, rec_trend_keep=3, rec_trend_half_life_s=10.0)
    assert [j for j, _ in top] == ["d", "c", "b"] and top[0][1] == pytest.approx(1.0)


def test_hostile_category_ids_get_keys_of_their_own_in_one_slot_per_call(redis_url):
    cats = [c for c in HOSTILE if c.strip() and c.isprintable()] + ["c" * 128, "ss:cat:{cat.1}:x:trend", "trend",
                                                                      "ss:g:trend:{cat.3}", "日本:{語}"]
    accepted = []
    for c in cats:  # only what the stream accepts (the ids' character rules)
        try:
            _views([(c, "x")])
            accepted.append(c)
        except ValueError:
            pass
    valid = _views([(c, f"item-of-{n}") for n, c in enumerate(accepted) for _ in range(n % 3 + 1)])
    kept = sorted({c.category_id for c in valid})
    assert len(kept) >= 30 and "c" * 128 in kept and "日本:{語}" in kept

    async def scenario(client):
        OneSlotClient.calls = 0
        counted = await client.apply_category_trends(valid, [("clicks:0", n) for n in range(len(valid))])
        got = await client.category_trends(kept, 10, T0 + 1e4)
        reads = await client.cold_start_reads(["someone"], 10, T0 + 1e4)
        keys = [k.decode() async for k in client.redis.scan_iter("*")]
        return counted, got, keys, OneSlotClient.calls

    counted, got, keys, calls = _run(redis_url, scenario, client_cls=OneSlotClient, rec_trend_half_life_s=0.0)
    assert counted == len(valid) and calls > 64
    want = {c.category_id: {} for c in valid}
    for c in valid:
        want[c.category_id][c.item_id] = want[c.category_id].get(c.item_id, 0.0) + 1.0
    assert {c: dict(rows) for c, rows in got.items()} == want  # each category only its own items
    cat_keys = {k for k in keys if k.startswith("ss:cat:")}
    assert cat_keys == {FeatureKeys.category_trend(c) for c in kept}
    assert all(k.count(":") == 4 and k.endswith(":trend") for k in cat_keys)  # ss:cat:{tag}:<escaped>:trend
    internal = set(FeatureKeys.shards("trend", "cat")) | set(FeatureKeys.shards("trend-seen", "cat")) | set(
        FeatureKeys.shards("off", "cat"))
    assert not cat_keys & internal and set(keys) - cat_keys <= internal
    for c in kept:
        k = FeatureKeys.category_trend(c)
        assert key_slot(k.encode()) == key_slot(FeatureKeys.trend_shard(FeatureKeys.trend_tag(c, "x")).encode())


def test_redis_trends_equal_the_offline_mirror_on_real_clicks(redis_url):
    clicks = list(taobao_clicks(Settings.from_env().data_dir, limit=6000))
    hl, keep = 30.0, 20  # decay and epoch rescaling both happen within these minutes; trimming too

    async def scenario(client):
        for i in range(0, len(clicks), 500):
            await client.apply_category_trends(clicks[i:i + 500], [("clicks:0", n) for n in range(i, i + 500)])
        cats = sorted({c.category_id for c in clicks})
        ts = clicks[-1].ts
        live = await client.category_trends(cats, keep, ts)
        _, trending, _ = await client.cold_start_reads([], 30, ts)
        return cats, ts, live, trending

    cats, ts, live, trending = _run(redis_url, scenario, rec_trend_half_life_s=hl, rec_trend_keep=keep)
    mirror = Trends(hl, keep)
    for c in clicks:
        if c.action == "view":
            mirror.view(c.category_id, c.item_id, c.ts)
    offline = {c: mirror.category(c, ts, keep) for c in cats if mirror.category(c, ts, keep)}
    assert len(live) > 500 and set(live) == set(offline)
    assert max(len(d.w) for d in mirror.cats.values()) == keep
    for c in offline:
        assert [j for j, _ in live[c]] == [j for j, _ in offline[c]], c
        assert [w for _, w in live[c]] == pytest.approx([w for _, w in offline[c]], rel=1e-9, abs=1e-300)
    want = mirror.trending(ts, 30)
    assert [j for j, _ in trending] == [j for j, _ in want]
    assert [w for _, w in trending] == pytest.approx([w for _, w in want], rel=1e-9)


# -- over the real stack: the clicks role's refresh ---------------------------------------------------------

@contextlib.asynccontextmanager
async def _click_processor(settings):
    """The clicks role's processor over the real Valkey (emptied) and Triton, closed after."""
    metrics = Metrics()
    features = FeatureClient.connect(settings)
    await features.redis.flushdb()
    triton = TritonScorer(settings, metrics)
    try:
        yield ClickProcessor(settings, features, Recommender(triton, settings), metrics)
    finally:
        await triton.close()
        await features.close()


def _messages(topic: str, clicks, start: int = 0):
    return [RawMessage(topic, 0, start + n, c.user_id.encode(), c.to_bytes(), time.time())
            for n, c in enumerate(clicks)]


def test_a_cold_user_gets_their_categorys_trending_items_and_triton_down_a_safe_list(stack_settings):
    base = isolated(stack_settings, "coldst", 5, rec_online_blend=False, rec_top_k=5)
    now = time.time() - 60
    # 'hot' items trend in category cat:{hot} (unknown to the model); the globally most viewed are 'big'
    hot = [Click(event_id=f"h{u}-{k}", user_id=f"fan{u}", item_id=f"tb:hot-{k}", category_id="cat:{hot}", action="view",
                 ts=now + u) for u in range(8) for k in range(6 - u % 3)]
    big = [Click(event_id=f"b{u}-{k}", user_id=f"crowd{u}", item_id=f"tb:big-{k}", category_id="cat:big",
                 action="view", ts=now + u) for u in range(40) for k in range(6)]
    cold = Click(event_id="cold-1", user_id="cold-user", item_id="tb:never-seen-by-the-model", category_id="cat:{hot}",
                 action="view", ts=now + 50)
    plain = Click(event_id="plain-1", user_id="plain-user", item_id="tb:another-unknown", action="view", ts=now + 50)

    async def scenario(settings):
        async with _click_processor(settings) as proc:
            await proc.clicks(_messages(settings.topic_clicks, hot + big))
            await proc.refresh_recommendations(10_000)
            await proc.clicks(_messages(settings.topic_clicks, [cold, plain], start=len(hot) + len(big)))
            await proc.refresh_recommendations(10_000)
            degraded = proc.metrics.degraded.labels("recommendation")._value.get()
            return {u: await proc.features.recommendations(u) for u in ("cold-user", "plain-user")}, degraded

    up = asyncio.run(scenario(base))
    dead = free_port()
    down = asyncio.run(scenario(base.replace(triton_grpc_url=f"127.0.0.1:{dead}", triton_http_url=f"127.0.0.1:{dead}",
                                             triton_retries=0, triton_timeout_ms=200)))
    hot_items = [f"tb:hot-{k}" for k in (0, 1, 2, 3, 4)]  # fans viewed k < 6 - u % 3: 0..3 by all, 4 by 5/8, 5 by 2/8
    big_items = {f"tb:big-{k}" for k in range(6)}
    assert up[1] == 0 and down[1] > 0  # Triton answered / was down for every refresh
    for got, _ in (up, down):
        c, p = got["cold-user"], got["plain-user"]
        assert c["cold_start"] and c["model_version"] == CATEGORIES_VERSION, c
        assert set(c["items"][:4]) == set(hot_items[:4]) and c["items"][4] == "tb:hot-4", c
        assert cold.item_id not in c["items"]
        # no category views: the global trending items (the 'big' ones, viewed most), never their own item
        assert p["cold_start"] and p["model_version"] == TRENDING_VERSION, p
        assert set(p["items"]) <= big_items and len(p["items"]) == 5 and plain.item_id not in p["items"]


def test_users_wait_for_a_refresh_only_while_the_refresh_runs(stack_settings):
    """With REC_REFRESH_INTERVAL_S=0 nothing drains the users marked for a refresh: the worker must not mark
    them (it kept every user it ever saw, ~57,000 on the Taobao sample, and the cycle collector walked them)."""
    base = isolated(stack_settings, "pending", 5, rec_online_blend=False)
    now = time.time() - 60
    clicks = [Click(event_id=f"p{u}-{k}", user_id=f"waiting{u}", item_id=f"tb:p-{k}", action="view", ts=now + u)
              for u in range(30) for k in range(2)]

    async def pending(settings) -> tuple:
        async with _click_processor(settings) as proc:
            await proc.clicks(_messages(settings.topic_clicks, clicks))
            return dict(proc.pending_recs), (await proc.features.redis.dbsize(), await proc.features.popular_items(5))

    on, on_counts = asyncio.run(pending(base.replace(rec_refresh_interval_s=0.2)))
    off, off_counts = asyncio.run(pending(base.replace(rec_refresh_interval_s=0.0)))
    assert sorted(on) == sorted(f"waiting{u}" for u in range(30))
    assert set(on["waiting7"][0]) == {"tb:p-0", "tb:p-1"}  # the user's recent items, for the refresh
    assert off == {}
    assert off_counts == on_counts and off_counts[0] > 0 and len(off_counts[1]) == 2  # the same features
