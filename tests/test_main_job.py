"""The main job end to end with the real default backbone on the shipped data set (slow: a few minutes)."""

from __future__ import annotations

import json

import pytest

from coldprompt.cli import main

pytestmark = pytest.mark.slow


def test_main_job_with_default_backbone(tmp_path):
    pytest.importorskip("gguf")
    out = tmp_path / "out"
    code = main([
        "run", "--output-dir", str(out), "shared_budget_s=15", "meta_budget_s=8", "max_test_users=16",
        "validation_users=16", "validations=1",
    ])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["llm"]["backbone"]["sha256"]
    assert results["evaluated_users"] == 16
    shared = results["methods"]["LLM shared prompt"]["metrics"]
    random = results["methods"]["random"]["metrics"]
    # Even a short training run must rank the next item far better than chance at K = 0.
    assert shared["0"]["mrr"]["mean"] > 5 * random["0"]["mrr"]["mean"]
    assert (out / "ndcg_at_10.png").is_file()
