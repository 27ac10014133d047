"""Online features over a real Valkey: point in time, idempotent, same offline as online."""

from __future__ import annotations

import asyncio
import random

import pytest

from conftest import with_feature_client
from features.client import FeatureClient
from features.store import COVIS_KEEP, COVIS_READ, INLINE_WINDOW_MAX
from features.snapshot import order_snapshots, temporary_redis
from replay.sources import fraud_orders, online_retail_orders
from streamscore.events import CatalogItem, Click, Order, OrderLine
from streamscore.settings import Settings


@pytest.fixture(scope="module")
def redis_url():
    with temporary_redis() as url:
        yield url


def _order(oid: str, ts: float, user="u1", device="d1", amount=10.0) -> Order:
    return Order(order_id=oid, user_id=user, amount=amount, device_id=device, ts=ts)


def test_point_in_time_and_idempotent(redis_url):
    t = 1.6e9
    orders = [_order("a", t), _order("b", t + 60, user="u2"), _order("c", t + 120, user="u3", amount=90.0)]

    async def scenario(client: FeatureClient):
        first = await client.apply_orders(orders)
        again = await client.apply_orders(orders)  # redelivery after a crash: nothing changes
        late = await client.apply_orders([_order("z", t + 30, user="u9")])  # out of order, between a and b
        return first, again, late, await client.read_order(_order("q", t + 60, user="u4"))

    first, again, late, probe = asyncio.run(with_feature_client(redis_url, scenario))
    assert [f["device_users_30d"] for f in first] == [0, 1, 2]
    assert [f["device_orders_1h"] for f in first] == [0, 1, 2]
    # a replayed order sees exactly what it saw the first time (events strictly before it)
    assert again == first
    assert late[0]["device_users_30d"] == 1  # only "a" is before t+30; b and c are in its future
    assert probe["device_users_30d"] == 2  # a and the late z, not b (same time) nor c (future)


def test_click_writes_idempotent_and_recent_items_newest_first(redis_url):
    t = 1.6e9
    clicks = [Click(event_id=f"e{i}", user_id="u", item_id=f"i{i % 3}", action="view", ts=t + i) for i in range(6)]

    async def window(client: FeatureClient):
        uh = client.keys.user("u")
        z = await client.redis.zrange(client.keys.user_clicks(uh, "view"), 0, -1)
        inline = [f for f in await client.redis.hkeys(client.keys.user_state(uh)) if f.startswith(b"ev")]
        views = (await client.run([client.plans.user_clicks_script("u", t + 100)]))[0][2]  # views in 24 h
        return len(z), len(inline), views

    async def scenario(client: FeatureClient):
        recent, _ = await client.apply_clicks(clicks, 20)
        first = await window(client)
        await client.apply_clicks(clicks, 20)
        return recent, first, await window(client)

    recent, first, again = asyncio.run(with_feature_client(redis_url, scenario))
    assert recent == {"u": ["i2", "i1", "i0"]}
    assert first == again == (0, 6, 6)  # a small window: inline in the user's hash, no sorted set


def test_a_window_past_the_inline_max_moves_into_its_sorted_set_exactly_once(redis_url):
    """INLINE_WINDOW_MAX clicks stay in the user's hash; the next one moves them all into the window's
    sorted set, whatever the batching, and a redelivery of any of them changes nothing."""
    t = 1.6e9
    n = INLINE_WINDOW_MAX + 4
    clicks = [Click(event_id=f"e{i}", user_id="u", item_id=f"i{i}", action="view", ts=t + i) for i in range(n)]
    carts = [Click(event_id=f"c{i}", user_id="u", item_id="i0", action="add_to_cart", ts=t + i) for i in range(2)]

    async def scenario(client: FeatureClient):
        uh = client.keys.user("u")
        await client.apply_clicks(clicks[:INLINE_WINDOW_MAX] + carts, 20)
        before = await client.redis.exists(client.keys.user_clicks(uh, "view"))
        for c in clicks[INLINE_WINDOW_MAX:]:  # one at a time, then everything again (a redelivery)
            await client.apply_clicks([c], 20)
        await client.apply_clicks(clicks + carts, 20)
        z = await client.redis.zrange(client.keys.user_clicks(uh, "view"), 0, -1)
        fields = await client.redis.hkeys(client.keys.user_state(uh))
        reply = (await client.run([client.plans.user_clicks_script("u", t + 100)]))[0]
        return before, sorted(z), sorted(f for f in fields if f.startswith(b"e")), reply

    before, z, inline, reply = asyncio.run(with_feature_client(redis_url, scenario))
    assert before == 0
    assert z == sorted(c.event_id.encode() for c in clicks)  # all moved, none lost or doubled
    assert inline == [b"eac0", b"eac1"]  # the carts' window is still small
    assert [int(x) for x in reply[:9]] == [n, n, n, 2, 2, 2, 0, 0, 0]  # views, carts, purchases per 5m/1h/24h


