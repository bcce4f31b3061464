"""The default-model recipe (training.recipes): its parts, then end to end on a small synthetic ABID."""

import json
from pathlib import Path

import pytest
import torch

from service.architectures import build_model
from service.artifact import load_artifact, metadata_for
from training.model_card import recipe_differences, refresh_model_card, render_model_card
from training.recipes import default_model, learning_curve, sweep
from training.recipes.decision import accuracy_with_offsets, fold_offsets, tune_offsets
from training.recipes.feature_cache import VARIANT_TRANSFORMS, TrunkRunner
from training.recipes.lite_parts import top_forward, trunk_forward
from training.recipes.served_metrics import served_metrics
from training.recipes.verification import choose_thresholds, flag_rates
from training.synthetic import make_synthetic_abid

from training_support import tiny_recipe_argv

LABELS = ["0", "1", "2", "3", "4", "5", "6+"]
VALUES = [0, 1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("architecture,block", [("efficientnet_lite0", 11), ("efficientnet_lite2", 15)])
def test_trunk_then_top_is_the_whole_network(architecture, block):
    torch.manual_seed(0)
    model = build_model(architecture, 7).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(top_forward(model, trunk_forward(model, x, block), block), model(x), atol=1e-5)


def test_drop_connect_skips_residual_branches_while_training_only():
    from training.recipes.lite_parts import top_pooled

    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", 7)
    with torch.no_grad():
        x = trunk_forward(model.eval(), torch.randn(4, 3, 64, 64), 11)
        assert torch.equal(top_pooled(model, x, 11, drop_connect=0.5), top_pooled(model, x, 11))  # eval: off
        model.train()  # BatchNorm on batch statistics, deterministic: only drop connect can differ
        plain = top_pooled(model, x, 11)
        assert torch.equal(plain, top_pooled(model, x, 11))
        assert not torch.allclose(top_pooled(model, x, 11, drop_connect=0.5), plain)
    # Off by default, so the shipped runs' checkpoints keep their names; on, it is a different run.
    cfg = default_model.RecipeConfig(data_dir=".")
    assert cfg.top_training().drop_connect == 0.0
    assert default_model.run_key(cfg.model_copy(update={"drop_connect": 0.0}), "select") == default_model.run_key(
        cfg, "select"
    )
    on = cfg.model_copy(update={"drop_connect": 0.2})
    assert default_model.run_key(on, "select") != default_model.run_key(cfg, "select")
    assert on.top_training().drop_connect == 0.2


def test_full_size_repeats_draw_the_full_size_training_photos_more_often(tmp_path):
    from PIL import Image

    data = tmp_path / "abid"
    make_synthetic_abid(data, n_bins=40, size=96, seed=1)
    shrunk = {f"{i:05d}" for i in range(1, 41, 2)}  # every other bin becomes a copy no larger than the input
    for bin_id in shrunk:
        path = data / "bin-images" / f"{bin_id}.jpg"
        Image.open(path).resize((64, 64)).save(path)
    cfg = default_model.RecipeConfig(data_dir=data, input_size=64, full_size_repeats=3)
    bins = default_model.select_bins(cfg)
    assert bins.full_size_ids(64) == {item.id for item in bins.items} - shrunk
    part = bins.split.train
    drawn = bins.training_indices(part, cfg)
    times = {item.id: drawn.count(bins.indices([item])[0]) for item in part}
    assert {times[item.id] for item in part if item.id in shrunk} == {1}
    assert {times[item.id] for item in part if item.id not in shrunk} == {3}
    plain = cfg.model_copy(update={"full_size_repeats": 1})
    assert bins.training_indices(part, plain) == bins.indices(part)
    # Off by default, so the shipped runs' checkpoints keep their names; on, it is a different run.
    assert default_model.RecipeConfig(data_dir=".").full_size_repeats == 1
    assert default_model.run_key(plain, "select") == default_model.run_key(
        plain.model_copy(update={"full_size_repeats": 1}), "select"
    )
    assert default_model.run_key(cfg, "select") != default_model.run_key(plain, "select")
    with pytest.raises(ValueError):
        default_model.RecipeConfig(data_dir=".", full_size_repeats=0)


def test_jittered_copies_are_seeded_draws_of_the_train_transform_cached_once(tmp_path):
    from training.recipes.jitter_copies import cached_jitter_features, jittered_batches

    data = tmp_path / "abid"
    make_synthetic_abid(data, n_bins=12, size=96, seed=2)
    cfg = default_model.RecipeConfig(data_dir=data, input_size=64, cache_dir=tmp_path / "cache", jitter_copies=2)
    bins = default_model.select_bins(cfg)
    spec = default_model.recipe_metadata(cfg, bins).preprocess_spec()

    def copy(k: int, seed: int = 0) -> torch.Tensor:
        return torch.cat(list(jittered_batches(bins.items, spec, 1.0, seed, k, chunk=5)))

    first = copy(1)
    assert first.shape == (12, 3, 64, 64)
    assert torch.equal(first, copy(1))  # the same draw on every run
    assert not torch.equal(first, copy(2)) and not torch.equal(first, copy(1, seed=1))
    plain = torch.cat(list(jittered_batches(bins.items, spec, 1.0, 0, 1, chunk=12)))
    assert torch.equal(plain, first)  # batching does not change the draws

    model = build_model("efficientnet_lite0", 7).eval()
    built = []

    def runner():
        built.append(1)
        return TrunkRunner(model, 11, "torch", 1, lambda **kw: None)

    args = (tmp_path / "cache", bins.items, spec, runner, ("lite0", 64, 11), 1.0, 0, 1, lambda **kw: None)
    features = cached_jitter_features(*args)
    assert features.dtype == torch.float16 and len(features) == 12 and built == [1]
    assert torch.equal(cached_jitter_features(*args), features) and built == [1]  # read back, no trunk run

    # Training draws from the jittered copies beside the variants; off by default with the old run names.
    assert cfg.training_views == ("orig", "hflip", "vflip", "rot180", "jitter1", "jitter2")
    assert cfg.top_training().augment == cfg.training_views
    off = cfg.model_copy(update={"jitter_copies": 0})
    assert default_model.RecipeConfig(data_dir=".").jitter_copies == 0
    assert default_model.run_key(off, "select") == default_model.run_key(
        off.model_copy(update={"jitter_strength": 1.5}), "select"
    )
    assert default_model.run_key(cfg, "select") != default_model.run_key(off, "select")
    with pytest.raises(ValueError, match="teacher_seeds"):
        default_model.RecipeConfig(data_dir=".", jitter_copies=1, teacher_seeds=(0, 1))


def test_recipe_trains_on_jittered_copies_end_to_end(tmp_path, capsys):
    argv, out, cache = tiny_recipe_argv(tmp_path, "--jitter-copies", "1")
    assert default_model.main(argv) == 0
    assert "stage: features_jitter1 done: 40" in capsys.readouterr().out
    meta = load_artifact(out).metadata
    assert meta.training["jitter_copies"] == 1 and meta.test_time_views == ["orig"]
    assert len(list(cache.glob("features_jitter1_*.pt"))) == 1


def test_warm_restarts_reach_the_top_training_and_name_a_run_of_their_own():
    plain = default_model.RecipeConfig(data_dir=".")
    restarts = plain.model_copy(update={"lr_cycles": 2})
    assert plain.top_training().lr_cycles == 1 and restarts.top_training().lr_cycles == 2
    assert default_model.run_key(restarts, "select") != default_model.run_key(plain, "select")
    with pytest.raises(ValueError):
        default_model.RecipeConfig(data_dir=".", lr_cycles=0)


def test_onnx_runtime_trunk_matches_torch():
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", 7).eval()
    lines = []
    runner = TrunkRunner(model, 11, "auto", 1, lambda **kw: lines.append(kw))
    assert runner.runtime == "onnxruntime"
    x = torch.randn(3, 3, 64, 64)
    out = runner(x)
    with torch.no_grad():
        assert torch.allclose(out, trunk_forward(model, x, 11), atol=1e-3)
    assert lines and lines[0]["feature_runtime"] == "onnxruntime"
    assert TrunkRunner(model, 11, "torch", 1, print).runtime == "torch"


def test_block_lr_decay_slows_the_earlier_tuned_blocks_only():
    from dataclasses import replace

    from training.recipes.lite_parts import tuned_prefixes
    from training.recipes.top_training import _param_groups

    model = build_model("efficientnet_lite0", 7)
    cfg = default_model.RecipeConfig(data_dir=".", first_tuned_block=13, cache_block=13).top_training()
    prefixes = tuned_prefixes(model, 13)

    def lr_of(groups: list[dict]) -> dict[str, float]:
        ids = {id(p): g["lr"] for g in groups for p in g["params"]}
        return {name: ids[id(p)] for name, p in model.named_parameters() if id(p) in ids}

    plain = lr_of(_param_groups(model, prefixes, cfg))
    assert {plain[n] for n in plain if not n.startswith("_fc.")} == {cfg.lr}
    decayed = lr_of(_param_groups(model, prefixes, replace(cfg, block_lr_decay=0.5)))
    assert decayed.keys() == plain.keys()  # the same parameters are tuned, nothing else
    assert decayed["_blocks.15._project_conv.weight"] == pytest.approx(cfg.lr)
    assert decayed["_blocks.14._project_conv.weight"] == pytest.approx(cfg.lr * 0.5)
    assert decayed["_blocks.13._bn0.weight"] == pytest.approx(cfg.lr * 0.25)
    assert decayed["_conv_head.weight"] == pytest.approx(cfg.lr) and decayed["_fc.weight"] == cfg.head_lr
    assert not model._blocks[12]._project_conv.weight.requires_grad
    # The option is part of the run's name only when it is on: earlier runs resume.
    base = default_model.RecipeConfig(data_dir=".")
    assert default_model.run_key(base, "select") == default_model.run_key(
        base.model_copy(update={"block_lr_decay": 1.0}), "select"
    )
    assert default_model.run_key(base, "select") != default_model.run_key(
        base.model_copy(update={"block_lr_decay": 0.8}), "select"
    )


def test_every_variant_keeps_the_pixels_of_a_square_image():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    outputs = [t(x) for t in VARIANT_TRANSFORMS.values()]
    assert all(
        o.shape == x.shape and torch.equal(o.flatten(2).sort(-1).values, x.flatten(2).sort(-1).values) for o in outputs
    )
    assert len({tuple(o[0, 0].flatten().tolist()) for o in outputs}) == 8  # the eight dihedral transforms


def test_answer_rule_offsets_fix_a_biased_classifier_and_fold_into_the_bias():
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (300,))
    logits = torch.nn.functional.one_hot(labels, 3).float() * 2 + torch.randn(300, 3)
    logits[:, 2] -= 2.5  # class 2 is under-answered
    log_probs = logits.log_softmax(1)
    before = accuracy_with_offsets(log_probs, labels, torch.zeros(3))
    offsets = tune_offsets(log_probs, labels)
    assert offsets[0] == 0 and offsets[2] > 1
    assert accuracy_with_offsets(log_probs, labels, offsets) > before + 0.1
    layer = torch.nn.Linear(4, 3)
    features = torch.randn(10, 4)
    expected = (layer(features) + offsets).argmax(1)
    fold_offsets(layer, offsets)
    assert torch.equal(layer(features).argmax(1), expected)


