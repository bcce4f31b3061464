"""The container files that can be checked without a Docker engine: entry script, requirements
export, and the compose file's hyperparameter pass-through."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from training.config import ENV_PREFIX, FIELD_NAMES

REPO_ROOT = Path(__file__).resolve().parent.parent
ENTRYPOINT = REPO_ROOT / "docker" / "entrypoint.sh"
REQUIREMENTS = REPO_ROOT / "docker" / "requirements.py"


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    """A PATH folder with a `serve` that prints its arguments (and no `train`)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    serve = folder / "serve"
    serve.write_text('#!/bin/sh\necho "serve called with: $*"\n')
    serve.chmod(0o755)
    return folder


def _entry(fake_bin: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{fake_bin}:/usr/bin:/bin"}
    return subprocess.run(["sh", str(ENTRYPOINT), *args], env=env, capture_output=True, text=True, timeout=30)


def test_entrypoint_runs_serve_with_its_arguments(fake_bin: Path) -> None:
    proc = _entry(fake_bin, "serve", "--port", "9000")
    assert proc.returncode == 0
    assert proc.stdout.strip() == "serve called with: --port 9000"


def test_entrypoint_explains_a_missing_program(fake_bin: Path) -> None:
    proc = _entry(fake_bin, "train")
    assert proc.returncode == 2
    assert "no 'train' command" in proc.stderr


def test_entrypoint_execs_any_other_command_and_wants_one(fake_bin: Path) -> None:
    assert _entry(fake_bin, "sh", "-c", "exit 7").returncode == 7
    empty = _entry(fake_bin)
    assert empty.returncode == 2 and "usage" in empty.stderr


def _requirements(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REQUIREMENTS), "--pyproject", str(REPO_ROOT / "pyproject.toml"), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_requirements_export_follows_pyproject() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    base = _requirements("--exclude", "torch")
    assert base.returncode == 0
    assert base.stdout.splitlines() == [r for r in project["dependencies"] if not r.startswith("torch")]
    train = _requirements("--extra", "train", "--exclude", "Torch", "--exclude", "torchvision").stdout.splitlines()
    assert set(project["optional-dependencies"]["train"]) - set(train) == {
        r for r in project["optional-dependencies"]["train"] if r.startswith("torchvision")
    }
    unknown = _requirements("--extra", "gpu")
    assert unknown.returncode == 2 and "unknown extras ['gpu']" in unknown.stderr


def test_compose_passes_every_hyperparameter_variable_to_train() -> None:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    passed = set(compose["services"]["train"]["environment"])
    expected = {ENV_PREFIX + name.upper() for name in FIELD_NAMES}
    assert passed == expected, (
        f"docker-compose.yml train.environment is out of step with training.config.TrainConfig: "
        f"add {sorted(expected - passed)}, remove {sorted(passed - expected)}"
    )


def test_artifact_files_are_readable_by_the_non_root_server(tmp_path: Path) -> None:
    """The serving image runs as a non-root user on files that training wrote as root."""
    from service.architectures import build_model
    from service.artifact import METADATA_FILE, WEIGHTS_FILE, metadata_for, save_artifact

    model = build_model("efficientnet_lite0", 3, False, 0.2)
    save_artifact(tmp_path, model, metadata_for("efficientnet_lite0", ["0", "1", "2"], input_size=32))
    for name in (METADATA_FILE, WEIGHTS_FILE):
        assert (tmp_path / name).stat().st_mode & 0o044 == 0o044, name
