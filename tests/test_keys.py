"""Key layout (features/keys.py): ids from outside, whatever characters they hold, never reach
into another key; every script call declares its keys and they share one hash slot (Redis Cluster);
and the same events with hostile ids (``pending``, ``x`` and ``x:t``, ``:``, ``{``, ``}``, spaces, ``%``, ``|``, non-ASCII)
give every feature, co-visitation count, verdict and label exactly what plain ids give, with one
key per (kind, id, suffix) and never a WRONGTYPE.
"""

from __future__ import annotations

import asyncio
import random
import re

import pytest

from features.client import FeatureClient
from redis.crc import key_slot

from features.keys import BUCKETS, FeatureKeys, bucket, esc, unesc
from features.privacy import Pseudonymiser
from features.snapshot import temporary_redis
from streamscore.events import CatalogItem, Click, Order, OrderLine
from streamscore.settings import Settings

HOSTILE = ["pending", "x", "x:t", "x:t:t", "t", "tb:123", "a:b", ":", "::", "{", "}", "{x}", "a b", " a", "%",
           "%3A", "%253A", "100%", "a|b", "|", "é", "café:t", "ü€😀", "日本:語", "ss:g:popular", "g", "ckpt:x",
           "*", "?", "[a]", "\\", "a\x00b", "\n", "'", '"', "--", "a.b-c_d", "0", "%%", "%zz", "ss:o:pending"]


@pytest.fixture(scope="module")
def redis_url():
    with temporary_redis() as url:
        yield url


@pytest.fixture(scope="module")
def cluster_url():
    with temporary_redis("cluster") as url:
        yield url


# -- the escape and the builder, no server ---------------------------------------------------------------

def test_escape_is_injective_safe_and_reversible():
    escaped = [esc(s) for s in HOSTILE]
    assert len(set(escaped)) == len(HOSTILE)
    assert all(re.fullmatch(r"[A-Za-z0-9._%-]*", e) for e in escaped)
    assert [unesc(e) for e in escaped] == HOSTILE
    assert esc("a.b-c_d") == "a.b-c_d" and esc("x:t") == "x%3At" and esc("%") == "%25"
    assert esc("é") == esc("é".encode()) == "%C3%A9"
    rng = random.Random(7)
    for _ in range(2000):
        s = "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0x3000), rng.randrange(0x1F600, 0x1F650)]))
                    for _ in range(rng.randrange(0, 12)))
        assert unesc(esc(s)) == s and ":" not in esc(s)


def test_no_two_ids_and_no_id_and_internal_key_share_a_key():
    keys = FeatureKeys(None)
    builders = {
        "user_orders": keys.user_orders,
        "user_state": keys.user_state, "user_clicks": lambda i: keys.user_clicks(i, "view"),
        "user_hll": lambda i: keys.user_hll(i, "device", 444444), "recommendations": keys.recommendations,
        "recommended_items": keys.recommended_items, "device_users": lambda i: keys.entity_users("device", i),
        "device_orders": lambda i: keys.entity_orders("device", i), "item_clicks": lambda i: keys.item_clicks(i, "view"),
        "item_sales": keys.item_sales, "item_catalog": keys.item_catalog, "item_revenue": keys.item_revenue,
        "item_bandit": keys.item_bandit, "covis": keys.covis,
        "order_record": keys.order_record, "verdict": keys.verdict, "early_label": keys.early_label,
        "checkpoint": lambda i: keys.checkpoint(i, "latest"), "category_trend": keys.category_trend,
    }
    built = {}
    for name, build in builders.items():
        for raw in HOSTILE:
            k = build(raw)
            assert k not in built, f"{name}({raw!r}) = {k} = {built.get(k)}"
            built[k] = (name, raw)
    shards = [k for name in ("popular", "funnel", "off") for fam in ("u", "i") for k in keys.shards(name, fam)]
    shards += keys.shards("pending", "o")
    shards += [k for name in ("trend", "trend-seen", "off") for k in keys.shards(name, "cat")]
    for g in [keys.popular, keys.funnel, *shards]:
        assert g not in built and g.startswith("ss:g:")
    # the two collisions found in fault runs
    assert keys.order_record("pending") != keys.pending_of("pending")
    assert keys.covis("x:t") != keys.covis("x") and not keys.covis("x:t").startswith(keys.covis("x"))
    with pytest.raises(ValueError):
        FeatureKeys.key("g", "pending")


