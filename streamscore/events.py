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

Strict contracts (what :func:`parse` checks on the wire, each with its dead-letter ``reason``):

* Types (``wrong_type``): JSON numbers only where numbers are expected (an integer is accepted
  for a float field), JSON booleans only for booleans, strings only for strings: ``"5"``,
  ``true`` as an amount, ``"yes"`` or ``1`` as ``is_fraud`` are refused. Python construction
  (``Order(...)``, :mod:`replay.files` reading CSV text) stays lax: strictness is for messages.
* Ranges (``out_of_range``): NaN and infinities are refused; bounds below. Money has a floor so
  that denormals such as ``4.9e-324`` never pass for an amount: an order ``amount`` is at least
  :data:`MIN_AMOUNT` (0.01); a catalog ``price`` and a positive line ``price`` at least
  :data:`MIN_PRICE` (0.001: Online Retail sells cushion pads at 0.001 GBP); a positive
  ``cost`` at least :data:`MIN_COST` (0.0001). A line price or a cost may be 0 (free item).
  ``stock`` is at most :data:`MAX_STOCK` (10^9). Length limits of ids and lists also give
  ``out_of_range``.
* Ids (``id_bad_characters``): every id-like string (``event_id``, ``user_id``, ``item_id``,
  ``order_id``, ``category_id``, ``device_id``, ``payment_fingerprint``, ``ip``,
  ``shipping_country``, ``source``) holds no control or format character (Unicode categories
  Cc and Cf: C0/C1 controls, bidi embeddings/overrides/isolates U+202A-202E and U+2066-2069,
  zero-width characters, BOM), no surrogate (Cs) and no line/paragraph separator (Zl, Zp).
  Any other Unicode stays valid (``:``, ``{``, spaces, accents, CJK). ``currency`` is three
  capital letters (pattern: ``invalid``). Whitespace at either end is stripped first.
* ``account_after_order``: ``account_created_at`` later than the order's ``ts`` by more than
  :data:`ACCOUNT_CLOCK_SKEW_S` (300 s of clock skew between the shop's systems).
* ``lines_amount_mismatch``: an order with ``items`` whose sum of ``price * quantity`` differs
  from ``amount`` by more than ``max(LINES_AMOUNT_ABS_TOL, LINES_AMOUNT_REL_TOL * lines)``
  (0.01 or 1%). Shipping and fees are lines (Online Retail carries POST, C2, BANK CHARGES
  as lines, and its invoices match their lines exactly). An order without items (the
  e-commerce fraud purchases have none) is not checked.
* ``cost_above_price``: a catalog ``cost`` above ``price * MAX_COST_TO_PRICE`` (10): selling
  below cost is allowed (clearance), at a tenth of it or less is taken for a unit mistake.
* ``missing_field`` (a required field is absent), ``unknown_field`` (a field the contract
  does not have); ``invalid`` for the rest (an unknown ``action``, a bad ``currency``).

The full set of reasons a dead letter can carry is :data:`DEAD_LETTER_REASONS` (fixed and small:
it is a metrics label).
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Annotated, Literal, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

# Event times outside this range are rejected as corrupt (2000-01-01 .. 2100-01-01).
MIN_TS, MAX_TS = 946_684_800.0, 4_102_444_800.0

MIN_AMOUNT = 0.01  # smallest order amount (real minima: 0.38 GBP Online Retail, 9 USD e-commerce fraud)
MIN_PRICE = 0.001  # smallest positive unit price (Online Retail: 0.001 GBP lines and catalog price)
MIN_COST = 0.0001  # smallest positive unit cost (the derived Online Retail catalog has 0.0006)
MAX_PRICE = 1e7
MAX_AMOUNT = 1e8
MAX_STOCK = 10**9
MAX_QUANTITY = 100_000  # per line (Online Retail's largest line: 74,215 units)
ACCOUNT_CLOCK_SKEW_S = 300.0  # an account may appear created this much after its order (clock skew)
LINES_AMOUNT_ABS_TOL = 0.01  # |amount - sum(lines)| allowed: this, or
LINES_AMOUNT_REL_TOL = 0.01  # this fraction of sum(lines), whichever is larger
MAX_COST_TO_PRICE = 10.0  # cost may exceed price (clearance) up to this factor

PARSE_REASONS = frozenset({
    "empty", "oversized", "not_utf8", "not_json", "not_object", "wrong_type", "out_of_range",
    "missing_field", "unknown_field", "id_bad_characters", "account_after_order",
    "lines_amount_mismatch", "cost_above_price", "invalid"})
"""Every ``reason`` :func:`parse` can raise."""
STREAM_REASONS = frozenset({"from_future", "too_late", "processing_error", "output_too_large"})
"""Reasons the stream adds (:mod:`streams.validation`, :mod:`streams.runtime`)."""
DEAD_LETTER_REASONS = PARSE_REASONS | STREAM_REASONS

_BAD_ID_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*").fullmatch  # none of these is in a bad category

_TYPE_ERRORS = frozenset({"int_from_float", "int_parsing", "float_parsing", "bool_parsing", "decimal_parsing",
                          "string_unicode", "is_instance_of", "dataclass_type", "model_attributes_type"})
_RANGE_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number",
                           "int_parsing_size", "too_long", "too_short", "string_too_long", "string_too_short",
                           "multiple_of", "out_of_range"})
