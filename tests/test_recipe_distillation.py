"""One top distilled from an ensemble of training seeds (training.recipes.distill, the recipe's teacher_seeds)."""

import math

import pytest
import torch

from training.recipes import default_model, sweep
from training.recipes.distill import soft_targets
from training.recipes.top_training import _gather, distillation_loss
from training.synthetic import make_synthetic_abid


def test_distillation_loss_is_the_kl_divergence_plus_the_teachers_entropy():
    torch.manual_seed(0)
    logits = torch.randn(5, 7)
    teacher = torch.randn(5, 7).softmax(1)
    kl = torch.nn.functional.kl_div(logits.log_softmax(1), teacher, reduction="batchmean")
    entropy = -(teacher * teacher.log()).sum(1).mean()
    assert math.isclose(distillation_loss(logits, teacher).item(), (kl + entropy).item(), rel_tol=1e-5)
    one_hot = torch.nn.functional.one_hot(torch.tensor([1, 2, 3, 4, 5]), 7).float()
    assert math.isclose(
        distillation_loss(logits, one_hot).item(),
        torch.nn.functional.cross_entropy(logits, torch.tensor([1, 2, 3, 4, 5])).item(),
        rel_tol=1e-6,
    )


def test_each_bin_gets_the_teachers_probabilities_of_the_view_it_was_drawn_in():
    soft = {"orig": torch.eye(4)[:, :3], "hflip": torch.eye(4).flip(0)[:, :3]}
    rows = _gather(soft, [0, 3, 0], ("orig", "hflip"), [0, 1, 1])
    assert torch.equal(rows, torch.stack([soft["orig"][0], soft["hflip"][3], soft["hflip"][0]]))


