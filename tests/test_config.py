"""Run configuration: YAML files, typed overrides, rejected keys and values."""

from pathlib import Path

import pytest

from coldprompt.config import RunConfig, load_config

DEFAULT_YAML = Path(__file__).parents[1] / "src" / "coldprompt" / "configs" / "default.yaml"


def test_default_yaml_matches_dataclass():
    assert load_config(DEFAULT_YAML) == RunConfig()


def test_overrides_are_typed():
    config = load_config(overrides=["inner_steps=2", "inner_lr=1", "ks=[1, 3]", "algorithms=fomaml", "backbone=null"])
    assert config.inner_steps == 2
    assert config.inner_lr == 1.0 and isinstance(config.inner_lr, float)
    assert config.ks == [1, 3]
    assert config.algorithms == ["fomaml"]
    assert config.backbone is None


def test_override_beats_yaml_and_keyword(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("inner_steps: 3\nmeta_batch_size: 4\n")
    config = load_config(path, ["inner_steps=5"], meta_batch_size=8)
    assert config.inner_steps == 5
    assert config.meta_batch_size == 8


@pytest.mark.parametrize(
    "override, message",
    [
        ("inner_stepz=2", "unknown setting"),
        ("inner_steps=two", "inner_steps"),
        ("inner_steps", "expected key=value"),
        ("algorithms=[sgd]", "algorithms"),
        ("ks=[-1]", "ks"),
        ("outer_lr=0", "outer_lr"),
        ("backbone_dtype=float16", "backbone_dtype"),
    ],
)
def test_invalid_override_rejected(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(overrides=[override])


def test_unknown_yaml_key_names_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("inner_steps: 1\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match="run.yaml.*learning_rate"):
        load_config(path)


def test_yaml_must_be_mapping(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(path)


def test_float_lists_accept_integers_and_reject_bad_grids():
    assert load_config(overrides=["ease_lambdas=[100, 2500.5]"]).ease_lambdas == [100.0, 2500.5]
    with pytest.raises(ValueError, match="ease_lambdas"):
        load_config(overrides=["ease_lambdas=[100, -1]"])
    with pytest.raises(ValueError, match="ease_lambdas"):
        load_config(overrides=["ease_lambdas=[]"])
    with pytest.raises(ValueError, match="ease_lambdas"):
        load_config(overrides=["ease_lambdas=[a, b]"])


def test_backbone_engine_is_checked():
    assert load_config(overrides=["backbone_engine=transformers"]).backbone_engine == "transformers"
    with pytest.raises(ValueError, match="backbone_engine: expected auto, lean or transformers"):
        load_config(overrides=["backbone_engine=onnx"])


def test_type_errors_name_the_expected_type():
    with pytest.raises(ValueError, match="setting inner_steps: 'abc' is not an integer"):
        load_config(overrides=["inner_steps=abc"])
    with pytest.raises(ValueError, match="is not an integer or null"):
        load_config(overrides=["max_test_users=x"])


def test_budgets_must_be_positive():
    for name in ("shared_budget_s", "meta_budget_s", "baseline_budget_s"):
        with pytest.raises(ValueError, match=f"{name}: must be positive"):
            load_config(overrides=[f"{name}=-5"])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ValueError, match="--config .*missing.yaml: file not found"):
        load_config(tmp_path / "missing.yaml")