def test_a_balanced_classifier_keeps_zero_offsets():
    labels = torch.arange(6) % 3
    log_probs = torch.nn.functional.one_hot(labels, 3).float().log_softmax(1)
    assert torch.equal(tune_offsets(log_probs, labels), torch.zeros(3))


def test_served_metrics_count_a_five_answered_six_plus_as_wrong():
    probs = torch.tensor([[0, 0, 0, 0, 0, 0.45, 0.55], [0, 0, 0, 0, 0.1, 0.1, 0.8], [0.9, 0.1, 0, 0, 0, 0, 0]])
    labels = torch.tensor([5, 6, 0])
    m = served_metrics(probs, labels, VALUES, LABELS)
    assert m["all"]["accuracy"] == pytest.approx(2 / 3)
    assert m["bins_0_5"]["n"] == 2 and m["bins_0_5"]["accuracy"] == pytest.approx(0.5)
    assert m["counts_task"]["accuracy"] == 1.0  # restricted to 0..5, the first bin's 5 wins


def test_flag_rates_separate_right_from_wrong_quantities():
    probs = torch.tensor([[0.02, 0.9, 0.02, 0.02, 0.02, 0.01, 0.01]] * 4)
    counts = [1, 1, 1, 1]
    rates = flag_rates(probs, counts, LABELS, min_confidence=0.5, min_expected_probability=0.5)
    assert rates["right"]["flag_rate"] == 0.0 and rates["right"]["n"] == 4
    assert rates["off_by_1"]["flag_rate"] == 1.0 and rates["off_by_1"]["n"] == 8
    assert rates["off_by_2_or_more"]["n"] == 8  # 1 - 2 and 1 - 3 are not asked
    chosen = choose_thresholds(probs, counts, LABELS)
    assert chosen["youden_j"] == 1.0