def test_snapshot_equals_live_path_in_any_batching(redis_url, tmp_path):
    """Parity on real data: the offline snapshot (batches of 500) equals one-at-a-time live processing."""
    s = Settings.from_env({}, redis_url=redis_url)
    orders = list(fraud_orders(s.data_dir, limit=800)) + list(online_retail_orders(s.data_dir, limit=200))
    orders.sort(key=lambda o: o.ts)

    async def one_by_one(client: FeatureClient):
        return [(await client.apply_orders([o]))[0] for o in orders]

    live = asyncio.run(with_feature_client(redis_url, one_by_one))

    async def offline():
        client = FeatureClient.connect(s)
        await client.redis.flushdb()
        await client.close()
        return await order_snapshots(orders, s)

    frame = asyncio.run(offline())
    assert len(frame) == len(orders)
    for row, values in zip(frame.to_dict("records"), live):
        assert {k: row[k] for k in values} == pytest.approx(values, nan_ok=True)
    assert frame["device_users_30d"].max() >= 1  # the slice has shared devices: the check is not vacuous


def test_item_and_checkout_features(redis_url):
    t = 1.6e9
    clicks = [Click(event_id=f"v{i}", user_id=f"u{i % 2}", item_id="it", category_id="c1", action="view", ts=t + i)
              for i in range(8)]
    clicks += [Click(event_id="p1", user_id="u0", item_id="it", action="purchase", ts=t + 10)]

    async def scenario(client: FeatureClient):
        await client.apply_clicks(clicks, 20)
        await client.apply_catalog([CatalogItem(item_id="it", price=9.5, cost=5.0, stock=3, ts=t)])
        items = await client.item_features(["it", "unknown"], t + 20)
        early = await client.item_features(["it"], t + 3)  # point in time: only the views before t+3
        await client.fold_globals()  # the funnel transitions over all users, as checkout reads them
        checkout = await client.read_checkout(_order("o", t + 20, user="u0"))
        browsing = await client.read_checkout(_order("o2", t + 20, user="u1"))
        return items, early, checkout, browsing

    items, early, checkout, browsing = asyncio.run(with_feature_client(redis_url, scenario))
    assert items["it"] == {"item_views_1h": 8, "item_views_24h": 8, "item_carts_24h": 0, "item_purchases_24h": 1,
                           "item_conversion_24h": 1 / 8, "price": 9.5, "cost": 5.0, "stock": 3}
    assert items["unknown"]["item_views_24h"] == 0 and "price" not in items["unknown"]
    assert early["it"]["item_views_24h"] == 3
    assert checkout["user_views_24h"] == 4 and checkout["user_purchases_24h"] == 1
    assert checkout["funnel_state"] == 3 and checkout["top_category_share"] == 1.0
    # Markov estimate from browse: 6 browse->browse and 1 browse->purchase transitions over both users
    assert browsing["funnel_state"] == 1 and browsing["funnel_purchase_prob"] == pytest.approx(1 / 7)
    assert checkout["funnel_purchase_prob"] == 0  # nobody has moved on from "purchase" yet


