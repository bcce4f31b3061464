"""training.config and training.sagemaker_env: string hyperparameters, precedence, clear errors, paths."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from training.config import RUNTIME_FIELDS, ConfigError, TrainConfig, build_config, load_config
from training.sagemaker_env import (
    FAILURE_REASON_LIMIT,
    SageMakerEnvError,
    clear_failure,
    read_resource_config,
    resolve_paths,
    write_failure,
)


def _hp_file(tmp_path: Path, values: dict) -> Path:
    path = tmp_path / "hyperparameters.json"
    path.write_text(json.dumps(values))
    return path


def test_sagemaker_string_values_are_typed(tmp_path: Path) -> None:
    path = _hp_file(
        tmp_path,
        {
            "epochs": "3",
            "lr": "0.001",
            "pretrained": "false",
            "overflow": "True",
            "input_size": "96",
            "limit": "none",
            "optimizer": "sgd",
            "warmup_epochs": "0.5",
            "sagemaker_program": "ignored",
            "sagemaker_region": '"eu-west-1"',
        },
    )
    config = load_config(environ={}, hyperparameters_file=path)
    assert (config.epochs, config.lr, config.pretrained, config.overflow) == (3, 0.001, False, True)
    assert (config.input_size, config.limit, config.optimizer, config.warmup_epochs) == (96, None, "sgd", 0.5)


def test_json_encoded_values_from_framework_sdks_are_accepted(tmp_path: Path) -> None:
    config = load_config(environ={}, hyperparameters_file=_hp_file(tmp_path, {"optimizer": '"sgd"', "epochs": "4"}))
    assert config.optimizer == "sgd" and config.epochs == 4


def test_precedence_cli_over_env_over_file(tmp_path: Path) -> None:
    path = _hp_file(tmp_path, {"epochs": "3", "lr": "0.5", "seed": "7"})
    env = {"BINSIGHT_LR": "0.25", "BINSIGHT_EPOCHS": "4", "BINSIGHT_MAX_BATCH_SIZE": "not ours", "BINSIGHT_SEED": ""}
    config = load_config(cli={"epochs": "5"}, environ=env, hyperparameters_file=path)
    assert (config.epochs, config.lr, config.seed) == (5, 0.25, 7)


def test_missing_file_means_defaults(tmp_path: Path) -> None:
    config = load_config(environ={}, hyperparameters_file=tmp_path / "absent.json")
    assert config == TrainConfig()
    assert config.architecture == "efficientnet_lite0" and config.max_count == 5
    assert config.effective_input_size == 224 and config.effective_eval_batch_size == 2 * config.batch_size


def test_unknown_key_names_key_source_and_suggestion(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ={}, hyperparameters_file=_hp_file(tmp_path, {"learning_rat": "0.1", "epocs": "2"}))
    message = str(info.value)
    assert "unknown hyperparameter" in message and "hyperparameters.json" in message
    assert "'epocs'" in message or "'learning_rat'" in message
    with pytest.raises(ConfigError, match=r"'epocs'.*did you mean 'epochs'"):
        build_config([("command line", {"epocs": "2"})])


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("lr", "fast", "valid number"),
        ("epochs", "0", "greater than or equal to 1"),
        ("pretrained", "maybe", "valid boolean"),
        ("optimizer", "adam", "'adamw' or 'sgd'"),
        ("architecture", "resnet9000", "unknown architecture 'resnet9000'"),
        ("label_smoothing", "1.5", "less than 1"),
        ("output_stride", "8", "16 or 32"),
    ],
)
def test_bad_value_names_key_value_and_reason(tmp_path: Path, key: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ={}, hyperparameters_file=_hp_file(tmp_path, {key: value}))
    message = str(info.value)
    assert f"'{key}'" in message and repr(value) in message and fragment in message


def test_env_value_error_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="'BINSIGHT_BATCH_SIZE' \\(from environment\\)"):
        load_config(environ={"BINSIGHT_BATCH_SIZE": "lots"})


def test_combined_fractions_must_leave_training_data() -> None:
    with pytest.raises(ConfigError, match="val_fraction \\+ test_fraction"):
        build_config([("cli", {"val_fraction": "0.5", "test_fraction": "0.5"})])


def test_unreadable_hyperparameters_file(tmp_path: Path) -> None:
    path = tmp_path / "hyperparameters.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not readable JSON"):
        load_config(environ={}, hyperparameters_file=path)
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        load_config(environ={}, hyperparameters_file=path)


def test_output_stride_is_read_as_a_number_and_checked_against_the_architecture(tmp_path: Path) -> None:
    assert load_config(environ={"BINSIGHT_OUTPUT_STRIDE": "16"}, hyperparameters_file=None).output_stride == 16
    assert load_config(environ={}, hyperparameters_file=_hp_file(tmp_path, {"output_stride": "16"})).output_stride == 16
    resnet = _hp_file(tmp_path, {"architecture": "resnet18", "output_stride": "16"})
    with pytest.raises(ConfigError, match="efficientnet_lite0"):
        load_config(environ={}, hyperparameters_file=resnet)
    # The defaults leave the recipe hash as it was before the fields, so older checkpoints still resume.
    old = {k: v for k, v in TrainConfig().model_dump(mode="json").items() if k not in RUNTIME_FIELDS}
    del old["output_stride"], old["head"], old["init_model_dir"], old["norm_mode"], old["train_seed"]
    assert TrainConfig().recipe_hash() == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    assert TrainConfig(output_stride=16).recipe_hash() != TrainConfig().recipe_hash()


def test_recipe_hash_ignores_runtime_fields_only() -> None:
    base = TrainConfig()
    assert TrainConfig(num_workers=3, threads=1, tta_flip=True).recipe_hash() == base.recipe_hash()
    other = TrainConfig(lr=0.5)
    assert other.recipe_hash() != base.recipe_hash()
    assert other.recipe_diff(base.model_dump(mode="json")) == ["lr: 0.001 -> 0.5"]


def test_paths_default_under_root_and_optional_channels(tmp_path: Path) -> None:
    (tmp_path / "input/data/train").mkdir(parents=True)
    paths = resolve_paths(environ={"BINSIGHT_OPT_ML": str(tmp_path)})
    assert paths.train == tmp_path / "input/data/train"
    assert paths.validation is None and paths.test is None
    assert paths.model_dir == tmp_path / "model" and paths.output_data_dir == tmp_path / "output/data"
    assert paths.failure_file == tmp_path / "output/failure" and paths.checkpoint_dir == tmp_path / "checkpoints"
    assert paths.hyperparameters == tmp_path / "input/config/hyperparameters.json"
    (tmp_path / "input/data/validation").mkdir()
    assert resolve_paths(environ={"BINSIGHT_OPT_ML": str(tmp_path)}).validation == tmp_path / "input/data/validation"


def test_paths_precedence_cli_binsight_sm(tmp_path: Path) -> None:
    env = {
        "BINSIGHT_OPT_ML": str(tmp_path),
        "SM_MODEL_DIR": "/sm/model",
        "SM_CHANNEL_TRAIN": "/sm/train",
        "BINSIGHT_DATA_DIR": "/own/train",
        "SM_CHANNEL_VALIDATION": "/sm/val",
        "SM_OUTPUT_DATA_DIR": "/sm/out",
        "SM_INPUT_CONFIG_DIR": "/sm/config",
        "SM_OUTPUT_DIR": "/sm/output",
    }
    paths = resolve_paths({"model_dir": "/cli/model", "checkpoint_dir": None}, environ=env)
    assert paths.model_dir == Path("/cli/model")
    assert paths.train == Path("/own/train") and paths.validation == Path("/sm/val")
    assert paths.output_data_dir == Path("/sm/out") and paths.failure_file == Path("/sm/output/failure")
    assert paths.hyperparameters == Path("/sm/config/hyperparameters.json")
    assert paths.checkpoint_dir == tmp_path / "checkpoints"


def test_resource_config(tmp_path: Path) -> None:
    assert read_resource_config(tmp_path / "absent.json").num_hosts == 1
    path = tmp_path / "resourceconfig.json"
    path.write_text(
        json.dumps({"current_host": "algo-2", "hosts": ["algo-1", "algo-2"], "network_interface_name": "eth0"})
    )
    rc = read_resource_config(path)
    assert (rc.num_hosts, rc.node_rank, rc.master_host) == (2, 1, "algo-1")
    path.write_text(json.dumps({"current_host": "algo-3", "hosts": ["algo-1"]}))
    with pytest.raises(SageMakerEnvError, match="not in hosts"):
        read_resource_config(path)


def test_failure_file_written_and_cleared(tmp_path: Path) -> None:
    path = tmp_path / "output" / "failure"
    write_failure(path, "ConfigError: bad lr")
    assert path.read_text() == "ConfigError: bad lr\n"
    clear_failure(path)
    assert not path.exists()
    write_failure(tmp_path / "file-not-dir" / "x", "never raises")  # parent is created
    (tmp_path / "blocked").write_text("a file where a directory should be")
    write_failure(tmp_path / "blocked" / "failure", "still never raises")
    assert FAILURE_REASON_LIMIT == 1024
