"""Price-elasticity fits on the three pricing datasets (numpy least squares), for docs/MODELS.md.

All are log-log demand models: log(demand) = fixed effects + elasticity * log(price) + season
(+ competitor price); the elasticity is the % change of demand for +1% of price. Each has an
out-of-time test against the naive forecast "the same demand as in the previous period".

* :func:`online_retail_within_item`: the served model's weekly item panel
  (:func:`models.pricing.item_weeks`, training weeks only); log1p(units) on log(price) with item
  and week fixed effects (two-way demeaning), so only an item's own price changes identify it -
  unlike the served model's single elasticity, which also compares cheap and dear items.
* :func:`retail_price`: monthly product panel with competitor prices; log(qty) = product effect +
  (elasticity + category deviation) * log(unit price) + cross elasticity * log(mean competitor
  price) + month of year (sin, cos) + persistence * log(last month's qty); the category
  deviations are ridge-shrunk towards the common elasticity (penalty :data:`CATEGORY_RIDGE`).
  That specification was chosen on a validation split (the 3 months before the test months)
  among with / without the lagged term and penalties 0.001 / 1 / 10 / 100; test: the last 3
  months.
* :func:`avocado`: weekly volume per region and type, one regression per series: log(volume) =
  a + elasticity * log(average price) + trend + week of year (2 harmonics); test: the weeks of 2018.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from models import common, metrics

RETAIL_PRICE = Path("retail-price") / "retail_price.csv.gz"
AVOCADO = Path("avocado-prices") / "avocado.csv.gz"
RIDGE = 1e-3
CATEGORY_RIDGE = 10.0


def _lstsq(X: np.ndarray, y: np.ndarray, ridge: float | np.ndarray = RIDGE) -> np.ndarray:
    """Ridge least squares; a scalar ridge only keeps rank-deficient designs solvable, a vector
    gives each coefficient its own penalty."""
    pen = np.broadcast_to(np.asarray(ridge, dtype=np.float64), (X.shape[1],))
    return np.linalg.solve(X.T @ X + np.diag(pen), X.T @ y)


def _summary(values: np.ndarray) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"n": int(len(v)), "median": float(np.median(v)), "p25": float(np.percentile(v, 25)),
            "p75": float(np.percentile(v, 75)), "share_negative": float((v < 0).mean())}


def two_way_demean(v: np.ndarray, a: np.ndarray, b: np.ndarray, iters: int = 50) -> np.ndarray:
    """Remove group means of two groupings ``a`` and ``b`` (alternating projections)."""
    v = np.asarray(v, dtype=np.float64).copy()
    for _ in range(iters):
        for g in (a, b):
            _, inv = np.unique(g, return_inverse=True)
            v -= (np.bincount(inv, v) / np.bincount(inv))[inv]
    return v


def online_retail_within_item(data_dir: str | Path) -> dict:
    from models import pricing

    path = Path(data_dir) / pricing.DATA
    panel, info = pricing.item_weeks(pricing.load_lines(path))
    tr = panel[panel["week"] < info["test_first_week"]]
    varies = tr.groupby("StockCode")["log_price"].transform(lambda s: s.max() - s.min() > 1e-9)
    tr = tr[varies]
    y = two_way_demean(np.log1p(tr["units"].to_numpy()), tr["StockCode"].to_numpy(), tr["week"].to_numpy())
    x = two_way_demean(tr["log_price"].to_numpy(), tr["StockCode"].to_numpy(), tr["week"].to_numpy())
    beta = float(x @ y / (x @ x))
    resid = y - beta * x
    n_items = int(tr["StockCode"].nunique())
    # standard error clustered by item
    codes, inv = np.unique(tr["StockCode"].to_numpy(), return_inverse=True)
    score = np.bincount(inv, x * resid)
    se = float(np.sqrt((score ** 2).sum()) / (x @ x))
    return {"method": "log1p(units) ~ log(price) + item effects + week effects, training weeks, "
                      "items whose price changed", "elasticity": beta, "se_clustered_by_item": se,
            "rows": int(len(tr)), "items": n_items}


def retail_price(data_dir: str | Path, test_months: int = 3) -> dict:
    path = Path(data_dir) / RETAIL_PRICE
    df = pd.read_csv(path)
    df["date"] = pd.to_datetime(df["month_year"], format="%d/%m/%Y")
    df = df.sort_values(["product_id", "date"], kind="mergesort").reset_index(drop=True)
    df["naive"] = df.groupby("product_id")["qty"].shift(1)
    months = sorted(df["date"].unique())
    test_start = months[-test_months]
    te = (df["date"] >= test_start).to_numpy()
    tr = ~te
    products = sorted(df.loc[tr, "product_id"].unique())
    cats = sorted(df["product_category_name"].unique())
    pidx = {p: i for i, p in enumerate(products)}
    cidx = {c: i for i, c in enumerate(cats)}
    comp = np.log(df[["comp_1", "comp_2", "comp_3"]].mean(axis=1).to_numpy())
    lp = np.log(df["unit_price"].to_numpy())
    lag = np.log(df["naive"].fillna(df["qty"]).to_numpy(np.float64))  # a product's first month: its own qty
    ang = 2 * np.pi * (df["date"].dt.month.to_numpy() - 1) / 12

    def design(rows: np.ndarray) -> np.ndarray:
        n = int(rows.sum())
        P = np.zeros((n, len(products)))
        P[np.arange(n), [pidx[p] for p in df.loc[rows, "product_id"]]] = 1.0
        C = np.zeros((n, len(cats)))
        C[np.arange(n), [cidx[c] for c in df.loc[rows, "product_category_name"]]] = lp[rows]
        return np.c_[P, lp[rows], C, comp[rows], np.sin(ang[rows]), np.cos(ang[rows]), lag[rows]]

    known = te & df["product_id"].isin(products).to_numpy() & df["naive"].notna().to_numpy()
    pen = np.full(len(products) + 1 + len(cats) + 4, RIDGE)
    pen[len(products) + 1: len(products) + 1 + len(cats)] = CATEGORY_RIDGE
    coef = _lstsq(design(tr), np.log(df.loc[tr, "qty"].to_numpy(np.float64)), pen)
    pred = np.exp(design(known) @ coef)
    y = df.loc[known, "qty"].to_numpy(np.float64)
    common_el = float(coef[len(products)])
    dev = coef[len(products) + 1: len(products) + 1 + len(cats)]
    rest = coef[len(products) + 1 + len(cats):]
    n_cat = df[tr].groupby("product_category_name").size()
    return {
        "file": str(RETAIL_PRICE), "sha256": common.sha256_file(path),
        "method": "log(qty) ~ product effects + (elasticity + ridge-shrunk category deviation) * log(unit_price) "
                  "+ cross * log(mean competitor price) + month sin/cos + persistence * log(last month's qty)",
        "train_rows": int(tr.sum()), "test_rows": int(known.sum()),
        "test_months": [pd.Timestamp(m).strftime("%Y-%m") for m in months[-test_months:]],
        "elasticity_common": common_el,
        "elasticity_by_category": {c: {"elasticity": common_el + float(e), "train_rows": int(n_cat.get(c, 0))}
                                   for c, e in zip(cats, dev)},
        "cross_elasticity_competitor": float(rest[0]),
        "persistence": float(rest[3]),
        "test": {"model": metrics.demand_errors(y, pred), "naive_last_month": metrics.demand_errors(
            y, df.loc[known, "naive"].to_numpy(np.float64)), "mean_qty": float(y.mean())},
    }


def avocado(data_dir: str | Path) -> dict:
    path = Path(data_dir) / AVOCADO
    df = pd.read_csv(path, parse_dates=["Date"])
    df = df.sort_values(["region", "type", "Date"], kind="mergesort").reset_index(drop=True)
    test_start = pd.Timestamp("2018-01-01")
    t0 = df["Date"].min()
    ys, preds, naives, el = [], [], [], {}
    for (region, typ), g in df.groupby(["region", "type"], sort=True):
        d = g["Date"]
        tt = ((d - t0).dt.days / 365.25).to_numpy()
        doy = 2 * np.pi * d.dt.dayofyear.to_numpy() / 365.25
        X = np.c_[np.ones(len(g)), np.log(g["AveragePrice"].to_numpy()), tt,
                  np.sin(doy), np.cos(doy), np.sin(2 * doy), np.cos(2 * doy)]
        v = g["TotalVolume"].to_numpy(np.float64)
        tr = (d < test_start).to_numpy()
        te = ~tr
        coef = _lstsq(X[tr], np.log(v[tr]))
        el.setdefault(typ, {})[region] = float(coef[1])
        naive = np.r_[np.nan, v[:-1]]
        ys.append(v[te])
        preds.append(np.exp(X[te] @ coef))
        naives.append(naive[te])
    y, p, nv = np.concatenate(ys), np.concatenate(preds), np.concatenate(naives)

    def log_rmse(a, b):
        return float(np.sqrt(np.mean((np.log(a) - np.log(b)) ** 2)))

    return {
        "file": str(AVOCADO), "sha256": common.sha256_file(path),
        "method": "per region x type: log(volume) ~ elasticity * log(average price) + trend + week-of-year "
                  "(2 harmonics); OLS on 2015-2017",
        "series": int(sum(len(v) for v in el.values())), "test_rows": int(len(y)), "test_period": "2018-01 .. 2018-03",
        "elasticity_by_type": {t: _summary(np.array(list(v.values()))) for t, v in el.items()},
        "elasticity_total_us": {t: v["TotalUS"] for t, v in el.items() if "TotalUS" in v},
        "elasticity_by_region": el,
        "test": {"model": {"wape": metrics.demand_errors(y, p)["wape"], "rmse_log": log_rmse(y, p)},
                 "naive_last_week": {"wape": metrics.demand_errors(y, nv)["wape"], "rmse_log": log_rmse(y, nv)}},
    }
