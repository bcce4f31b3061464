"""The training loop in-process on synthetic bins: learning, resume, bad data, the pieces it is built from."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from service.architectures import build_model, get_architecture
from service.artifact import load_artifact
from service.ordinal_head import CornHead
from training.__main__ import main
from training.checkpoint import CHECKPOINT_FILE, CheckpointError, GracefulStop
from training.config import ConfigError
from training.loaders import EpochSampler
from training.loop import TrainHooks, _make_criterion, run_training
from training.losses import CornLoss, CountLoss
from training.optim import apply_freeze, lr_factor, param_groups
from training.recipes.decision import output_layer
from training.synthetic import corrupt_some, make_synthetic_abid

from training_support import TINY, history_without_times, local_paths, make_opt_ml, tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------------------------
# Learning
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_learns_synthetic_counts_far_above_chance(tmp_path: Path) -> None:
    """4 classes (chance 25%): the full pipeline (augmentation, schedule, best epoch, test eval) learns."""
    data = tmp_path / "data"
    make_synthetic_abid(data, 300, max_count=3, size=64, seed=1)
    config = tiny_config(
        architecture="resnet18",
        input_size=48,
        epochs=6,
        batch_size=16,
        augment_strength=0.5,
        test_fraction=0.2,
        val_fraction=0.1,
        seed=0,
    )
    result = run_training(config, local_paths(tmp_path, data), log=lambda line: None)
    assert result.status == "completed" and result.test_metrics is not None
    test = result.test_metrics
    assert test["n"] == 60
    assert test["accuracy"] >= 0.55, test
    assert test["rmse"] <= 0.8, test
    assert max(e["val_acc"] for e in result.history) >= 0.6


# --------------------------------------------------------------------------------------------
# Resume
# --------------------------------------------------------------------------------------------


def _final_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_artifact(model_dir).model.state_dict()


def test_stop_midway_then_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_synthetic_abid(data, 40, max_count=3, size=40, seed=0)
    config = tiny_config(epochs=3)
    lines: list[str] = []

    full = run_training(config, local_paths(tmp_path, data, "full"), log=lambda line: None)
    assert full.status == "completed" and [e["epoch"] for e in full.history] == [1, 2, 3]

    def stop_at_step_6(step: int, stop: GracefulStop) -> None:
        if step == 6:
            stop.request("test")

    paths = local_paths(tmp_path, data, "stopped")
    stopped = run_training(config, paths, log=lines.append, hooks=TrainHooks(after_step=stop_at_step_6))
    assert stopped.status == "interrupted" and stopped.epochs_completed == 1
    assert any(line.startswith("training_interrupted: test epoch: 2 step: 2/4") for line in lines), lines[-3:]
    assert not (paths.model_dir / "model.json").exists()
    saved = torch.load(paths.checkpoint_dir / CHECKPOINT_FILE, weights_only=True)
    assert saved["progress"]["epoch"] == 1 and saved["progress"]["step_in_epoch"] == 2

    lines.clear()
    resumed = run_training(config, paths, log=lines.append)
    assert resumed.status == "completed"
    assert any(line.startswith("resumed_from:") and "epoch: 1 step_in_epoch: 2" in line for line in lines)
    a, b = history_without_times(full.history), history_without_times(resumed.history)
    assert [e["epoch"] for e in b] == [1, 2, 3]
    for entry_a, entry_b in zip(a, b):
        for key in entry_a:
            assert entry_b[key] == pytest.approx(entry_a[key], rel=1e-4, abs=1e-5), (key, entry_a, entry_b)
    assert resumed.test_metrics["accuracy"] == pytest.approx(full.test_metrics["accuracy"])
    weights_a, weights_b = _final_weights(full.model_dir), _final_weights(resumed.model_dir)
    for name, tensor in weights_a.items():
        torch.testing.assert_close(weights_b[name].float(), tensor.float(), rtol=1e-4, atol=1e-5)

    # Run again on a finished checkpoint: nothing left to train, the artifact is written again.
    again = run_training(config, paths, log=lambda line: None)
    assert again.status == "completed" and len(again.history) == 3

    # Another recipe on the same checkpoint directory is refused, naming what differs.
    with pytest.raises(CheckpointError, match=r"different configuration \(lr: 0.003 -> 0.01\)"):
        run_training(tiny_config(epochs=3, lr=0.01), paths, log=lambda line: None)


@pytest.mark.parametrize(
    "options",
    [
        {
            "class_weighting": "balanced_sampler",
            "loss": "ordinal",
            "optimizer": "sgd",
            "freeze": "all_but_last_stage",
            "schedule": "constant",
            "val_fraction": 0,
            "test_fraction": 0,
        },
        {
            "class_weighting": "inverse",
            "freeze": "backbone",
            "label_smoothing": 0,
            "grad_clip": 0,
            "warmup_epochs": 0,
            "select_metric": "val_rmse",
        },
    ],
)
def test_other_recipes_run(tmp_path: Path, options: dict) -> None:
    data = tmp_path / "data"
    make_synthetic_abid(data, 24, max_count=3, size=40, seed=2)
    lines: list[str] = []
    result = run_training(tiny_config(epochs=2, **options), local_paths(tmp_path, data), log=lines.append)
    assert result.status == "completed" and len(result.history) == 2
    meta = load_artifact(result.model_dir).metadata
    assert meta.training["freeze"] == options["freeze"]
    assert meta.training["trainable_parameters"] < meta.training["total_parameters"]
    if options.get("val_fraction") == 0:
        assert result.best_epoch == 2 and "val_acc" not in result.history[0] and result.test_metrics is None
        assert "test: none (test_fraction is 0 and there is no test channel)" in lines
    else:
        assert "class_weights: [" in "\n".join(lines) and result.test_metrics["n"] == 4


def test_an_output_stride_16_run_ships_a_model_that_serves_at_its_stride(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_synthetic_abid(data, 24, max_count=3, size=40, seed=2)
    result = run_training(tiny_config(epochs=1, output_stride=16), local_paths(tmp_path, data), log=lambda _: None)
    assert result.status == "completed"
    artifact = load_artifact(result.model_dir)
    assert artifact.metadata.output_stride == 16 and artifact.metadata.training["output_stride"] == 16
    seen: list[int] = []
    artifact.model._conv_head.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0].shape[-1]))
    with torch.no_grad():
        artifact.model.eval()(torch.zeros(1, 3, 32, 32))
    assert seen == [2]  # 32 px / 16 (stride 32 would give 1)


def test_a_corn_head_run_trains_with_corns_loss_and_ships_an_ordinal_model(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_synthetic_abid(data, 24, max_count=3, size=40, seed=2)
    lines: list[str] = []
    config = tiny_config(epochs=1, head="corn", loss="ordinal", class_weighting="balanced_sampler")
    result = run_training(config, local_paths(tmp_path, data), log=lines.append)
    assert result.status == "completed"
    assert any(line.startswith("label_smoothing: ") and "not used" in line for line in lines)
    artifact = load_artifact(result.model_dir)
    assert artifact.metadata.head == "corn" and artifact.metadata.training["head"] == "corn"
    assert isinstance(output_layer(artifact.model, artifact.metadata.num_classes), CornHead)
    with torch.no_grad():
        log_probs = artifact.model.eval()(torch.zeros(2, 3, 32, 32))
    torch.testing.assert_close(log_probs.exp().sum(1), torch.ones(2))  # the CORN head answers log-probabilities
    criterion = _make_criterion(config, None, [0, 1, 2, 3], lambda _: None)
    assert isinstance(criterion, CornLoss) and criterion.inputs == "log_probs" and criterion.ordinal_weight > 0
    assert tiny_config(head="corn").recipe_hash() != tiny_config().recipe_hash()
    with pytest.raises(ValueError, match="with head corn use balanced_sampler or none"):
        tiny_config(head="corn", class_weighting="inverse")


# --------------------------------------------------------------------------------------------
# Bad input through the entry point (failure file + exit status)
# --------------------------------------------------------------------------------------------


def _run_main(root: Path, *args: str) -> tuple[int, str]:
    code = main(["train", "--opt-ml", str(root), *args])
    failure = root / "output" / "failure"
    return code, failure.read_text() if failure.exists() else ""


def test_unknown_hyperparameter_fails_with_reason(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = make_opt_ml(tmp_path / "ml", {**TINY, "lerning_rate": "0.1"}, n_bins=8)
    code, reason = _run_main(root)
    assert code == 2
    assert "unknown hyperparameter 'lerning_rate'" in reason and "hyperparameters.json" in reason
    assert "error: unknown hyperparameter 'lerning_rate'" in capsys.readouterr().err


def test_invalid_hyperparameter_value_fails_with_reason(tmp_path: Path) -> None:
    root = make_opt_ml(tmp_path / "ml", {**TINY, "batch_size": "eight"}, n_bins=8)
    code, reason = _run_main(root)
    assert code == 2 and "'batch_size'" in reason and "'eight'" in reason and "valid integer" in reason
    assert not (root / "model" / "model.json").exists()


def test_unknown_command_line_option_fails(tmp_path: Path) -> None:
    code, reason = _run_main(tmp_path, "--epochz", "3")
    assert code == 2 and "--epochz" in reason


def test_help_lists_paths_and_every_hyperparameter(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--checkpoint-dir PATH" in out and "--warmup-epochs VALUE" in out and "1% of the learning rate" in out


def test_empty_and_missing_channel_fail_clearly(tmp_path: Path) -> None:
    root = tmp_path / "ml"
    (root / "input/data/train").mkdir(parents=True)
    code, reason = _run_main(root)
    assert code == 1 and "DataError" in reason and "is empty" in reason
    code, reason = _run_main(root, "--data-dir", str(tmp_path / "nowhere"))
    assert code == 1 and "does not exist" in reason


def test_stale_failure_file_is_cleared_by_a_new_run(tmp_path: Path) -> None:
    root = make_opt_ml(tmp_path / "ml", {**TINY, "epochs": "x"}, n_bins=8)
    assert _run_main(root)[0] == 2 and (root / "output/failure").exists()
    assert main(["--opt-ml", str(root), "--dry-run", "--epochs", "1"]) == 0
    assert not (root / "output/failure").exists()


# --------------------------------------------------------------------------------------------
# Unreadable images
# --------------------------------------------------------------------------------------------


def test_corrupt_images_are_skipped_and_counted(tmp_path: Path) -> None:
    data = tmp_path / "data"
    records = make_synthetic_abid(data, 40, max_count=3, size=40, seed=5)
    ((text_path, _),) = corrupt_some(data / "bin-images", 1, seed=1, kinds=("text",))
    truncated = next(r.image_path for r in records if r.image_path != text_path)
    truncated.write_bytes(truncated.read_bytes()[: len(truncated.read_bytes()) * 4 // 5])  # header intact
    lines: list[str] = []
    # One batch holds the whole train part, so every image is loaded in the one epoch.
    config = tiny_config(epochs=1, batch_size=64, max_bad_fraction=0.1)
    result = run_training(config, local_paths(tmp_path, data), log=lines.append)
    assert result.status == "completed"
    meta = load_artifact(result.model_dir).metadata
    assert meta.data["bad_images"] == 1  # the text file fails the header check up front
    assert any(line.startswith(f"bad_image: {text_path.stem}") for line in lines)
    split = json.loads((result.model_dir / "split.json").read_text())["parts"]
    assert text_path.stem not in sum(split.values(), [])
    # The truncated JPEG passes the header check; it is skipped (and counted) when it is loaded.
    if truncated.stem in split["test"]:
        assert result.test_metrics["skipped_ids"] == [truncated.stem] and meta.data["skipped_at_load"] == 0
    else:
        assert meta.data["skipped_at_load"] == 1 and meta.data["skipped_at_load_examples"] == [truncated.stem]
        assert any(line.startswith(f"skipped_image: {truncated.stem}") for line in lines)
        assert result.test_metrics["skipped"] == 0


def test_too_many_unreadable_images_fail_the_run(tmp_path: Path) -> None:
    root = make_opt_ml(tmp_path / "ml", {**TINY, "max_bad_fraction": "0.05"}, n_bins=40)
    corrupt_some(root / "input/data/train/bin-images", 4, seed=0, kinds=("text",))
    code, reason = _run_main(root)
    assert code == 1 and "4 of 40 images (10.0%) are unreadable" in reason and "5.0%" in reason


# --------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ["resnet18", "efficientnet_lite0"])
def test_freeze_policies_and_parameter_groups(architecture: str) -> None:
    arch = get_architecture(architecture)
    model = build_model(architecture, 6, pretrained=False)
    total = sum(p.numel() for p in model.parameters())
    trainable, counted = apply_freeze(model, arch, "backbone")
    assert counted == total and 0 < trainable < total / 50
    assert all(arch.is_head(n) == p.requires_grad for n, p in model.named_parameters())
    last, _ = apply_freeze(model, arch, "all_but_last_stage")
    assert trainable < last < total
    assert apply_freeze(model, arch, "none")[0] == total
    config = tiny_config(architecture=architecture, lr=0.01, backbone_lr_mult=0.1, weight_decay=0.05)
    groups = {g["name"]: g for g in param_groups(model, arch, config)}
    assert set(groups) == {"head", "head_no_decay", "backbone", "backbone_no_decay"}
    assert groups["head"]["lr"] == 0.01 and groups["backbone"]["lr"] == pytest.approx(0.001)
    assert groups["backbone_no_decay"]["weight_decay"] == 0 and groups["backbone"]["weight_decay"] == 0.05
    assert sum(p.numel() for g in groups.values() for p in g["params"]) == total
    with pytest.raises(ConfigError, match="unknown freeze policy"):
        apply_freeze(model, arch, "everything")


def test_warmup_then_cosine() -> None:
    factors = [lr_factor(s, 100, 10, "cosine", 0.01) for s in range(101)]
    assert factors[0] == pytest.approx(0.01) and factors[5] == pytest.approx(0.505)
    assert factors[10] == pytest.approx(1.0) and factors[100] == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert lr_factor(50, 100, 0, "constant", 0.01) == 1.0


def test_warm_restarts_split_the_cosine_into_equal_cycles() -> None:
    factors = [lr_factor(s, 90, 10, "cosine", 0.0, cycles=2) for s in range(91)]
    one = [lr_factor(s, 50, 10, "cosine", 0.0) for s in range(51)]
    assert factors[:50] == pytest.approx(one[:50])  # the first cycle is a whole cosine over half the steps
    assert factors[49] < 0.01 and factors[50] == pytest.approx(1.0)  # then the rate restarts at the full rate
    assert factors[50:90] == pytest.approx(factors[10:50])
    assert factors[90] == pytest.approx(0.0)  # and the schedule ends at the floor, as one cosine does
    assert [lr_factor(s, 100, 10, "cosine", 0.01, cycles=1) for s in range(101)] == [
        lr_factor(s, 100, 10, "cosine", 0.01) for s in range(101)
    ]
    with pytest.raises(ValueError, match="cycles"):
        lr_factor(0, 100, 0, "cosine", 0.0, cycles=0)


def test_count_loss_ordinal_term_prefers_near_misses() -> None:
    values = [0, 1, 2, 3, 4, 5]
    target = torch.tensor([5])
    near = torch.tensor([[0, 0, 0, 0, 4.0, 0]])
    far = torch.tensor([[4.0, 0, 0, 0, 0, 0]])
    ce = CountLoss(values)
    assert ce(near, target) == pytest.approx(float(ce(far, target)))
    ordinal = CountLoss(values, ordinal_weight=0.5)
    assert ordinal(near, target) < ordinal(far, target)
    weighted = CountLoss(values, label_smoothing=0.1, class_weights=torch.ones(6), ordinal_weight=0.5)
    assert float(weighted(near, target)) == pytest.approx(float(CountLoss(values, 0.1, None, 0.5)(near, target)))
    assert math.isfinite(float(ordinal(torch.randn(4, 6, dtype=torch.bfloat16), torch.tensor([0, 1, 2, 5]))))


def test_epoch_sampler_is_seeded_sharded_and_resumable() -> None:
    whole = list(EpochSampler(10, seed=1))
    again = list(EpochSampler(10, seed=1))
    assert whole == again and sorted(i for i, _ in whole) == list(range(10))
    other_epoch = EpochSampler(10, seed=1)
    other_epoch.set_epoch(1)
    assert [i for i, _ in other_epoch] != [i for i, _ in whole]
    shards = [list(EpochSampler(10, seed=1, rank=r, world_size=3)) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]
    dealt = [shards[p % 3][p // 3] for p in range(10)]
    assert dealt == whole  # the same keys (index, augmentation seed) whatever the number of workers
    resumed = EpochSampler(10, seed=1)
    resumed.set_epoch(0, start=4)
    assert list(resumed) == whole[4:] and len(resumed) == 6
    balanced = EpochSampler(6, seed=0, weights=torch.tensor([1.0, 0, 0, 0, 0, 1.0], dtype=torch.double))
    assert {i for i, _ in balanced} <= {0, 5}


def test_train_seed_draws_the_training_and_leaves_the_split(tmp_path: Path) -> None:
    """Runs that differ in train_seed alone train on the same split (pairable on one test part) and differ;
    train_seed equal to seed is the default run."""
    data = tmp_path / "data"
    make_synthetic_abid(data, 24, max_count=3, size=40, seed=9)
    runs = {
        name: run_training(tiny_config(epochs=1, **extra), local_paths(tmp_path, data, name), log=lambda line: None)
        for name, extra in (("default", {}), ("same", {"train_seed": 3}), ("other", {"train_seed": 4}))
    }
    splits = {name: json.loads((r.model_dir / "split.json").read_text())["parts"] for name, r in runs.items()}
    assert splits["default"] == splits["same"] == splits["other"]
    weights = {name: _final_weights(r.model_dir) for name, r in runs.items()}
    for key, value in weights["default"].items():
        torch.testing.assert_close(weights["same"][key], value, rtol=0, atol=0, msg=key)
    assert any(not torch.allclose(weights["other"][k], v) for k, v in weights["default"].items())
    assert tiny_config(train_seed=4).recipe_hash() != tiny_config().recipe_hash()