def test_catalog_is_monotonic_in_event_time_and_keeps_the_pricing_loops_price(redis_url):
    """A redelivered or late catalog entry never undoes a newer one, and an entry no newer than the
    pricing loop's last change keeps the loop's price; the first price seen stays ref_price. Each
    order's sales value per item is recorded once, however often the order is applied."""
    t = 1.6e9

    async def scenario(client: FeatureClient):
        item = lambda price, stock, ts: CatalogItem(item_id="c", price=price, cost=5.0, stock=stock, ts=ts)
        await client.apply_catalog([item(10.0, 3, t), item(11.0, 2, t + 10)])
        await client.apply_catalog([item(10.0, 3, t)])  # redelivered: older than what is stored
        after_redelivery = await client.item_features(["c"], t + 20)
        await client.set_prices({"c": 12.0}, ["c"], t + 20)  # the pricing loop moves the price
        await client.apply_catalog([item(11.0, 7, t + 20)])  # the shop's feed, not yet showing it
        kept = await client.item_features(["c"], t + 30)
        await client.apply_catalog([item(13.0, 7, t + 30)])  # a newer price from the shop wins
        newer = await client.item_features(["c"], t + 40)
        order = Order(order_id="o1", user_id="u", amount=30.0, ts=t + 5,
                      items=[OrderLine(item_id="c", price=10.0, quantity=2), OrderLine(item_id="c", price=5.0, quantity=2)])
        for _ in range(3):
            await client.apply_orders([order])
            await client.apply_revenue([order])
        revenue = await client.revenue_between({"c": t}, t + 10)
        ref = await client.redis.hget(client.keys.item_catalog("c"), "ref_price")
        return after_redelivery, kept, newer, revenue, ref

    after_redelivery, kept, newer, revenue, ref = asyncio.run(with_feature_client(redis_url, scenario))
    assert (after_redelivery["c"]["price"], after_redelivery["c"]["stock"]) == (11.0, 2)
    assert (kept["c"]["price"], kept["c"]["stock"]) == (12.0, 7)
    assert newer["c"]["price"] == 13.0 and float(ref) == 10.0
    assert revenue == {"c": 30.0}


def test_snapshot_is_point_in_time_on_real_data(redis_url):
    """Every snapshot value counts only events strictly before its order (brute force check)."""
    from collections import defaultdict

    s = Settings.from_env({}, redis_url=redis_url)
    orders = list(fraud_orders(s.data_dir, limit=4000))

    async def offline():
        client = FeatureClient.connect(s)
        await client.redis.flushdb()
        await client.close()
        return await order_snapshots(orders, s)

    frame = asyncio.run(offline()).set_index("order_id")
    by_device = defaultdict(list)
    for o in orders:
        by_device[o.device_id].append(o)
    checked = 0
    for o in orders:
        earlier = [p for p in by_device[o.device_id] if p.ts < o.ts]  # strictly before: no leakage
        row = frame.loc[o.order_id]
        assert row["device_orders_24h"] == sum(1 for p in earlier if p.ts >= o.ts - 86400)
        assert row["device_users_30d"] == len({p.user_id for p in earlier if p.ts >= o.ts - 30 * 86400})
        assert row["ts"] == o.ts
        checked += bool(earlier)
    assert checked > 50  # shared devices exist in the slice: the check is not vacuous


def test_clicks_on_recommended_items_are_counted_once(redis_url):
    t = 1.6e9
    click = Click(event_id="c1", user_id="u", item_id="rec-2", action="view", ts=t)
    other = Click(event_id="c2", user_id="u", item_id="not-recommended", action="view", ts=t + 1)

    async def scenario(client: FeatureClient):
        uh = client.keys.user("u")
        await client.store_recommendations({uh: {"items": ["rec-1", "rec-2"], "scores": [0.5, 0.4],
                                                 "model_version": "m", "cold_start": False, "ts": t}})
        first = (await client.apply_clicks([click, other], 20))[1]
        again = (await client.apply_clicks([click], 20))[1]  # redelivered: not counted twice
        stored = await client.recommendations("u")
        return first, again, stored

    first, again, stored = asyncio.run(with_feature_client(redis_url, scenario))
    assert first == [1, 0] and again == [0, 0]
    assert stored["items"] == ["rec-1", "rec-2"]