# -- hash tags: an entity's keys share one slot ----------------------------------------------------------

def test_an_entitys_keys_and_its_buckets_shards_share_one_hash_slot():
    keys = FeatureKeys(None)
    for raw in HOSTILE:
        b = bucket(esc(raw))
        assert 0 <= b < BUCKETS
        user = [keys.user_orders(raw), keys.user_state(raw), keys.user_clicks(raw, "view"), keys.user_hll(raw, "ip", 7),
                keys.recommendations(raw), keys.recommended_items(raw), keys.funnel_shard(keys.tag("u", raw)),
                keys.positions(keys.tag("u", raw))]
        item = [keys.item_clicks(raw, "view"), keys.item_sales(raw), keys.item_catalog(raw), keys.covis(raw),
                keys.popular_shard(keys.tag("i", raw)), keys.positions(keys.tag("i", raw))]
        order = [keys.order_record(raw), keys.order_entities(raw), keys.verdict(raw), keys.early_label(raw),
                 keys.early_fraud_at(raw), keys.pending_of(raw)]
        device = [keys.entity_users("device", raw), keys.entity_lifetime("device", raw, "fraud")]
        category = [keys.category_trend(raw), keys.trend_shard(keys.trend_tag(raw, "x")),
                    keys.trend_seen(keys.tag("cat", raw)), keys.positions(keys.tag("cat", raw))]
        assert keys.trend_tag(None, raw) == keys.tag("i", raw).replace("{i.", "{cat.")  # no category: the item's bucket
        for group in (user, item, order, device, category):
            assert len({key_slot(k.encode()) for k in group}) == 1, group
    # buckets spread: the users of 2,000 ids fall into every bucket, and the slots of the buckets differ
    assert len({bucket(f"user{n}") for n in range(2000)}) == BUCKETS
    assert len({key_slot(keys.user_state(f"user{n}").encode()) for n in range(2000)}) == BUCKETS


# -- end to end: the same events with plain and with hostile ids ------------------------------------------

USERS = ["u0", "u1", "u2"]
ITEMS = [f"i{n}" for n in range(10)]
ORDERS = [f"o{n}" for n in range(5)]
CATS = ["c0", "c1"]
DEVICES, IPS, CARDS = ["d0", "d1"], ["ip0"], ["k0"]
N_EVENTS = 40

PLAIN = {n: n for n in USERS + ITEMS + ORDERS + CATS + DEVICES + IPS + CARDS + [f"e{k}" for k in range(N_EVENTS)]}
EVIL = {
    **dict(zip(USERS, ["user:{0}", "us er|1%", "ü-😀:2"])),
    **dict(zip(ITEMS, ["x", "x:t", "tb:123", "{i}", "50% off|a b", "é:t", "%3A", ":", "x:t:t", "ss:g:popular"])),
    **dict(zip(ORDERS, ["o:1", "pending", "{o}", "o 3|%", "ö:4"])),
    **dict(zip(CATS, ["cat:{1}", "c 2|%"])),
    "d0": "dev:{0}", "d1": "dev 1%", "ip0": "1.2.3.4:80", "k0": "card|4242 4242",
    **{f"e{k}": (f"ev:{k}:{{x}} %|é" if k % 2 else f"{k}:t") for k in range(N_EVENTS)},
}


