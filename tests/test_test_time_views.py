"""Test-time views (service.test_time): model.json's views, the predictor's averaged answer, the setting."""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_args

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from service.artifact import metadata_for
from service.model_metadata import TestTimeView
from service.predictor import Predictor
from service.settings import ServeSettings, SettingsError
from service.test_time import VIEW_TRANSFORMS, VIEWS, view_probabilities
from training.recipes.default_model import RecipeConfig, run_key

from serving_support import ARCH, LABELS, jpeg, make_artifact


class LeftRightLogits(nn.Module):
    """Answers from the image's left half vs its right half: a mirror image swaps its two logits."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[3] // 2
        left, right = x[..., :half].mean(dim=(1, 2, 3)), x[..., half:].mean(dim=(1, 2, 3))
        rest = torch.zeros(len(x), len(LABELS) - 2)
        return torch.cat([torch.stack([10 * left, 10 * right], dim=1), rest], dim=1)


def test_view_names_match_model_json_schema() -> None:
    assert VIEWS == get_args(TestTimeView)


def test_views_are_the_dihedral_group_of_the_square() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4)
    images = [VIEW_TRANSFORMS[v](x) for v in VIEWS]
    assert len({tuple(i.flatten().tolist()) for i in images}) == 8
    assert all(sorted(i.flatten().tolist()) == sorted(x.flatten().tolist()) for i in images)


def test_view_probabilities_average_the_views_in_one_call() -> None:
    calls: list[int] = []

    class Counting(LeftRightLogits):
        def forward(self, x):
            calls.append(len(x))
            return super().forward(x)

    model = Counting()
    x = torch.rand(3, 3, 8, 8)
    averaged = view_probabilities(model, x, ["orig", "hflip"])
    expected = (model(x).softmax(1) + model(x.flip(3)).softmax(1)) / 2
    assert calls[0] == 6  # both views of the 3 images in one forward pass
    torch.testing.assert_close(averaged, expected)
    torch.testing.assert_close(view_probabilities(model, x, ["orig"]), model(x).softmax(1))


def test_model_json_views_default_and_validation() -> None:
    assert metadata_for(ARCH, LABELS).test_time_views == ["orig"]
    for bad in ([], ["orig", "orig"], ["orig", "spin"]):
        with pytest.raises(ValidationError, match="test_time_views"):
            metadata_for(ARCH, LABELS, test_time_views=bad)


def test_predictor_answers_from_the_models_views() -> None:
    photo = torch.zeros(3, 32, 32)
    photo[:, :, :16] = 1.0  # bright left half
    pixels = (photo * 255).byte().permute(1, 2, 0).contiguous().numpy().tobytes()
    from service.predictor import PreparedImage

    image = [PreparedImage(pixels, 32)]
    one_view = Predictor(LeftRightLogits(), metadata_for(ARCH, LABELS, input_size=32))
    both = Predictor(LeftRightLogits(), metadata_for(ARCH, LABELS, input_size=32, test_time_views=["orig", "hflip"]))
    [single] = one_view.forward(image)
    [averaged] = both.forward(image)
    assert single.probabilities["0"] > 0.9 and single.label == "0"
    # the mirror image puts the bright half on the right: averaged, the two counts are equally likely
    assert averaged.probabilities["0"] == pytest.approx(averaged.probabilities["1"], abs=1e-6)


def test_from_artifact_reads_and_overrides_the_views(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    model_dir = make_artifact(tmp_path / "model")
    meta = json.loads((model_dir / "model.json").read_text())
    meta["test_time_views"] = ["orig", "vflip"]
    (model_dir / "model.json").write_text(json.dumps(meta))
    served = Predictor.from_artifact(model_dir)
    assert served.metadata.test_time_views == ["orig", "vflip"]
    single = Predictor.from_artifact(model_dir, test_time_views=["orig"])
    assert single.metadata.test_time_views == ["orig"]
    sizes: list[int] = []
    for predictor in (served, single):
        predictor.model.register_forward_hook(lambda module, args, out: sizes.append(len(args[0])))
        predictor.predict_bytes([jpeg(seed=3), jpeg(seed=4)])
    assert sizes == [4, 2]  # two photos, each in two views, in one pass; then one view each
    with pytest.raises(ValidationError, match="test_time_views"):
        Predictor.from_artifact(model_dir, test_time_views=["orig", "orig"], warm_up=False)


def test_serve_setting_reads_comma_separated_views() -> None:
    env = {"BINSIGHT_TEST_TIME_VIEWS": " orig, HFLIP "}
    assert ServeSettings.from_env(env).test_time_views == ["orig", "hflip"]
    assert ServeSettings.from_env({}).test_time_views is None
    with pytest.raises(SettingsError, match="BINSIGHT_TEST_TIME_VIEWS"):
        ServeSettings.from_env({"BINSIGHT_TEST_TIME_VIEWS": "orig,spin"})
    with pytest.raises(SettingsError, match="distinct views"):
        ServeSettings.from_env({"BINSIGHT_TEST_TIME_VIEWS": "orig,orig"})


def test_recipe_views_are_checked_and_leave_the_trained_weights_alone(tmp_path: Path) -> None:
    base = RecipeConfig(data_dir=tmp_path)
    views = RecipeConfig(data_dir=tmp_path, test_time_views="orig,hflip")
    assert views.test_time_views == ("orig", "hflip")
    assert run_key(views, "select") == run_key(base, "select")  # same checkpoints: only the answer changes
    with pytest.raises(ValidationError, match="distinct views"):
        RecipeConfig(data_dir=tmp_path, test_time_views="orig,orig")
