"""training.evaluate: the CLI end to end on a tiny artifact, eval == serving, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from service.architectures import build_model
from service.artifact import load_artifact, metadata_for, save_artifact
from service.preprocess import preprocess_bytes
from training.evaluate import EvaluateConfig, evaluate_model, label_policy_for, main, parse_config, run
from training.labels import LabelPolicy, apply_label_policy
from training.layouts import DataError, scan_records
from training.splits import stratified_split, write_split_manifest
from training.synthetic import corrupt_some, make_synthetic_abid

LABELS = ["0", "1", "2", "3"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """A tiny resnet18 artifact (32 px, 4 classes), 30 synthetic bins (counts 0..4: the 4s are dropped)."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("eval")
    data = root / "data"
    make_synthetic_abid(data, 30, max_count=3, size=48, seed=5, overflow_extra=1)
    model_dir = root / "model"
    model = build_model("resnet18", len(LABELS), pretrained=False, dropout=0.0)
    save_artifact(model_dir, model, metadata_for("resnet18", LABELS, input_size=32, dropout=0.0))
    items, dropped = apply_label_policy(scan_records(data)[0], LabelPolicy(max_count=3))
    split = stratified_split(items, 0.2, 0.3, seed=1)
    write_split_manifest(model_dir / "split.json", split, extra={"labels": LABELS})
    history = [
        {"epoch": e, "train_loss": 1.5 / e, "val_loss": 1.6 / e, "val_acc": 0.2 * e, "val_rmse": 1.0 / e, "lr": 0.001}
        for e in range(1, 4)
    ]
    (model_dir / "history.json").write_text(json.dumps(history))
    return {"data": data, "model_dir": model_dir, "items": items, "split": split, "dropped": dropped}