def test_card_leads_with_the_served_answer():
    meta = metadata_for("efficientnet_lite0", LABELS, input_size=224, resize="squash", dropout=0.2)
    served = served_metrics(
        torch.tensor([[0, 0, 0, 0, 0, 0.4, 0.6], [0.9, 0.1, 0, 0, 0, 0, 0]]), torch.tensor([5, 0]), VALUES, LABELS
    )
    meta.metrics = {
        "test": served["all"],
        "test_bins_0_5": served["bins_0_5"],
        "test_counts_task": served["counts_task"],
        "manual_check": {
            "thresholds": {"min_confidence": 0.3, "min_expected_probability": 0.2, "criterion": "c"},
            "test": {"right": {"flag_rate": 0.25, "n": 2}},
        },
    }
    meta.data = {"split": {"train": 1, "val": 1, "test": 2}, "split_seed": 0}
    meta.training = {"best_epoch": 3}
    card = render_model_card(meta, "python -m training.recipes.default_model --data-dir d")
    assert card.index("all bins (served answer) | 2 | **50.0%**") < card.index(
        "ABID challenge protocol, for comparison) | 2 | **100.0%**"
    )
    assert "| right | 2 | 25.0% |" in card and "expected quantity is below 0.20" in card


def test_a_shrunk_copy_is_made_like_the_samples_copies():
    """224x224, squashed whatever the photo's shape, JPEG at quality 75 (the sample's quantization tables)."""
    import io
    import runpy

    from PIL import Image

    bench = runpy.run_path(str(Path(__file__).parents[1] / "benchmarks" / "full_size_copies.py"))
    photo = io.BytesIO()
    Image.new("RGB", (440, 360), (200, 40, 40)).save(photo, "PNG")
    copy = Image.open(io.BytesIO(bench["shrunk_copy"](photo.getvalue())))
    reference = io.BytesIO()
    Image.new("RGB", (8, 8)).save(reference, "JPEG", quality=75)
    assert copy.format == "JPEG" and copy.size == (224, 224)
    assert copy.quantization == Image.open(reference).quantization
    assert copy.convert("RGB").getpixel((5, 200))[0] > 150


