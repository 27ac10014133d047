"""Online fraud learning with River: late labels teach a model that is blended with Triton's.

:class:`OnlineFraud` holds

* a River classifier (standard scaler + logistic regression) over the fraud vector,
  learning one labelled order at a time (``learn_one``) as labels arrive;
* blend weights for the two experts (Triton, River), exponentially weighted by each
  expert's recent log-loss: the one that has been right lately weighs more;
* prequential quality: rolling ROC-AUC and log-loss of the served (blended) score,
  measured on each label *before* learning from it;
* two ADWIN detectors, which report drift: one on the served score's error over every label, one
  on its error over fraud labels only (``1 - score``). The first is dominated by the ~95%
  legitimate orders, so a change in how fraud looks, which leaves them alone, barely moves it;
  the second sees exactly that.

All of it pickles (:meth:`to_bytes` / :meth:`from_bytes`) so a worker checkpoints it
and a restarted one predicts exactly as before.

>>> m = OnlineFraud()
>>> x = {"amount_log": 3.0, "device_users_30d": 4.0}
>>> for _ in range(50):
...     _ = m.learn(x, True, p_triton=0.2)
...     _ = m.learn({"amount_log": 3.0, "device_users_30d": 0.0}, False, p_triton=0.2)
>>> m.predict(x) > 0.8 and m.weights()["river"] > m.weights()["triton"]
True
>>> OnlineFraud.from_bytes(m.to_bytes()).predict(x) == m.predict(x)
True
"""

from __future__ import annotations

import math
import pickle

from river import compose, drift, linear_model, metrics, optim, preprocessing, utils

EPS = 1e-6


def river_inputs(values: dict[str, float], names) -> dict[str, float]:
    """A feature vector as River takes it: a dict of ``names``, unknown (NaN) values left out."""
    return {n: values[n] for n in names if not math.isnan(values[n])}


def _log_loss(y: bool, p: float) -> float:
    p = min(max(p, EPS), 1 - EPS)
    return -math.log(p if y else 1 - p)


class OnlineFraud:
    def __init__(self, learning_rate: float = 0.05, loss_decay: float = 0.02, eta: float = 2.0,
                 window: int = 1000, min_labels: int = 100):
        """``min_labels``: River joins the served score only after learning this many labels."""
        self.min_labels = min_labels
        self.model = compose.Pipeline(preprocessing.StandardScaler(),
                                      linear_model.LogisticRegression(optimizer=optim.SGD(learning_rate)))
        self.loss = {"triton": math.log(2), "river": math.log(2)}  # EWMA log-loss of each expert
        self.loss_decay = loss_decay
        self.eta = eta
        self.auc = utils.Rolling(metrics.ROCAUC(), window_size=window)
        self.logloss = utils.Rolling(metrics.LogLoss(), window_size=window)
        self.detector = drift.ADWIN()  # |y - served| over every label
        self.detector_fraud = drift.ADWIN()  # 1 - served over fraud labels: missed fraud
        self.n_learned = 0
        self.n_fraud = 0
        self.drifts = 0

    def predict(self, x: dict[str, float]) -> float:
        """River's P(fraud | x); 0.5 before it has learned anything."""
        if self.n_learned == 0:
            return 0.5
        return self.model.predict_proba_one(x).get(True, 0.0)

    def weights(self) -> dict[str, float]:
        z = {k: math.exp(-self.eta * v) for k, v in self.loss.items()}
        total = sum(z.values())
        return {k: v / total for k, v in z.items()}

    @property
    def ready(self) -> bool:
        """True once River has learned enough labels to take part in the served score."""
        return self.n_learned >= self.min_labels

    def blend(self, p_triton: float, p_river: float) -> float:
        """The served score: Triton's alone until :attr:`ready`, then the weighted blend."""
        if not self.ready:
            return p_triton
        w = self.weights()
        # the weights sum to 1 only up to rounding: 1.0 blended with 1.0 can give 1.0000000000000002
        return min(1.0, max(0.0, w["triton"] * p_triton + w["river"] * p_river))

    def learn(self, x: dict[str, float], y: bool, p_triton: float) -> bool:
        """Learn from one label; returns True when the served score's error drifted."""
        p_river = self.predict(x)
        served = self.blend(p_triton, p_river)
        self.auc.update(y, served)
        self.logloss.update(y, served)
        for name, p in (("triton", p_triton), ("river", p_river)):
            self.loss[name] += self.loss_decay * (_log_loss(y, p) - self.loss[name])
        self.detector.update(abs(float(y) - served))
        drifted = self.detector.drift_detected
        if y:
            if not hasattr(self, "detector_fraud"):  # a checkpoint from before this detector
                self.detector_fraud = drift.ADWIN()
            self.detector_fraud.update(1.0 - served)
            drifted = drifted or self.detector_fraud.drift_detected
        self.drifts += drifted
        self.model.learn_one(x, y)
        self.n_learned += 1
        self.n_fraud += bool(y)
        return drifted

    def quality(self) -> dict[str, float]:
        """Prequential rolling ROC-AUC and log-loss of the served score (AUC is NaN until
        labels of both classes have been seen)."""
        both = 0 < self.n_fraud < self.n_learned
        return {"roc_auc": self.auc.get() if both else math.nan, "log_loss": self.logloss.get()}

    def to_bytes(self) -> bytes:
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def from_bytes(raw: bytes) -> "OnlineFraud":
        model = pickle.loads(raw)
        if not isinstance(model, OnlineFraud):
            raise TypeError(f"checkpoint holds {type(model).__name__}, not OnlineFraud")
        return model
