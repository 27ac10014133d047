"""Fraud scores -> verdicts with reason codes.

The Triton model ``fraud`` returns a calibrated probability (``SCORE``) and a
per-feature contribution to the logit (``CONTRIB``); the reasons of a verdict are the
features that pushed the score up most. When Triton is unavailable a transparent
rules score decides instead and the verdict is marked ``degraded``.

Thresholds (``FRAUD_REVIEW_THRESHOLD``, ``FRAUD_DECLINE_THRESHOLD``) map a score to
``approve`` (< review), ``review`` (>= review) or ``decline`` (>= decline).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from features.definitions import FRAUD_VECTOR
from scorers.triton import ScoringUnavailable, TritonScorer
from streamscore.settings import Settings

MAX_REASONS = 3
RULES_VERSION = "rules-v1"


@dataclass(frozen=True)
class Score:
    score: float
    verdict: str
    reasons: list[str]
    model_version: str
    degraded: bool


def verdict_for(score: float, settings: Settings) -> str:
    if score >= settings.fraud_decline_threshold:
        return "decline"
    if score >= settings.fraud_review_threshold:
        return "review"
    return "approve"


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

    async def score(self, features: Sequence[dict[str, float]], deadline_s: float | None = None,
                    retries: int | None = None, decision: str = "fraud") -> list[Score]:
        """Score a batch in one Triton call; fall back to rules for the whole batch on failure
        (counted as degraded under ``decision``: ``fraud`` on the stream, ``fraud_http`` at checkout)."""
        if not features:
            return []
        x = np.asarray([[f[name] for name in FRAUD_VECTOR] for f in features], dtype=np.float32)
        try:
            result = await self.triton.infer(self.settings.model_fraud, {"FEATURES": x}, ["SCORE", "CONTRIB"],
                                             deadline_s=deadline_s, retries=retries)
        except ScoringUnavailable:
            self.triton.metrics.degraded.labels(decision).inc(len(features))
            out = []
            for f in features:
                score, reasons = rules_score(f)
                out.append(Score(score, verdict_for(score, self.settings), reasons, RULES_VERSION, True))
            return out
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