_CUSTOM_REASONS = frozenset({"id_bad_characters", "account_after_order", "lines_amount_mismatch",
                             "cost_above_price"})


def _bad_id_char(text: str) -> Optional[str]:
    r"""The first forbidden character of an id, as ``U+XXXX``, or None.

    >>> _bad_id_char("user {1}: café"), _bad_id_char("evil\u202eexe"), _bad_id_char("a\x00b")
    (None, 'U+202E', 'U+0000')
    """
    if _PRINTABLE_ASCII(text):  # the common case, ~20x faster than the per-character lookup below
        return None
    for ch in text:
        if unicodedata.category(ch) in _BAD_ID_CATEGORIES:
            return f"U+{ord(ch):04X}"
    return None


# What an id may hold, checked by pydantic-core's own (Rust) regex while it parses: a Python validator per id
# cost ~1 us each (4 per click: ~40% of parsing one). No surrogate (Cs) reaches it: the JSON parser refuses their
# escapes and a Python str holding one fails as ``string_unicode``. The Rust tables follow a newer Unicode than
# Python's unicodedata: a format character assigned since is refused too (stricter, never looser).
ID_PATTERN = r"^[^\p{Cc}\p{Cf}\p{Zl}\p{Zp}]*$"


def _money_floor(floor: float):
    def check(value: float) -> float:
        if 0 < value < floor:
            raise PydanticCustomError("out_of_range", "a positive amount must be at least {floor}", {"floor": floor})
        return value
    return AfterValidator(check)


Id = Annotated[str, Field(min_length=1, max_length=128, pattern=ID_PATTERN)]
OptId = Annotated[Optional[str], Field(default=None, min_length=1, max_length=128, pattern=ID_PATTERN)]
ShortOptId = Annotated[Optional[str], Field(default=None, min_length=1, max_length=64, pattern=ID_PATTERN)]
Ts = Annotated[float, Field(ge=MIN_TS, le=MAX_TS, description="event time, Unix seconds UTC")]


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True, allow_inf_nan=False)

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class Click(_Event):
    """A shopper's interaction with an item."""

    event_id: Id
    user_id: Id
    item_id: Id
    category_id: OptId = None
    action: Literal["view", "add_to_cart", "remove_from_cart", "purchase"]
    ts: Ts


class OrderLine(_Event):
    item_id: Id
    price: Annotated[float, Field(ge=0, le=MAX_PRICE, description="unit price (0: a free item)"),
                     _money_floor(MIN_PRICE)]
    quantity: int = Field(ge=1, le=MAX_QUANTITY)


class Order(_Event):
    """An order placed at checkout. Identifiers that are missing at the source stay None."""

    order_id: Id
    user_id: Id
    items: list[OrderLine] = Field(default_factory=list, max_length=1000)
    amount: float = Field(ge=MIN_AMOUNT, le=MAX_AMOUNT, description="order total in `currency`")
    currency: str = Field(default="GBP", pattern=r"^[A-Z]{3}$")
    payment_fingerprint: OptId = None
    device_id: OptId = None
    ip: ShortOptId = None
    shipping_country: ShortOptId = None
    account_created_at: Optional[float] = Field(default=None, ge=MIN_TS, le=MAX_TS)
    ts: Ts

    @model_validator(mode="after")
    def _cross_fields(self) -> "Order":
        if self.account_created_at is not None and self.account_created_at > self.ts + ACCOUNT_CLOCK_SKEW_S:
            raise PydanticCustomError(
                "account_after_order", "account_created_at {created} is after the order time {ts} "
                "(beyond {skew} s of clock skew)", {"created": self.account_created_at, "ts": self.ts,
                                                    "skew": ACCOUNT_CLOCK_SKEW_S})
        if self.items:
            lines = math.fsum(i.price * i.quantity for i in self.items)
            if abs(self.amount - lines) > max(LINES_AMOUNT_ABS_TOL, LINES_AMOUNT_REL_TOL * lines):
                raise PydanticCustomError(
                    "lines_amount_mismatch", "amount {amount} does not match its lines' total {lines}",
                    {"amount": self.amount, "lines": round(lines, 4)})
        return self


class FraudLabel(_Event):
    """A late truth about an order: chargeback, confirmed fraud, or confirmed legitimate."""

    order_id: Id
    is_fraud: bool
    ts: Ts
    source: ShortOptId = None


