"""The pricing bandit's demand model: a Bayesian log-linear curve of units per hour in price.

    log E[units per hour at multiplier m of the reference price] = a + b (m - 1) + c (m - 1)^2

:class:`DemandPosterior` keeps the Gaussian posterior of (a, b, c) in closed form
(:class:`GaussianLinear`: conjugate Bayesian linear regression, the model River's
``BayesianLinearRegression(alpha=1, beta=1)`` fits, owned here because the posterior's mean and
covariance are only reachable through River's private ``_get_arrays``, gone in River 0.26);
:class:`scorers.bandit.DemandThompson` draws from it
to choose prices. Counts enter as a Poisson regression (one reweighted least-squares step per
block of observations: no logarithm of a zero count); observations of one time block share a
random level shift, estimated from the data, so prices compared within a block cancel its
demand shock.
"""

from __future__ import annotations

import math
import random

import numpy as np

FEATURES = ("level", "slope", "curve")


class GaussianLinear:
    """Bayesian linear regression with a ``N(0, I / alpha)`` prior on the weights and noise
    precision ``beta``: the posterior precision is ``alpha I + beta sum x x^T`` and its mean solves
    ``precision @ mean = beta sum y x``. Exact after any number of rows, in any order.

    >>> g = GaussianLinear(2)
    >>> for x, y in (([1.0, 0.0], 2.0), ([1.0, 1.0], 3.0), ([1.0, 2.0], 4.0)) * 50:
    ...     g.learn(np.array(x), y)
    >>> mean, cov = g.posterior()
    >>> np.round(mean, 1).tolist(), bool(np.all(np.linalg.eigvalsh(cov) > 0))  # the prior shrinks a little
    ([2.0, 1.0], True)
    """

    def __init__(self, n: int, alpha: float = 1.0, beta: float = 1.0):
        self.beta = beta
        self.precision = alpha * np.eye(n)
        self.moment = np.zeros(n)  # beta * sum y x

    def learn(self, x: np.ndarray, y: float) -> None:
        self.precision += self.beta * np.outer(x, x)
        self.moment += self.beta * y * x

    def posterior(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, covariance)`` of the weights."""
        cov = np.linalg.inv(self.precision)
        return cov @ self.moment, cov


class DemandPosterior:
    """Gaussian posterior of one key's demand curve ``log units/hour = a + b (m - 1) + c (m - 1)^2``,
    learned by :class:`GaussianLinear`.

    The regression's coefficients have a standard normal prior; the features are scaled so that
    ``a = offset + level_sd * w0``, ``b = prior_slope + slope_sd * w1``, ``c = curve_sd * w2``
    (``offset``: the log rate of the first observations). Observations of one block (``add`` with
    the same ``block``) are buffered and enter together when the block closes: each block has a
    random level ``N(0, tau^2)``, taken out by quasi-demeaning (weights ``w_i``, ``W = sum w_i``,
    every row minus ``1 - 1/sqrt(1 + tau^2 W)`` times the block's weighted mean), which turns the
    block's rows into independent ones with the same information.

    >>> d = DemandPosterior()
    >>> for day in range(30):
    ...     for m in (0.9, 1.1):  # 12 hours at each of two prices a day, 5 units/hour at m = 1
    ...         d.add(day, m, 12 * 5 * math.exp(-2.0 * (m - 1)), 12.0)
    >>> d.close()
    >>> b, c = d.slope_curve()
    >>> round(b, 1), d.n_blocks
    (-2.0, 30)
    """

    def __init__(self, prior_slope: float = -1.0, slope_sd: float = 1.0, curve_sd: float = 0.5,
                 level_sd: float = 3.0, tau0: float = 0.15):
        self.prior_slope = prior_slope
        self.slope_sd = slope_sd
        self.curve_sd = curve_sd
        self.level_sd = level_sd
        self.tau0 = tau0  # prior guess of the block-to-block demand shift (sd of log demand)
        self.model = GaussianLinear(len(FEATURES))
        self.offset: float | None = None
        self.block = None
        self.pending: dict[float, list] = {}  # m -> [units or None, hours, log-rate or None, rows]
        self.n_blocks = 0
        self.n_obs = 0
        self._tau_sum, self._tau_n = 0.0, 0.0  # method-of-moments evidence on tau^2
        self._var_sum, self._var_n = 0.0, 0.0  # residual variance of observations without exposure
        self.mean = np.zeros(3)
        self.chol = np.eye(3)
        self._mean_list, self._chol_rows = self.mean.tolist(), self.chol.tolist()  # for fast draws

    # -- the model ------------------------------------------------------------------------------
    def x(self, m: float) -> dict[str, float]:
        d = m - 1.0
        return {"level": self.level_sd, "slope": self.slope_sd * d, "curve": self.curve_sd * d * d}

    def _xa(self, m: float) -> np.ndarray:
        d = m - 1.0
        return np.array([self.level_sd, self.slope_sd * d, self.curve_sd * d * d])

    def base(self, m: float) -> float:
        """The part of log units/hour the regression does not learn (offset + prior slope)."""
        return (self.offset or 0.0) + self.prior_slope * (m - 1.0)

    def log_rate(self, m: float) -> float:
        """Posterior mean of log units per hour at multiplier ``m``."""
        return self.base(m) + float(self._xa(m) @ self.mean)

    def slope_curve(self, w: np.ndarray | None = None) -> tuple[float, float]:
        """(b, c) at coefficients ``w`` (default: the posterior mean)."""
        w = self.mean if w is None else w
        return self.prior_slope + self.slope_sd * float(w[1]), self.curve_sd * float(w[2])

    def sample(self, rng: random.Random) -> tuple[float, float]:
        """(b, c) drawn from the posterior."""
        z0, z1, z2 = rng.gauss(0.0, 1.0), rng.gauss(0.0, 1.0), rng.gauss(0.0, 1.0)
        L = self._chol_rows
        w1 = self._mean_list[1] + L[1][0] * z0 + L[1][1] * z1
        w2 = self._mean_list[2] + L[2][0] * z0 + L[2][1] * z1 + L[2][2] * z2
        return self.prior_slope + self.slope_sd * w1, self.curve_sd * w2

    @property
    def tau2(self) -> float:
        k = 3.0  # the prior guess counts as 3 blocks of evidence
        return max(1e-4, (k * self.tau0 ** 2 + self._tau_sum) / (k + self._tau_n))

    @property
    def resid_var(self) -> float:
        k = 3.0
        return max(1e-4, (k * 0.3 ** 2 + self._var_sum) / (k + self._var_n))

    # -- learning -------------------------------------------------------------------------------
    def add(self, block, m: float, units: float | None, hours: float | None, log_rate: float | None = None) -> None:
        """One observation at multiplier ``m``: ``units`` sold in ``hours`` (a Poisson count), or,
        when the exposure is unknown, only ``log_rate`` (log units per hour)."""
        if block != self.block:
            self.close()
            self.block = block
        key = round(m, 6)
        row = self.pending.setdefault(key, [0.0, 0.0, 0.0, 0])
        if units is not None and hours:
            row[0] += units
            row[1] += hours
        else:
            row[2] += log_rate
            row[3] += 1
        self.n_obs += 1

    def close(self) -> None:
        """Let the open block's observations into the posterior."""
        rows, self.pending, self.block = self.pending, {}, None
        if not rows:
            return
        counts = [(m, u, h) for m, (u, h, _, _) in rows.items() if h > 0]
        logs = [(m, lr / n) for m, (_, _, lr, n) in rows.items() if n > 0]
        if self.offset is None:
            if counts:
                self.offset = math.log((sum(u for _, u, _ in counts) + 0.5) / sum(h for _, _, h in counts))
            else:
                self.offset = sum(lr for _, lr in logs) / len(logs)
        cov = self.chol @ self.chol.T
        xs, zs, ws = [], [], []
        for m, u, h in counts:  # one Poisson IRLS step: working response and weight at the current fit
            xa = self._xa(m)
            eta = float(xa @ self.mean)
            mu = h * math.exp(min(max(self.base(m) + eta, -30.0), 50.0))
            xs.append(xa)
            zs.append(eta + min((u - mu) / mu, 1e3))
            ws.append(mu)
        if xs:
            self._learn_block(np.array(xs), np.array(zs), np.array(ws), cov, self.tau2, tau_evidence=True)
        for m, lr in logs:  # reward only: one observation with the residual variance
            xa = self._xa(m)
            resid = lr - self.base(m) - float(xa @ self.mean)
            pred_var = float(xa @ cov @ xa)
            if pred_var < 0.05:
                self._var_sum += resid ** 2 - pred_var
                self._var_n += 1
            self._learn_block(xa[None, :], np.array([resid + float(xa @ self.mean)]),
                              np.array([1.0 / self.resid_var]), cov, 0.0)
        self.n_blocks += 1
        self._refresh()

    def _learn_block(self, X: np.ndarray, z: np.ndarray, w: np.ndarray, cov: np.ndarray, tau2: float,
                     tau_evidence: bool = False) -> None:
        W = float(w.sum())
        xbar, zbar = (w @ X) / W, float(w @ z) / W
        if tau_evidence:  # the block's mean residual: variance tau^2 + 1/W + the model's own doubt
            pred_var = float(xbar @ cov @ xbar)
            if pred_var < 0.02:
                resid = zbar - float(xbar @ self.mean)
                self._tau_sum += min(resid ** 2 - 1.0 / W - pred_var, 1.0)
                self._tau_n += 1
        theta = 1.0 - 1.0 / math.sqrt(1.0 + tau2 * W)
        for xi, zi, wi in zip(X, z, w):
            sw = math.sqrt(wi)
            xw, zw = sw * (xi - theta * xbar), sw * (zi - theta * zbar)
            if np.isfinite(xw).all() and math.isfinite(zw):
                self.model.learn(xw, zw)

    def _refresh(self) -> None:
        try:
            mean, cov = self.model.posterior()
        except np.linalg.LinAlgError:
            return  # singular (cannot happen with the prior): keep the last good posterior
        cov = (cov + cov.T) / 2
        if not (np.isfinite(mean).all() and np.isfinite(cov).all()):
            return  # an absurd observation: keep the last good posterior
        try:
            self.chol = np.linalg.cholesky(cov + 1e-12 * np.eye(3))
        except np.linalg.LinAlgError:
            w, v = np.linalg.eigh(cov)
            self.chol = v @ np.diag(np.sqrt(np.clip(w, 1e-12, None)))
        self.mean = np.asarray(mean, dtype=np.float64)
        self._mean_list, self._chol_rows = self.mean.tolist(), self.chol.tolist()
