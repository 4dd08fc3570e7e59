"""The command line end to end on the shipped data set with a tiny random backbone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from coldprompt.cli import main
from tiny_models import save_tiny_llama, train_bpe_tokenizer

ALL_METHODS = {
    "random", "popularity", "onboarding popularity", "co-occurrence", "co-occurrence + onboarding (blend)",
    "LLM zero-shot (text similarity, no training)", "LLM shared prompt", "LLM per-user tuning, random init",
    "LLM reptile", "LLM reptile (no inner step)", "LLM fomaml", "LLM fomaml (no inner step)",
    "LLM maml", "LLM maml (no inner step)",
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    backbone = save_tiny_llama(root / "tiny-llama", train_bpe_tokenizer(), max_positions=128)
    out = root / "out"
    code = main([
        "run", "--output-dir", str(out), f"backbone={backbone}", "shared_budget_s=4", "meta_budget_s=2",
        "max_test_users=12", "validation_users=12", "batch_size=16",
    ])
    assert code == 0
    return out


def test_run_writes_results_for_every_method(tiny_run: Path):
    results = json.loads((tiny_run / "results.json").read_text())
    assert set(results["methods"]) == ALL_METHODS
    assert set(results["sampled_methods"]) == ALL_METHODS
    assert results["ks"] == [0, 1, 3, 5, 10]
    assert results["evaluated_users"] == 12
    for name, summary in results["methods"].items():
        for k in ("0", "1", "3", "5", "10"):
            for metric in ("ndcg@10", "hr@10", "mrr"):
                estimate = summary["metrics"][k][metric]
                assert 0.0 <= estimate["ci95_low"] <= estimate["mean"] <= estimate["ci95_high"] <= 1.0, (name, k, metric)


def test_run_records_selection_and_paired_tests(tiny_run: Path):
    results = json.loads((tiny_run / "results.json").read_text())
    assert results["llm"]["best_algorithm_on_validation"] in ("reptile", "fomaml", "maml")
    assert results["llm"]["trainable_parameters"] > 0
    compared = {test["b"] for test in results["paired_tests"]}
    assert "co-occurrence" in compared
    assert "LLM shared prompt" in compared
    against_best = [test for test in results["paired_tests"] if test.get("against_best_baseline")]
    assert [test["k"] for test in against_best] == results["ks"]
    assert all(0.0 <= test["p_wilcoxon"] <= 1.0 for test in results["paired_tests"])


def test_run_writes_plot_and_checkpoints(tiny_run: Path):
    assert (tiny_run / "ndcg_at_10.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for algorithm in ("reptile", "fomaml", "maml"):
        assert (tiny_run / "checkpoints" / algorithm / "checkpoint.json").is_file()
    manifest = json.loads((tiny_run / "checkpoint" / "checkpoint.json").read_text())
    assert manifest["backbone"]["sha256"]


def test_recommend_prints_top_titles(tiny_run: Path, capsys):
    assert main(["recommend", "--checkpoint", str(tiny_run / "checkpoint"), "--history", "1,260,1196", "--top", "5"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 5
    assert lines[0].startswith(" 1. ")


def test_recommend_reads_the_catalogue_from_the_checkpoint(tiny_run: Path, tmp_path: Path, capsys, monkeypatch):
    """`recommend` scores a new user from the manifest's catalogue, as it would from the data set's files."""
    older = tmp_path / "without-catalogue"
    shutil.copytree(tiny_run / "checkpoint", older)
    manifest = json.loads((older / "checkpoint.json").read_text())
    del manifest["dataset"]["item_titles"], manifest["dataset"]["item_genres"]
    (older / "checkpoint.json").write_text(json.dumps(manifest))
    args = ["recommend", "--history", "1,260,1196", "--top", "5"]
    assert main(args + ["--checkpoint", str(older)]) == 0  # reads the data set
    with_data = capsys.readouterr().out
    args += ["--checkpoint", str(tiny_run / "checkpoint")]

    def no_data(*args, **kwargs):
        raise AssertionError("the data set was read")

    monkeypatch.setattr("coldprompt.pipeline.load_dataset", no_data)
    assert main(args) == 0
    assert capsys.readouterr().out == with_data


def test_recommend_rejects_unknown_item(tiny_run: Path, capsys):
    assert main(["recommend", "--checkpoint", str(tiny_run / "checkpoint"), "--history", "1,999999999"]) == 2
    assert "999999999" in capsys.readouterr().err


def test_evaluate_checkpoint(tiny_run: Path, tmp_path: Path):
    output = tmp_path / "eval.json"
    code = main(["evaluate", "--checkpoint", str(tiny_run / "checkpoint"), "--max-test-users", "8", "--output", str(output)])
    assert code == 0
    results = json.loads(output.read_text())
    algorithm = json.loads((tiny_run / "checkpoint" / "checkpoint.json").read_text())["algorithm"]
    assert set(results["methods"]) == {f"LLM {algorithm}", f"LLM {algorithm} (no inner step)"}


def test_evaluate_checkpoint_beside_baselines(tiny_run: Path, tmp_path: Path):
    output = tmp_path / "eval.json"
    code = main(["evaluate", "--checkpoint", str(tiny_run / "checkpoint"), "--method", "simple",
                 "--max-test-users", "8", "--output", str(output)])
    assert code == 0
    results = json.loads(output.read_text())
    assert "co-occurrence" in results["methods"]
    against_best = [test for test in results["paired_tests"] if test.get("against_best_baseline")]
    assert [test["k"] for test in against_best] == results["ks"]
    assert all(test["users"] == 8 for test in against_best)


def test_evaluate_checkpoint_of_other_dataset_rejected(tiny_run: Path, capsys):
    shipped = Path(__file__).parents[1] / "src" / "coldprompt" / "datasets" / "ml-latest-small"
    code = main(["evaluate", "--checkpoint", str(tiny_run / "checkpoint"), "--dataset", "movielens-csv",
                 "--data-dir", str(shipped)])
    assert code == 2
    assert "was trained on ml-latest-small, not movielens-csv" in capsys.readouterr().err


def test_checkpoint_with_other_backbone_rejected(tiny_run: Path, tmp_path: Path, capsys):
    other = save_tiny_llama(tmp_path / "other", train_bpe_tokenizer(), max_positions=128, seed=1)
    manifest_path = tiny_run / "checkpoint" / "checkpoint.json"
    manifest = json.loads(manifest_path.read_text())
    copy = tmp_path / "ckpt"
    copy.mkdir()
    (copy / "prompt_model.safetensors").write_bytes((tiny_run / "checkpoint" / "prompt_model.safetensors").read_bytes())
    manifest["config"]["backbone"] = str(other)
    (copy / "checkpoint.json").write_text(json.dumps(manifest))
    assert main(["recommend", "--checkpoint", str(copy), "--history", "1"]) == 2
    assert "trained with backbone" in capsys.readouterr().err


def test_unknown_setting_rejected(capsys):
    assert main(["run", "inner_stepz=2"]) == 2
    assert "inner_stepz" in capsys.readouterr().err


def test_split_export(tmp_path: Path):
    path = tmp_path / "split.json"
    assert main(["split", "--export", str(path)]) == 0
    parts = json.loads(path.read_text())
    assert len(parts["train"]) + len(parts["validation"]) + len(parts["test"]) == 610


def test_checkpoint_from_other_version_rejected(tiny_run: Path, tmp_path: Path, capsys):
    copy = tmp_path / "old"
    copy.mkdir()
    (copy / "prompt_model.safetensors").write_bytes((tiny_run / "checkpoint" / "prompt_model.safetensors").read_bytes())
    manifest = json.loads((tiny_run / "checkpoint" / "checkpoint.json").read_text())
    manifest["config"]["eval_every"] = 40  # a setting this version does not have
    (copy / "checkpoint.json").write_text(json.dumps(manifest))
    assert main(["recommend", "--checkpoint", str(copy), "--history", "1"]) == 2
    assert "retrain it" in capsys.readouterr().err