class CatalogItem(_Event):
    """The shop's current price, unit cost and stock of an item."""

    item_id: Id
    price: float = Field(ge=MIN_PRICE, le=MAX_PRICE)
    cost: Annotated[float, Field(ge=0, le=MAX_PRICE), _money_floor(MIN_COST)]
    stock: int = Field(ge=0, le=MAX_STOCK)
    category_id: OptId = None
    ts: Ts

    @model_validator(mode="after")
    def _cost_vs_price(self) -> "CatalogItem":
        if self.cost > self.price * MAX_COST_TO_PRICE:
            raise PydanticCustomError("cost_above_price", "cost {cost} is above {factor} x price {price}",
                                      {"cost": self.cost, "price": self.price, "factor": MAX_COST_TO_PRICE})
        return self


class FraudVerdict(_Event):
    order_id: str
    score: float = Field(ge=0, le=1)
    verdict: Literal["approve", "review", "decline"]
    reasons: list[str] = Field(description="the top (at most 3) signals behind the score, in plain words with their "
                                           "values (scorers/reasons.py), e.g. 'order amount 1,250.00 GBP'")
    reason_codes: list[str] = Field(default_factory=list,
                                    description="the same signals, machine-readable: feature names "
                                                "(features/definitions.py), in the same order")
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


def _reason(error: dict) -> str:
    """The dead-letter reason of one pydantic error (one of :data:`PARSE_REASONS`)."""
    kind = error["type"]
    if kind in _CUSTOM_REASONS:
        return kind
    if kind == "string_pattern_mismatch" and error.get("ctx", {}).get("pattern") == ID_PATTERN:
        return "id_bad_characters"
    if kind == "missing":
        return "missing_field"
    if kind == "extra_forbidden":
        return "unknown_field"
    if kind in _RANGE_ERRORS:
        return "out_of_range"
    if kind.endswith("_type") or kind in _TYPE_ERRORS:
        return "wrong_type"
    if kind == "literal_error" and not isinstance(error.get("input"), str):
        return "wrong_type"  # an action of 1 is a type mistake; of "jump", an unknown value
    return "invalid"


def _message(error: dict) -> str:
    """What a dead letter says of one pydantic error: its message, or for an id the character refused."""
    if _reason(error) == "id_bad_characters" and isinstance(error.get("input"), str):
        return f"id holds a control, format or bidi character ({_bad_id_char(error['input']) or 'Unicode format'})"
    return error["msg"]


def parse(model: type[_Event], raw: bytes | None, max_bytes: int) -> _Event:
    r"""Decode and validate one message value, strictly (see the module doc for every rule).

    Raises :class:`InvalidEvent` with one of :data:`PARSE_REASONS` (the first error's, when
    there are several): ``empty``, ``oversized``, ``not_utf8``, ``not_json``, ``not_object``,
    ``wrong_type`` (a string or boolean for a number, a number for a boolean or string...),
    ``out_of_range`` (bounds, NaN/inf, money floors, lengths), ``missing_field``,
    ``unknown_field``, ``id_bad_characters`` (control/format/bidi/surrogate in an id),
    ``account_after_order``, ``lines_amount_mismatch``, ``cost_above_price``, and ``invalid``
    for the rest (an unknown action, a bad currency code). The stream adds ``too_late``
    (beyond the allowed lateness), ``from_future`` (more than ``MAX_CLOCK_SKEW_S`` ahead of the
    wall clock), ``processing_error`` and ``output_too_large`` (:data:`STREAM_REASONS`).

    >>> ok = b'{"order_id": "o", "user_id": "u", "amount": 5, "ts": 1.6e9}'
    >>> parse(Order, ok, 1000).amount
    5.0
    >>> def why(raw):
    ...     try:
    ...         parse(Order, raw, 1000)
    ...     except InvalidEvent as exc:
    ...         return exc.reason
    >>> why(ok.replace(b"5", b'"5"')), why(ok.replace(b"5", b"true")), why(ok.replace(b"5", b"4.9e-324"))
    ('wrong_type', 'wrong_type', 'out_of_range')
    >>> why(ok.replace(b'"u"', b'"u\\u202e"')), why(ok.replace(b"}", b', "account_created_at": 1.7e9}'))
    ('id_bad_characters', 'account_after_order')
    >>> why(ok.replace(b"}", b', "items": [{"item_id": "i", "price": 1, "quantity": 1}]}'))
    'lines_amount_mismatch'
    >>> why(ok.replace(b"}", b', "is_fraud": "yes"}')), why(ok.replace(b"1.6e9", b"null"))
    ('unknown_field', 'wrong_type')
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
        # parses and validates in one pass (pydantic-core); strict: no "5" for 5, no 1 for true
        return model.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if errors[0]["type"] == "json_invalid":
            raise InvalidEvent("not_json", errors[0]["msg"]) from None
        if errors[0]["type"] in ("model_type", "model_attributes_type") and not errors[0]["loc"]:
            raise InvalidEvent("not_object", "expected a JSON object") from None
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {_message(e)}" for e in errors[:5])
        raise InvalidEvent(_reason(errors[0]), detail) from None