async def _scenario(client: FeatureClient, m: dict[str, str]) -> dict:
    """Everything the stream, the pricing loop, the recommender and the HTTP service do, with ids ``m``."""
    t = 1.6e9
    plan = ([("u0", i, "view") for i in ("i0", "i1", "i2", "i1")] +
            [("u1", i, "view") for i in ("i1", "i0", "i3")] + [("u1", "i3", "add_to_cart"), ("u1", "i3", "purchase")] +
            [("u2", i, "view") for i in ITEMS[4:]] + [("u0", "i0", "view"), ("u2", "i1", "view")])
    clicks = [Click(event_id=m[f"e{n}"], user_id=m[u], item_id=m[i], category_id=m[CATS[n % 2]] if n % 3 else None,
                    action=a, ts=t + 10 * n) for n, (u, i, a) in enumerate(plan)]
    assert len(clicks) < N_EVENTS
    out: dict = {}
    uh = {u: client.keys.user(m[u]) for u in USERS}
    await client.store_recommendations({uh["u2"]: {"items": [m["i0"], m["i1"]], "scores": [0.5, 0.4],
                                                   "model_version": "m", "cold_start": False, "ts": t}})
    out["recent"], out["hits"] = await client.apply_clicks(clicks[:10], 20)
    recent, hits = await client.apply_clicks(clicks[10:], 20)
    out["recent2"], out["hits2"] = recent, hits
    out["again"] = await client.apply_clicks(clicks, 20)  # redelivered
    out["trend_views"] = [await client.apply_category_trends(clicks[:10]), await client.apply_category_trends(clicks),
                          await client.apply_category_trends(clicks)]  # by event id: the second counts the rest only
    out["trends"] = await client.category_trends([m[c] for c in CATS], 10, t + 10 * len(clicks))
    popular, trending, cats = await client.cold_start_reads([m[u] for u in USERS], 10, t + 10 * len(clicks))
    out["cold_reads"] = (dict(popular), dict(trending), {u: dict(c) for u, c in cats.items()})  # ties: by id
    out["trends"] = {c: dict(rows) for c, rows in out["trends"].items()}
    tc = t + 10 * len(clicks)
    items = [m[i] for i in ITEMS]
    out["covis"] = {i: dict(v) for i, v in (await client.covis_neighbours(items, tc)).items()}
    out["popular"] = dict(await client.popular_items(100))
    out["known"] = await client.known_items()
    out["recs"] = await client.recommendations(m["u2"])
    await client.apply_catalog([CatalogItem(item_id=m[i], price=10.0 + n, cost=5.0, stock=n, ts=t)
                                for n, i in enumerate(ITEMS[:4])])
    await client.set_prices({m["i1"]: 12.5}, [m["i0"], m["i1"]], tc)
    line = lambda i, p, q: OrderLine(item_id=m[i], price=p, quantity=q)
    orders = [
        Order(order_id=m["o0"], user_id=m["u0"], amount=30.0, device_id=m["d0"], ip=m["ip0"],
              payment_fingerprint=m["k0"], items=[line("i0", 10.0, 2), line("i1", 10.0, 1)], ts=tc + 10),
        Order(order_id=m["o1"], user_id=m["u1"], amount=12.0, device_id=m["d0"], ip=m["ip0"],
              items=[line("i1", 12.0, 1)], ts=tc + 20),
        Order(order_id=m["o2"], user_id=m["u0"], amount=7.0, device_id=m["d1"], payment_fingerprint=m["k0"],
              items=[line("i3", 7.0, 1), line("i0", 0.0, 1)], ts=tc + 30),
        Order(order_id=m["o3"], user_id=m["u2"], amount=99.0, items=[line("i9", 99.0, 1)], ts=tc + 3700),
    ]
    out["orders"] = await client.apply_orders(orders)
    out["orders_again"] = await client.apply_orders(orders)
    await client.apply_revenue(orders)
    await client.apply_revenue(orders)
    out["revenue"] = await client.revenue_between({i: t for i in items}, tc + 4000)
    out["probe"] = await client.read_order(Order(order_id=m["o4"], user_id=m["u0"], amount=5.0, device_id=m["d0"],
                                                 ts=tc + 4000))
    out["checkout"] = await client.read_checkout(Order(order_id=m["o4"], user_id=m["u1"], amount=5.0,
                                                       device_id=m["d1"], ts=tc + 4000))
    out["items"] = await client.item_features(items, tc + 4000)
    out["pricing"] = await client.pricing_states(items, tc + 4000)
    await client.save_bandit_states({m["i0"]: {"arm": "1.05", "learned": "3"}, m["i1"]: {"arm": "0.95"}})
    out["bandits"] = await client.bandit_states(items)
    # verdicts, learn records, labels
    o = {k: m[k] for k in ORDERS}
    out["early"] = await client.join_labels({o["o0"]: True})  # label before its verdict
    out["recorded"] = await client.record_verdicts([(o["o0"], b"v0", {"vec": [0]}, tc + 10),
                                                     (o["o1"], b"v1", {"vec": [1]}, tc + 20),
                                                     (o["o1"], b"v1-again", {"vec": [9]}, tc + 20),
                                                     (o["o2"], b"v2", {"vec": [2]}, tc + 30)])
    out["types_mid"] = [await client.redis.type(client.keys.order_record(o["o1"])),
                        await client.redis.type(client.keys.pending_of(o["o1"]))]
    out["recorded_again"] = await client.record_verdicts([(o["o0"], b"other", {}, tc + 10)])
    out["stored"] = await client.stored_verdicts(list(o.values()))
    out["unlabelled"] = await client.unlabelled_before(tc + 100, 10)
    out["joined"] = await client.join_labels({o["o1"]: False, o["o3"]: True})
    out["late"] = await client.record_verdicts([(o["o3"], b"v3", {"vec": [3]}, tc + 3700)])
    await client.store_scored([(o["o4"], {"vec": [4]}, tc + 4000)])
    out["unlabelled2"] = await client.unlabelled_before(tc + 5000, 10)
    out["taken"] = await client.take_scored([o["o2"], o["o4"], o["o0"]])
    out["unlabelled3"] = await client.unlabelled_before(tc + 5000, 10)
    for n in range(3):
        await client.save_checkpoint("fraud-online", f"state{n}".encode(), 2)
    out["ckpt"] = await client.load_checkpoint("fraud-online")
    return out