def test_cli_end_to_end_writes_json_and_plots(setup, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    rc = main(
        [
            "--model-dir",
            str(setup["model_dir"]),
            "--data-dir",
            str(setup["data"]),
            "--split-manifest",
            str(setup["model_dir"] / "split.json"),
            "--part",
            "test",
            "--output-dir",
            str(out),
            "--batch-size",
            "4",
            "--tta-flip",
        ]
    )
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    result = json.loads((out / "metrics.json").read_text())
    metrics = result["metrics"]
    test_ids = [i.id for i in setup["split"].test]
    assert metrics["n"] == len(test_ids) and result["data"]["part"] == "test"
    assert result["data"]["dropped_above_max_count"] == 0  # the manifest only holds labelled bins
    assert metrics["tta_flip"] is True and metrics["skipped"] == 0
    assert sum(sum(row) for row in metrics["confusion_matrix"]) == len(test_ids)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["rmse"] >= 0.0
    with open(out / "predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["id"] for r in rows] == test_ids
    for png in ("confusion_matrix.png", "training_curves.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    assert f"eval_n: {len(test_ids)}" in lines
    assert any(line.startswith("eval_accuracy: ") for line in lines)
    low, high = metrics["accuracy_interval_95"]
    assert 0 <= low <= metrics["accuracy"] <= high <= 1 and high - low > 0.2  # a handful of bins: a wide interval
    assert f"eval_accuracy_low_95: {low:.4f}" in lines and f"eval_accuracy_high_95: {high:.4f}" in lines
    assert any(line.startswith("eval_rmse: ") for line in lines)
    assert any(line.startswith("eval_class_0_accuracy: ") for line in lines)
    assert all(": " in line for line in lines), [line for line in lines if ": " not in line]


def test_all_bins_without_manifest_and_env_config(setup, tmp_path: Path) -> None:
    config = parse_config(
        ["--data-dir", str(setup["data"]), "--output-dir", str(tmp_path)],
        environ={
            "BINSIGHT_EVAL_MODEL_DIR": str(setup["model_dir"]),
            "BINSIGHT_EVAL_BATCH_SIZE": "7",
            "BINSIGHT_EVAL_LIMIT": "10",
        },
    )
    assert config.batch_size == 7 and config.limit == 10 and config.model_dir == setup["model_dir"]
    lines: list[str] = []
    result = run(config, log=lines.append)
    assert result["metrics"]["n"] == 10 and result["data"]["part"] == "all"
    assert result["data"]["dropped_above_max_count"] == 6 and result["data"]["limit"] == 10
    assert any(line.startswith("eval_hint: ") for line in lines)
    assert (tmp_path / "training_curves.png").exists()


def test_dropped_bins_are_counted(setup, tmp_path: Path) -> None:
    config = EvaluateConfig(model_dir=setup["model_dir"], data_dir=setup["data"], output_dir=tmp_path)
    result = run(config, log=lambda line: None)
    assert result["data"]["dropped_above_max_count"] == setup["dropped"] == 6
    assert result["metrics"]["n"] == 24


def test_evaluate_model_matches_serving_preprocessing(setup) -> None:
    artifact = load_artifact(setup["model_dir"])
    model, metadata = artifact.model, artifact.metadata
    items = setup["split"].val
    model.train()
    metrics = evaluate_model(model, metadata, items, batch_size=3, return_predictions=True)
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        batch = torch.stack([preprocess_bytes(i.image_path.read_bytes(), metadata.preprocess_spec()) for i in items])
        probs = torch.softmax(model(batch), dim=1)
    expected = probs.argmax(1)
    assert [p["predicted"] for p in metrics["predictions"]] == [LABELS[int(k)] for k in expected]
    for row, k, p in zip(metrics["predictions"], expected.tolist(), probs):
        assert row["probability"] == pytest.approx(float(p[k]), abs=1e-5)
    labels = torch.tensor([i.label for i in items])
    loss = torch.nn.functional.cross_entropy(model(batch), labels).item()
    assert metrics["loss"] == pytest.approx(loss, rel=1e-4)
    assert label_policy_for(metadata) == LabelPolicy(max_count=3, overflow=False)


def test_unreadable_images_are_skipped_and_counted(setup, tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_synthetic_abid(data, 12, max_count=3, size=48, seed=2)
    corrupt_some(data, 1, kinds=("truncated",), seed=3)
    artifact = load_artifact(setup["model_dir"])
    items, _ = apply_label_policy(scan_records(data)[0], LabelPolicy(max_count=3))
    metrics = evaluate_model(artifact.model, artifact.metadata, items, batch_size=4)
    assert metrics["n"] + metrics["skipped"] == 12 and metrics["skipped"] == 1


def test_errors_are_clear(setup, tmp_path: Path, capsys) -> None:
    assert main(["--model-dir", str(tmp_path / "nope"), "--data-dir", str(setup["data"])]) == 1
    assert "error: model directory" in capsys.readouterr().err

    other = tmp_path / "other"
    make_synthetic_abid(other, 6, max_count=3, size=48, first_id=500)
    rc = main(
        [
            "--model-dir",
            str(setup["model_dir"]),
            "--data-dir",
            str(other),
            "--split-manifest",
            str(setup["model_dir"] / "split.json"),
            "--output-dir",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 1 and "not in the data" in capsys.readouterr().err

    with pytest.raises(SystemExit) as exc:
        parse_config(["--model-dir", "m", "--data-dir", "d", "--batch-size", "0"], environ={})
    assert exc.value.code == 2
    assert "--batch-size" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config(["--data-dir", "d"], environ={})
    assert "--model-dir: required (or set BINSIGHT_EVAL_MODEL_DIR)" in capsys.readouterr().err

    with pytest.raises(DataError, match="none of the 1 images"):
        bad = tmp_path / "bad"
        make_synthetic_abid(bad, 1, max_count=3, size=48)
        corrupt_some(bad, 1, kinds=("text",))
        artifact = load_artifact(setup["model_dir"])
        items, _ = apply_label_policy(scan_records(bad)[0], LabelPolicy(max_count=3))
        evaluate_model(artifact.model, artifact.metadata, items)


def test_write_plots_for_the_training_loop(tmp_path: Path) -> None:
    from training.evaluate import write_plots
    from training.metrics import compute_metrics

    metrics = compute_metrics([0, 1, 2, 2], [0, 1, 1, 2], class_values=[0, 1, 2])
    files = write_plots(tmp_path, metrics, [{"epoch": 1, "val_acc": 0.5, "train_loss": 1.0}], ["0", "1", "2+"])
    assert [f.name for f in files] == ["confusion_matrix.png", "training_curves.png"]
    assert write_plots(tmp_path / "no_history", metrics, None, ["0", "1", "2+"])[0].name == "confusion_matrix.png"
    assert not (tmp_path / "no_history" / "training_curves.png").exists()


def test_overflow_model_also_reports_the_counting_task(setup, tmp_path: Path, capsys) -> None:
    """With a "3+" class the ABID task (bins holding 0..2, answered among 0..2) is reported beside the rest."""
    labels = ["0", "1", "2", "3+"]
    model_dir = tmp_path / "overflow-model"
    save_artifact(
        model_dir,
        build_model("resnet18", 4, pretrained=False, dropout=0.0),
        metadata_for("resnet18", labels, input_size=32, dropout=0.0),
    )
    assert (
        main(
            [
                "--model-dir",
                str(model_dir),
                "--data-dir",
                str(setup["data"]),
                "--output-dir",
                str(tmp_path / "out"),
                "--batch-size",
                "8",
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())["metrics"]
    in_range = sum(
        1
        for item in apply_label_policy(scan_records(setup["data"])[0], LabelPolicy(max_count=2, overflow=True))[0]
        if item.label < 3
    )
    task = metrics["counts_0_2"]
    assert metrics["n"] == 30 and task["n"] == in_range < 30
    assert task["class_names"] == ["0", "1", "2"] and len(task["confusion_matrix"]) == 3
    lines = capsys.readouterr().out.splitlines()
    assert f"eval_counts_0_2_n: {in_range}" in lines
    assert any(line.startswith("eval_counts_0_2_accuracy: ") for line in lines)

    # Without an overflow class there is nothing to restrict (the setup's own model).
    plain = evaluate_model(
        load_artifact(setup["model_dir"]).model,
        load_artifact(setup["model_dir"]).metadata,
        setup["items"][:6],
        batch_size=6,
    )
    assert not any(key.startswith("counts_0_") for key in plain)