def test_a_curve_without_a_training_seed_used_the_split_seed():

    assert recipe_differences({"seed": 0, "train_seed": None}, {"seed": 0, "train_seed": 0}) == []
    assert recipe_differences({"seed": 0}, {"seed": 0, "train_seed": 1}) == ["train_seed 0 (this model: 1)"]


def test_the_shipped_card_is_what_its_model_and_curve_render(tmp_path):
    """The card in service/default_model is generated, never hand-edited: re-rendering it from the shipped
    model.json and learning_curve.json gives the same text, and it says which recipe the curve used (this model's,
    or how it differs)."""
    import shutil

    shipped = Path(__file__).parents[1] / "service" / "default_model"
    copy = tmp_path / "default_model"
    shutil.copytree(shipped, copy)
    assert refresh_model_card(copy, "../shared/abid") == copy / "README.md"
    card = (copy / "README.md").read_text()
    assert card == (shipped / "README.md").read_text()
    curve = json.loads((shipped / "learning_curve.json").read_text())
    model = json.loads((shipped / "model.json").read_text())
    differences = recipe_differences(curve["recipe"], model["training"])
    expected = "This model's recipe" if not differences else "A different recipe (" + "; ".join(differences) + ")"
    assert f"{expected} on a seeded share" in card
    int8 = json.loads((shipped / "model.json").read_text())["quantization"]["int8"]["evaluation"]
    assert f"({int8['accuracy_change_points']:+.2f} points)" in card.split("## int8 graph", 1)[1]


