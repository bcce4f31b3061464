"""The default-model recipe end to end on a small synthetic ABID (real pretrained Lite0 weights)."""

import json

import pytest
import torch

from service.artifact import load_artifact
from training import default_model
from training.synthetic import make_synthetic_abid


@pytest.mark.slow
def test_recipe_writes_a_loadable_artifact_with_card_inputs(tmp_path):
    data = tmp_path / "abid"
    make_synthetic_abid(data, n_bins=70, max_count=5, size=96, seed=3, overflow_extra=10)
    out = tmp_path / "model"
    argv = ["--data-dir", str(data), "--output-dir", str(out), "--cache-dir", str(tmp_path / "cache"),
            "--input-size", "64", "--epochs", "2", "--batch-size", "16", "--threads", "1"]
    assert default_model.main(argv) == 0

    loaded = load_artifact(out)
    meta = loaded.metadata
    assert meta.architecture == "efficientnet_lite0"
    assert meta.labels == ["0", "1", "2", "3", "4", "5", "6+"]
    assert meta.input_size == 64
    assert 0.0 <= meta.metrics["test"]["accuracy"] <= 1.0
    assert "confusion_matrix" in meta.metrics["test_counts_0_5"]
    assert meta.data["bins"] == 70  # overflow_extra widens the counts (up to 15, "6+"), not the bin number
    assert meta.training["first_tuned_block"] == 13
    history = json.loads((out / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    assert (out / "confusion_matrix.png").stat().st_size > 1000
    assert (out / "split.json").is_file()
    card = (out / "README.md").read_text()
    assert f"{100 * meta.metrics['test']['accuracy']:.1f}%" in card
    assert "CC BY-NC-SA 3.0" in card and "confusion_matrix.png" in card
    assert (f"python -m training.default_model --data-dir {data} --output-dir {out} --input-size 64 --epochs 2 "
            "--batch-size 16") in card

    # The frozen part is untouched ImageNet Lite0; the tuned part moved.
    reference = default_model.build_model("efficientnet_lite0", 7, pretrained=True).state_dict()
    state = loaded.model.state_dict()
    assert torch.equal(state["_blocks.3._project_conv.weight"], reference["_blocks.3._project_conv.weight"])
    assert not torch.equal(state["_blocks.14._project_conv.weight"], reference["_blocks.14._project_conv.weight"])

    # A second run reuses the caches (same key) and gives the same model: the recipe is reproducible.
    out2 = tmp_path / "model2"
    assert default_model.main(argv[:2] + ["--output-dir", str(out2)] + argv[4:]) == 0
    again = load_artifact(out2).model.state_dict()
    assert all(torch.allclose(state[k].float(), again[k].float(), atol=1e-5) for k in state)


def test_bad_option_is_a_clear_error(capsys, tmp_path):
    assert default_model.main(["--data-dir", str(tmp_path), "--epochs", "zero"]) == 2
    assert "epochs" in capsys.readouterr().err