def _back(x, inverse: dict[str, str]):
    """``x`` with every actual id replaced by its logical name."""
    if isinstance(x, str):
        return inverse.get(x, x)
    if isinstance(x, dict):
        return {_back(k, inverse): _back(v, inverse) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_back(v, inverse) for v in x)
    return x


class OneSlotClient(FeatureClient):
    """Checks that every script call declares keys of one hash slot, and counts the calls."""

    calls = 0

    async def _pipeline(self, ops):
        for op in ops:
            if op[0] == "SCRIPT":
                assert op[2] and len({key_slot(k.encode()) for k in op[2]}) == 1, op[:3]
                OneSlotClient.calls += 1
        return await super()._pipeline(ops)


async def _run(url: str, m: dict[str, str], topology: str = "standalone") -> tuple[dict, dict[str, tuple[bytes, bool]]]:
    client = OneSlotClient.connect(Settings.from_env({}, redis_url=url, rec_online_blend=True, redis_topology=topology))
    await client.redis.flushdb()
    try:
        out = await _scenario(client, m)
        r = client.redis
        keys = [k async for k in r.scan_iter("*", count=1000)]
        types = [await r.type(k) for k in keys]
        ttls = [await r.ttl(k) for k in keys]
        return out, {k.decode(): (t, ttl > 0) for k, t, ttl in zip(keys, types, ttls)}
    finally:
        await client.close()


