"""Triton serving benchmark: requests/s and latency per model, with and without dynamic batching.

    .venv/bin/python bench/bench_triton.py [--seconds S] [--concurrency C]

Starts tritonserver (from the nvidia-pytriton wheel, as the local stack does) twice: over
``triton_repo/`` as committed (dynamic batching on) and over a copy whose configs have
``dynamic_batching`` removed. For each model, C concurrent asyncio clients
(:class:`scorers.triton.TritonScorer`, the client the worker and HTTP service use) send
single-row requests for S seconds. Prints a table and one JSON line; writes
bench/results/triton-<date>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_features import free_ports, pct  # noqa: E402
from bench.report import publish  # noqa: E402
from features.definitions import FRAUD_VECTOR  # noqa: E402
from monitoring.metrics import Metrics  # noqa: E402
from scorers.triton import TritonScorer  # noqa: E402
from streamscore import stack as stk  # noqa: E402
from streamscore.settings import Settings  # noqa: E402

MODELS = {
    "fraud": (lambda rng: {"FEATURES": rng.normal(size=(1, len(FRAUD_VECTOR))).astype(np.float32)}, ["SCORE", "CONTRIB"]),
    "pricing": (lambda rng: {"FEATURES": np.array([[1.0, 3.0, 2.0, 0.0, 1.0]], dtype=np.float32)},
                ["MULTIPLIERS", "DEMAND"]),
    "recommender": (None, ["ITEMS", "SCORES", "KNOWN"]),
}


def recommender_inputs(repo: Path):
    items = [str(i) for i in np.load(repo / "recommender" / "1" / "items.npy", allow_pickle=False)[:500]]

    def make(rng):
        x = np.full((1, 20), b"", dtype=object)
        x[0, :5] = [items[int(i)].encode() for i in rng.integers(0, len(items), 5)]
        return {"ITEM_HISTORY": x}
    return make


async def load(settings: Settings, model: str, make, outputs, seconds: float, concurrency: int) -> dict:
    scorer = TritonScorer(settings, Metrics(), timeout_ms=5000)
    latencies: list[float] = []
    end = time.perf_counter() + seconds

    async def client(seed: int):
        rng = np.random.default_rng(seed)
        while time.perf_counter() < end:
            inputs = make(rng)
            t0 = time.perf_counter()
            await scorer.infer(model, inputs, outputs, retries=0)
            latencies.append((time.perf_counter() - t0) * 1e3)

    t0 = time.perf_counter()
    await asyncio.gather(*[client(i) for i in range(concurrency)])
    elapsed = time.perf_counter() - t0
    await scorer.close()
    return {"requests_per_s": round(len(latencies) / elapsed), "p50_ms": round(pct(latencies, 0.5), 2),
            "p99_ms": round(pct(latencies, 0.99), 2)}


def run_server(repo: Path, run_dir: str) -> Settings:
    http, grpc, metrics = free_ports(3)
    s = Settings.from_env({}, triton_repo=str(repo), run_dir=run_dir, triton_http_url=f"127.0.0.1:{http}",
                          triton_grpc_url=f"127.0.0.1:{grpc}", triton_metrics_url=f"127.0.0.1:{metrics}")
    argv, env = stk.LocalStack(s)._argv("triton")  # tritonserver alone, launched as the stack does
    stk.start_process("triton", argv, env, run_dir)
    stk.wait_triton(s.triton_http_url, 120)
    return s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    results: dict = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, "
                     f"{__import__('os').cpu_count()} cores, CPU only", "concurrency": args.concurrency,
                     "seconds": args.seconds, "models": {}}
    with tempfile.TemporaryDirectory(prefix="streamscore-triton-bench-") as tmp:
        plain = Path(tmp) / "repo-no-batching"
        shutil.copytree(ROOT / "triton_repo", plain, ignore=shutil.ignore_patterns("__pycache__"))
        for cfg in plain.glob("*/config.pbtxt"):
            cfg.write_text(re.sub(r"dynamic_batching\s*\{[^}]*\}", "", cfg.read_text()))
        for label, repo in (("dynamic_batching", ROOT / "triton_repo"), ("no_batching", plain)):
            run_dir = str(Path(tmp) / label)
            s = run_server(repo, run_dir)
            try:
                for model, (make, outputs) in MODELS.items():
                    make = make or recommender_inputs(repo)
                    r = asyncio.run(load(s, model, make, outputs, args.seconds, args.concurrency))
                    results["models"].setdefault(model, {})[label] = r
                    print(f"{label:16} {model:12} {r}", file=sys.stderr)
            finally:
                stk.stop_process("triton", run_dir)
    publish("triton", results, ["model", "batching", "req/s", "p50 ms", "p99 ms"],
            [[model, label, r["requests_per_s"], r["p50_ms"], r["p99_ms"]]
             for model, by in results["models"].items() for label, r in by.items()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
