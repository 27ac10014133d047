"""Champion / challenger for fraud: a second River model scores live orders in shadow.

The **champion** is what the worker serves (Triton, blended with :class:`~scorers.online.OnlineFraud`
once it is ready). The **challenger** (:class:`Challenger`) is another River model, by default an
adaptive random forest (``river.forest.ARFClassifier``, 5 trees, each with its own ADWIN drift
detector) over the same fraud vector. It

* scores every order in **shadow**: its score is stored with the order's record and never
  decides a verdict;
* learns from the same labels as the champion (joined late labels and labels-by-silence);
* keeps prequential metrics side by side with the champion: rolling ROC-AUC and log-loss of
  both, each score taken when the order was scored, i.e. before its label was learned;
* judges a **promotion rule** (:meth:`Challenger.should_promote`), a one-sided paired test on
  per-label log-loss over the last ``window`` labels both scored:

      d_i = logloss(champion_i) - logloss(challenger_i)        (> 0: the challenger was better)
      promote  iff  n >= min_labels  and  mean(d) >= margin  and  mean(d) / (sd(d) / sqrt(n)) >= z

  Pairing removes the label-to-label variance both models share (an order that is hard for one
  is usually hard for the other), so a real but small gain is seen sooner than by comparing two
  rolling averages. Promotion itself is an operator's decision (the rule is exported as a
  metric); nothing is switched automatically.

All of it pickles (:meth:`to_bytes` / :meth:`from_bytes`), and the worker checkpoints it next to
the champion.

>>> c = Challenger(min_labels=50, window=200, margin=0.01)
>>> x1, x0 = {"amount_log": 3.0, "device_users_30d": 4.0}, {"amount_log": 3.0, "device_users_30d": 0.0}
>>> for _ in range(100):  # a champion stuck at 0.5, a challenger that learns
...     c.learn(x1, True, p_champion=0.5, p_challenger=c.predict(x1))
...     c.learn(x0, False, p_champion=0.5, p_challenger=c.predict(x0))
>>> c.should_promote(), c.state()
(True, 'promote')
>>> Challenger.from_bytes(c.to_bytes()).predict(x1) == c.predict(x1)
True
"""

from __future__ import annotations

import math
import pickle
from collections import deque

from river import compose, forest, metrics, preprocessing, utils

from scorers.online import _log_loss

STATES = ("collecting", "hold", "promote")  # values of the promotion-state gauge


def default_model():
    """The default challenger: an adaptive random forest (5 trees) on the standardised vector."""
    return compose.Pipeline(preprocessing.StandardScaler(), forest.ARFClassifier(n_models=5, seed=42))


class Challenger:
    def __init__(self, model=None, name: str = "arf", window: int = 1000, min_labels: int = 1000,
                 margin: float = 0.01, z: float = 2.33):
        """``model``: any River binary classifier (default :func:`default_model`); ``window``: labels
        in the rolling metrics and in the paired test; ``min_labels``, ``margin`` (nats of
        log-loss per label) and ``z`` (one-sided; 2.33 ~ 1 %): the promotion rule."""
        self.model = model if model is not None else default_model()
        self.name = name
        self.window = window
        self.auc = {m: utils.Rolling(metrics.ROCAUC(), window_size=window) for m in ("champion", "challenger")}
        self.logloss = {m: utils.Rolling(metrics.LogLoss(), window_size=window) for m in ("champion", "challenger")}
        self.diffs: deque[float] = deque(maxlen=window)  # paired log-loss differences, champion - challenger
        self.n_learned = 0
        self.n_fraud = 0
        self.set_rule(min_labels, margin, z)

    def set_rule(self, min_labels: int, margin: float, z: float) -> None:
        """(Re)set the promotion rule, e.g. from settings after a checkpoint is restored. The paired
        window grows to ``min_labels`` if it is smaller (otherwise the rule could never fire)."""
        self.min_labels, self.margin, self.z = min_labels, margin, z
        if min_labels > (self.diffs.maxlen or 0):
            self.diffs = deque(self.diffs, maxlen=min_labels)

    def predict(self, x: dict[str, float]) -> float:
        """The challenger's shadow P(fraud | x); 0.5 before it has learned anything."""
        if self.n_learned == 0:
            return 0.5
        return min(1.0, max(0.0, float(self.model.predict_proba_one(x).get(True, 0.0))))

    def learn(self, x: dict[str, float], y: bool, p_champion: float, p_challenger: float | None = None) -> None:
        """Score both (prequential: scores from when the order was scored), then learn the label.

        ``p_champion``: the score served for the order; ``p_challenger``: the shadow score stored
        with it (when missing, e.g. an order scored before the challenger existed, it is predicted
        now, still before learning this label)."""
        if p_challenger is None:
            p_challenger = self.predict(x)
        y = bool(y)
        for m, p in (("champion", p_champion), ("challenger", p_challenger)):
            self.auc[m].update(y, p)
            self.logloss[m].update(y, min(max(p, 1e-15), 1 - 1e-15))
        self.diffs.append(_log_loss(y, p_champion) - _log_loss(y, p_challenger))
        self.model.learn_one(x, y)
        self.n_learned += 1
        self.n_fraud += y

    def paired(self) -> dict[str, float]:
        """The paired comparison over the window: ``n``, ``gain`` (mean log-loss the challenger saves
        per label, nats) and ``t`` (gain / its standard error; inf when every difference is equal)."""
        n = len(self.diffs)
        if n < 2:
            return {"n": n, "gain": math.nan, "t": math.nan}
        mean = sum(self.diffs) / n
        var = sum((d - mean) ** 2 for d in self.diffs) / (n - 1)
        se = math.sqrt(var / n)
        t = mean / se if se > 0 else math.copysign(math.inf, mean) if mean else 0.0
        return {"n": n, "gain": mean, "t": t}

    def should_promote(self) -> bool:
        """The promotion rule (module docstring): enough paired labels, and the challenger's log-loss
        lower than the champion's by at least ``margin`` per label, significantly (t >= ``z``)."""
        p = self.paired()
        return p["n"] >= self.min_labels and p["gain"] >= self.margin and p["t"] >= self.z

    def state(self) -> str:
        """``collecting`` (fewer than ``min_labels`` paired labels), ``promote`` or ``hold``."""
        if len(self.diffs) < self.min_labels:
            return "collecting"
        return "promote" if self.should_promote() else "hold"

    def quality(self) -> dict[str, dict[str, float]]:
        """Rolling ROC-AUC and log-loss of champion and challenger, side by side (AUC NaN until both
        classes have been seen)."""
        both = 0 < self.n_fraud < self.n_learned
        return {m: {"roc_auc": self.auc[m].get() if both else math.nan, "log_loss": self.logloss[m].get()}
                for m in ("champion", "challenger")}

    def to_bytes(self) -> bytes:
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def from_bytes(raw: bytes) -> "Challenger":
        model = pickle.loads(raw)
        if not isinstance(model, Challenger):
            raise TypeError(f"checkpoint holds {type(model).__name__}, not Challenger")
        return model
