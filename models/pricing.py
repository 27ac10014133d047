"""Train the `pricing` demand model on the UCI Online Retail invoice lines.

Data: ``<data_dir>/online-retail-uci/online_retail_2010-12-01_to_2011-11-09.csv.gz``. Kept:
non-cancellation invoices (InvoiceNo not starting with 'C'), Quantity > 0, UnitPrice > 0,
product StockCodes (five digits first: drops POST, DOT, M, BANK CHARGES, gift vouchers...).
Line quantities are capped at the training period's 99.9th percentile so one giant wholesale
line cannot dominate a week.

Item-weeks: 7-day periods from the first day of the data (incomplete last period dropped).
For every item, every week from its first sale to the end of the data (zero-sale weeks
included; the price of a week without sales is the last observed price). Per item-week:
units (sum of quantities), orders (distinct invoices), price (median line unit price, close
to the list price: quantity tiers pull a weighted mean down). A row is (features at the
start of week t -> units sold in week t):
  log_price = log(price in week t), log1p_units_7d / log1p_orders_7d = week t-1,
  month_sin/cos of the month m of week t's first day: sin/cos(2 * pi * (m - 1) / 12).

Model (PricingNet in triton_repo/pricing/1/model.py): log E[units] = MLP(other features) +
elasticity * (log_price - ref), Poisson NLL, Adam, seeded. Out of time: the last 13 weeks are
the test period; metrics against the naive forecast "same units as last week".

Usage: ``python -m models.pricing [--repo DIR]``
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from models import common
from streamscore.settings import Settings

NAME = "pricing"
DATA = Path("online-retail-uci") / "online_retail_2010-12-01_to_2011-11-09.csv.gz"
FEATURES = ["log_price", "log1p_units_7d", "log1p_orders_7d", "month_sin", "month_cos"]
MULTIPLIERS = [0.9, 0.95, 1.0, 1.05, 1.1]

SEED = 20240603
HIDDEN = 16
EPOCHS = 6
BATCH = 1024
LR = 1e-2
TEST_WEEKS = 13
QTY_CAP_QUANTILE = 0.999


def load_lines(path: Path) -> pd.DataFrame:
    df = pd.read_csv(
        path,
        usecols=["InvoiceNo", "StockCode", "Quantity", "InvoiceDate", "UnitPrice"],
        dtype={"InvoiceNo": str, "StockCode": str},
    )
    keep = (
        ~df["InvoiceNo"].str.startswith("C")
        & (df["Quantity"] > 0)
        & (df["UnitPrice"] > 0)
        & df["StockCode"].str.match(r"^\d{5}")
    )
    df = df[keep].copy()
    df["t"] = pd.to_datetime(df["InvoiceDate"], format="%Y-%m-%d %H:%M:%S")
    return df


def item_weeks(df: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """-> one row per item-week with FEATURES, 'units' (target), 'week', 'week_start', 'naive'."""
    start = df["t"].min().normalize()
    days = (df["t"] - start).dt.days.to_numpy()
    df = df.assign(week=days // 7)
    last_day = int(days.max())
    n_weeks = (last_day + 1) // 7  # complete weeks only
    df = df[df["week"] < n_weeks]
    test_start = n_weeks - TEST_WEEKS
    cap = float(df.loc[df["week"] < test_start, "Quantity"].quantile(QTY_CAP_QUANTILE))
    df = df.assign(q=np.minimum(df["Quantity"].to_numpy(), cap))

    agg = df.groupby(["StockCode", "week"], sort=True).agg(
        units=("q", "sum"), orders=("InvoiceNo", "nunique"), price=("UnitPrice", "median")
    )
    first = agg.reset_index().groupby("StockCode")["week"].min()
    lengths = (n_weeks - first).to_numpy()
    codes = np.repeat(first.index.to_numpy(), lengths)
    weeks = np.concatenate([np.arange(f, n_weeks) for f in first.to_numpy()])
    grid = pd.DataFrame({"StockCode": codes, "week": weeks}).set_index(["StockCode", "week"])
    g = grid.join(agg, how="left").reset_index()
    g["units"] = g["units"].fillna(0.0)
    g["orders"] = g["orders"].fillna(0.0)
    g["price"] = g.groupby("StockCode")["price"].ffill()
    g["prev_units"] = g.groupby("StockCode")["units"].shift(1)
    g["prev_orders"] = g.groupby("StockCode")["orders"].shift(1)
    g = g.dropna(subset=["prev_units"]).reset_index(drop=True)  # each item's first week has no history

    g["week_start"] = start + pd.to_timedelta(g["week"] * 7, unit="D")
    month = g["week_start"].dt.month.to_numpy()
    g["log_price"] = np.log(g["price"].to_numpy())
    g["log1p_units_7d"] = np.log1p(g["prev_units"].to_numpy())
    g["log1p_orders_7d"] = np.log1p(g["prev_orders"].to_numpy())
    g["month_sin"] = np.sin(2 * np.pi * (month - 1) / 12)
    g["month_cos"] = np.cos(2 * np.pi * (month - 1) / 12)
    g["naive"] = g["prev_units"]
    info = {
        "start": str(start.date()),
        "n_weeks": int(n_weeks),
        "test_first_week": int(test_start),
        "test_first_day": str((start + pd.Timedelta(days=7 * test_start)).date()),
        "qty_cap": cap,
        "n_items": int(len(first)),
    }
    return g, info


def demand_metrics(y: np.ndarray, pred: np.ndarray) -> dict:
    y = y.astype(np.float64)
    p = np.maximum(pred.astype(np.float64), 1e-9)
    with np.errstate(divide="ignore", invalid="ignore"):
        dev_terms = np.where(y > 0, y * np.log(y / p), 0.0) - (y - p)
    return {
        "mae": round(float(np.mean(np.abs(y - p))), 4),
        "rmse": round(float(np.sqrt(np.mean((y - p) ** 2))), 4),
        "wape": round(float(np.sum(np.abs(y - p)) / max(np.sum(y), 1e-9)), 4),
        "rmse_log1p": round(float(np.sqrt(np.mean((np.log1p(y) - np.log1p(p)) ** 2))), 4),
        "poisson_deviance": round(float(2 * np.mean(dev_terms)), 4),
        "bias": round(float(np.mean(p - y)), 4),
    }


def train(data_path: Path, repo: Path, settings: Settings) -> dict:
    import torch

    t = common.timer()
    common.seed_everything(SEED)
    mod = common.load_model_py(repo, NAME)
    panel, info = item_weeks(load_lines(data_path))
    X = panel[FEATURES].to_numpy(dtype=np.float32)
    y = panel["units"].to_numpy(dtype=np.float32)
    tr = panel["week"].to_numpy() < info["test_first_week"]
    te = ~tr

    net = mod.PricingNet(MULTIPLIERS, HIDDEN)
    with torch.no_grad():
        net.mean.copy_(torch.from_numpy(X[tr, 1:].mean(0)))
        net.std.copy_(torch.from_numpy(np.maximum(X[tr, 1:].std(0), 1e-6)))
        net.ref_log_price.copy_(torch.tensor(float(np.median(X[tr, 0]))))
        net.base[-1].bias.fill_(float(np.log(max(y[tr].mean(), 1e-3))))

    Xtr, ytr = torch.from_numpy(X[tr]), torch.from_numpy(y[tr])
    loss_fn = torch.nn.PoissonNLLLoss(log_input=True, full=False)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(SEED)
    net.train()
    for _epoch in range(EPOCHS):
        perm = torch.randperm(len(Xtr), generator=gen)
        for i in range(0, len(perm), BATCH):
            b = perm[i : i + BATCH]
            loss = loss_fn(net.log_rate(Xtr[b]), ytr[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()

    _, d_te = mod.predict(net, X[te])
    _, d_tr = mod.predict(net, X[tr])
    at_price = MULTIPLIERS.index(1.0)
    metrics = {
        "test": {
            "n": int(te.sum()),
            "mean_units": round(float(y[te].mean()), 4),
            "model": demand_metrics(y[te], d_te[:, at_price]),
            "naive_last_week": demand_metrics(y[te], panel["naive"].to_numpy()[te]),
        },
        "train_in_sample": {"n": int(tr.sum()), "model": demand_metrics(y[tr], d_tr[:, at_price])},
        "elasticity": round(float(net.elasticity.detach()), 5),
    }

    state = net.state_dict()
    digest = common.state_digest(state)
    vdir = common.version_dir(repo, NAME)
    common.save_state(vdir, mod.WEIGHTS, state)
    meta = {
        "model": NAME,
        "version": common.model_version_string(NAME, digest),
        "triton_version": common.TRITON_VERSION,
        "weights_sha256": digest,
        "features": FEATURES,
        "multipliers": MULTIPLIERS,
        "inputs": {"FEATURES": {"dtype": "TYPE_FP32", "dims": [len(FEATURES)]}},
        "outputs": {
            "MULTIPLIERS": {"dtype": "TYPE_FP32", "dims": [len(MULTIPLIERS)], "meaning": "candidate price multipliers"},
            "DEMAND": {"dtype": "TYPE_FP32", "dims": [len(MULTIPLIERS)],
                       "meaning": "expected units over the next 7 days at price * multiplier"},
        },
        "hidden": HIDDEN,
        "elasticity": metrics["elasticity"],
        "ref_log_price": float(net.ref_log_price),
        "feature_mean": common.round_floats(net.mean.tolist(), 8),
        "feature_std": common.round_floats(net.std.tolist(), 8),
        "panel": info | {"n_rows": int(len(panel)), "n_train": int(tr.sum()), "n_test": int(te.sum())},
        "data_sha256": common.sha256_file(data_path),
        "data_files": [common.data_file_entry(data_path, settings)],
        "metrics": metrics,
        "hyperparams": {"seed": SEED, "epochs": EPOCHS, "batch": BATCH, "lr": LR, "test_weeks": TEST_WEEKS},
        "torch": torch.__version__,
        "train_seconds": t.seconds(),
    }
    common.write_meta(vdir, meta)
    return meta


def main(argv: list[str] | None = None) -> dict:
    return common.train_main("python -m models.pricing", __doc__, argv, train,
                             lambda args, s: Path(s.data_dir) / DATA, summary=("elasticity",))


if __name__ == "__main__":
    main()
