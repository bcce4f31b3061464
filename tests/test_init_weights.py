"""``init_model_dir``: a training run that starts from an artifact's weights, and the starts it refuses."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import pytest
import torch

from service.artifact import load_artifact
from training.__main__ import main
from training.loop import run_training
from training.synthetic import make_synthetic_abid

from training_support import TINY, local_paths, make_opt_ml, tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def start_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained softmax artifact (counts 0-3) to start from."""
    root = tmp_path_factory.mktemp("start")
    data = root / "data"
    make_synthetic_abid(data, 24, max_count=3, size=40, seed=4)
    result = run_training(tiny_config(epochs=1), local_paths(root, data), log=lambda line: None)
    assert result.status == "completed"
    return result.model_dir


def _learnt(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights an optimiser moves (BatchNorm statistics are recomputed by every run, so they are left out)."""
    return {k: v for k, v in state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def _still_at_start(tmp_path: Path, init_model_dir: Path, start_model: Path, seed: int) -> tuple[Path, list[str]]:
    """A one-epoch run from ``init_model_dir`` at a learning rate so small that its weights stay where they started;
    checks that they are ``start_model``'s and returns the new model directory and the log."""
    data = tmp_path / "data"
    make_synthetic_abid(data, 24, max_count=3, size=40, seed=seed)
    lines: list[str] = []
    config = tiny_config(epochs=1, init_model_dir=init_model_dir, lr=1e-12, warmup_epochs=0, weight_decay=0)
    result = run_training(config, local_paths(tmp_path, data), log=lines.append)
    assert result.status == "completed"
    start = _learnt(load_artifact(start_model).model.state_dict())
    after = _learnt(load_artifact(result.model_dir).model.state_dict())
    assert start.keys() == after.keys()
    for name, value in start.items():
        torch.testing.assert_close(after[name], value, rtol=0, atol=1e-6, msg=name)
    return result.model_dir, lines


def test_a_run_starts_from_the_artifacts_weights_and_records_them(start_model: Path, tmp_path: Path) -> None:
    model_dir, lines = _still_at_start(tmp_path, start_model, start_model, seed=5)
    fresh_config = tiny_config(epochs=1, lr=1e-12, warmup_epochs=0)
    fresh = run_training(fresh_config, local_paths(tmp_path, tmp_path / "data", "fresh"))
    fresh_weights = _learnt(load_artifact(fresh.model_dir).model.state_dict())
    start = _learnt(load_artifact(start_model).model.state_dict())
    assert any(not torch.allclose(fresh_weights[k], v, atol=1e-3) for k, v in start.items())  # the test can fail
    sha = hashlib.sha256((start_model / "model.pth").read_bytes()).hexdigest()
    record = json.loads((model_dir / "model.json").read_text())["training"]
    assert record["init_model_dir"] == str(start_model)
    assert record["init_model"]["weights_sha256"] == sha and record["init_model"]["input_size"] == 32
    assert f"init_model: {start_model}" in lines and f"init_model_weights_sha256: {sha}" in lines
    assert record["recipe_hash"] != json.loads((fresh.model_dir / "model.json").read_text())["training"]["recipe_hash"]


def test_a_different_input_size_is_allowed_and_logged(start_model: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_synthetic_abid(data, 16, max_count=3, size=48, seed=6)
    lines: list[str] = []
    config = tiny_config(epochs=1, init_model_dir=start_model, input_size=40)
    result = run_training(config, local_paths(tmp_path, data), log=lines.append)
    assert result.status == "completed"
    assert "init_model_input_size: 32 (this run: 40)" in lines
    assert load_artifact(result.model_dir).metadata.input_size == 40


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"head": "corn"}, "head 'softmax' (run: 'corn'; pass --head softmax)"),
        ({"max_count": "5"}, "labels ['0', '1', '2', '3'] (run: ['0', '1', '2', '3', '4', '5']; pass --max-count"),
        ({"architecture": "resnet18"}, "architecture 'efficientnet_lite0' (run: 'resnet18'; pass --architecture)"),
    ],
)
def test_another_network_is_refused_before_the_data_is_read(
    start_model: Path, tmp_path: Path, extra: dict[str, str], says: str
) -> None:
    root = make_opt_ml(tmp_path / "ml", {**TINY, **extra, "init_model_dir": str(start_model)}, n_bins=8)
    (root / "input/data/train").rename(root / "elsewhere")  # a refusal that read the data would fail differently
    code = main(["train", "--opt-ml", str(root)])
    reason = (root / "output" / "failure").read_text()
    assert code == 2, reason
    assert f"init_model_dir {start_model} is another network" in reason and says in reason
    assert not (root / "model" / "model.json").exists() and not any((root / "checkpoints").glob("*"))