@pytest.mark.parametrize("topology", ["standalone", "cluster"])
def test_hostile_ids_give_what_plain_ids_give_with_keys_of_their_own(redis_url, cluster_url, topology):
    """On one Valkey and on a three-primary Redis Cluster (which refuses a script touching a key another
    primary holds; OneSlotClient checks each call's declared keys share one slot): the same values and keys."""
    if topology == "cluster":
        plain, plain_keys = asyncio.run(_run(cluster_url, PLAIN, topology))
        evil, evil_keys = asyncio.run(_run(cluster_url, EVIL, topology))
        assert (plain, plain_keys) == asyncio.run(_run(redis_url.rsplit("/", 1)[0] + "/3", PLAIN))  # = standalone
    else:
        base = redis_url.rsplit("/", 1)[0]
        plain, plain_keys = asyncio.run(_run(base + "/1", PLAIN))
        evil, evil_keys = asyncio.run(_run(base + "/2", EVIL))

    # every value: features, co-visitation, popularity, recommendations, verdicts, labels
    assert _back(evil, {v: k for k, v in EVIL.items()}) == plain
    assert plain["covis"]["i0"] and plain["covis"]["i1"]["i0"] > 0 and plain["hits2"] == [1, 0]
    assert plain["early"] == {"o0": None}
    assert plain["recorded"] == [(b"v0", True), (b"v1", None), (b"v1", None), (b"v2", None)]
    assert plain["recorded_again"] == [(b"v0", None)]
    assert plain["stored"] == {"o0": b"v0", "o1": b"v1", "o2": b"v2"}
    assert plain["unlabelled"] == ["o1", "o2"] and plain["joined"] == {"o1": {"vec": [1]}, "o3": None}
    assert plain["late"] == [(b"v3", True)] and plain["unlabelled2"] == ["o2", "o4"]
    assert plain["taken"] == {"o2": {"vec": [2]}, "o4": {"vec": [4]}, "o0": None} and plain["unlabelled3"] == []
    assert plain["revenue"]["i0"] == 20.0 and plain["orders"][1]["device_users_30d"] == 1
    assert plain["trend_views"][0] > 0 and plain["trend_views"][2] == 0 and set(plain["trends"]) == set(CATS)
    popular, trending, cats = plain["cold_reads"]
    assert trending and set(trending) <= set(ITEMS) and set(cats) == set(USERS)
    assert {c for u in USERS for c in cats[u]} == set(CATS)

    assert OneSlotClient.calls > 50  # every call above went through the one-slot check
    # keys: the hostile run's keys are the plain run's with each id replaced by the hostile one
    # (escaped, with its own bucket), one for one, of the same types, with a TTL where the plain one
    # has one; the per-bucket shards are the same structures (in the buckets their ids fall into)
    keys = FeatureKeys(Pseudonymiser(Settings.from_env({}).pii_secret.get_secret_value()))
    translate = {PLAIN[k]: EVIL[k] for k in PLAIN}
    for u in USERS:
        translate[keys.user(PLAIN[u])] = keys.user(EVIL[u])
    for kind, names in (("device", DEVICES), ("ip", IPS), ("card", CARDS)):
        for n in names:
            translate[keys.pseudo(kind, PLAIN[n])] = keys.pseudo(kind, EVIL[n])
    expected, plain_shards, evil_shards = {}, set(), set()
    for k, v in plain_keys.items():
        _, kind, rest = k.split(":", 2)
        if kind == "g":
            plain_shards.add((rest.split(":")[0], v))
        else:
            tag, raw, *suffix = rest.split(":", 2)
            assert esc(raw) == raw and raw in translate and tag == FeatureKeys.tag(kind, raw), k
            expected[FeatureKeys.key(kind, translate[raw], *suffix)] = v
    evil_ids = {k: v for k, v in evil_keys.items() if not k.startswith("ss:g:")}
    evil_shards = {(k.split(":")[2], v) for k in evil_keys if k.startswith("ss:g:") for v in [evil_keys[k]]}
    assert len(expected) == len(evil_ids) > 60  # small click windows live inline (users' hashes, items' day hashes)
    assert evil_ids == expected
    assert evil_shards == plain_shards and {n for n, _ in plain_shards} >= {"popular", "funnel", "ckpt"}
    ids = set(EVIL.values()) | set(translate.values())
    for k in evil_keys:
        _, kind, rest = k.split(":", 2)
        assert re.fullmatch(r"[a-z]+", kind), k
        if kind == "g":
            assert re.fullmatch(r"[a-z-]+(:[A-Za-z0-9._%-]+)*(:\{[a-z]+\.\d+\}(:\d+)?)?", rest), k
        else:
            assert re.fullmatch(r"\{[a-z]+\.\d+\}:[A-Za-z0-9._%-]+(:[A-Za-z0-9._%-]+)*", rest), k
            assert unesc(rest.split(":")[1]) in ids, k
    # the two fault-run collisions: each key has the type of its own meaning
    assert plain["types_mid"] == [b"string", b"zset"]  # ss:o:{..}:pending, its pending shard in the hostile run
    assert evil_keys[FeatureKeys.covis("x")][0] == evil_keys[FeatureKeys.covis("x:t")][0] == b"zset"


