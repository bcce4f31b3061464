"""training.answer_rule: a loop-trained model gets the recipe's answer rule, tuned on its validation bins."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from service.architectures import build_model
from service.artifact import load_artifact, metadata_for, read_metadata, save_artifact
from training.answer_rule import main
from training.evaluate import EvaluateConfig, predict_items, select_items
from training.labels import LabelPolicy, apply_label_policy
from training.layouts import scan_records
from training.recipes.decision import output_layer
from training.splits import stratified_split, write_split_manifest
from training.synthetic import make_synthetic_abid

LABELS = ["0", "1", "2", "3+"]


def _save(model_dir: Path, data: Path, head: str, **training) -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", len(LABELS), pretrained=False, dropout=0.0, head=head)
    if head == "softmax":
        with torch.no_grad():
            output_layer(model, len(LABELS)).bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))  # favours "0", rarest
    metadata = metadata_for("resnet18", LABELS, input_size=32, dropout=0.0, head=head)
    metadata = metadata.model_copy(update={"metrics": {"accuracy": 0.1}, "training": training})
    save_artifact(model_dir, model, metadata)
    fields = json.loads((model_dir / "model.json").read_text())
    fields["quantization"] = {"graph": "model.int8.onnx"}  # as quantize writes it: stale once the rule is folded
    (model_dir / "model.json").write_text(json.dumps(fields))
    items, _ = apply_label_policy(scan_records(data)[0], LabelPolicy(max_count=2, overflow=True))
    write_split_manifest(model_dir / "split.json", stratified_split(items, 0.6, 0.2, seed=1), extra={"labels": LABELS})
    (model_dir / "history.json").write_text(json.dumps([{"epoch": 1, "val_acc": 0.1}]))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rule") / "data"
    make_synthetic_abid(root, 60, max_count=4, size=40, seed=3)
    return root


def _argv(model_dir: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["--model-dir", str(model_dir), "--data-dir", str(data), "--output-dir", str(out), "--min-bins", "5", *extra]


def _val_accuracy(model_dir: Path, data: Path) -> float:
    artifact = load_artifact(model_dir)
    config = EvaluateConfig(model_dir=model_dir, data_dir=data, split_manifest=model_dir / "split.json", part="val")
    items, _ = select_items(config, artifact.metadata, lambda *a, **k: None)
    probs, labels, _, _ = predict_items(artifact.model, artifact.metadata, items)
    return float((probs.argmax(1) == labels).float().mean())


@pytest.mark.parametrize("head", ["softmax", "corn"])
def test_rule_is_tuned_on_validation_and_folded_into_a_new_artifact(data: Path, tmp_path: Path, head: str) -> None:
    model_dir, out = tmp_path / "model", tmp_path / "with_rule"
    _save(model_dir, data, head, epochs=3)
    before_bytes = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in model_dir.iterdir()}
    before = _val_accuracy(model_dir, data)

    assert main(_argv(model_dir, data, out)) == 0

    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in model_dir.iterdir()} == before_bytes
    metadata = read_metadata(out)
    record = metadata.training["answer_rule"]
    assert metadata.training["epochs"] == 3  # the rest of the provenance is kept
    assert record["accuracy_before"] == pytest.approx(before, abs=1e-4)
    after = _val_accuracy(out, data)  # what the new artifact answers is the tuned rule's answer
    assert after == pytest.approx(record["accuracy_after"], abs=1e-4)
    assert after >= before
    if head == "softmax":  # the biased model favours "0"; the rule moves answers to commoner classes
        assert after > before and record["offsets"][0] == 0 and max(record["offsets"][1:]) > 0
    assert record["tuned_on"]["part"] == "val" and record["tuned_on"]["n"] == len(
        json.loads((model_dir / "split.json").read_text())["parts"]["val"]
    )
    assert metadata.metrics == {} and record["metrics_without_rule"] == {"accuracy": 0.1}
    assert "quantization" not in json.loads((out / "model.json").read_text())
    assert (out / "split.json").read_bytes() == (model_dir / "split.json").read_bytes()
    assert (out / "history.json").is_file()


def test_refusals_leave_nothing_behind(data: Path, tmp_path: Path, capsys) -> None:
    model_dir = tmp_path / "model"
    _save(model_dir, data, "softmax")

    with pytest.raises(SystemExit) as exit_info:  # bad options exit 2 before anything runs
        main(_argv(model_dir, data, model_dir))
    assert exit_info.value.code == 2
    assert "output_dir must differ from model_dir" in capsys.readouterr().err

    out = tmp_path / "out"
    assert main(_argv(model_dir, data, out)[:-2] + ["--min-bins", "1000"]) == 1
    assert "the rule needs at least 1000" in capsys.readouterr().err
    assert main(_argv(model_dir, data, out, "--split-manifest", str(tmp_path / "none.json"))) == 1
    assert "none.json is missing" in capsys.readouterr().err
    assert not out.exists()

    assert main(_argv(model_dir, data, out)) == 0
    capsys.readouterr()
    assert main(_argv(out, data, tmp_path / "twice")) == 1  # a rule on top of a rule would tune on its own answers
    assert "already answers with a tuned rule" in capsys.readouterr().err
    recipe_dir = tmp_path / "recipe"
    _save(recipe_dir, data, "softmax", answer_rule_offsets=[0.0, 0.1, 0.0, 0.0])  # the CPU recipe's record
    assert main(_argv(recipe_dir, data, tmp_path / "again")) == 1
    assert not (tmp_path / "twice").exists() and not (tmp_path / "again").exists()
