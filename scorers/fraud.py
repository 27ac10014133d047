"""Fraud scores -> verdicts with reason codes: the one fraud decision of the stream and of checkout.

The Triton model ``fraud`` returns a calibrated probability (``SCORE``) and a
per-feature contribution to the logit (``CONTRIB``); the reasons of a verdict are the
features that pushed the score up most. When Triton is unavailable a transparent
rules score decides instead and the verdict is marked ``degraded``.

:class:`FraudDecider` is the decision both paths call (the stream's fraud role for a batch,
``POST /v1/fraud/score`` for one order): features (or, when they cannot be read, the order's
own fields) -> Triton or rules -> the River blend -> a probability -> a verdict.

Invariants:

* every served score is a probability in [0, 1] (:func:`as_probability`): a blend whose weights
  sum to 1 + 1e-16 does not make a score of 1.0000000000000002 that the verdict contract rejects;
* a degraded verdict (rules, because Triton or the features were unavailable) is never below
  ``FRAUD_DEGRADED_FLOOR`` (default ``review``): an outage never turns into "approve everything".

Thresholds map a score to ``approve`` (< review), ``review`` (>= review) or ``decline``
(>= decline): :attr:`FraudDecider.thresholds`, the live ones of :mod:`scorers.thresholds` (a review
budget, the same on both paths: computed by the fraud workers, read from Redis by the HTTP
service), the served model's metadata thresholds before those, and ``FRAUD_REVIEW_THRESHOLD`` /
``FRAUD_DECLINE_THRESHOLD`` until that metadata has been read.

Reasons: ``reason_codes`` are the (at most three) features with the largest positive
contribution (``CONTRIB``; on the degraded path the rules that fired), ``reasons`` the same in
plain words (:mod:`scorers.reasons`).

The contract with the model: its input order (the served ``meta.json`` ``features``, read from
Triton's ``META`` output) must be :data:`~features.definitions.FRAUD_VECTOR`
(:func:`check_contract`, at the start of a fraud worker and of the HTTP service), on every Triton
replica of ``TRITON_GRPC_URL`` that answers (:meth:`scorers.triton.TritonScorer.call_each_replica`):
one replica with another input order refuses the whole service.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from features.definitions import FRAUD_VECTOR
from features.store import FeaturePlans
from scorers.online import OnlineFraud, river_inputs
from scorers.reasons import sentences
from scorers.thresholds import Thresholds
from scorers.triton import ScoringUnavailable, TritonScorer
from streamscore.events import Order
from streamscore.settings import Settings

log = logging.getLogger(__name__)

MAX_REASONS = 3
RULES_VERSION = "rules-v1"


@dataclass(frozen=True)
class Score:
    score: float
    verdict: str
    reasons: list[str]
    model_version: str
    degraded: bool


VERDICTS = ("approve", "review", "decline")  # in order of severity


def settings_thresholds(settings: Settings) -> Thresholds:
    """``FRAUD_REVIEW_THRESHOLD`` / ``FRAUD_DECLINE_THRESHOLD``: until the served model's metadata is read."""
    return Thresholds(settings.fraud_review_threshold, settings.fraud_decline_threshold, "settings")


def verdict_for(score: float, settings: Settings) -> str:
    return settings_thresholds(settings).verdict(score)


class ContractMismatch(RuntimeError):
    """The served fraud model expects its inputs in another order than :data:`FRAUD_VECTOR`."""


