"""Shared output of the benchmarks: a markdown-style table on stdout, the figures as one
JSON line (the last line printed) and in ``bench/results/<name>-<date>.json``."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: " | ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(cells[0]), "-|-".join("-" * w for w in widths)] + [line(r) for r in cells[1:]])


def publish(name: str, results: dict, headers: list[str], rows: list[list]) -> Path:
    """Print the table and the JSON line; write ``results/<name>-<date>.json``; return its path."""
    print("\n" + table(headers, rows))
    out = RESULTS / f"{name}-{results['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))
    return out
