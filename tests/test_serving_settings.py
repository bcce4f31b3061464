"""service.settings: environment -> ServeSettings, model directory resolution."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from service.settings import DEFAULT_MODEL_DIR, ServeSettings, SettingsError, resolve_model_dir


def _model(dir_: Path) -> Path:
    dir_.mkdir(parents=True, exist_ok=True)
    (dir_ / "model.json").write_text("{}")
    return dir_


def test_defaults_follow_sagemaker(tmp_path: Path) -> None:
    settings = ServeSettings.from_env({"MODEL_DIR": str(tmp_path)})
    assert (settings.host, settings.port, settings.workers, settings.max_payload_mb) == ("0.0.0.0", 8080, 1, 6.0)
    assert settings.max_payload_bytes == 6 * 1024 * 1024
    assert settings.model.path == tmp_path and settings.model.source == "MODEL_DIR"


def test_environment_is_read() -> None:
    settings = ServeSettings.from_env(
        {
            "SM_MODEL_DIR": "/models/x",
            "SAGEMAKER_BIND_TO_PORT": "9000",
            "SAGEMAKER_MODEL_SERVER_WORKERS": "3",
            "SAGEMAKER_MAX_PAYLOAD_IN_MB": "0.5",
            "BINSIGHT_MAX_BATCH_SIZE": "4",
            "BINSIGHT_TORCH_THREADS": "2",
            "BINSIGHT_MANUAL_CHECK_CONFIDENCE": "0.7",
            "BINSIGHT_LOG_LEVEL": "DEBUG",
            "BINSIGHT_ACCESS_LOG": "false",
        }
    )
    assert settings.model.path == Path("/models/x") and settings.model.source == "SM_MODEL_DIR"
    assert (settings.port, settings.workers, settings.max_batch_size, settings.torch_threads) == (9000, 3, 4, 2)
    assert settings.max_payload_bytes == 512 * 1024
    assert settings.manual_check_confidence == 0.7 and settings.log_level == "debug" and not settings.access_log


@pytest.mark.parametrize(
    "var, value",
    [
        ("SAGEMAKER_BIND_TO_PORT", "http"),
        ("SAGEMAKER_BIND_TO_PORT", "70000"),
        ("SAGEMAKER_MODEL_SERVER_WORKERS", "0"),
        ("SAGEMAKER_MAX_PAYLOAD_IN_MB", "-1"),
        ("BINSIGHT_MANUAL_CHECK_CONFIDENCE", "2"),
        ("BINSIGHT_LOG_LEVEL", "loud"),
        ("BINSIGHT_RUNTIME", "tensorrt"),
        ("BINSIGHT_PRECISION", "fp16"),
        ("BINSIGHT_ORT_THREADS", "-1"),
    ],
)
def test_bad_values_name_the_variable(var: str, value: str) -> None:
    with pytest.raises(SettingsError, match=var):
        ServeSettings.from_env({var: value})


def test_model_dir_order(tmp_path: Path) -> None:
    sagemaker, default = tmp_path / "opt-ml-model", tmp_path / "default_model"
    found = resolve_model_dir({"MODEL_DIR": "/a", "SM_MODEL_DIR": "/b"}, sagemaker, default)
    assert (found.path, found.source) == (Path("/a"), "MODEL_DIR")
    found = resolve_model_dir({"SM_MODEL_DIR": "/b"}, sagemaker, default)
    assert (found.path, found.source) == (Path("/b"), "SM_MODEL_DIR")
    _model(default)
    assert resolve_model_dir({}, sagemaker, default).path == default
    _model(sagemaker)
    found = resolve_model_dir({"MODEL_DIR": "  "}, sagemaker, default)
    assert (found.path, found.source) == (sagemaker, "/opt/ml/model")


def test_no_model_anywhere_names_every_place_tried(tmp_path: Path) -> None:
    found = resolve_model_dir({}, tmp_path / "opt-ml-model", tmp_path / "default_model")
    assert found.path is None
    message = found.not_found_message()
    for place in (
        "MODEL_DIR (not set)",
        "SM_MODEL_DIR (not set)",
        str(tmp_path / "opt-ml-model"),
        str(tmp_path / "default_model"),
        "Set MODEL_DIR",
    ):
        assert place in message


def test_default_model_dir_is_package_data() -> None:
    assert DEFAULT_MODEL_DIR.parent.name == "service" and DEFAULT_MODEL_DIR.name == "default_model"
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert "default_model/*" in pyproject["tool"]["setuptools"]["package-data"]["service"]


def test_runtime_settings() -> None:
    assert (ServeSettings.from_env({}).runtime, ServeSettings.from_env({}).precision) == ("auto", "fp32")
    settings = ServeSettings.from_env(
        {
            "BINSIGHT_RUNTIME": " ONNXRuntime ",
            "BINSIGHT_PRECISION": "INT8",
            "BINSIGHT_CACHE_DIR": "/var/cache/x",
            "BINSIGHT_ORT_THREADS": "3",
        }
    )
    assert (settings.runtime, settings.precision, settings.cache_dir, settings.ort_threads) == (
        "onnxruntime",
        "int8",
        Path("/var/cache/x"),
        3,
    )
    with pytest.raises(SettingsError, match="BINSIGHT_PRECISION=int8 runs on ONNX Runtime; set BINSIGHT_RUNTIME"):
        ServeSettings.from_env({"BINSIGHT_RUNTIME": "torch", "BINSIGHT_PRECISION": "int8"})


def test_threads_default_to_each_workers_share_of_the_cpus(monkeypatch) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(4)), raising=False)
    one = ServeSettings.from_env({})
    assert (one.cpus_per_worker, one.runtime_threads, one.decode_workers) == (4, 3, 4)
    two = ServeSettings.from_env({"SAGEMAKER_MODEL_SERVER_WORKERS": "2"})
    assert (two.cpus_per_worker, two.runtime_threads, two.decode_workers) == (2, 1, 2)
    many = ServeSettings.from_env(
        {"SAGEMAKER_MODEL_SERVER_WORKERS": "8", "BINSIGHT_ORT_THREADS": "3", "BINSIGHT_DECODE_THREADS": "5"}
    )
    assert (many.cpus_per_worker, many.runtime_threads, many.decode_workers) == (1, 3, 5)


def test_every_variable_keeps_its_name_through_the_options_bridge() -> None:
    from service.settings import ENV_FIELDS

    sagemaker = {
        "port": "SAGEMAKER_BIND_TO_PORT",
        "workers": "SAGEMAKER_MODEL_SERVER_WORKERS",
        "max_payload_mb": "SAGEMAKER_MAX_PAYLOAD_IN_MB",
        "model_server_timeout_s": "SAGEMAKER_MODEL_SERVER_TIMEOUT",
        "safe_port_range": "SAGEMAKER_SAFE_PORT_RANGE",
    }
    expected = {field: sagemaker.get(field, "BINSIGHT_" + field.upper()) for field in ServeSettings.model_fields}
    del expected["model"]  # MODEL_DIR / SM_MODEL_DIR / /opt/ml/model: resolve_model_dir
    assert ENV_FIELDS == expected
    assert ServeSettings.from_env({"BINSIGHT_MODEL": "x", "BINSIGHT_PORT": "1"}).port == 8080  # no such variables
