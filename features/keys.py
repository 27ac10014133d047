"""Redis key names of the feature store, built here and nowhere else (the layout: :mod:`features.store`).

Ids come from outside (shops, datasets) and may hold any character: ``:``, ``{``, ``}``,
spaces, ``%``, ``|``, unicode. A key never holds an id as it came: it holds its escaped form
(:func:`esc`: every UTF-8 byte outside ``[A-Za-z0-9._-]`` percent-encoded as ``%XX``, ``%``
itself included), so an id in a key never contains ``:``, ``{`` or ``}``, and every key reads

    ``ss:<kind>:{<tag>}:<escaped id>[:<suffix>]``

``kind`` says what the id is (``u`` user, ``i`` item, ``o`` order, ...) and the suffixes of a
kind are fixed names, so two distinct ids, or an id and an internal key, never share a key.

**Hash tags (Redis Cluster).** ``{<tag>}`` is the key's hash tag: Redis Cluster places a key by
the text between its first ``{`` and ``}``, so every key with the same tag lives in one hash slot
and one script call may touch them together. The tag is the id's *bucket*: ``<family>.<n>``, with
``n = crc32(escaped id) mod`` :data:`BUCKETS` (:func:`bucket`), and the family of the kind
(:data:`FAMILY`: a user's recommendations share the user's tag, an order's verdict, learn
record and labels the order's). All keys of one entity share one slot, and so do the
per-bucket structures that entity's events update (below), which is what lets each script call
touch one slot and stay atomic and idempotent on its own.

Keys that belong to no id sit under the reserved kind ``g``: ``ss:g:<name>`` (one key:
checkpoints, thresholds, the folded views) or ``ss:g:<name>:{<tag>}`` (one shard per bucket: the
popularity counts of the bucket's items, the funnel transitions of the bucket's users, the
pending orders of the bucket's orders, and ``ss:g:off:{<tag>}``, the Kafka positions applied
per bucket). No single key takes every event. Escaped ids hold no glob character either
(``*?[]\\``), so ``SCAN MATCH`` patterns built by :meth:`FeatureKeys.pattern` match exactly their
kind and suffix. The Lua scripts (:mod:`features.lua`) build no key: every key a call touches
is built here and passed in ``KEYS``.

>>> esc("tb:123"), esc("x:t"), esc("pending"), esc("a b%{c}|d"), esc("café")
('tb%3A123', 'x%3At', 'pending', 'a%20b%25%7Bc%7D%7Cd', 'caf%C3%A9')
>>> unesc(esc("x:t")) == "x:t" and esc("%3A") != esc(":")
True
>>> k = FeatureKeys(None)
>>> k.covis("x:t"), k.order_record("pending"), k.user_state("x")
('ss:cv:{i.55}:x%3At', 'ss:o:{o.57}:pending', 'ss:u:{u.3}:x:state')
>>> k.pending_shard(k.tag("o", "pending")), FeatureKeys.popular
('ss:g:pending:{o.57}', 'ss:g:popular')
"""

from __future__ import annotations

import zlib
from functools import lru_cache
from typing import Union
from urllib.parse import unquote_to_bytes

from features.privacy import Pseudonymiser

PREFIX = "ss"
GLOBAL = "g"  # the reserved kind of keys that belong to no id
# Buckets per family: the hash slots an entity kind spreads over, and the shards of the per-bucket
# structures (popularity, funnel transitions, pending orders, positions). 64 spread evenly over a
# few primaries (each slot moves on its own when resharding) and keep the folds (64 reads) cheap.
BUCKETS = 64
# kind -> the family whose bucket its keys take (its hash tag)
FAMILY = {"u": "u", "rec": "u", "i": "i", "cv": "i", "o": "o", "v": "o", "l": "o",
          "device": "device", "ip": "ip", "card": "card", "cat": "cat"}

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
_TABLE = [chr(b) if b in _SAFE else f"%{b:02X}" for b in range(256)]
_ASCII = {b: _TABLE[b] for b in range(128) if b not in _SAFE}  # str.translate: an ASCII id in one C call


def esc(raw: Union[str, bytes]) -> str:
    """The id as it appears in keys: every UTF-8 byte outside ``[A-Za-z0-9._-]`` as ``%XX``
    (uppercase hex). Injective, and the result holds only ``[A-Za-z0-9._%-]``.

    >>> esc("a-b_c.9"), esc("%"), esc(":{}"), esc(b"\\xff")
    ('a-b_c.9', '%25', '%3A%7B%7D', '%FF')
    """
    if isinstance(raw, str):
        if raw.isascii():  # most ids ('tb:123'): 0.3 vs 1.6 us by the byte table
            return raw.translate(_ASCII)
        raw = raw.encode("utf-8", "surrogatepass")
    return "".join([_TABLE[b] for b in raw])


