"""Auxiliary item-metadata targets (training.item_targets) and their train-time head in the recipe's top training."""

import json
import math
import random

import pytest
import torch

from service.architectures import build_model
from training.item_targets import NAMES, masked_mse, read_item_targets, targets_of
from training.recipes.lite_parts import trunk_forward, tuned_prefixes
from training.recipes.top_training import TopTraining, train_top


def _item(quantity, length=2.0, width=3.0, height=4.0, weight=0.5, unit="IN"):
    return {
        "quantity": quantity,
        "length": {"unit": unit, "value": length},
        "width": {"unit": unit, "value": width},
        "height": {"unit": unit, "value": height},
        "weight": {"unit": "pounds", "value": weight},
    }


def test_targets_sum_the_items_and_convert_units():
    meta = {"EXPECTED_QUANTITY": 5, "BIN_FCSKU_DATA": {"A": _item(2), "B": _item(3, 2.54, 2.54, 2.54, 1.0, "CM")}}
    distinct, log_volume, log_weight = targets_of(meta)
    assert distinct == 2
    assert log_volume == pytest.approx(math.log1p(2 * 24 + 3 * 1.0))
    assert log_weight == pytest.approx(math.log1p(2 * 0.5 + 3 * 1.0))
    assert targets_of({"EXPECTED_QUANTITY": 0, "BIN_FCSKU_DATA": {}}) == (0.0, 0.0, 0.0)


def test_unlisted_items_and_missing_measures_are_unknown_not_zero():
    # The sample's reconstructed metadata: a count, no items.
    assert targets_of({"EXPECTED_QUANTITY": 3, "BIN_FCSKU_DATA": {}}) is None
    no_weight = _item(1)
    del no_weight["weight"]
    distinct, log_volume, log_weight = targets_of({"EXPECTED_QUANTITY": 1, "BIN_FCSKU_DATA": {"A": no_weight}})
    assert distinct == 1 and log_volume == pytest.approx(math.log1p(24)) and math.isnan(log_weight)
    assert targets_of({"EXPECTED_QUANTITY": 1, "BIN_FCSKU_DATA": {"A": {**_item(1), "quantity": "one"}}}) is None


def test_read_item_targets_standardises_known_values_and_marks_the_rest(tmp_path):
    folder = tmp_path / "metadata"
    folder.mkdir()
    for i, quantity in enumerate([1, 2, 4, 8]):
        meta = {"EXPECTED_QUANTITY": quantity, "BIN_FCSKU_DATA": {f"P{j}": _item(1) for j in range(quantity)}}
        (folder / f"{i}.json").write_text(json.dumps(meta))
    (folder / "bad.json").write_text("{not json")
    (folder / "empty.json").write_text(json.dumps({"EXPECTED_QUANTITY": 2, "BIN_FCSKU_DATA": {}}))
    targets = read_item_targets(tmp_path, ["0", "1", "2", "3", "bad", "empty", "missing"])
    assert targets.shape == (7, len(NAMES))
    assert not targets[:4].isnan().any() and targets[4:].isnan().all()
    assert torch.allclose(targets[:4].mean(0), torch.zeros(3), atol=1e-6)
    assert torch.allclose(targets[:4].std(0), torch.ones(3), atol=1e-5)
    assert (targets[:4, 0].diff() > 0).all()  # more products, a larger standardised target


def test_masked_mse_skips_unknown_targets():
    predicted = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    targets = torch.tensor([[0.0, float("nan")], [float("nan"), float("nan")]])
    assert masked_mse(predicted, targets).item() == pytest.approx(1.0)
    assert masked_mse(predicted, torch.full((2, 2), float("nan"))).item() == 0.0


def _top_run(aux_weight, targets, checkpoint, epochs=2, log=lambda **kw: None):
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", 3, pretrained=False)
    x = torch.randn(24, 3, 64, 64)
    with torch.no_grad():
        features = {"orig": trunk_forward(model.eval(), x, 13).half()}
    labels = torch.tensor([i % 3 for i in range(24)])
    cfg = TopTraining(13, epochs, 8, 1e-3, 1e-2, 0.0, 0.0, 0.1, 0.0, 0.0, 0.0, ("orig",), 0, aux_weight=aux_weight)
    train, val = list(range(16)), list(range(16, 24))
    history = train_top(model, features, labels, train, val, [0, 1, 2], cfg, log, checkpoint, aux_targets=targets)
    return model, history


def test_the_aux_head_changes_training_but_not_the_saved_network(tmp_path):
    targets = torch.randn(24, 3)
    plain, plain_history = _top_run(0.0, targets, tmp_path / "plain.pt")
    aux, aux_history = _top_run(1.0, targets, tmp_path / "aux.pt")
    # The same network (no extra parameters), trained differently.
    assert plain.state_dict().keys() == aux.state_dict().keys()
    tuned = [k for k in aux.state_dict() if k.startswith(tuned_prefixes(aux, 13))]
    assert any(not torch.equal(plain.state_dict()[k], aux.state_dict()[k]) for k in tuned)
    assert plain_history[0]["train_loss"] != aux_history[0]["train_loss"]
    # No targets: the plain run again.
    none, _ = _top_run(1.0, None, tmp_path / "none.pt")
    assert all(torch.equal(plain.state_dict()[k], none.state_dict()[k]) for k in plain.state_dict())


def test_an_interrupted_aux_run_resumes_to_the_same_weights(tmp_path):
    targets = torch.tensor([[random.Random(i).gauss(0, 1) for _ in range(3)] for i in range(24)])
    whole, _ = _top_run(1.0, targets, tmp_path / "whole.pt")

    def stop_in_epoch_2(**fields):
        if fields.get("epoch") == 2:  # logged before epoch 2 is checkpointed: the file holds epoch 1
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _top_run(1.0, targets, tmp_path / "parts.pt", log=stop_in_epoch_2)
    lines = []
    again, history = _top_run(1.0, targets, tmp_path / "parts.pt", log=lambda **kw: lines.append(kw))
    assert lines[0]["resumed_from_epoch"] == 1 and [row["epoch"] for row in history] == [1, 2]
    assert all(torch.allclose(whole.state_dict()[k], again.state_dict()[k]) for k in whole.state_dict())


def test_recipe_bins_read_the_item_targets_once_and_only_when_asked(tmp_path):
    from training.recipes.default_model import RecipeConfig, select_bins
    from training.synthetic import make_synthetic_abid

    make_synthetic_abid(tmp_path, n_bins=30, max_count=5, size=32, seed=1)
    bins = select_bins(RecipeConfig(data_dir=tmp_path, limit=30))
    assert bins.item_targets(RecipeConfig(data_dir=tmp_path)) is None
    with_aux = RecipeConfig(data_dir=tmp_path, aux_weight=0.5)
    targets = bins.item_targets(with_aux)
    assert targets.shape == (len(bins.items), len(NAMES)) and not targets[:, 0].isnan().any()
    assert bins.item_targets(with_aux) is targets  # the selection run and the final fit share one read
