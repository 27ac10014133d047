"""Typed event contracts of every topic, validated on the way in.

Input topics (written by the shop, JSON objects, UTF-8):

* ``clicks``       -> :class:`Click`       keyed by user id
* ``orders``       -> :class:`Order`       keyed by user id (or order id)
* ``fraud-labels`` -> :class:`FraudLabel`  keyed by order id
* ``catalog``      -> :class:`CatalogItem` keyed by item id

Output topics (written by streamscore):

* ``fraud-verdicts``     -> :class:`FraudVerdict`     keyed by order id
* ``recommendations``    -> :class:`Recommendations`  keyed by pseudonymised user id
* ``price-adjustments``  -> :class:`PriceAdjustment`  keyed by item id
* ``dead-letter``        -> :class:`DeadLetter`       keyed by the pseudonym of the original key

Times are event times in Unix seconds (UTC, float). Money is in the order's currency
(ISO 4217 code), as a float with the shop's precision. Unknown fields are rejected so
a producer's typo surfaces in the dead-letter topic rather than silently vanishing.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# Event times outside this range are rejected as corrupt (2000-01-01 .. 2100-01-01).
MIN_TS, MAX_TS = 946_684_800.0, 4_102_444_800.0

Id = Field(min_length=1, max_length=128)


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class Click(_Event):
    """A shopper's interaction with an item."""

    event_id: str = Id
    user_id: str = Id
    item_id: str = Id
    category_id: Optional[str] = Field(default=None, max_length=128)
    action: Literal["view", "add_to_cart", "remove_from_cart", "purchase"]
    ts: float = Field(ge=MIN_TS, le=MAX_TS, description="event time, Unix seconds UTC")


class OrderLine(_Event):
    item_id: str = Id
    price: float = Field(ge=0, le=1e7, description="unit price")
    quantity: int = Field(ge=1, le=100_000)


class Order(_Event):
    """An order placed at checkout. Identifiers that are missing at the source stay None."""

    order_id: str = Id
    user_id: str = Id
    items: list[OrderLine] = Field(default_factory=list, max_length=1000)
    amount: float = Field(gt=0, le=1e8, description="order total in `currency`")
    currency: str = Field(default="GBP", pattern=r"^[A-Z]{3}$")
    payment_fingerprint: Optional[str] = Field(default=None, max_length=128)
    device_id: Optional[str] = Field(default=None, max_length=128)
    ip: Optional[str] = Field(default=None, max_length=64)
    shipping_country: Optional[str] = Field(default=None, max_length=64)
    account_created_at: Optional[float] = Field(default=None, ge=MIN_TS, le=MAX_TS)
    ts: float = Field(ge=MIN_TS, le=MAX_TS, description="event time, Unix seconds UTC")


class FraudLabel(_Event):
    """A late truth about an order: chargeback, confirmed fraud, or confirmed legitimate."""

    order_id: str = Id
    is_fraud: bool
    ts: float = Field(ge=MIN_TS, le=MAX_TS)
    source: Optional[str] = Field(default=None, max_length=64)


class CatalogItem(_Event):
    """The shop's current price, unit cost and stock of an item."""

    item_id: str = Id
    price: float = Field(gt=0, le=1e7)
    cost: float = Field(ge=0, le=1e7)
    stock: int = Field(ge=0)
    category_id: Optional[str] = Field(default=None, max_length=128)
    ts: float = Field(ge=MIN_TS, le=MAX_TS)


class FraudVerdict(_Event):
    order_id: str
    score: float = Field(ge=0, le=1)
    verdict: Literal["approve", "review", "decline"]
    reasons: list[str]
    model_version: str
    latency_ms: float = Field(description="event time -> verdict emitted (stream) or request -> response (HTTP)")
    degraded: bool = Field(description="True when the rules fallback decided because Triton was unavailable")
    ts: float


class Recommendations(_Event):
    user: str = Field(description="pseudonymised user id (HMAC)")
    items: list[str]
    scores: list[float]
    model_version: str
    cold_start: bool
    ts: float


class PriceAdjustment(_Event):
    item_id: str
    old_price: float
    new_price: float
    reason: str
    guardrail: Optional[str] = None
    model_version: str
    ts: float


class DeadLetter(_Event):
    """A rejected input message: why, and its bytes encrypted (:mod:`streamscore.deadletters`).

    No personal data in clear: ``key`` is the pseudonym of the original key; the original and
    its key are encrypted with ``DEAD_LETTER_KEY`` (``original_enc``, ``key_enc``);
    ``original_redacted`` shows a JSON-object original with its personal fields replaced. A dead
    letter always fits the topic: the original is kept whole when it is at most
    ``DEAD_LETTER_MAX_ORIGINAL_BYTES``, else cut to it (``original_truncated``), and
    ``original_size`` / ``original_sha256`` always describe the whole original.
    """

    topic: str
    partition: int
    offset: int
    key: Optional[str] = Field(default=None, description="pseudonym of the original message key")
    reason: str
    error: str
    original_enc: str = Field(description="the original bytes (as kept), encrypted with DEAD_LETTER_KEY")
    key_enc: str = Field(default="", description="the original key, encrypted with DEAD_LETTER_KEY")
    original_redacted: str = Field(default="", description="a JSON-object original, personal fields replaced")
    original_size: int = 0
    original_sha256: str = ""
    original_truncated: bool = False
    ts: float


class InvalidEvent(ValueError):
    """Raised by :func:`parse` with a short machine-readable ``reason``."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def parse(model: type[_Event], raw: bytes | None, max_bytes: int) -> _Event:
    """Decode and validate one message value.

    Reasons: ``empty``, ``oversized``, ``not_utf8``, ``not_json``, ``not_object``,
    ``invalid`` (schema violation: missing field, wrong type, out of range). The stream
    adds ``too_late`` (beyond the allowed lateness), ``from_future`` (more than
    ``MAX_CLOCK_SKEW_S`` ahead of the wall clock) and ``processing_error``.
    """
    if not raw:
        raise InvalidEvent("empty", "message has no value")
    if len(raw) > max_bytes:
        raise InvalidEvent("oversized", f"{len(raw)} bytes > limit {max_bytes}")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEvent("not_utf8", str(exc)) from None
    try:
        return model.model_validate_json(raw)  # parses and validates in one pass (pydantic-core)
    except ValidationError as exc:
        errors = exc.errors()
        if errors[0]["type"] == "json_invalid":
            raise InvalidEvent("not_json", errors[0]["msg"]) from None
        if errors[0]["type"] == "model_type" and not errors[0]["loc"]:
            raise InvalidEvent("not_object", "expected a JSON object") from None
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in errors[:5])
        raise InvalidEvent("invalid", detail) from None