def unesc(escaped: str) -> str:
    """The id back from its escaped form (:func:`esc`'s inverse)."""
    return unquote_to_bytes(escaped).decode("utf-8", "surrogatepass")


def bucket(escaped_id: str) -> int:
    """The bucket of an escaped id: ``crc32 mod BUCKETS`` (stable across processes and versions).

    >>> bucket("x"), bucket(esc("x:t"))
    (3, 55)
    """
    return zlib.crc32(escaped_id.encode()) % BUCKETS


def bucket_of_tag(tag: str) -> int:
    """The bucket number of a hash tag (:func:`tag_of`'s inverse).

    >>> bucket_of_tag(tag_of("cat", 17))
    17
    """
    return int(tag[tag.rindex(".") + 1:-1])


def tag_of(family: str, n: int) -> str:
    """The hash tag of bucket ``n`` of ``family``: ``{<family>.<n>}``."""
    return f"{{{family}.{n}}}"


@lru_cache(maxsize=1 << 17)
def _escaped(raw_id: str) -> tuple[str, int]:
    """``(esc(raw_id), its bucket)``, computed once per id whatever the kinds of its keys (an item's
    click windows, co-visitation and trends)."""
    e = esc(raw_id)
    return e, bucket(e)


# kind -> "ss:<kind>:{<family>." (a key is this, the bucket, "}:" and the escaped id)
_HEADS = {kind: f"{PREFIX}:{kind}:{{{family}." for kind, family in FAMILY.items()}


@lru_cache(maxsize=1 << 16)
def _base(kind: str, raw_id: str) -> str:
    """``ss:<kind>:{<tag>}:<esc(raw_id)>`` (cached: a batch builds several keys per entity)."""
    head = _HEADS.get(kind)
    if head is None:  # GLOBAL is no id kind
        raise ValueError(f"not an id kind: {kind!r}")
    e, n = _escaped(raw_id)
    return f"{head}{n}}}:{e}"