@pytest.mark.slow
def test_recipe_writes_a_loadable_artifact_and_resumes(tmp_path, capsys):
    data = tmp_path / "abid"
    make_synthetic_abid(data, n_bins=70, max_count=5, size=96, seed=3, overflow_extra=10)
    out, cache = tmp_path / "model", tmp_path / "cache"
    argv = [
        "--data-dir",
        str(data),
        "--output-dir",
        str(out),
        "--cache-dir",
        str(cache),
        "--input-size",
        "64",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--threads",
        "1",
        "--final-fit",
        "--augment",
        "orig,hflip",
    ]
    assert default_model.main(argv) == 0

    loaded = load_artifact(out)
    meta = loaded.metadata
    assert meta.architecture == "efficientnet_lite0" and meta.labels == LABELS and meta.input_size == 64
    assert meta.metrics["evaluation"].endswith("test-time views orig") and meta.test_time_views == ["orig"]
    assert meta.metrics["test"]["n"] + meta.metrics["validation"]["served"]["n"] <= 70
    # The synthetic photos (96 px) are all larger than the input: validation's full-size figure is all of it.
    assert meta.metrics["validation"]["served_full_size_photos"] == meta.metrics["validation"]["served"]
    assert "bins_0_5" not in meta.metrics and "accuracy" in meta.metrics["test_bins_0_5"]
    assert set(meta.metrics["manual_check"]["test"]) == {"right", "off_by_1", "off_by_2_or_more"}
    assert meta.training["first_tuned_block"] == 11 and meta.training["final_fit"] is True
    history = json.loads((out / "history.json").read_text())
    assert [row["epoch"] for row in history["selection"]] == [1, 2]
    assert 1 <= len(history["final_fit"]) <= 2
    for name in ("confusion_matrix.png", "manual_check.png", "training_curves.png", "split.json"):
        assert (out / name).stat().st_size > 100
    card = (out / "README.md").read_text()
    assert f"**{100 * meta.metrics['test']['accuracy']:.1f}%**" in card
    assert f"python -m training.recipes.default_model --data-dir {data} --output-dir {out} --input-size 64" in card

    # The frozen trunk is untouched ImageNet Lite0; the tuned top moved.
    reference = build_model("efficientnet_lite0", 7, pretrained=True).state_dict()
    state = loaded.model.state_dict()
    assert torch.equal(state["_blocks.3._project_conv.weight"], reference["_blocks.3._project_conv.weight"])
    assert not torch.equal(state["_blocks.12._project_conv.weight"], reference["_blocks.12._project_conv.weight"])

    # A second run reads the caches and the finished checkpoints: the same model, no epoch retrained;
    # asked for test-time views, only its answer rule (the classifier's bias) is tuned again.
    capsys.readouterr()
    out2 = tmp_path / "model2"
    views = ["--test-time-views", "orig,hflip"]
    assert default_model.main(argv[:2] + ["--output-dir", str(out2)] + argv[4:] + views) == 0
    printed = capsys.readouterr().out
    assert "resumed_from_epoch: 2" in printed and "\nepoch: " not in printed
    second = load_artifact(out2)
    again = second.model.state_dict()
    assert all(torch.allclose(state[k].float(), again[k].float(), atol=1e-6) for k in state if k != "_fc.bias")
    assert second.metadata.test_time_views == ["orig", "hflip"]
    assert second.metadata.metrics["evaluation"].endswith("test-time views orig,hflip")
    assert "averages the class probabilities over 2 views" in (out2 / "README.md").read_text()

    # The views benchmark reads the same selection run and prints every set of cached views.
    import runpy

    views_bench = runpy.run_path(str(Path(__file__).parents[1] / "benchmarks" / "test_time_views.py"))
    assert views_bench["main"](argv[:2] + argv[4:14] + argv[15:]) == 0
    printed = capsys.readouterr().out
    assert "views: orig forward_passes: 1" in printed and "views: orig+hflip forward_passes: 2" in printed

    # The full-size-photo benchmark serves the model's test photos as sent and as shrunk copies.
    copies_bench = runpy.run_path(str(Path(__file__).parents[1] / "benchmarks" / "full_size_copies.py"))
    assert copies_bench["main"](["--model-dir", str(out), "--data-dir", str(data), "--parts", "test"]) == 0
    printed = capsys.readouterr().out
    n_test = meta.metrics["test"]["n"]
    assert f"part: test view: as_sent full_size_photos: {n_test} " in printed
    assert f"part: test view: shrunk_copy full_size_photos: {n_test} " in printed

    # The sweep (validation only) and the learning curve run on the same caches.
    assert (
        sweep.main(
            [
                "--data-dir",
                str(data),
                "--cache-dir",
                str(cache),
                "--base",
                "input_size=64,epochs=1,batch_size=16,threads=1",
                "--variant",
                "augment=orig+vflip",
            ]
        )
        == 0
    )
    assert "val_acc_served" in capsys.readouterr().out
    assert learning_curve.main(argv[:12] + ["--threads", "1", "--fractions", "0.5,1"]) == 0
    curve = json.loads((out / "learning_curve.json").read_text())
    assert [p["fraction"] for p in curve["points"]] == [0.5, 1.0]
    assert curve["points"][0]["train_bins"] < curve["points"][1]["train_bins"]
    assert (out / "learning_curve.png").stat().st_size > 1000
    card = (out / "README.md").read_text()  # the card beside the model now shows this curve
    section = card.split("## Learning curve", 1)[1].split("## ", 1)[0]
    assert all(f"| {p['train_bins']} |" in section for p in curve["points"]), section
    # The curve ran without this model's `--augment orig,hflip`: the card says so instead of claiming its recipe.
    assert section.lstrip().startswith("A different recipe (augment "), section
    assert "this model: " in section and "hflip" in section and "on a seeded share" in section