def contract_mismatch(served: Sequence[str], expected: Sequence[str] = FRAUD_VECTOR) -> str | None:
    """Why the model's input order ``served`` is not ``expected`` (None: it is), naming the first differing position.

    >>> contract_mismatch(["a", "b", "c"], ["a", "b", "c"]) is None
    True
    >>> contract_mismatch(["a", "c", "b"], ["a", "b", "c"])
    "position 1: the model expects 'c', FRAUD_VECTOR has 'b'"
    >>> contract_mismatch(["a", "b"], ["a", "b", "c"])
    "position 2: the model expects nothing (2 inputs), FRAUD_VECTOR has 'c' (3 features)"
    """
    served, expected = list(served), list(expected)
    for i in range(max(len(served), len(expected))):
        m = served[i] if i < len(served) else None
        e = expected[i] if i < len(expected) else None
        if m != e:
            model = repr(m) if m is not None else f"nothing ({len(served)} inputs)"
            ours = repr(e) if e is not None else f"nothing ({len(expected)} features)"
            if m is None or e is None:
                ours += f" ({len(expected)} features)" if e is not None else ""
            return f"position {i}: the model expects {model}, FRAUD_VECTOR has {ours}"
    return None


def _meta(result) -> dict:
    raw = result.outputs["META"].reshape(-1)[0]
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)


async def served_metas(triton: TritonScorer, model: str, timeout_s: float) -> dict[str, dict | Exception]:
    """The served fraud model's metadata (``META``: model, version, features, thresholds) on every replica
    address (``ip:port`` -> its metadata, or the error it gave): one inference of an all-zero order
    each, outside the circuit breaker."""
    x = np.zeros((1, len(FRAUD_VECTOR)), dtype=np.float32)
    out: dict[str, dict | Exception] = {}
    for address, result in (await triton.call_each_replica(model, {"FEATURES": x}, ["META"], timeout_s)).items():
        try:
            out[address] = result if isinstance(result, Exception) else _meta(result)
        except Exception as exc:  # an older model without a JSON META
            out[address] = exc
    return out


def at_least(verdict: str, floor: str) -> str:
    """The more severe of ``verdict`` and ``floor``.

    >>> at_least("approve", "review"), at_least("decline", "review"), at_least("approve", "approve")
    ('review', 'decline', 'approve')
    """
    return max(verdict, floor, key=VERDICTS.index)


def as_probability(p: float) -> float:
    """``p`` clipped to [0, 1]; a NaN is refused (ValueError), never mapped to 0 ("approve").

    >>> as_probability(1.0000000000000002), as_probability(-1e-17), as_probability(0.3)
    (1.0, 0.0, 0.3)
    """
    p = float(p)
    if math.isnan(p):
        raise ValueError("score is NaN")
    return min(1.0, max(0.0, p))


# Rules fallback: (reason, predicate over the feature dict, weight on the logit).
NEW_ACCOUNT_LOG_S = math.log1p(600)  # account younger than 10 minutes
RULES = (
    ("account_age_log_s", lambda f: f["account_age_missing"] == 0 and f["account_age_log_s"] < NEW_ACCOUNT_LOG_S, 2.5),
    ("device_users_30d", lambda f: f["device_users_30d"] >= 3, 1.5),
    ("ip_users_30d", lambda f: f["ip_users_30d"] >= 4, 1.0),
    ("card_users_30d", lambda f: f["card_users_30d"] >= 2, 1.5),
    ("device_orders_1h", lambda f: f["device_orders_1h"] >= 4, 1.0),
    ("user_orders_1h", lambda f: f["user_orders_1h"] >= 4, 0.8),
    ("user_amount_zscore", lambda f: f["user_amount_zscore"] > 3, 0.8),
)
RULES_BIAS = -3.0


def rules_score(features: dict[str, float]) -> tuple[float, list[str]]:
    """A cheap, explainable score used when the model is unavailable.

    >>> from features.definitions import FRAUD_FEATURES
    >>> f = {x.name: x.default for x in FRAUD_FEATURES}
    >>> round(rules_score(f)[0], 3), rules_score({**f, "device_users_30d": 5})[1]
    (0.047, ['device_users_30d'])
    """
    fired = [(reason, weight) for reason, predicate, weight in RULES if predicate(features)]
    logit = RULES_BIAS + sum(w for _, w in fired)
    return 1 / (1 + math.exp(-logit)), [r for r, _ in fired]