# -- verdicts by order id, learn records, early labels ---------------------------------------------------

def test_verdict_recorded_once_and_labels_meet_their_records_whichever_comes_first(redis_url):
    t = 1.6e9

    async def scenario(client: FeatureClient):
        k, r, s = client.keys, client.redis, client.settings
        out = {}
        # label before verdict: kept as an early label, then handed over by record_verdicts
        out["early"] = await client.join_labels({"a": True, "b": False})
        out["early_keys"] = [await r.get(k.early_label(o)) for o in "ab"], await r.ttl(k.early_label("a"))
        out["a_b"] = await client.record_verdicts([("a", b"va", {"vec": [1]}, t), ("b", b"vb", {"vec": [2]}, t + 1)])
        out["a_b_after"] = (await r.exists(k.early_label("a"), k.early_label("b"), k.order_record("a"),
                                           k.order_record("b")), len(await client.unlabelled_before(t + 1e9, 100)))
        # verdict recorded twice (a redelivered order, also within one batch): the first one wins
        out["c"] = await client.record_verdicts([("c", b"vc", {"vec": [3]}, t + 2), ("c", b"vc2", {"vec": [9]}, t + 2)])
        out["c_again"] = await client.record_verdicts([("c", b"vc3", {"vec": [8]}, t + 3)])
        out["c_record"] = await r.get(k.order_record("c")), await r.ttl(k.order_record("c")), await r.ttl(k.verdict("c"))
        out["a_again"] = await client.record_verdicts([("a", b"va2", {"vec": [7]}, t)])  # its early label is gone
        out["pending"] = await client.unlabelled_before(t + 10, 10)
        # label after verdict: the record comes back, the order leaves the pending set, no early label
        out["late"] = await client.join_labels({"c": True})
        out["late_after"] = (await client.unlabelled_before(t + 10, 10),
                             await r.exists(k.order_record("c"), k.early_label("c")))
        out["stored"] = await client.stored_verdicts(["a", "b", "c", "d", "a"])
        # more orders than one script call holds: still one call per chunk, in order
        many = [(f"m{n}", f"v{n}".encode(), {"n": n}, t + n) for n in range(250)]
        out["many"] = await client.record_verdicts(many)
        out["many_joined"] = await client.join_labels({f"m{n}": n % 2 == 0 for n in range(250)})
        out["many_stored"] = await client.stored_verdicts([f"m{n}" for n in range(250)])
        return out, s

    out, s = asyncio.run(with_feature_client(redis_url, scenario))
    assert out["early"] == {"a": None, "b": None}
    assert out["early_keys"][0] == [b"1", b"0"] and 0 < out["early_keys"][1] <= s.label_ttl_s
    assert out["a_b"] == [(b"va", True), (b"vb", False)]
    assert out["a_b_after"] == (0, 0)  # labels taken, no learn record stored, nothing pending
    assert out["c"] == [(b"vc", None), (b"vc", None)] and out["c_again"] == [(b"vc", None)]
    record, record_ttl, verdict_ttl = out["c_record"]
    assert record == b'{"vec": [3]}' and s.label_ttl_s - 5 <= record_ttl <= s.label_ttl_s
    assert s.verdict_ttl_s - 5 <= verdict_ttl <= s.verdict_ttl_s == 7 * 86400
    assert out["a_again"] == [(b"va", None)]
    assert out["pending"] == ["c"]
    assert out["late"] == {"c": {"vec": [3]}} and out["late_after"] == ([], 0)
    assert out["stored"] == {"a": b"va", "b": b"vb", "c": b"vc"}
    assert out["many"] == [(f"v{n}".encode(), None) for n in range(250)]
    assert out["many_joined"] == {f"m{n}": {"n": n} for n in range(250)}
    assert out["many_stored"] == {f"m{n}": f"v{n}".encode() for n in range(250)}


