"""Output stride 16 (``model.json``'s ``output_stride``): the last stride-2 block of an EfficientNet-Lite
convolves at stride 1, so the tuned top sees maps twice as fine; training, the artifact and both runtimes
build the same network from the same weights."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from service.architectures import LAST_STRIDED_BLOCK, ArchitectureError, build_model, set_output_stride_16
from service.artifact import ArtifactError, load_artifact, metadata_for, save_artifact
from service.onnx_graph import EXPORT_TAG, graph_key
from service.predictor import Prediction, Predictor
from training.recipes import default_model
from training.recipes.lite_parts import top_pooled, trunk_forward

from serving_support import ARCH, LABELS, jpeg
from training_support import tiny_recipe_argv


def _head_input_side(model: torch.nn.Module, size: int) -> int:
    """Side of the feature map the 1x1 head convolution reads, for a ``size`` px input."""
    seen: list[int] = []
    handle = model._conv_head.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0].shape[-1]))
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size))
    handle.remove()
    return seen[0]


@pytest.mark.parametrize("architecture", ["efficientnet_lite0", "efficientnet_lite1"])
def test_stride_16_gives_maps_twice_as_fine_at_the_same_weights(architecture):
    torch.manual_seed(0)
    plain = build_model(architecture, len(LABELS))
    fine = build_model(architecture, len(LABELS), output_stride=16)
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in fine.state_dict().items()}
    fine.load_state_dict(plain.state_dict())  # the same weights serve either way
    assert _head_input_side(plain, 224) == 7 and _head_input_side(fine, 224) == 14
    x = torch.randn(2, 3, 224, 224)
    block = LAST_STRIDED_BLOCK[architecture]
    with torch.no_grad():
        plain.eval(), fine.eval()
        trunk = trunk_forward(plain, x, block)
        assert torch.equal(trunk, trunk_forward(fine, x, block))  # the trunk is untouched
        pooled_plain, pooled_fine = top_pooled(plain, trunk, block), top_pooled(fine, trunk, block)
        assert not torch.allclose(pooled_plain, pooled_fine, rtol=1e-2, atol=0)  # random weights: tiny values


def test_other_strides_and_architectures_are_refused():
    with pytest.raises(ArchitectureError, match="one of \\[16, 32\\]"):
        build_model(ARCH, len(LABELS), output_stride=8)
    with pytest.raises(ArchitectureError, match="efficientnet_lite0"):
        build_model("resnet18", len(LABELS), output_stride=16)
    twice = build_model(ARCH, len(LABELS), output_stride=16)
    with pytest.raises(ArchitectureError, match="not at stride 2"):
        set_output_stride_16(twice, ARCH)  # a second halving would silently give stride 8


def _stride_16_artifact(model_dir: Path, size: int = 64) -> Path:
    torch.manual_seed(3)
    model = build_model(ARCH, len(LABELS), output_stride=16)
    return save_artifact(model_dir, model, metadata_for(ARCH, LABELS, input_size=size, output_stride=16))


def test_a_stride_16_artifact_loads_and_serves_the_same_on_both_runtimes(tmp_path):
    model_dir = _stride_16_artifact(tmp_path / "m")
    artifact = load_artifact(model_dir)
    assert artifact.metadata.output_stride == 16 and _head_input_side(artifact.model, 64) == 4  # 64 / 16
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    kwargs = {"max_batch_size": 4, "cache_dir": tmp_path / "cache", "threads": 1}
    on_torch = Predictor.from_artifact(model_dir, runtime="torch", **kwargs)
    on_ort = Predictor.from_artifact(model_dir, runtime="onnxruntime", **kwargs)
    assert on_ort.runtime.name == "onnxruntime"
    images = [jpeg(seed, size=(80 + 10 * seed, 64)) for seed in range(5)]
    for a, b in zip(on_torch.predict_bytes(images), on_ort.predict_bytes(images)):
        assert isinstance(a, Prediction) and isinstance(b, Prediction) and a.label == b.label
        assert max(abs(a.probabilities[k] - b.probabilities[k]) for k in LABELS) <= 1e-4


def test_model_json_without_the_field_is_stride_32_and_a_bad_one_is_refused(tmp_path):
    model_dir = _stride_16_artifact(tmp_path / "m")
    meta_path = model_dir / "model.json"
    meta = json.loads(meta_path.read_text())
    del meta["output_stride"]  # what every artifact from before the field says
    meta_path.write_text(json.dumps(meta))
    assert load_artifact(model_dir).metadata.output_stride == 32
    meta_path.write_text(json.dumps({**meta, "output_stride": 8}))
    with pytest.raises(ArtifactError, match="output_stride"):
        load_artifact(model_dir)


def test_the_same_weights_at_another_stride_are_another_onnx_graph():
    plain = metadata_for(ARCH, LABELS, input_size=64)
    fine = metadata_for(ARCH, LABELS, input_size=64, output_stride=16)
    assert graph_key("ab" * 32, plain) != graph_key("ab" * 32, fine)  # no stale graph from the cache
    before = {"weights_sha256": "ab" * 32, "architecture": ARCH, "num_classes": len(LABELS), "input_size": 64}
    before |= {"torch": torch.__version__, "export": EXPORT_TAG}
    digest = hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()
    assert graph_key("ab" * 32, plain) == digest  # stride-32 graphs cached before the field are still hits


def test_recipe_options_for_the_output_stride_are_checked_and_name_a_run_of_their_own():
    plain = default_model.RecipeConfig(data_dir=".", input_size=224)
    fine = default_model.RecipeConfig(data_dir=".", input_size=224, output_stride=16)
    assert default_model.run_key(fine, "select") != default_model.run_key(plain, "select")
    assert default_model.run_key(plain, "select") == default_model.run_key(
        plain.model_copy(update={"output_stride": 32}), "select"
    )
    assert default_model.recipe_build(fine)["output_stride"] == 16
    with pytest.raises(ValueError, match="first_tuned_block <= 11"):
        default_model.RecipeConfig(data_dir=".", output_stride=16, cache_block=12, first_tuned_block=12)
    with pytest.raises(ValueError, match="one of \\[16, 32\\]"):
        default_model.RecipeConfig(data_dir=".", output_stride=8)
    lite1 = default_model.RecipeConfig(
        data_dir=".", architecture="efficientnet_lite1", output_stride=16, cache_block=15, first_tuned_block=15
    )
    assert lite1.output_stride == 16


def test_recipe_trains_and_ships_a_stride_16_model_end_to_end(tmp_path, capsys):
    argv, out, _cache = tiny_recipe_argv(tmp_path, "--output-stride", "16", seed=5)
    assert default_model.main(argv) == 0
    assert "test_served" in capsys.readouterr().out
    artifact = load_artifact(out)
    assert artifact.metadata.output_stride == 16 and artifact.metadata.training["output_stride"] == 16
    assert _head_input_side(artifact.model, 64) == 4