@pytest.mark.parametrize("topology", ["standalone", "cluster"])
def test_the_clients_connections_pack_commands_in_c_and_send_what_redis_py_sends(redis_url, cluster_url, topology):
    """The feature client's connections (standalone, and every node a cluster client discovers) use hiredis's
    packer (features.client._CPacking), which writes byte for byte what redis-py's own packer writes."""
    from redis.asyncio import Connection
    from features.client import _CPacking

    args = ("SCRIPT LOAD", "return 1", "ü", 7, 0.1, 1e20, 1511658033.25, b"\xff")
    assert b"".join(_CPacking.pack_command(None, *args)) == b"".join(Connection().pack_command(*args))

    async def used() -> set[type]:
        url = cluster_url if topology == "cluster" else redis_url
        client = FeatureClient.connect(Settings.from_env({}, redis_url=url, redis_topology=topology))
        try:
            await client.apply_clicks([Click(event_id="e1", user_id="u1", item_id="i1", action="view", ts=1_700_000_000.0)], 5)
            if topology == "cluster":
                return {type(c) for n in client.redis.get_nodes() for c in n._connections}
            return {type(c) for c in client.redis.connection_pool._available_connections}
        finally:
            await client.close()

    kinds = asyncio.run(used())
    assert kinds and all(issubclass(k, _CPacking) for k in kinds), kinds


def test_a_click_batchs_parts_touch_disjoint_keys_and_together_make_the_whole_batch():
    """FeaturePlans.click_waves: what the client sends concurrently (features.client.CLICK_WAVES parts) may run
    in any order only because no key is in two parts; together the parts are exactly the batch's calls."""
    from features.store import FeaturePlans

    rng = random.Random(7)
    plans = FeaturePlans(FeatureKeys(Pseudonymiser("k")), 3600, covis=True)
    clicks = [Click(event_id=f"e{n}", user_id=f"u{rng.randrange(300)}", item_id=f"i{rng.randrange(500)}",
                    action=rng.choice(["view", "view", "add_to_cart", "purchase"]), ts=1.7e9 + n,
                    category_id=rng.choice([None, "c1", "c2", f"c{rng.randrange(90)}"])) for n in range(2000)]
    pos = [("clicks:0", n) for n in range(len(clicks))]
    parts = list(plans.click_waves(clicks, 20, pos, (3600.0, 50), waves=8))
    assert len(parts) == 8 and all(ops for ops, _ in parts)
    owner: dict[str, int] = {}
    for w, (ops, _) in enumerate(parts):
        for op in ops:
            for key in op[2]:
                assert owner.setdefault(key, w) == w, f"{key} in parts {owner[key]} and {w}"
    [(whole, whole_users)] = plans.click_waves(clicks, 20, pos, (3600.0, 50), waves=1)
    assert [op for op in whole if op[1] == "category_trends_add"] == plans.category_trends_scripts(clicks, 3600.0, 50, pos)
    as_text = lambda ops: sorted(repr(op) for op in ops)  # noqa: E731
    assert as_text([op for ops, _ in parts for op in ops]) == as_text(whole)
    ranked = sorted(r for _, part_users in parts for r in part_users)
    assert ranked == whole_users  # the user calls' ranks: their order in one part