class _Constant(torch.nn.Module):
    """A stand-in top whose softmax is the same row for every bin."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, x):
        return self.logits.expand(len(x), -1).softmax(1)


def test_soft_targets_average_the_teachers_cover_only_their_bins_and_are_cached(tmp_path):
    features = {"orig": torch.zeros(5, 2), "vflip": torch.zeros(5, 2)}
    built = []

    def teacher(logits):
        return lambda: built.append(logits) or _Constant(logits)

    teachers = [teacher([0.0, 0.0]), teacher([math.log(3), 0.0])]
    cache = tmp_path / "teachers.pt"
    out = soft_targets(teachers, features, [1, 3], ["orig", "vflip"], 2, cache, runtime="torch")
    expected = (torch.tensor([0.5, 0.5]) + torch.tensor([0.75, 0.25])) / 2
    assert torch.allclose(out["vflip"][1], expected) and torch.allclose(out["orig"][3], expected)
    assert torch.isnan(out["orig"][[0, 2, 4]]).all()
    assert len(built) == 2
    again = soft_targets(teachers, features, [1, 3], ["orig"], 2, cache, runtime="torch")
    assert len(built) == 2 and torch.equal(again["orig"][3], out["orig"][3])  # read back, no teacher built
    with pytest.raises(ValueError, match="at least one teacher"):
        soft_targets([], features, [1], ["orig"], 2)


def test_teachers_on_onnx_runtime_answer_as_torch_does():
    pytest.importorskip("onnxruntime")
    from service.architectures import build_model
    from training.recipes.lite_parts import TopProbabilities, top_forward, trunk_forward

    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", 7).eval()
    with torch.no_grad():
        features = {"orig": trunk_forward(model, torch.randn(5, 3, 64, 64), 11)}
        expected = top_forward(model, features["orig"], 11).softmax(1)
    lines = []
    out = soft_targets(
        [lambda: TopProbabilities(model, 11)],
        features,
        [0, 2, 4],
        ["orig"],
        7,
        None,
        lambda **kw: lines.append(kw),
        chunk=2,
    )
    assert torch.allclose(out["orig"][[0, 2, 4]], expected[[0, 2, 4]], atol=1e-5)
    assert lines[0]["teacher_runtime"] == "onnxruntime" and lines[-1]["runtime"] == "onnxruntime"


def test_training_seed_defaults_to_the_split_seed_and_old_runs_keep_their_names(tmp_path):
    cfg = default_model.RecipeConfig(data_dir=tmp_path, input_size=288, aux_weight=0.5)
    key = default_model.run_key(cfg, "select")
    assert key == "select_5950fa085e1faee4"  # the shipped v3 selection run, from before train_seed existed
    assert default_model.run_key(cfg.model_copy(update={"train_seed": 0}), "select") == key
    assert default_model.run_key(cfg.model_copy(update={"train_seed": 1}), "select") != key
    assert cfg.model_copy(update={"train_seed": 1}).top_training().seed == 1 and cfg.top_training().seed == 0
    # distill_weight only matters with teachers
    assert default_model.run_key(cfg.model_copy(update={"distill_weight": 0.9}), "select") == key
    student = cfg.model_copy(update={"teacher_seeds": (0, 1)})
    assert default_model.run_key(student, "select") != key and student.top_training().distill_weight == 0.5
    assert student.teacher(1).teacher_seeds == () and student.teacher(1).train_seed == 1
    assert default_model.run_key(
        student.model_copy(update={"distill_views": "all"}), "select"
    ) != default_model.run_key(student, "select")
    with pytest.raises(ValueError, match="distinct"):
        default_model.RecipeConfig(data_dir=tmp_path, teacher_seeds="1,1")


@pytest.mark.slow
def test_a_distilled_recipe_trains_its_teachers_and_records_their_ensemble(tmp_path, capsys):
    data, cache, out = tmp_path / "abid", tmp_path / "cache", tmp_path / "model"
    make_synthetic_abid(data, n_bins=48, max_count=5, size=80, seed=4, overflow_extra=6)
    argv = ["--data-dir", str(data), "--cache-dir", str(cache), "--output-dir", str(out), "--input-size", "64"]
    argv += ["--epochs", "1", "--batch-size", "16", "--threads", "1", "--augment", "orig,hflip"]
    assert (
        default_model.main(
            [*argv, "--teacher-seeds", "0,1", "--distill-weight", "0.7", "--distill-views", "all", "--final-fit"]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "teachers: 0,1 ensemble_views: orig ensemble_val_acc_argmax: " in printed
    assert "teachers: 0,1 ensemble_views: orig+hflip ensemble_val_acc_argmax: " in printed
    runs = sorted(p.name.split("_")[0] for p in (cache / "runs").iterdir())
    # 2 teachers (train-only) + the student, the student's final fit, one set of soft targets for both
    assert runs == ["final"] + ["select"] * 3 + ["teachers"], runs
    meta = default_model.load_artifact(out).metadata
    assert meta.training["teacher_seeds"] == [0, 1] and meta.training["distill_weight"] == 0.7
    ensemble = meta.metrics["validation"]["teachers_ensemble"]
    assert ensemble["training_views"]["views"] == ["orig", "hflip"] and "accuracy" in ensemble["served_views"]["argmax"]
    assert meta.training["distill_views"] == "all"
    card = (out / "README.md").read_text()
    assert "Distilled (weight 0.7, views all) from the tops of training seeds 0, 1, whose ensemble scores " in card
    assert " over orig+hflip on validation" in card
    # the sweep takes teachers joined with '+' and reuses every run above
    assert (
        sweep.main(
            [
                "--data-dir",
                str(data),
                "--cache-dir",
                str(cache),
                "--base",
                "input_size=64,epochs=1,batch_size=16,threads=1,augment=orig+hflip",
                "--variant",
                "teacher_seeds=0+1,distill_weight=0.7,distill_views=all",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "\nepoch: " not in printed and "val_acc_served" in printed


def test_distilling_all_views_gives_every_view_of_a_photo_the_same_target(tmp_path):
    cfg = default_model.RecipeConfig(data_dir=tmp_path, augment="orig,hflip", teacher_seeds="0,1")
    soft = {
        "orig": torch.tensor([[1.0, 0.0]]),
        "hflip": torch.tensor([[0.5, 0.5]]),
        "vflip": torch.tensor([[0.0, 1.0]]),
    }
    assert default_model.spread_views(cfg, soft) is soft
    spread = default_model.spread_views(cfg.model_copy(update={"distill_views": "all"}), soft)
    assert torch.equal(spread["orig"], torch.tensor([[0.75, 0.25]])) and torch.equal(spread["hflip"], spread["orig"])
    assert torch.equal(spread["vflip"], soft["vflip"])  # not a training view: left as it was


def test_a_learning_curve_from_before_distillation_is_named_a_different_recipe():
    from training.model_card import recipe_differences

    curve = {"input_size": 288, "aux_weight": 0.5}  # recorded before teacher_seeds existed
    plain = {"input_size": 288, "aux_weight": 0.5, "teacher_seeds": [], "distill_weight": 0.5, "train_seed": None}
    assert recipe_differences(curve, plain) == []
    distilled = {**plain, "teacher_seeds": [0, 1], "distill_weight": 0.7}
    assert recipe_differences(curve, distilled) == [
        "distill_weight 0.5 (this model: 0.7)",
        "teacher_seeds [] (this model: [0, 1])",
    ]