def test_label_and_verdict_racing_meet_exactly_once(redis_url):
    """Labels and verdicts of the same orders from two connections at once: every label reaches the
    learner exactly once, through the verdict (early label) or through the join (learn record)."""
    t = 1.6e9
    n = 600
    rng = random.Random(3)

    async def scenario(client: FeatureClient):
        other = FeatureClient.connect(client.settings)
        try:
            ids = [f"r{i}" for i in range(n)]
            labels = {o: rng.random() < 0.5 for o in ids}
            entries = [(o, b"v", {"o": o}, t + i) for i, o in enumerate(ids)]
            # both orders of arrival for sure: r0-r49 verdict first, r50-r99 label first; the rest race
            pre_v = await client.record_verdicts(entries[:50])
            pre_j = await client.join_labels({o: labels[o] for o in ids[50:100]})
            race = entries[100:]
            rng.shuffle(race)
            racing_ids = [e[0] for e in entries[100:]]
            halves = [{o: labels[o] for o in racing_ids[:250]}, {o: labels[o] for o in racing_ids[250:]}]
            results = await asyncio.gather(client.record_verdicts(race[:250]), other.join_labels(halves[1]),
                                           other.record_verdicts(race[250:]), client.join_labels(halves[0]))
            pre_j2 = await client.join_labels({o: labels[o] for o in ids[:50]})
            pre_v2 = await client.record_verdicts(entries[50:100])
            rec1, joined2, rec2, joined1 = results
            results = (pre_v + pre_v2 + rec1 + rec2, {**pre_j, **pre_j2, **joined1, **joined2})
            left = await client.unlabelled_before(t + n, n)
            return labels, entries[:100] + race, results, left
        finally:
            await other.close()

    labels, entries, (recorded, joined), left = asyncio.run(with_feature_client(redis_url, scenario))
    learned, ways = {}, {"verdict": 0, "join": 0}
    for (oid, _, _, _), (_, label) in zip(entries, recorded):
        if label is not None:
            learned[oid] = [label]
            ways["verdict"] += 1
    for oid, record in joined.items():
        if record is not None:
            assert record == {"o": oid}
            learned.setdefault(oid, []).append(labels[oid])
            ways["join"] += 1
    assert learned == {o: [y] for o, y in labels.items()}  # each exactly once, with its own label
    assert min(ways.values()) > 0, ways  # both orders of arrival happened
    assert left == []


def test_revenue_is_apply_revenues_not_apply_orders(redis_url):
    t = 1.6e9
    order = Order(order_id="o1", user_id="u", amount=20.0, ts=t, items=[OrderLine(item_id="i", price=10.0, quantity=2)])

    async def scenario(client: FeatureClient):
        features = await client.apply_orders([order])
        before = await client.revenue_between({"i": t}, t + 1)
        await client.apply_revenue([order, order])
        await client.apply_revenue([])
        return features, before, await client.revenue_between({"i": t}, t + 1)

    features, before, after = asyncio.run(with_feature_client(redis_url, scenario))
    assert len(features) == 1 and features[0]["amount_log"] > 0
    assert before == {"i": 0} and after == {"i": 20.0}


def test_recent_items_and_covisitation_weights_order_equal_times_by_id(redis_url):
    """Views at the same ts are ordered by item id, the greater first (as ZREVRANGE orders equal scores), in
    the recent items returned and in the co-visitation weights a later view gives them (1/d for the d-th
    newest), whatever order the clicks come in within their call."""
    t = 1.6e9
    same = [Click(event_id=f"s{k}", user_id="tie", item_id=k, action="view", ts=t) for k in ("b", "ab", "c", "a")]
    later = Click(event_id="s-d", user_id="tie", item_id="d", action="view", ts=t + 10)

    async def scenario(client: FeatureClient):
        recent, _ = await client.apply_clicks(same + [later], 20)
        return recent, dict(await client.covis_neighbours(["d"], t + 10))

    recent, neighbours = asyncio.run(with_feature_client(redis_url, scenario))
    assert recent == {"tie": ["d", "c", "b", "ab", "a"]}
    weights = dict(neighbours["d"])
    assert sorted(weights, key=weights.get, reverse=True) == ["c", "b", "ab", "a"]
    assert [round(weights[k], 6) for k in ("c", "b", "ab", "a")] == [1.0, 0.5, round(1 / 3, 6), 0.25]