class FeatureKeys:
    """Builds every key name; identifiers of people are pseudonymised here and nowhere else."""

    # folded views over every shard (written by FeatureClient.fold_globals, read by the serving paths)
    popular = f"{PREFIX}:{GLOBAL}:popular"  # ZSET item id -> views: the POPULAR_FOLDED most viewed
    funnel = f"{PREFIX}:{GLOBAL}:funnel"  # HASH '{from}>{to}' -> transitions over all users

    def __init__(self, pseudo: Pseudonymiser | None):
        self.pseudo = pseudo

    # -- the builder ----------------------------------------------------------------------------
    @staticmethod
    @lru_cache(maxsize=1 << 16)  # as _base: 0.12 vs 0.46 us a call (a batch asks several times per entity)
    def tag(kind: str, raw_id: str) -> str:
        """The hash tag of ``raw_id``'s keys of ``kind`` (its family's bucket)."""
        _base(kind, raw_id)  # checks the kind
        return tag_of(FAMILY[kind], _escaped(raw_id)[1])

    @staticmethod
    @lru_cache(maxsize=1 << 16)  # 0.28 vs 0.62 us a call
    def key(kind: str, raw_id: str, *suffix: str) -> str:
        """``ss:<kind>:{<tag>}:<esc(raw_id)>[:<suffix>...]``: the one place an id enters a key."""
        return ":".join((_base(kind, raw_id), *suffix))

    @staticmethod
    def global_key(name: str, *suffix: str) -> str:
        """``ss:g:<name>[:<suffix>...]``: a key that belongs to no id."""
        return ":".join((PREFIX, GLOBAL, name, *suffix))

    @staticmethod
    def shard(name: str, tag: str) -> str:
        """``ss:g:<name>:{<tag>}``: the shard of a per-bucket structure in bucket ``tag``."""
        return ":".join((PREFIX, GLOBAL, name, tag))

    @staticmethod
    def shards(name: str, family: str) -> list[str]:
        """Every shard of ``name`` over ``family``'s buckets."""
        return [FeatureKeys.shard(name, tag_of(family, n)) for n in range(BUCKETS)]

    @staticmethod
    def prefix(kind: str) -> str:
        """What every key of ``kind`` starts with (``ss:<kind>:``)."""
        return f"{PREFIX}:{kind}:"

    @staticmethod
    def pattern(kind: str, *suffix: str) -> str:
        """A ``SCAN MATCH`` pattern for every key of ``kind`` with that suffix (none: all of the kind).

        >>> FeatureKeys.pattern("i", "bandit"), FeatureKeys.pattern("rec")
        ('ss:i:*:bandit', 'ss:rec:*')
        """
        return ":".join((PREFIX, kind, "*", *suffix))

    # -- per-bucket shards ------------------------------------------------------------------------
    @staticmethod
    def popular_shard(tag: str) -> str:
        """ZSET item id -> views of the bucket's items (the REC_POPULAR_KEEP most viewed, Space-Saving)."""
        return FeatureKeys.shard("popular", tag)

    @staticmethod
    def item_day_clicks(tag: str, day: int) -> str:
        """HASH ``<action letter><item id>`` -> the clicks (``event id<TAB>seconds into the day<TAB>...``, or
        ``S``: in the item's sorted set) of the bucket's items on UTC day ``day`` (``floor(ts / 86400)``):
        ``ss:g:iw:{tag}:<day>``.

        >>> FeatureKeys.item_day_clicks("{i.5}", 17496)
        'ss:g:iw:{i.5}:17496'
        """
        return f"{FeatureKeys.shard('iw', tag)}:{int(day)}"

    @staticmethod
    def viewed_shard(tag: str) -> str:
        """HyperLogLog of the bucket's viewed items (how many distinct: the popularity shard keeps a few)."""
        return FeatureKeys.shard("viewed", tag)

    @staticmethod
    def funnel_shard(tag: str) -> str:
        """HASH '{from}>{to}' -> transitions of the bucket's users."""
        return FeatureKeys.shard("funnel", tag)

    @staticmethod
    def pending_shard(tag: str) -> str:
        """ZSET order id -> event ts of the bucket's orders awaiting a label."""
        return FeatureKeys.shard("pending", tag)

    @staticmethod
    def trend_shard(tag: str) -> str:
        """ZSET item id -> raw decayed views of the items viewed in bucket ``tag``'s categories (the
        TREND_SHARD_KEEP strongest), and ``""`` -> minus the raw weights' epoch (rank 0): the shards of
        the global trending items (:meth:`category_trend` has the decay)."""
        return FeatureKeys.shard("trend", tag)

    @staticmethod
    def trend_seen(tag: str) -> str:
        """ZSET click ``event_id`` -> event ts of the views without a Kafka position counted in bucket
        ``tag``'s trends (CLICK_RETENTION_S kept): their deduplication (views with a position use
        :meth:`positions`)."""
        return FeatureKeys.shard("trend-seen", tag)

    @staticmethod
    def positions(tag: str) -> str:
        """HASH '<topic>:<partition>' (and 'cv|<topic>:<partition>') -> the newest Kafka offset whose
        events were applied to the bucket: the deduplication of the counts that are not idempotent."""
        return FeatureKeys.shard("off", tag)

    # -- what a click batch touches, per entity (FeaturePlans.click_waves: once per entity of a batch) --
    @staticmethod
    def user_click_keys(uh: str) -> tuple[str, str, str, str]:
        """(tag, :meth:`user_state`, :meth:`recommended_items`, the prefix of :meth:`user_clicks` (+ action))
        of a user, in one pass (the batch plans build them for every clicking user).

        >>> k = FeatureKeys(None)
        >>> t, st, rec, c = k.user_click_keys("x:y")
        >>> (t, st, rec, c + "view") == (k.tag("u", "x:y"), k.user_state("x:y"), k.recommended_items("x:y"),
        ...                              k.user_clicks("x:y", "view"))
        True
        """
        e, n = _escaped(uh)
        return f"{{u.{n}}}", f"{_HEADS['u']}{n}}}:{e}:state", f"{_HEADS['rec']}{n}}}:{e}:items", f"{_HEADS['u']}{n}}}:{e}:c:"

    @staticmethod
    def item_click_keys(item_id: str) -> tuple[str, str]:
        """(tag, the prefix of :meth:`item_clicks` (+ action)) of an item, in one pass.

        >>> t, c = FeatureKeys.item_click_keys("tb:7")
        >>> (t, c + "view") == (FeatureKeys.tag("i", "tb:7"), FeatureKeys.item_clicks("tb:7", "view"))
        True
        """
        e, n = _escaped(item_id)
        return f"{{i.{n}}}", f"{_HEADS['i']}{n}}}:{e}:c:"

    # -- people (pseudonymised: base64url, escaping changes nothing but they take the same road) -------
    def user(self, user_id: str) -> str:
        """The pseudonym of a user (not a key: the id of the user's keys)."""
        return self.pseudo("user", user_id)

    def user_orders(self, uh: str) -> str:
        return self.key("u", uh, "orders")

    def user_clicks(self, uh: str, action: str) -> str:
        return self.key("u", uh, "c", action)

    def user_state(self, uh: str) -> str:
        """The user's funnel state, category counts and recent items (one hash: two keys fewer per user)."""
        return self.key("u", uh, "state")

    def user_hll(self, uh: str, kind: str, hour: int) -> str:
        return self.key("u", uh, "hll", kind, str(hour))

    def entity(self, kind: str, raw_id: str) -> str:
        """Base key of a device / ip / card (``ss:{kind}:{tag}:{h}``) from its raw id."""
        return self.key(kind, self.pseudo(kind, raw_id))

    def entity_users(self, kind: str, h: str) -> str:
        return self.key(kind, h, "users")

    def entity_orders(self, kind: str, h: str) -> str:
        return self.key(kind, h, "orders")

    def entity_lifetime(self, kind: str, h: str, what: str) -> str:
        """Long-horizon sets of a device / ip / card: ``lusers``, ``lorders``, ``fraud`` (capped, own TTL)."""
        if what not in ("lusers", "lorders", "fraud"):
            raise ValueError(what)
        return self.key(kind, h, what)

    def recommendations(self, uh: str) -> str:
        return self.key("rec", uh)

    def recommended_items(self, uh: str) -> str:
        return self.key("rec", uh, "items")

    # -- items --------------------------------------------------------------------------------------
    @staticmethod
    def item_clicks(item_id: str, action: str) -> str:
        return FeatureKeys.key("i", item_id, "c", action)

    @staticmethod
    def item_sales(item_id: str) -> str:
        return FeatureKeys.key("i", item_id, "sales")

    @staticmethod
    def item_catalog(item_id: str) -> str:
        return FeatureKeys.key("i", item_id, "catalog")

    @staticmethod
    def item_revenue(item_id: str) -> str:
        return FeatureKeys.key("i", item_id, "revenue")

    @staticmethod
    def item_bandit(item_id: str) -> str:
        return FeatureKeys.key("i", item_id, "bandit")

    @staticmethod
    def covis(item_id: str) -> str:
        """Co-visited item -> raw weight, and the item itself -> minus the weights' epoch."""
        return FeatureKeys.key("cv", item_id)

    # -- categories ---------------------------------------------------------------------------------
    @staticmethod
    def category_trend(category_id: str) -> str:
        """``ss:cat:{cat.n}:<esc category>:trend``: ZSET item id -> raw decayed views of the category's
        items (the TREND_KEEP strongest), and ``""`` (no item id is empty) -> minus the epoch of the raw
        weights (event ts, Unix s; rank 0, below every weight). A view at ts adds 2^((ts - epoch) /
        half-life), so a weight's value at t is raw * 2^((epoch - t) / half-life).

        >>> FeatureKeys.category_trend("tb:42"), FeatureKeys.category_trend("a:{b}")
        ('ss:cat:{cat.44}:tb%3A42:trend', 'ss:cat:{cat.29}:a%3A%7Bb%7D:trend')
        """
        return FeatureKeys.key("cat", category_id, "trend")

    @staticmethod
    def trend_tag(category_id: str | None, item_id: str) -> str:
        """The category bucket a view counts in: its category's (``{cat.n}``); a view without a
        category counts in the global trending only, in the bucket its item id falls into.

        >>> FeatureKeys.trend_tag("tb:42", "x"), FeatureKeys.trend_tag(None, "x")
        ('{cat.44}', '{cat.3}')
        """
        if category_id is not None:
            return FeatureKeys.tag("cat", category_id)
        return tag_of("cat", bucket(esc(item_id)))

    # -- orders, verdicts, labels -------------------------------------------------------------------
    @staticmethod
    def order_record(order_id: str) -> str:
        """A scored order's learn record, waiting for its label."""
        return FeatureKeys.key("o", order_id)

    @staticmethod
    def order_entities(order_id: str) -> str:
        """The order's ``device|ip|card`` hashes, waiting for its label."""
        return FeatureKeys.key("o", order_id, "ents")

    @staticmethod
    def early_fraud_at(order_id: str) -> str:
        """Arrival ts of a fraud label that came before its order was recorded."""
        return FeatureKeys.key("l", order_id, "at")

    @staticmethod
    def verdict(order_id: str) -> str:
        return FeatureKeys.key("v", order_id)

    @staticmethod
    def early_label(order_id: str) -> str:
        """A label that arrived before its order's verdict."""
        return FeatureKeys.key("l", order_id)

    def pending_of(self, order_id: str) -> str:
        """The pending shard ``order_id`` belongs to."""
        return self.pending_shard(self.tag("o", order_id))

    # -- checkpoints ----------------------------------------------------------------------------------
    @staticmethod
    def fraud_thresholds() -> str:
        """``ss:g:fraud-thresholds``: the fraud thresholds in use (the workers write, the HTTP service reads).

        >>> FeatureKeys.fraud_thresholds()
        'ss:g:fraud-thresholds'
        """
        return FeatureKeys.global_key("fraud-thresholds")

    @staticmethod
    def checkpoint(name: str, version: int | str) -> str:
        """``ss:g:ckpt:<esc name>:<version | 'seq' | 'latest'>``."""
        return FeatureKeys.global_key("ckpt", esc(name), str(version))
