"""One command line: every ``streamscore`` command answers ``--help`` whatever the environment
holds, and a malformed variable stops a command with one line that names it, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from streamscore.cli import BENCHES, COMMANDS, DELEGATED

ROOT = Path(__file__).resolve().parent.parent
BAD_ENV = {"WORKER_BATCH_MAX": "many"}  # a malformed value every command reads through Settings


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "streamscore", *args], env=full, capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


HELPS = sorted({*COMMANDS, *DELEGATED} - {"bench"}) + [f"bench {b}" for b in BENCHES]


@pytest.mark.parametrize("command", HELPS)
def test_every_command_has_a_help_that_works_with_a_malformed_environment(command):
    out = _run(*command.split(), "--help", env=BAD_ENV)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage:" in out.stdout and "Traceback" not in out.stderr, out.stderr[-2000:]


def test_the_top_level_help_lists_every_command():
    out = _run("--help", env=BAD_ENV)
    assert out.returncode == 0
    for command in {*COMMANDS, *DELEGATED}:
        assert command in out.stdout


@pytest.mark.parametrize("command", ["worker", "replay --dry-run", "stack status", "dead-letters list"])
def test_a_malformed_variable_stops_a_command_with_one_line_naming_it(command):
    out = _run(*command.split(), env=BAD_ENV)
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "WORKER_BATCH_MAX='many'" in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]


def test_a_clicks_worker_starts_without_the_fraud_and_pricing_models_libraries():
    """The clicks role scales out and takes over partitions on a rebalance: its start must not pay for
    River, scikit-learn and SciPy (~1.9 s of imports), which only the fraud and pricing roles use."""
    probe = ("import sys, streams.app, streams.clicks, features.client; "
             "print(','.join(m for m in ('river', 'sklearn', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"imported by the clicks worker's modules: {out.stdout.strip()}"
