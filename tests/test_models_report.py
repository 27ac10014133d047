"""docs/MODELS.md is rendered from docs/models_results.json, and that file has the format the
current evaluation code writes (checked on a quick run over thin data, not on the numbers)."""

from __future__ import annotations

import copy
import json

import pytest

from models import evaluate, report

RESULTS = report.RESULTS
DOC = report.DOC


@pytest.fixture(scope="module")
def committed() -> dict:
    if not RESULTS.exists():
        pytest.fail(f"{RESULTS} missing: python -m models.evaluate")
    return json.loads(RESULTS.read_text())


def shape(obj):
    """The format of a JSON value: dict keys recursively, list -> its first element's format,
    numbers and nulls alike (a metric may be undefined on a slice)."""
    if isinstance(obj, dict):
        return {k: shape(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [shape(obj[0])] if obj and isinstance(obj[0], (dict, list)) else "list"
    if isinstance(obj, str):
        return "str"
    return "scalar"  # int, float, bool, None


def test_doc_is_rendered_from_the_results(committed):
    assert DOC.read_text() == report.render(committed), \
        "docs/MODELS.md is out of sync with docs/models_results.json: run python -m models.report"


def test_doc_names_the_command_of_every_section(committed):
    doc = DOC.read_text()
    assert set(committed) == set(evaluate.SECTIONS)
    for s in evaluate.SECTIONS:
        assert committed[s]["command"] == f"python -m models.evaluate {s}"
        assert f"`python -m models.evaluate {s}`" in doc
    for table_marker in ("| ROC-AUC |", "| PR-AUC (average precision) |", "| recall at 1% FPR |",
                         "| popularity |", "V-SKNN", "naive (last period)"):
        assert table_marker in doc


@pytest.mark.parametrize("section", evaluate.SECTIONS)
def test_results_have_the_format_the_code_writes(section, committed):
    fresh = evaluate.run([section], quick=True)[section]
    assert shape(fresh) == shape(committed[section]), \
        f"docs/models_results.json [{section}] was written by other code: rerun python -m models.evaluate {section}"
    report.render({section: fresh})  # and the renderer accepts it


def test_verdicts_follow_the_numbers(committed):
    """The beats / loses sentences are computed: flip the numbers and the sentences flip."""
    rec = copy.deepcopy(committed["recommender"])
    res = rec["datasets"]["yoochoose"]["results"]
    res["model"]["new"]["hr@20"] = 0.0
    assert "YooChoose, new: the model HR@20 loses to the strongest baseline" in report.render({"recommender": rec})
    res["model"]["new"]["hr@20"] = 1.0
    assert "YooChoose, new: the model HR@20 beats the strongest baseline" in report.render({"recommender": rec})
    fr = copy.deepcopy(committed["fraud"])
    fr["test"]["neural"]["pr_auc"] = 0.0
    assert "trails the strongest baseline" in report.render({"fraud": fr})
    fr["test"]["neural"]["pr_auc"] = 1.0
    assert "beats the strongest baseline" in report.render({"fraud": fr})
    pr = copy.deepcopy(committed["pricing"])
    pr["avocado"]["test"]["model"]["wape"] = 99.0
    assert "avocado-prices: the model beats the naive forecast on rmse_log and loses on wape" in \
        report.render({"pricing": pr})