def test_covisitation_keeps_exactly_covis_keep_neighbours(redis_url):
    """An item co-visited with more than COVIS_KEEP others keeps the COVIS_KEEP strongest (and its epoch member)."""
    t = 1.6e9
    extra = 5
    clicks = []
    for n in range(COVIS_KEEP + extra):  # user n views "a", then "x<n>": a neighbour of "a" each
        clicks.append(Click(event_id=f"a{n}", user_id=f"u{n}", item_id="a", action="view", ts=t + n))
        clicks.append(Click(event_id=f"x{n}", user_id=f"u{n}", item_id=f"x{n}", action="view", ts=t + n + 0.5))

    async def scenario(client: FeatureClient):
        for i in range(0, len(clicks), 37):
            await client.apply_clicks(clicks[i:i + 37], 20)
        card = await client.redis.zcard(client.keys.covis("a"))
        return card, await client.covis_neighbours(["a"], t + 1000)

    card, neighbours = asyncio.run(with_feature_client(redis_url, scenario))
    assert card == COVIS_KEEP + 1  # the neighbours and the epoch member
    assert len(neighbours["a"]) == min(COVIS_KEEP, COVIS_READ)


def test_popularity_counts_the_most_viewed_with_space_saving_in_a_bounded_shard(redis_url):
    """A full popularity shard: a newcomer takes the weakest item's place and count plus its own views
    (Space-Saving), so no count is below the true one, none over it by more than the count taken over,
    the shard never holds more than REC_POPULAR_KEEP items, and a heavily viewed newcomer gets in. The
    distinct items viewed (coverage's denominator) still count every item. Redelivery changes nothing."""
    from features.keys import bucket, esc

    keep, t = 4, 1.6e9
    same = [i for i in (f"it{n}" for n in range(5000)) if bucket(esc(i)) == 7][:keep + 3]  # one shard
    first = [Click(event_id=f"f{n}", user_id=f"u{n}", item_id=i, action="view", ts=t + n) for n, i in enumerate(same[:keep])]
    # second: one more view of same[1], then two newcomers: same[keep] viewed 3 times, same[keep + 1] once
    second = [Click(event_id="s0", user_id="v0", item_id=same[1], action="view", ts=t + 10)]
    second += [Click(event_id=f"s{n}", user_id=f"v{n}", item_id=same[keep], action="view", ts=t + 10 + n) for n in (1, 2, 3)]
    second += [Click(event_id="s4", user_id="v4", item_id=same[keep + 1], action="view", ts=t + 20)]
    truth = {i: 1 for i in same[:keep]} | {same[1]: 2, same[keep]: 3, same[keep + 1]: 1}

    async def scenario(client: FeatureClient):
        await client.apply_clicks(first, 4)
        await client.apply_clicks(second, 4)
        shard = client.keys.popular_shard(client.keys.tag("i", same[0]))
        once = await client.redis.zrange(shard, 0, -1, withscores=True)
        await client.apply_clicks(first + second, 4)  # redelivered (no positions: the windows' ZADD replies)
        again = await client.redis.zrange(shard, 0, -1, withscores=True)
        return once, again, await client.known_items(), await client.popular_items(2)

    once, again, known, top = asyncio.run(with_feature_client(redis_url, scenario, rec_popular_keep=keep, rec_top_k=2))
    counts = {m.decode(): int(s) for m, s in once}
    assert again == once and known == len(truth) == keep + 2
    assert len(counts) == keep
    # the 3-view newcomer took the weakest's place (count 1, smallest id) with 1 + 3; the 1-view one
    # then took the next weakest's (1 + 1)
    weakest = sorted(i for i in same[:keep] if truth[i] == 1)
    assert counts[same[keep]] == 4 and counts[same[keep + 1]] == 2
    assert weakest[0] not in counts and weakest[1] not in counts
    assert all(truth[i] <= c <= truth[i] + 1 for i, c in counts.items())  # over by at most the count taken over
    assert top[0] == (same[keep], 4.0)


