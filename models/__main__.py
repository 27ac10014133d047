"""``python -m models``: train all three models into the Triton model repository."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from models import fraud, pricing, recommender
from streamscore.settings import Settings


def build_all(repo: Path | None = None, fraud_snapshot: Path | None = None, only: list[str] | None = None) -> dict:
    settings = Settings.from_env()
    repo = Path(repo or settings.triton_repo)
    data = Path(settings.data_dir)
    out = {}
    names = only or ["fraud", "recommender", "pricing"]
    if "fraud" in names:
        out["fraud"] = fraud.train(fraud.ensure_snapshot(Path(fraud_snapshot or fraud.DEFAULT_SNAPSHOT)), repo, settings)
    if "recommender" in names:
        out["recommender"] = recommender.train(data / recommender.DATA, repo, settings)
    if "pricing" in names:
        out["pricing"] = pricing.train(data / pricing.DATA, repo, settings)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="streamscore train", description="train fraud, recommender and pricing")
    ap.add_argument("--repo", type=Path, default=None, help="Triton model repository (default: settings.triton_repo)")
    ap.add_argument("--fraud-snapshot", type=Path, default=None, help="fraud feature snapshot (.parquet or .csv)")
    ap.add_argument("--only", nargs="+", choices=["fraud", "recommender", "pricing"], default=None)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    metas = build_all(args.repo, args.fraud_snapshot, args.only)
    for name, meta in metas.items():
        print(json.dumps({"model": name, "version": meta["version"], "train_seconds": meta["train_seconds"],
                          "metrics": meta["metrics"].get("test")}))
    print(f"built {', '.join(metas)} in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
