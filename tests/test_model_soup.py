"""The model soup: weight averaging of tops trained from different seeds (training/recipes/soup.py) and
the recipe's ``--soup-seeds``."""

from __future__ import annotations

import json

import pytest
import torch

from service.architectures import build_model
from service.artifact import load_artifact
from training.recipes import default_model
from training.recipes.lite_parts import top_forward, top_state
from training.recipes.soup import average_states, load_soup


def test_average_states_is_the_mean_of_the_weights_and_keeps_integer_buffers():
    a = {"w": torch.tensor([1.0, 3.0]), "n": torch.tensor(5), "h": torch.tensor([1.0], dtype=torch.float16)}
    b = {"w": torch.tensor([3.0, 7.0]), "n": torch.tensor(9), "h": torch.tensor([2.0], dtype=torch.float16)}
    soup = average_states([a, b])
    assert soup["w"].tolist() == [2.0, 5.0]
    assert soup["n"].item() == 5  # a counter is not averaged
    assert soup["h"].dtype == torch.float16 and soup["h"].item() == 1.5
    assert torch.equal(average_states([a])["w"], a["w"])  # a soup of one is the member


def test_average_states_refuses_states_of_different_models():
    with pytest.raises(ValueError, match="at least one"):
        average_states([])
    with pytest.raises(ValueError, match="missing \\['v'\\]"):
        average_states([{"w": torch.zeros(2), "v": torch.zeros(1)}, {"w": torch.zeros(2)}])
    with pytest.raises(ValueError, match="w: the states' shapes differ"):
        average_states([{"w": torch.zeros(2)}, {"w": torch.zeros(3)}])


def _moved_top(seed: int) -> torch.nn.Module:
    """Lite0 with its top (blocks 14-15, head) moved away from ImageNet by a seeded nudge."""
    model = build_model("efficientnet_lite0", 7, pretrained=True)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith(("_blocks.14.", "_blocks.15.", "_conv_head.", "_fc.")):
                param.add_(0.01 * torch.randn(param.shape, generator=generator))
    return model


def test_a_soup_holds_the_mean_of_the_tops_and_recomputes_batchnorm():
    torch.manual_seed(0)
    first, second = _moved_top(1), _moved_top(2)
    features = torch.randn(12, 192, 4, 4)  # block 14's input at a 128 px photo
    soup = load_soup(build_model("efficientnet_lite0", 7, pretrained=True), [first, second], features, range(12), 14)
    state, a, b = soup.state_dict(), first.state_dict(), second.state_dict()
    for name in ("_blocks.15._project_conv.weight", "_conv_head.weight", "_fc.weight", "_fc.bias"):
        assert torch.allclose(state[name], (a[name] + b[name]) / 2, atol=1e-7), name
    # The trunk is the fresh network's (ImageNet), the BatchNorm statistics are the soup's own:
    # recomputed over the features, so they are neither member's.
    assert torch.equal(state["_blocks.3._project_conv.weight"], a["_blocks.3._project_conv.weight"])
    mean = state["_bn1.running_mean"]
    assert not torch.allclose(mean, a["_bn1.running_mean"]) and not torch.allclose(mean, b["_bn1.running_mean"])
    # A soup of one top twice is that top, statistics included, once they come from the same recalibration.
    from training.recipes.lite_parts import tuned_prefixes
    from training.recipes.top_training import recalibrate_norms

    recalibrate_norms(first, features, range(12), 14, tuned_prefixes(first, 14))
    twice = load_soup(build_model("efficientnet_lite0", 7, pretrained=True), [first, first], features, range(12), 14)
    first.eval()
    assert torch.allclose(top_forward(twice, features, 14), top_forward(first, features, 14), atol=1e-5)
    assert top_forward(soup, features, 14).shape == (12, 7)
    assert set(top_state(soup, 14)) <= set(state)


def test_soup_options_are_checked():
    ok = default_model.RecipeConfig(data_dir=".", soup_seeds="0, 1,2")
    assert ok.soup_seeds == (0, 1, 2) and ok.member(2).train_seed == 2 and ok.member(2).soup_seeds == ()
    for bad, message in [
        ({"soup_seeds": "1"}, "two or more distinct"),
        ({"soup_seeds": "1,1"}, "two or more distinct"),
        ({"soup_seeds": "0,1", "train_seed": 3}, "leave train_seed unset"),
        ({"soup_seeds": "0,1", "teacher_seeds": "2,3"}, "choose one"),
    ]:
        with pytest.raises(ValueError, match=message):
            default_model.RecipeConfig(data_dir=".", **bad)
    # A member is the plain run of its seed: it resumes that run's checkpoints.
    plain = default_model.RecipeConfig(data_dir=".", train_seed=1)
    assert default_model.run_key(ok.member(1), "select") == default_model.run_key(plain, "select")
    default = default_model.RecipeConfig(data_dir=".")  # seed 0's member is the recipe's default run
    assert default_model.run_key(ok.member(0), "select") == default_model.run_key(default, "select")


@pytest.mark.slow
def test_the_recipe_serves_a_soup_of_its_seeds(tmp_path, capsys):
    from training.synthetic import make_synthetic_abid

    data = tmp_path / "abid"
    make_synthetic_abid(data, n_bins=60, max_count=5, size=96, seed=5, overflow_extra=8)
    cache = tmp_path / "cache"
    argv = ["--data-dir", str(data), "--cache-dir", str(cache), "--input-size", "64", "--epochs", "1"]
    argv += ["--batch-size", "16", "--threads", "1", "--augment", "orig", "--head", "corn"]
    assert default_model.main(argv + ["--output-dir", str(tmp_path / "one"), "--train-seed", "1"]) == 0
    capsys.readouterr()
    assert default_model.main(argv + ["--output-dir", str(tmp_path / "soup"), "--soup-seeds", "0,1"]) == 0
    printed = capsys.readouterr().out
    # Seed 1's run is read back, not retrained; seed 0 trains.
    assert "resumed_from_epoch: 1" in printed and printed.count("\nepoch: 1") == 1
    assert "soup_member: 0" in printed and "soup_member: 1" in printed
    loaded = load_artifact(tmp_path / "soup")
    one = load_artifact(tmp_path / "one").model.state_dict()
    soup = loaded.model.state_dict()
    name = "_blocks.13._project_conv.weight"
    assert not torch.allclose(soup[name], one[name])  # not the seed-1 member alone
    members = loaded.metadata.metrics["validation"]["soup_members"]
    assert set(members) == {"0", "1"} and all(0 <= m["served"] <= 1 for m in members.values())
    assert loaded.metadata.training["soup_seeds"] == [0, 1] and len(loaded.metadata.training["best_epoch"]) == 2
    history = json.loads((tmp_path / "soup" / "history.json").read_text())
    assert set(history["soup_members"]) == {"0", "1"}
    card = (tmp_path / "soup" / "README.md").read_text()
    assert "--soup-seeds 0,1" in card and "Weights: a model soup, the weight-by-weight mean of 2 tops" in card

    # The views benchmark reads the members' runs and scores their soup under each set of views.
    import runpy
    from pathlib import Path

    bench = runpy.run_path(str(Path(__file__).parents[1] / "benchmarks" / "test_time_views.py"))
    assert bench["main"](argv + ["--soup-seeds", "0,1"]) == 0
    assert "views: orig forward_passes: 1" in capsys.readouterr().out
    assert bench["main"](argv + ["--soup-seeds", "0,7"]) == 2  # seed 7 never ran
    assert "no selection run" in capsys.readouterr().err