def test_item_windows_inline_in_day_hashes_spill_once_and_read_exactly_across_days(redis_url):
    """An item's clicks live in its bucket's day hash while few, move into its sorted set past
    INLINE_WINDOW_MAX on one day, and every read over 1 h / 24 h windows counts each click exactly once,
    across midnight, whatever the batching, redelivered (with or without positions) or not; a day hash
    goes when the bucket's clicks are two days past it."""
    from features.keys import bucket
    from features.store import ACTION_LETTER, utc_day

    rng = random.Random(5)
    late_item = next(i for i in (f"late{n}" for n in range(1000)) if bucket(i) == bucket("hot"))
    day0 = 17000 * 86400.0
    # item "hot": INLINE_WINDOW_MAX + 4 views late on day 0 (spills), views and carts around midnight;
    # item "cold": a few views on days 0 and 1; item "late": one purchase on day 2 (deletes day 0's hash)
    clicks = [Click(event_id=f"h{n}", user_id=f"u{n % 5}", item_id="hot", action="view", ts=day0 + 80000 + 100 * n)
              for n in range(INLINE_WINDOW_MAX + 4)]
    clicks += [Click(event_id=f"m{n}", user_id=f"u{n % 5}", item_id="hot", action=("view", "add_to_cart")[n % 2],
                     ts=day0 + 86400 - 1800 + 300 * n) for n in range(10)]
    clicks += [Click(event_id=f"c{n}", user_id="w", item_id="cold", action="view", ts=day0 + 60000 + 20000 * n)
               for n in range(4)]
    clicks.append(Click(event_id="f", user_id="w", item_id="cold", action="view", ts=day0 + 86400 - 0.1))  # inexact
    clicks.sort(key=lambda c: c.ts)
    late = [Click(event_id="p0", user_id="z", item_id=late_item, action="purchase", ts=day0 + 2 * 86400 + 10)]
    probes = [day0 + 85000, day0 + 86400 - 0.1, day0 + 86400, day0 + 86400 + 600, day0 + 86400 + 3000,
              day0 + 2 * 86400 - 1, day0 + 2 * 86400 - 0.1]

    def truth(item, t):
        def n(action, w):
            return sum(1 for c in clicks if c.item_id == item and c.action == action and t - w <= c.ts < t)
        return {"item_views_1h": n("view", 3600), "item_views_24h": n("view", 86400),
                "item_carts_24h": n("add_to_cart", 86400), "item_purchases_24h": 0}

    async def scenario(client: FeatureClient):
        pos = [("clicks:0", n) for n in range(len(clicks))]
        i = 0
        while i < len(clicks):  # random batches
            j = i + rng.randint(1, 7)
            await client.apply_clicks(clicks[i:j], 4, pos[i:j])
            i = j
        await client.apply_clicks(clicks, 4, pos)  # redelivered with positions
        await client.apply_clicks(clicks[::-1], 4)  # and without: every click is found where it is kept
        tag = client.keys.tag("i", "hot")
        day_keys = [client.keys.item_day_clicks(tag, utc_day(day0) + d) for d in range(3)]
        hot_day0 = await client.redis.hget(day_keys[0], ACTION_LETTER["view"] + "hot")
        zcard = await client.redis.zcard(client.keys.item_clicks("hot", "view"))
        reads = [await client.item_features(["hot", "cold"], t) for t in probes]
        popular = dict(await client.popular_items(10))
        existed = await client.redis.exists(day_keys[0])
        await client.apply_clicks(late, 4)  # day 2, same bucket: day 0's hash goes
        gone = [existed, await client.redis.exists(day_keys[0]), await client.redis.exists(day_keys[1])]
        return hot_day0, zcard, reads, popular, gone

    hot_day0, zcard, reads, popular, gone = asyncio.run(with_feature_client(redis_url, scenario))
    assert hot_day0 == b"S" and zcard == INLINE_WINDOW_MAX + 4 + 3  # day 0's views spilled, then 3 more
    for t, got in zip(probes, reads):
        for item in ("hot", "cold"):
            want = truth(item, t)
            assert {f: got[item][f] for f in want} == want, (t - day0, item)
    assert popular == {"hot": INLINE_WINDOW_MAX + 4 + 5, "cold": 5}
    assert gone == [1, 0, 1]


