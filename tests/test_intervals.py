"""training.intervals and training.compare: how sure an accuracy is, and whether a new model is better."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from service.architectures import build_model
from service.artifact import metadata_for, save_artifact
from training import compare as compare_cli
from training import evaluate
from training.intervals import accuracy_interval, mcnemar_exact_p, paired_comparison, wilson_interval
from training.synthetic import make_synthetic_abid


def test_wilson_interval_matches_its_closed_forms_and_stays_in_range():
    z2 = 1.959963984540054**2
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(z2 / (10 + z2))  # no successes: the upper end is z^2/(n+z^2)
    low, high = wilson_interval(10, 10)
    assert high == 1.0 and low == pytest.approx(10 / (10 + z2))
    low, high = wilson_interval(3, 20)
    assert (1 - high, 1 - low) == pytest.approx(wilson_interval(17, 20))  # symmetric in success and failure
    # The shipped model's 46.6% of 1,166 test bins: about +-2.9 points, near the normal approximation there.
    low, high = accuracy_interval(0.4657, 1166)
    half = 1.96 * math.sqrt(0.4657 * 0.5343 / 1166)
    assert low == pytest.approx(0.4657 - half, abs=0.002) and high == pytest.approx(0.4657 + half, abs=0.002)
    assert wilson_interval(50, 100, 0.99)[0] < wilson_interval(50, 100, 0.9)[0]  # surer: wider
    for bad in [(1, 0), (-1, 5), (6, 5)]:
        with pytest.raises(ValueError):
            wilson_interval(*bad)


def test_mcnemar_exact_p_is_the_two_sided_binomial_tail():
    assert mcnemar_exact_p(0, 0) == 1.0 and mcnemar_exact_p(5, 5) == 1.0
    assert mcnemar_exact_p(0, 6) == pytest.approx(2 / 64) == mcnemar_exact_p(6, 0)
    assert mcnemar_exact_p(1, 9) == pytest.approx(2 * 11 / 1024)


def test_paired_comparison_separates_a_real_gain_from_noise():
    torch.manual_seed(0)
    base = torch.rand(1000) < 0.47
    same = paired_comparison(base, base.clone())
    assert same.difference == 0 and same.difference_low == same.difference_high == 0 and same.mcnemar_p == 1.0
    # B also gets 60 of A's wrong bins right: +6 points, well outside noise.
    better = base.clone()
    better[torch.nonzero(~base).flatten()[:60]] = True
    gain = paired_comparison(base, better)
    assert gain.difference == pytest.approx(0.06) and gain.only_b_right == 60 and gain.only_a_right == 0
    assert 0 < gain.difference_low < 0.06 < gain.difference_high and gain.mcnemar_p < 1e-10
    # 30 bins swapped each way: no difference, and an interval that says so.
    swap = base.clone()
    swap[torch.nonzero(base).flatten()[:30]] = False
    swap[torch.nonzero(~base).flatten()[:30]] = True
    noise = paired_comparison(base, swap)
    assert noise.difference == 0 and noise.difference_low < 0 < noise.difference_high and noise.mcnemar_p == 1.0
    # The bootstrap's width is the paired standard error's: sqrt(discordant share) / sqrt(n) * 1.96.
    assert noise.difference_high - noise.difference_low == pytest.approx(2 * 1.96 * math.sqrt(0.06 / 1000), rel=0.1)
    assert paired_comparison(base, swap) == noise  # seeded: the same report every run
    with pytest.raises(ValueError, match="same bins"):
        paired_comparison(base, base[:10])


def _write_predictions(folder: Path, rows: list[tuple[str, str, str]]) -> Path:
    folder.mkdir(parents=True)
    with open(folder / "predictions.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "label", "predicted", "probability"])
        writer.writeheader()
        writer.writerows({"id": i, "label": t, "predicted": p, "probability": 0.5} for i, t, p in rows)
    return folder


def test_compare_cli_reports_each_part_and_a_verdict(tmp_path, capsys):
    labels = ["0", "1", "2", "3+"]
    truth = [(f"{k:04d}", labels[k % 4]) for k in range(400)]
    baseline = _write_predictions(tmp_path / "a", [(i, t, t if k % 2 else "0") for k, (i, t) in enumerate(truth)])
    candidate = _write_predictions(tmp_path / "b", [(i, t, t) for i, t in truth])  # right everywhere
    out = tmp_path / "compare.json"
    argv = ["--baseline", str(baseline), "--candidate", str(candidate / "predictions.csv"), "--output", str(out)]
    assert compare_cli.main([*argv, "--resamples", "2000"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(": " in line for line in lines)
    assert "compare_all_n: 400" in lines and "compare_below_overflow_n: 300" in lines
    assert "compare_all_verdict: candidate better" in lines
    assert any(line.startswith("compare_all_candidate_accuracy: 1.0000 [0.99") for line in lines)
    figures = json.loads(out.read_text())["parts"]
    assert figures["all"]["difference"] == pytest.approx(1 - 300 / 400)  # A: right on the odd bins and the even 0s
    assert figures["below_overflow"]["n"] == 300
    assert (
        figures["all"]["interval_b"][1] == 1.0
        and figures["all"]["interval_a"][0] < 0.75 < figures["all"]["interval_a"][1]
    )
    # The other way round the verdict turns; the same answers give no detectable difference.
    assert compare_cli.main(["--baseline", str(candidate), "--candidate", str(baseline)]) == 0
    assert "compare_all_verdict: baseline better" in capsys.readouterr().out.splitlines()
    assert compare_cli.main(["--baseline", str(baseline), "--candidate", str(baseline)]) == 0
    assert "compare_all_verdict: no detectable difference" in capsys.readouterr().out.splitlines()


def test_compare_refuses_evaluations_it_cannot_pair(tmp_path, capsys):
    a = _write_predictions(tmp_path / "a", [("1", "0", "0"), ("2", "1", "1")])
    cases = {
        "different bins": _write_predictions(tmp_path / "b", [("1", "0", "0"), ("3", "1", "1")]),
        "true label": _write_predictions(tmp_path / "c", [("1", "0", "0"), ("2", "2", "1")]),
        "appears twice": _write_predictions(tmp_path / "d", [("1", "0", "0"), ("1", "0", "1")]),
        "does not exist": tmp_path / "missing",
    }
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "predictions.csv").write_text("name,count\nx,1\n")
    cases["not a predictions.csv"] = tmp_path / "e"
    for message, other in cases.items():
        assert compare_cli.main(["--baseline", str(a), "--candidate", str(other)]) == 1
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare_cli.main(["--baseline", str(a)])  # the candidate is required


def test_compare_reads_what_evaluate_writes(tmp_path, capsys):
    data = tmp_path / "data"
    make_synthetic_abid(data, 12, max_count=3, size=48, seed=5)
    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        model = build_model("resnet18", 4, pretrained=False, dropout=0.0)
        save_artifact(tmp_path / name, model, metadata_for("resnet18", ["0", "1", "2", "3"], input_size=32))
        argv = [
            "--model-dir",
            str(tmp_path / name),
            "--data-dir",
            str(data),
            "--output-dir",
            str(tmp_path / f"e{name}"),
        ]
        assert evaluate.main([*argv, "--batch-size", "6"]) == 0
    capsys.readouterr()
    assert compare_cli.main(["--baseline", str(tmp_path / "ea"), "--candidate", str(tmp_path / "eb")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "compare_all_n: 12" in lines and any(line.startswith("compare_all_mcnemar_p: ") for line in lines)