class FraudScorer:
    def __init__(self, triton: TritonScorer, settings: Settings):
        self.triton = triton
        self.settings = settings
        self.meta: dict | None = None  # the served model's META once checked: until then, the rules
        self.refused: str | None = None  # why the served model was refused (a contract mismatch)

    async def check_contract(self, timeout_s: float = 5.0) -> dict | None:
        """Read the served model's metadata and check its input order against FRAUD_VECTOR.
        Returns the metadata (and scores with the model from now on); None when Triton could not
        be asked (the rules score, degraded, until a later check passes). Raises
        :class:`ContractMismatch` when the orders differ: refuse to serve."""
        try:
            metas = await served_metas(self.triton, self.settings.model_fraud, timeout_s)
        except Exception as exc:  # a replica name that does not resolve (yet)
            metas = {self.settings.triton_grpc_url: exc}
        answered = {a: m for a, m in metas.items() if not isinstance(m, Exception)}
        for address, exc in metas.items():
            if isinstance(exc, Exception):  # down, still loading, an older model without META
                log.warning("fraud model contract not checked on %s (%s: %s)%s", address, type(exc).__name__, exc,
                            "" if answered else "; rules decide until it is")
        if not answered:
            return None
        for address, meta in answered.items():
            why = contract_mismatch(meta.get("features") or [])
            if why is not None:
                self.refused = (f"fraud model {self.settings.model_fraud!r} ({meta.get('version')}) on {address} "
                                f"does not take FRAUD_VECTOR's inputs: {why}. Refusing to serve: retrain or deploy "
                                "the model that matches features/definitions.py")
                raise ContractMismatch(self.refused)
        versions = {a: m.get("version") for a, m in answered.items()}
        if len(set(versions.values())) > 1:
            log.warning("Triton replicas serve different fraud model versions: %s", versions)
        meta = next(iter(answered.values()))
        self.meta = meta
        log.info("fraud model %s takes FRAUD_VECTOR's %d inputs in order (checked on %d of %d replicas)",
                 meta.get("version"), len(FRAUD_VECTOR), len(answered), len(metas))
        return meta

    async def follow_contract(self, interval_s: float = 2.0) -> None:
        """Until the contract is checked (Triton was down at start): check again every ``interval_s``.
        A mismatch found then is logged (critical) and the model is never used: the rules decide."""
        while self.meta is None and self.refused is None:
            await asyncio.sleep(interval_s)
            try:
                await self.check_contract()
            except ContractMismatch as exc:
                log.critical("%s", exc)

    def rules(self, features: dict[str, float]) -> Score:
        """The rules fallback's (degraded) score of one order."""
        score, reasons = rules_score(features)
        return Score(score, verdict_for(score, self.settings), reasons, RULES_VERSION, True)

    async def score(self, features: Sequence[dict[str, float]], deadline_s: float | None = None,
                    retries: int | None = None, decision: str = "fraud") -> list[Score]:
        """Score a batch in one Triton call; fall back to rules for the whole batch on failure
        (counted as degraded under ``decision``: ``fraud`` on the stream, ``fraud_http`` at checkout)."""
        if not features:
            return []
        if self.meta is None:  # the model's input order not checked yet (or refused): never its score
            self.triton.metrics.degraded.labels(decision).inc(len(features))
            return [self.rules(f) for f in features]
        x = np.asarray([[f[name] for name in FRAUD_VECTOR] for f in features], dtype=np.float32)
        try:
            result = await self.triton.infer(self.settings.model_fraud, {"FEATURES": x}, ["SCORE", "CONTRIB"],
                                             deadline_s=deadline_s, retries=retries)
        except ScoringUnavailable:
            self.triton.metrics.degraded.labels(decision).inc(len(features))
            return [self.rules(f) for f in features]
        scores = result.outputs["SCORE"].reshape(-1)
        contrib = result.outputs["CONTRIB"]
        version = f"{self.settings.model_fraud}:{result.model_version}"
        out = []
        for s, c in zip(scores, contrib):
            top = np.argsort(-c)[:MAX_REASONS]
            reasons = [FRAUD_VECTOR[i] for i in top if c[i] > 0]
            score = float(s)
            out.append(Score(score, verdict_for(score, self.settings), reasons, version, False))
        return out


