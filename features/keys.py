"""Redis key names of the feature store, built here and nowhere else (the layout: :mod:`features.store`).

Ids come from outside (shops, datasets) and may hold any character: ``:``, ``{``, ``}``,
spaces, ``%``, ``|``, unicode. A key never holds an id as it came: it holds its escaped form
(:func:`esc`: every UTF-8 byte outside ``[A-Za-z0-9._-]`` percent-encoded as ``%XX``, ``%``
itself included), so an id in a key never contains ``:`` and every key reads

    ``ss:<kind>:<escaped id>[:<suffix>]``

``kind`` says what the id is (``u`` user, ``i`` item, ``o`` order, ...) and the suffixes of a
kind are fixed names, so two distinct ids, or an id and an internal key, never share a key.
Keys that belong to no id (popular items, funnel transitions, pending orders, checkpoints) sit
under the reserved kind ``g``, which no id-bearing key uses: ``ss:g:<name>``. Escaped ids hold
no glob character either (``*?[]\\``), so ``SCAN MATCH`` patterns built by :meth:`FeatureKeys.pattern`
match exactly their kind and suffix.

The Lua scripts (:mod:`features.lua`) build keys from their arguments and from members they
read (co-visitation pairs the user's recent items), with the same escape: :data:`LUA` is
prepended to every script (``esc``, ``key`` and the global key names); members and replies
stay raw ids (the recommender's vocabulary uses ids like ``tb:123``).

>>> esc("tb:123"), esc("x:t"), esc("pending"), esc("a b%{c}|d"), esc("café")
('tb%3A123', 'x%3At', 'pending', 'a%20b%25%7Bc%7D%7Cd', 'caf%C3%A9')
>>> unesc(esc("x:t")) == "x:t" and esc("%3A") != esc(":")
True
>>> k = FeatureKeys(None)
>>> k.covis("x:t"), k.covis_epoch("x"), k.order_record("pending"), k.pending
('ss:cv:x%3At', 'ss:cv:x:t', 'ss:o:pending', 'ss:g:pending')
"""

from __future__ import annotations

import re
from typing import Union
from urllib.parse import unquote_to_bytes

from features.privacy import Pseudonymiser

PREFIX = "ss"
GLOBAL = "g"  # the reserved kind of keys that belong to no id

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
_TABLE = [chr(b) if b in _SAFE else f"%{b:02X}" for b in range(256)]
_PLAIN = re.compile(r"[A-Za-z0-9._-]*").fullmatch


def esc(raw: Union[str, bytes]) -> str:
    """The id as it appears in keys: every UTF-8 byte outside ``[A-Za-z0-9._-]`` as ``%XX``
    (uppercase hex). Injective, and the result holds only ``[A-Za-z0-9._%-]``.

    >>> esc("a-b_c.9"), esc("%"), esc(":{}"), esc(b"\\xff")
    ('a-b_c.9', '%25', '%3A%7B%7D', '%FF')
    """
    if isinstance(raw, str):
        if _PLAIN(raw):
            return raw
        raw = raw.encode("utf-8", "surrogatepass")
    return "".join([_TABLE[b] for b in raw])


def unesc(escaped: str) -> str:
    """The id back from its escaped form (:func:`esc`'s inverse)."""
    return unquote_to_bytes(escaped).decode("utf-8", "surrogatepass")


class FeatureKeys:
    """Builds every key name; identifiers of people are pseudonymised here and nowhere else."""

    popular = f"{PREFIX}:{GLOBAL}:popular"  # ZSET item id -> views
    funnel = f"{PREFIX}:{GLOBAL}:funnel"  # HASH '{from}>{to}' -> transitions
    pending = f"{PREFIX}:{GLOBAL}:pending"  # ZSET order id -> event ts of scored orders awaiting a label

    def __init__(self, pseudo: Pseudonymiser | None):
        self.pseudo = pseudo

    # -- the builder ----------------------------------------------------------------------------
    @staticmethod
    def key(kind: str, raw_id: str, *suffix: str) -> str:
        """``ss:<kind>:<esc(raw_id)>[:<suffix>...]``: the one place an id enters a key."""
        if kind == GLOBAL or not kind or ":" in kind:
            raise ValueError(f"not an id kind: {kind!r}")
        return ":".join((PREFIX, kind, esc(raw_id), *suffix))

    @staticmethod
    def global_key(name: str, *suffix: str) -> str:
        """``ss:g:<name>[:<suffix>...]``: a key that belongs to no id."""
        return ":".join((PREFIX, GLOBAL, name, *suffix))

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

    # -- people (pseudonymised: hex, escaping changes nothing but they take the same road) -------
    def user(self, user_id: str) -> str:
        """The pseudonym of a user (not a key: the ``{h}`` of the user's keys)."""
        return self.pseudo("user", user_id)

    def user_orders(self, uh: str) -> str:
        return self.key("u", uh, "orders")

    def user_clicks(self, uh: str, action: str) -> str:
        return self.key("u", uh, "c", action)

    def user_recent(self, uh: str) -> str:
        return self.key("u", uh, "recent")

    def user_cats(self, uh: str) -> str:
        return self.key("u", uh, "cats")

    def user_funnel(self, uh: str) -> str:
        return self.key("u", uh, "funnel")

    def user_hll(self, uh: str, kind: str, hour: int) -> str:
        return self.key("u", uh, "hll", kind, str(hour))

    def entity(self, kind: str, raw_id: str) -> str:
        """Base key of a device / ip / card (``ss:{kind}:{h}``) from its raw id."""
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
        return FeatureKeys.key("cv", item_id)

    @staticmethod
    def covis_epoch(item_id: str) -> str:
        return FeatureKeys.key("cv", item_id, "t")

    # -- events, orders, verdicts, labels -----------------------------------------------------------
    @staticmethod
    def seen(event_id: str) -> str:
        return FeatureKeys.key("seen", event_id)

    @staticmethod
    def order_record(order_id: str) -> str:
        """A scored order's learn record, waiting for its label."""
        return FeatureKeys.key("o", order_id)

    @staticmethod
    def order_entities(order_id: str) -> str:
        """The order's ``device|ip|card`` hashes, waiting for its label (built in Lua as ``key('o', id) .. ':ents'``)."""
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


def _lua_quote(s: str) -> str:
    assert re.fullmatch(r"[A-Za-z0-9:._-]*", s), s
    return f"'{s}'"


# Prepended to every script of features.lua: the same escape, builder and global names as above.
LUA = (f"local KEY_PREFIX = {_lua_quote(PREFIX + ':')}\n"
       f"local KEY_POPULAR, KEY_FUNNEL, KEY_PENDING = {_lua_quote(FeatureKeys.popular)}, "
       f"{_lua_quote(FeatureKeys.funnel)}, {_lua_quote(FeatureKeys.pending)}\n") + r"""
-- features.keys: an id in a key is escaped (every byte outside [A-Za-z0-9._-] as %XX, uppercase hex)
local function esc(id)
  if not string.find(id, '[^A-Za-z0-9%._%-]') then return id end
  return (string.gsub(id, '[^A-Za-z0-9%._%-]', function(c) return string.format('%%%02X', string.byte(c)) end))
end
-- 'ss:<kind>:<esc(id)>'; callers append ':<suffix>'
local function key(kind, id) return KEY_PREFIX .. kind .. ':' .. esc(id) end
"""