def test_funnel_state_is_one_letter_and_a_state_written_by_an_older_version_still_reads(redis_url):
    t = 1.6e9

    async def scenario(client: FeatureClient):
        state = client.keys.user_state(client.keys.user("old"))
        await client.redis.hset(state, "s", "cart")  # the whole name, as stored before
        before = (await client.read_checkout(_order("o0", t, user="old")))["funnel_state"]
        await client.apply_clicks([Click(event_id="e1", user_id="old", item_id="i", action="purchase", ts=t)], 4)
        await client.apply_clicks([Click(event_id="e2", user_id="new", item_id="i", action="add_to_cart", ts=t)], 4)
        shard = await client.redis.hgetall(client.keys.funnel_shard(client.keys.tag("u", client.keys.user("old"))))
        return (before, await client.redis.hget(state, "s"), shard,
                (await client.read_checkout(_order("o1", t + 1, user="new")))["funnel_state"],
                await client.redis.hget(client.keys.user_state(client.keys.user("new")), "s"))

    before, stored, shard, new_state, new_stored = asyncio.run(with_feature_client(redis_url, scenario))
    assert before == 2 and stored == b"p" and shard.get(b"cart>purchase") == b"1"
    assert new_state == 2 and new_stored == b"c"


def _space_saving(batches, keep):
    """Plain-Python Space-Saving, one batch = one script call: its items in first-view order, each with its views."""
    shard: dict[str, int] = {}
    for batch in batches:
        per: dict[str, int] = {}
        for c in batch:
            per[c.item_id] = per.get(c.item_id, 0) + 1
        for item, c in per.items():
            if item in shard or len(shard) < keep:
                shard[item] = shard.get(item, 0) + c
            else:
                weakest = min(shard, key=lambda m: (shard[m], m.encode()))
                shard[item] = shard.pop(weakest) + c
    return shard


def test_popularity_shard_equals_space_saving_one_item_at_a_time(redis_url):
    """On random skewed views in random batches the shard is exactly what plain Space-Saving gives, one item
    at a time in each call's first-view order (ties: the smallest id leaves, the shard's own order)."""
    from features.keys import bucket

    rng = random.Random(11)
    items = [i for i in (f"p{n}" for n in range(3000)) if bucket(i) == 9][:40]
    weights = [1 / (r + 1) ** 1.1 for r in range(len(items))]
    views = [Click(event_id=f"e{n}", user_id=f"u{n}", item_id=rng.choices(items, weights)[0], action="view",
                   ts=1.6e9 + n) for n in range(400)]
    batches, i = [], 0
    while i < len(views):
        j = i + rng.randint(1, 15)
        batches.append(views[i:j])
        i = j

    async def scenario(client: FeatureClient):
        for b in batches:
            await client.apply_clicks(b, 4)
        shard = client.keys.popular_shard(client.keys.tag("i", items[0]))
        return {m.decode(): int(s) for m, s in await client.redis.zrange(shard, 0, -1, withscores=True)}

    got = asyncio.run(with_feature_client(redis_url, scenario, rec_popular_keep=8, rec_top_k=2))
    assert got == _space_saving(batches, 8) and len(got) == 8
