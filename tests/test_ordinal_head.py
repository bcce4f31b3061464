"""The CORN head (service.ordinal_head): its probabilities and loss, the answer rule folded into it, the
artifact contract (model.json's ``head``), ONNX Runtime parity, and the recipe's ``--head corn``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from service.architectures import ArchitectureError, build_model
from service.artifact import ArtifactError, load_artifact, metadata_for, save_artifact
from service.ordinal_head import CornHead, corn_log_probs
from service.predictor import Predictor
from training.losses import CornLoss, corn_loss, corn_loss_from_log_probs
from training.recipes.decision import fold_offsets

from serving_support import ARCH, LABELS, jpeg


def test_class_probabilities_are_normalised_and_rank_consistent():
    logits = torch.randn(50, 6) * 3
    probs = corn_log_probs(logits).exp()
    assert probs.shape == (50, 7)
    assert torch.allclose(probs.sum(1), torch.ones(50), atol=1e-6)
    above = 1 - probs.cumsum(1)[:, :-1]  # P(y > k), k = 0..5
    assert torch.all(above[:, 1:] <= above[:, :-1] + 1e-6)
    # By hand for one row: P(y > k) is the product of the conditional probabilities.
    s = torch.sigmoid(logits[0])
    expected = [1 - s[0]] + [s[:k].prod() * (1 - s[k]) for k in range(1, 6)] + [s.prod()]
    assert torch.allclose(probs[0], torch.stack(expected), atol=1e-6)


def test_extreme_logits_stay_finite():
    logits = torch.tensor([[80.0, -80.0, 80.0], [-200.0, 200.0, 0.0]])
    log_probs = corn_log_probs(logits)
    assert torch.isfinite(log_probs).all()
    assert log_probs.exp().sum(1).allclose(torch.ones(2), atol=1e-6)
    assert log_probs.argmax(1).tolist() == [1, 0]


def test_corn_loss_asks_each_question_only_of_the_bins_that_reach_it():
    torch.manual_seed(0)
    logits = torch.randn(5, 3)
    targets = torch.tensor([0, 1, 2, 3, 3])
    terms = []
    for n, y in enumerate(targets.tolist()):
        for k in range(3):
            if y >= k:  # question k: "above k, given above k-1?"
                terms.append(F.binary_cross_entropy_with_logits(logits[n, k], torch.tensor(float(y > k))))
    assert math.isclose(corn_loss(logits, targets).item(), torch.stack(terms).mean().item(), rel_tol=1e-6)
    # Confident right answers cost almost nothing; a wrong order costs a lot.
    right = torch.tensor([[-9.0, 0, 0], [9.0, 9.0, -9.0]])
    assert corn_loss(right, torch.tensor([0, 2])) < 1e-3
    assert corn_loss(-right, torch.tensor([0, 2])) > 5


def test_corn_loss_learns_a_separable_count():
    torch.manual_seed(0)
    x = torch.randn(400, 8)
    y = (x[:, 0] * 1.5 + 3).round().clamp(0, 6).long()
    head = CornHead(8, 7)
    criterion = CornLoss([0, 1, 2, 3, 4, 5, 6], ordinal_weight=0.1)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        criterion(head.conditional(x), y).backward()
        optimizer.step()
    assert (head(x).argmax(1) == y).float().mean() > 0.85


def test_corn_loss_from_the_models_log_probs_equals_the_conditional_one():
    """The training loop sees only the model's output; the loss and its gradient must be CORN's own."""
    torch.manual_seed(1)
    logits = (torch.randn(64, 6) * 4).requires_grad_()  # wide logits: near-certain answers too
    targets = torch.randint(0, 7, (64,))
    direct = corn_loss(logits, targets)
    (grad_direct,) = torch.autograd.grad(direct, logits)
    from_output = corn_loss_from_log_probs(corn_log_probs(logits), targets)
    (grad_output,) = torch.autograd.grad(from_output, logits)
    torch.testing.assert_close(from_output, direct, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_output, grad_direct, rtol=1e-4, atol=1e-6)
    values = [0, 1, 2, 3, 4, 5, 6]
    on_logits = CornLoss(values, ordinal_weight=0.3)(logits, targets)
    on_output = CornLoss(values, ordinal_weight=0.3, inputs="log_probs")(corn_log_probs(logits), targets)
    torch.testing.assert_close(on_output, on_logits, rtol=1e-5, atol=1e-5)
    assert on_logits > direct  # the ordinal term is there
    with pytest.raises(ValueError, match="inputs must be"):
        CornLoss(values, inputs="logits")


def test_folded_offsets_are_the_answer_rule_of_a_corn_head():
    head = CornHead(4, 3)
    x = torch.randn(10, 4)
    before = head(x)
    offsets = torch.tensor([0.0, 5.0, -1.0])
    fold_offsets(head, offsets)
    assert torch.allclose(head(x), before + offsets)
    assert head.state_dict()["offsets"].tolist() == offsets.tolist()  # saved with the weights


def _corn_artifact(model_dir: Path) -> Path:
    torch.manual_seed(0)
    model = build_model(ARCH, len(LABELS), head="corn")
    with torch.no_grad():
        model._fc.offsets.copy_(torch.linspace(-0.3, 0.3, len(LABELS)))
    return save_artifact(model_dir, model, metadata_for(ARCH, LABELS, input_size=64, head="corn"))


def test_a_corn_model_saves_loads_and_says_its_head(tmp_path):
    out = _corn_artifact(tmp_path / "corn")
    assert json.loads((out / "model.json").read_text())["head"] == "corn"
    loaded = load_artifact(out)
    assert isinstance(loaded.model._fc, CornHead) and loaded.metadata.head == "corn"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out_logits = loaded.model(x)
    assert out_logits.shape == (2, len(LABELS))
    assert torch.allclose((out_logits - loaded.model._fc.offsets).exp().sum(1), torch.ones(2), atol=1e-5)

    # A model.json that names the wrong head is refused with the mismatch, not loaded half-right.
    meta = json.loads((out / "model.json").read_text())
    (out / "model.json").write_text(json.dumps({**meta, "head": "softmax"}))
    with pytest.raises(ArtifactError, match="does not match the architecture") as caught:
        load_artifact(out)
    assert "_fc.linear.weight" in str(caught.value) or "_fc.weight" in str(caught.value)
    (out / "model.json").write_text(json.dumps({**meta, "head": "coral"}))
    with pytest.raises(ArtifactError, match="head"):
        load_artifact(out)


def test_unknown_heads_are_refused():
    with pytest.raises(ArchitectureError, match="unknown head 'coral'"):
        build_model(ARCH, 7, head="coral")


def test_onnx_runtime_serves_a_corn_model_as_torch_does(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    out = _corn_artifact(tmp_path / "corn")
    kwargs = {"max_batch_size": 4, "cache_dir": tmp_path / "cache", "threads": 1}
    eager = Predictor.from_artifact(out, runtime="torch", **kwargs)
    ort = Predictor.from_artifact(out, runtime="onnxruntime", **kwargs)
    assert ort.runtime.name == "onnxruntime"
    images = [jpeg(seed, size=(80 + 10 * seed, 60 + 5 * seed)) for seed in range(5)]
    for a, b in zip(eager.predict_bytes(images), ort.predict_bytes(images)):
        assert a.label == b.label
        assert max(abs(a.probabilities[k] - b.probabilities[k]) for k in LABELS) < 1e-4
        assert math.isclose(sum(a.probabilities.values()), 1.0, abs_tol=1e-4)


@pytest.mark.slow
def test_the_recipe_trains_and_serves_a_corn_head(tmp_path, capsys):
    from training.recipes import default_model
    from training.synthetic import make_synthetic_abid

    data = tmp_path / "abid"
    make_synthetic_abid(data, n_bins=60, max_count=5, size=96, seed=4, overflow_extra=8)
    argv = ["--data-dir", str(data), "--output-dir", str(tmp_path / "model"), "--cache-dir", str(tmp_path / "cache")]
    argv += ["--input-size", "64", "--epochs", "2", "--batch-size", "16", "--threads", "1", "--augment", "orig"]
    assert default_model.main(argv + ["--head", "corn"]) == 0
    printed = capsys.readouterr().out
    assert "val_acc_served: " in printed and "train_loss: " in printed
    loaded = load_artifact(tmp_path / "model")
    assert loaded.metadata.head == "corn" and loaded.metadata.training["head"] == "corn"
    assert isinstance(loaded.model._fc, CornHead)
    offsets = loaded.metadata.training["answer_rule_offsets"]
    assert loaded.model._fc.offsets.tolist() == pytest.approx(offsets, abs=1e-3)
    card = (tmp_path / "model" / "README.md").read_text()
    assert "--head corn" in card and "folded into the CORN head's offsets" in card
    assert "Head: ordinal CORN (6 conditional questions" in card
    # The softmax run of the same options is a different run: nothing of the corn run is resumed.
    assert default_model.run_key(default_model.parse_args(argv + ["--head", "corn"]), "select") != (
        default_model.run_key(default_model.parse_args(argv), "select")
    )


def test_a_corn_model_quantizes_to_int8_and_serves_it(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from training.quantize import QuantizeConfig, run
    from training.synthetic import make_synthetic_abid

    records = make_synthetic_abid(tmp_path / "data", n_bins=24, size=96, seed=5)
    out = _corn_artifact(tmp_path / "corn")
    ids = [r.id for r in records]
    (out / "split.json").write_text(json.dumps({"seed": 0, "parts": {"train": ids[:12], "val": [], "test": ids[12:]}}))
    cfg = QuantizeConfig(model_dir=out, data_dir=tmp_path / "data", calibration_images=8, batch_size=4, threads=1)
    record = run(cfg, log=lambda *_: None)
    assert record["evaluation"]["n"] == 12
    int8 = Predictor.from_artifact(
        out, max_batch_size=4, cache_dir=tmp_path / "cache", threads=1, runtime="auto", precision="int8"
    )
    assert int8.runtime.precision == "int8"
    answer = int8.predict_bytes([jpeg(1)])[0]
    assert answer.label in LABELS and math.isclose(sum(answer.probabilities.values()), 1.0, abs_tol=1e-4)