def test_bad_options_are_clear_errors(capsys, tmp_path):
    assert default_model.main(["--data-dir", str(tmp_path), "--epochs", "zero"]) == 2
    assert "epochs" in capsys.readouterr().err
    assert default_model.main(["--data-dir", str(tmp_path), "--first-tuned-block", "16"]) == 2
    assert "first_tuned_block" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        sweep.main(["--data-dir", str(tmp_path), "--variant", "seed=3"])
    assert exited.value.code == 2 and "use --base" in capsys.readouterr().err


def test_options_come_from_the_command_line_and_the_environment(tmp_path):
    environ = {"BINSIGHT_RECIPE_EPOCHS": "3", "BINSIGHT_RECIPE_AUGMENT": "orig,vflip", "BINSIGHT_RECIPE_LR": ""}
    cfg = default_model.parse_args(["--data-dir", str(tmp_path), "--final-fit", "--lr", "0.001"], environ)
    assert cfg.epochs == 3 and cfg.augment == ("orig", "vflip") and cfg.final_fit and cfg.lr == 0.001
    assert default_model.parse_args(["--data-dir", str(tmp_path), "--epochs", "2"], environ).epochs == 2


def test_sweep_variants_keep_their_own_derived_input_size(tmp_path):
    # A variant that changes the architecture gets that architecture's native size, unless a size was chosen.
    base = default_model.RecipeConfig(data_dir=tmp_path, epochs=2)
    lite2 = {"architecture": "efficientnet_lite2", "cache_block": "15", "first_tuned_block": "15"}
    configs = sweep.variant_configs(base, [lite2, {}])
    assert [(c.architecture, c.input_size, c.epochs) for c in configs] == [
        ("efficientnet_lite2", 260, 2),
        ("efficientnet_lite0", 224, 2),
    ]
    chosen = default_model.RecipeConfig(data_dir=tmp_path, input_size=64)
    assert sweep.variant_configs(chosen, [lite2])[0].input_size == 64


V5_RECIPE = ["--input-size", "288", "--aux-weight", "0.5", "--head", "corn", "--train-seed", "1", "--lr", "0.001"]


def test_the_full_curve_point_can_be_the_shipped_runs_own_test_figures(tmp_path):
    """The 1.0 point of a curve is the shipped train-only run itself; it is read, not retrained, only when the
    recipe is the same, and any difference (or a final fit) is named."""
    shipped = json.loads((Path(__file__).parents[1] / "service" / "default_model" / "model.json").read_text())
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.json").write_text(json.dumps(shipped))
    argv = ["--data-dir", str(tmp_path), "--epochs", "8", *V5_RECIPE, "--full-point-from", str(model_dir)]
    base = default_model.parse_args(argv, config=learning_curve.LearningCurveConfig, environ={})
    point = learning_curve.recorded_full_point(base, model_dir)
    assert point["fraction"] == 1.0 and point["train_bins"] == shipped["data"]["split"]["train"]
    assert point["all_acc"] == shipped["metrics"]["test"]["accuracy"]
    assert point["counts_task_rmse"] == shipped["metrics"]["test_counts_task"]["rmse"]

    six_epochs = base.model_copy(update={"epochs": 6})
    with pytest.raises(ValueError, match=r"epochs 6 \(this model: 8\)"):
        learning_curve.recorded_full_point(six_epochs, model_dir)
    shipped["training"]["final_fit"] = True
    (model_dir / "model.json").write_text(json.dumps(shipped))
    with pytest.raises(ValueError, match="final_fit"):
        learning_curve.recorded_full_point(base, model_dir)