# The ORDERS script's reply for an entity-less order with no history: what the features are
# when Redis cannot be read, so only the order's own fields count (amount, account age, hour,
# lines, missing device / IP).
_EMPTY_ORDER_REPLY = [[]] + [0] * 12 + [0] * 3


def order_only_features(order: Order) -> dict[str, float]:
    """The fraud features computable from the order alone (every history feature at its default).

    >>> o = Order(order_id="o", user_id="u", amount=99.0, ts=1.7e9, account_created_at=1.7e9 - 60)
    >>> f = order_only_features(o)
    >>> round(f["amount_log"], 3), round(f["account_age_log_s"], 3), f["device_users_30d"], f["device_missing"]
    (4.605, 4.111, 0.0, 1.0)
    """
    return FeaturePlans.order_features(order, _EMPTY_ORDER_REPLY)


@dataclass(frozen=True)
class Decision:
    """One order's fraud decision. ``p_model``: the Triton (or rules) score before the River blend;
    ``x``: the River inputs the online models learn from when the order's label arrives."""

    score: float
    verdict: str
    reasons: list[str]
    model_version: str
    degraded: bool
    p_model: float
    x: dict[str, float]
    reason_codes: list[str] = field(default_factory=list)  # the features behind ``reasons`` (same order)


class FraudDecider:
    """The fraud decision, shared by the stream (``decision="fraud"``) and checkout (``"fraud_http"``)."""

    def __init__(self, scorer: FraudScorer, settings: Settings, thresholds: Thresholds | None = None):
        self.scorer = scorer
        self.settings = settings
        # the thresholds in use: replaced by the worker's live ones (scorers.thresholds) or, in the
        # HTTP service, by those the workers store in Redis
        self.thresholds = thresholds or settings_thresholds(settings)

    async def decide(self, orders: Sequence[Order], features: Sequence[dict[str, float]] | None,
                     online: OnlineFraud | None, deadline_s: float | None = None, retries: int | None = None,
                     decision: str = "fraud") -> list[Decision]:
        """Decide ``orders``; ``features``: their feature values (same order), or None when the
        feature store could not be read (the order's own fields are used, and the verdict is
        degraded). ``online``: the River model blended in once ready (None: Triton alone)."""
        if features is None:
            values = [order_only_features(o) for o in orders]
            self.scorer.triton.metrics.degraded.labels(decision).inc(len(values))
            scores = [self.scorer.rules(v) for v in values]
        else:
            values = list(features)
            scores = await self.scorer.score(values, deadline_s=deadline_s, retries=retries, decision=decision)
        out, thresholds = [], self.thresholds  # one set for the whole batch
        for order, v, sc in zip(orders, values, scores):
            x = river_inputs(v, FRAUD_VECTOR)
            score, version = sc.score, sc.model_version
            if not sc.degraded and online is not None and online.ready:
                score = online.blend(sc.score, online.predict(x))
                version = f"{sc.model_version}+river"
            try:
                score = as_probability(score)
            except ValueError:  # a NaN from the model: this order falls back to the rules
                sc = self.scorer.rules(v)
                score, version = sc.score, sc.model_version
            verdict = thresholds.verdict(score)
            if sc.degraded:
                verdict = at_least(verdict, self.settings.fraud_degraded_floor)
            codes = list(sc.reasons[:MAX_REASONS])
            out.append(Decision(score, verdict, sentences(codes, v, order), version, sc.degraded, sc.score, x, codes))
        return out