def test_a_missing_or_broken_start_model_is_refused(start_model: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    root = make_opt_ml(tmp_path / "ml", {**TINY, "init_model_dir": str(missing)}, n_bins=8)
    assert main(["train", "--opt-ml", str(root)]) == 2
    assert f"init_model_dir: model directory {missing} does not exist" in (root / "output" / "failure").read_text()

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text((start_model / "model.json").read_text())
    (broken / "model.pth").write_bytes(b"not a state dict")
    root = make_opt_ml(tmp_path / "ml2", {**TINY, "init_model_dir": str(broken)}, n_bins=8)
    assert main(["train", "--opt-ml", str(root)]) == 2
    reason = (root / "output" / "failure").read_text()
    assert "init_model_dir: " in reason and "cannot be read as a state_dict" in reason
    assert not (root / "model" / "model.json").exists()


def _pack(model_dir: Path, tarball: Path, names: tuple[str, ...] = ("model.json", "model.pth", "split.json")) -> Path:
    """A model.tar.gz as a SageMaker training job writes it (files at the top level, as ``./name``)."""
    with tarfile.open(tarball, "w:gz") as tar:
        for name in names:
            tar.add(model_dir / name, arcname=f"./{name}")
    return tarball


def test_a_sagemaker_model_tarball_is_unpacked_and_started_from(start_model: Path, tmp_path: Path) -> None:
    channel = tmp_path / "init_model"
    channel.mkdir()
    _pack(start_model, channel / "model.tar.gz")
    model_dir, lines = _still_at_start(tmp_path, channel, start_model, seed=7)
    assert any(line.startswith(f"init_model: {channel} (unpacked to ") for line in lines)
    sha = hashlib.sha256((start_model / "model.pth").read_bytes()).hexdigest()
    assert json.loads((model_dir / "model.json").read_text())["training"]["init_model"]["weights_sha256"] == sha


def test_a_tarball_without_the_model_is_refused(start_model: Path, tmp_path: Path) -> None:
    tarball = _pack(start_model, tmp_path / "model.tar.gz", names=("model.json", "split.json"))
    root = make_opt_ml(tmp_path / "ml", {**TINY, "init_model_dir": str(tarball)}, n_bins=8)
    assert main(["train", "--opt-ml", str(root)]) == 2
    assert f"init_model_dir: {tarball} has no model.pth at its top level" in (root / "output" / "failure").read_text()
    (tmp_path / "junk.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    root = make_opt_ml(tmp_path / "ml2", {**TINY, "init_model_dir": str(tmp_path / "junk.tar.gz")}, n_bins=8)
    assert main(["train", "--opt-ml", str(root)]) == 2
    assert "is not a readable tar.gz" in (root / "output" / "failure").read_text()


def _norm_statistics(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.endswith(("running_mean", "running_var"))}


def test_frozen_norms_train_the_network_that_is_served(start_model: Path, tmp_path: Path) -> None:
    """norm_mode frozen: every BatchNorm keeps the start's statistics (no batch statistics, no recalibration) while
    the weights learn; the usual mode moves them."""
    data = tmp_path / "data"
    make_synthetic_abid(data, 24, max_count=3, size=40, seed=8)
    start = load_artifact(start_model).model.state_dict()
    frozen = run_training(
        tiny_config(epochs=1, init_model_dir=start_model, norm_mode="frozen"), local_paths(tmp_path, data, "frozen")
    )
    usual = run_training(tiny_config(epochs=1, init_model_dir=start_model), local_paths(tmp_path, data, "usual"))
    frozen_state = load_artifact(frozen.model_dir).model.state_dict()
    for name, value in _norm_statistics(start).items():
        torch.testing.assert_close(frozen_state[name], value, rtol=0, atol=0, msg=name)
    assert any(not torch.equal(frozen_state[k], v) for k, v in _learnt(start).items())  # the weights did learn
    usual_state = load_artifact(usual.model_dir).model.state_dict()
    assert any(not torch.allclose(usual_state[k], v) for k, v in _norm_statistics(start).items())
    record = json.loads((frozen.model_dir / "model.json").read_text())["training"]
    assert record["norm_mode"] == "frozen" and record["bn_recalibration_used"] is False
    assert tiny_config(norm_mode="frozen").recipe_hash() != tiny_config().recipe_hash()