def test_a_full_point_from_another_recipe_is_refused_before_any_training(tmp_path, capsys):
    argv = ["--data-dir", str(tmp_path), "--output-dir", str(tmp_path / "out"), "--epochs", "3", *V5_RECIPE]
    shipped = Path(__file__).parents[1] / "service" / "default_model"
    assert learning_curve.main([*argv, "--full-point-from", str(shipped)]) == 2
    assert "epochs 3 (this model: 8)" in capsys.readouterr().err
    assert learning_curve.main([*argv, "--full-point-from", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_the_curve_is_extrapolated_for_the_served_answer_and_the_challenge_protocol(tmp_path):
    """Both series get a line and the training bins it reaches each target at; the card prints the sentence."""
    points = [
        {"train_bins": n, "all_acc": 0.40 + 0.02 * i, "counts_task_acc": 0.38 + 0.01 * i}
        for i, n in enumerate((1000, 2000, 4000))
    ]
    curve = {"points": points}
    fits = learning_curve.extrapolate(curve)
    assert set(fits) == set(curve["fits"]) == {"all_acc", "counts_task_acc"}
    served, challenge = curve["fits"]["all_acc"], curve["fits"]["counts_task_acc"]
    assert served["gain_per_doubling"] == pytest.approx(0.02) and challenge["gain_per_doubling"] == pytest.approx(0.01)
    # 44% at 4,000 bins + 2 points per doubling: 48% two doublings on; the challenge's 45% five doublings on.
    assert served["bins_for"]["48%"] == pytest.approx(16000) and challenge["bins_for"]["45%"] == pytest.approx(128000)
    text = curve["extrapolation"]
    assert "served answer on all bins gains 2.0 points" in text and "48% near 16,000" in text
    assert "challenge protocol gains 1.0 points" in text and "45% near 130,000" in text

    flat = {"points": [{"train_bins": n, "all_acc": 0.4} for n in (1000, 2000)]}
    assert learning_curve.extrapolate(flat) == {"all_acc": (pytest.approx(0.4), 0.0)}
    assert flat["fits"]["all_acc"]["bins_for"] == {"48%": None, "56%": None}
    assert "gains 0.0 points per doubling of the data. Past" in flat["extrapolation"]
    assert learning_curve.extrapolate({"points": points[:1]}) == {} and learning_curve.extrapolate({"points": []}) == {}

    learning_curve.plot(points, fits, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 1000


def _maps(size: int, seed: int = 0) -> torch.Tensor:
    """Block-11 feature maps of 24 random photos of ``size`` px, through an untrained Lite0."""
    torch.manual_seed(seed)
    with torch.no_grad():
        return trunk_forward(build_model("efficientnet_lite0", 3).eval(), torch.randn(24, 3, size, size), 11).half()


def _progressive_top_run(
    early: dict[str, torch.Tensor], early_epochs: int, epochs: int = 3, views: tuple[str, ...] | None = None
):
    """``epochs`` epochs of train_top on the 64 px maps, the first ``early_epochs`` drawing from ``early``
    (from the feature sets ``views`` names, when given)."""
    from training.recipes.top_training import TopTraining, train_top

    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", 3, pretrained=False)
    labels = torch.tensor([i % 3 for i in range(24)])
    cfg = TopTraining(
        11, epochs, 8, 1e-3, 1e-2, 0.0, 0.0, 0.1, 0.0, 0.0, 0.0, ("orig",), 0,
        early_augment=tuple(early) if views is None else views, early_epochs=early_epochs,
    )  # fmt: skip
    features = {"orig": _maps(64), **early}
    history = train_top(model, features, labels, list(range(16)), list(range(16, 24)), [0, 1, 2], cfg, lambda **kw: 0)
    return model, history


def test_progressive_resizing_trains_the_first_epochs_on_the_low_resolution_maps(monkeypatch):
    from training.recipes import top_training

    drawn: list[tuple[tuple[str, ...], tuple[int, ...]]] = []
    batch = top_training._batch

    def spy(features, rows, augment, rng):
        x, choice = batch(features, rows, augment, rng)
        drawn.append((augment, tuple(x.shape[2:])))
        return x, choice

    monkeypatch.setattr(top_training, "_batch", spy)
    low, history = _progressive_top_run({"orig@48": _maps(48, seed=1)}, early_epochs=2)
    # 16 training bins in batches of 8: two steps an epoch on the 3x3 maps of 48 px photos, then the 4x4 served ones.
    assert drawn == [(("orig@48",), (3, 3))] * 4 + [(("orig",), (4, 4))] * 2
    assert [h["epoch"] for h in history] == [1, 2, 3] and all("val_acc" in h for h in history)
    monkeypatch.setattr(top_training, "_batch", batch)
    # Early maps that are the served ones give the plain run bit for bit; the low-resolution ones other weights.
    plain, _ = _progressive_top_run({}, early_epochs=0)
    same, _ = _progressive_top_run({"orig@64": _maps(64)}, early_epochs=2)
    state = plain.state_dict()
    assert all(torch.equal(state[k], same.state_dict()[k]) for k in state)
    assert any(not torch.equal(state[k], low.state_dict()[k]) for k in state)
    with pytest.raises(ValueError, match="orig@96"):  # early views without features fail before training
        _progressive_top_run({}, early_epochs=1, views=("orig@96",))
    with pytest.raises(ValueError, match="no more than epochs"):
        _progressive_top_run({"orig@48": _maps(48)}, early_epochs=4)


def test_progressive_resizing_options_are_checked_and_name_a_run_of_their_own():
    plain = default_model.RecipeConfig(data_dir=".", input_size=288, epochs=8)
    on = default_model.RecipeConfig(data_dir=".", input_size=288, epochs=8, progressive_size=224, progressive_epochs=3)
    assert plain.early_views == () and plain.top_training().early_epochs == 0
    assert on.early_views == ("orig@224", "hflip@224", "vflip@224", "rot180@224")
    assert on.top_training().early_augment == on.early_views and on.top_training().early_epochs == 3
    assert on.top_training(epochs=2).early_epochs == 2  # a final fit shorter than the early epochs: all of it early
    assert default_model.run_key(on, "select") != default_model.run_key(plain, "select")
    assert default_model.run_key(plain, "select") == default_model.run_key(
        plain.model_copy(update={"progressive_size": None, "progressive_epochs": 0}), "select"
    )  # off: the old run names, so the shipped runs' checkpoints still resume
    for bad, match in [
        ({"progressive_size": 224}, "both"),
        ({"progressive_epochs": 3}, "both"),
        ({"progressive_size": 288, "progressive_epochs": 3}, "other than input_size"),
        ({"progressive_size": 224, "progressive_epochs": 8}, "fewer"),
        ({"progressive_size": 224, "progressive_epochs": 3, "jitter_copies": 1}, "jitter_copies"),
        ({"progressive_size": 224, "progressive_epochs": 3, "teacher_seeds": (0, 1)}, "teacher_seeds"),
    ]:
        with pytest.raises(ValueError, match=match):
            default_model.RecipeConfig(data_dir=".", input_size=288, epochs=8, **bad)


def test_recipe_trains_with_progressive_resizing_end_to_end(tmp_path, capsys):
    data = tmp_path / "abid"
    make_synthetic_abid(data, n_bins=40, max_count=5, size=96, seed=4)
    out, cache = tmp_path / "model", tmp_path / "cache"
    argv = ["--data-dir", str(data), "--output-dir", str(out), "--cache-dir", str(cache), "--input-size", "96"]
    argv += ["--epochs", "2", "--batch-size", "16", "--threads", "1", "--augment", "orig,hflip"]
    assert default_model.main([*argv, "--progressive-size", "64", "--progressive-epochs", "1"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("stage: features_orig done: 40 ") == 2 and "stage: features_hflip done: 40 " in printed
    artifact = load_artifact(out)
    assert artifact.metadata.input_size == 96  # served at the final size
    assert (
        artifact.metadata.training["progressive_size"] == 64 and artifact.metadata.training["progressive_epochs"] == 1
    )
    assert len(list(cache.glob("features_efficientnet_lite0_*.pt"))) == 4  # orig, hflip at 96 and at 64
    assert len(list(cache.glob("images_*.pt"))) == 2
