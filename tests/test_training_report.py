"""The training report on real runs of the loop on tiny synthetic bins: each family of rules is shown a problem
made to happen (a diverging learning rate, a stalling loader, labels without signal, a frozen network, stale
BatchNorm statistics) and must flag it, while a healthy run gets no performance or model-health issue; the
artifacts (summary.csv, findings.json, report.html, TensorBoard, the profiler window) and re-rendering."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import tarfile
import time
from pathlib import Path

import pytest
import torch

from binsight_aws.training_job import METRIC_REGEXES
from service.architectures import build_model
from service.artifact import load_artifact
from training import metric_names as names
from training.config import ConfigError, build_config
from training.loaders import AugmentedBins
from training.loop import run_training
from training.norms import wanted
from training.report.__main__ import main as report_main
from training.report.profiling import ProfileWindow
from training.report.render import SUMMARY_COLUMNS
from training.report.thresholds import parse_thresholds
from training.synthetic import make_synthetic_abid

from training_support import local_paths, tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bins") / "data"
    make_synthetic_abid(folder, 40, max_count=3, size=40, seed=0)
    return folder


def _run(root: Path, data: Path, name: str, **options) -> tuple[Path, dict, list[str]]:
    lines: list[str] = []
    paths = local_paths(root, data, name)
    result = run_training(tiny_config(**options), paths, log=lines.append)
    assert result.status == "completed"
    findings_file = paths.output_data_dir / "findings.json"
    findings = json.loads(findings_file.read_text()) if findings_file.exists() else {}
    return paths.output_data_dir, findings, lines


def _status(findings: dict, rule: str) -> str:
    return next(f["status"] for f in findings["findings"] if f["rule"] == rule)


def _issues(findings: dict, *families: str) -> list[str]:
    return [
        f"{f['rule']}: {f['evidence']}"
        for f in findings["findings"]
        if f["status"] == "issue" and f["family"] in families
    ]


@pytest.fixture(scope="module")
def healthy(tmp_path_factory, data: Path):
    root = tmp_path_factory.mktemp("healthy")
    return root, *_run(root, data, "run", epochs=2, log_every_steps=2)


# ------------------------------------------------------------------------------------------------ a healthy run


def test_healthy_run_has_no_performance_or_model_health_issue(healthy) -> None:
    _, out, findings, _ = healthy
    assert not _issues(findings, "performance", "model health"), findings
    assert _status(findings, "stale_batchnorm_statistics") == "ok"  # lite0: recalibrated
    assert _status(findings, "low_gpu_utilization") == "not evaluated"  # no GPU: not an error
    assert {f["status"] for f in findings["findings"]} <= {"ok", "issue", "not evaluated"}
    assert all(f["evidence"] and f["threshold"] for f in findings["findings"]), findings


def test_timing_lines_feed_sagemaker_metrics_and_summary_csv(healthy) -> None:
    _, out, _, lines = healthy
    text = "\n".join(lines)
    timing = [line for line in lines if line.startswith("step_timing: ")]
    assert len(timing) == 4, timing  # every 2 steps of 4, two epochs
    epoch_lines = [line for line in lines if line.startswith("epoch_timing: ")]
    assert len(epoch_lines) == 2
    for name in (*names.STEP_TIMING_METRICS, names.EPOCH_IMAGES_PER_S, names.EPOCH_DATA_WAIT_SHARE):
        assert re.search(METRIC_REGEXES[name], text), name
    assert re.search(METRIC_REGEXES[names.GRAD_NORM], epoch_lines[0])
    assert re.search(METRIC_REGEXES[names.REPORT_ISSUES], text)
    rows = (out / "summary.csv").read_text().splitlines()
    assert rows[0].split(",") == list(SUMMARY_COLUMNS) and len(rows) == 3
    first = dict(zip(SUMMARY_COLUMNS, rows[1].split(",")))
    assert float(first["img_per_s"]) > 0 and 0 <= float(first["data_wait_share"]) < 1
    assert float(first["peak_memory_mb"]) > 0 and float(first["grad_norm"]) > 0
    steps = (out / "report/steps.csv").read_text().splitlines()
    assert len(steps) == 1 + 8  # header + every step


def test_artifacts_and_tensorboard(healthy) -> None:
    _, out, _, _ = healthy
    html = (out / "report.html").read_text()
    assert "<img" in html and "data:image/png;base64," in html
    assert not re.search(r"""(src|href)=["']https?:""", html)  # nothing from a CDN
    events = list((out.parent / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    assert {"epoch/val_acc", "epoch/img_per_s", "step/data_wait_ms", "health/grad_norm"} <= tags, tags
    assert any(tag.startswith("system/cpu") for tag in tags)


def test_report_renders_again_from_the_run_folder_and_from_output_tar_gz(healthy, tmp_path: Path) -> None:
    root, out, findings, _ = healthy
    statuses = {f["rule"]: f["status"] for f in findings["findings"]}
    again = tmp_path / "again"
    assert report_main(["--run", str(root / "run"), "--out-dir", str(again)], environ={}) == 0
    redone = json.loads((again / "findings.json").read_text())
    assert {f["rule"]: f["status"] for f in redone["findings"]} == statuses
    assert (again / "report.html").exists() and (again / "summary.csv").exists()

    archive = tmp_path / "output.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:  # what SageMaker uploads: the output data dir's contents
        for item in out.iterdir():
            tar.add(item, arcname=item.name)
    assert report_main(["--run", str(archive)], environ={}) == 0
    assert (tmp_path / "output" / "report.html").exists()
    # A stricter threshold changes the verdict, without training again.
    assert report_main(["--run", str(archive), "--thresholds", "data_wait_share=0.0001"], environ={}) == 0
    assert _status(json.loads((tmp_path / "output/findings.json").read_text()), "data_wait") == "issue"
    assert report_main(["--run", str(tmp_path / "nothing")], environ={}) == 1


@pytest.mark.browser
def test_report_renders_offline_in_chromium(healthy) -> None:
    from browser_support import launch_browser, require_chromium, save_screenshot

    _, out, _, _ = healthy
    browser = launch_browser(require_chromium())
    try:
        page = browser.page(width=1200, height=1400)
        page.set_content((out / "report.html").read_text(), wait_until="load")
        assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        assert page.evaluate("document.images.length") >= 4
        assert "Findings" in page.inner_text("body")
        assert not browser.network.blocked, browser.network.blocked
        assert all(u.startswith(("data:", "about:")) for u in browser.network.requested), browser.network.requested
        assert not page.console_errors
        save_screenshot(page.screenshot(full_page=False), "training-report.png", out)
    finally:
        browser.close()


# ------------------------------------------------------------------------------------------------ problems made real


def test_diverging_learning_rate_is_flagged(tmp_path: Path, data: Path) -> None:
    _, findings, lines = _run(tmp_path, data, "diverge", epochs=1, optimizer="sgd", lr=10, grad_clip=0, warmup_epochs=0)
    flagged = {f.split(":")[0] for f in _issues(findings, "model health")}
    assert {"exploding_gradients", "update_ratio"} <= flagged, findings
    assert any(line.startswith("report_finding: exploding_gradients") and "status: issue" in line for line in lines)


def test_stalling_loader_is_flagged(tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    load = AugmentedBins.__getitem__

    def stalling(self, key):
        time.sleep(0.04)  # a slow disk or decoder: 0.3 s a batch of 8
        return load(self, key)

    monkeypatch.setattr(AugmentedBins, "__getitem__", stalling)
    _, findings, _ = _run(tmp_path, data, "stall", epochs=1)
    assert _status(findings, "data_wait") == "issue", findings
    assert _status(findings, "dataloader_workers") == "issue"  # 0 workers while waiting


def test_labels_without_signal_are_flagged(tmp_path: Path, data: Path) -> None:
    same = tmp_path / "same"
    shutil.copytree(data, same)
    photos = sorted((same / "bin-images").glob("*.jpg"))
    for photo in photos[1:]:  # every bin the same photo: its label says nothing about it
        shutil.copy(photos[0], photo)
    _, findings, _ = _run(tmp_path, same, "nosignal", epochs=2)
    assert _status(findings, "no_learning_signal") == "issue", findings
    assert not _issues(findings, "model health")


def test_frozen_network_is_flagged(tmp_path: Path, data: Path) -> None:
    _, findings, _ = _run(tmp_path, data, "frozen", epochs=1, lr=1e-11)
    assert _status(findings, "update_ratio") == "issue", findings
    evidence = next(f["evidence"] for f in findings["findings"] if f["rule"] == "update_ratio")
    assert "barely move" in evidence


# ------------------------------------------------------------------------------------------------ BatchNorm statistics


def test_recalibrated_batchnorm_statistics_make_validation_and_the_saved_model_honest(tmp_path: Path) -> None:
    """EfficientNet-Lite's momentum 0.01: after a few steps the running statistics still describe the initial
    weights. Same training either way (same train losses); only the recalibrated model answers as trained."""
    data = tmp_path / "data"
    make_synthetic_abid(data, 48, max_count=3, size=40, seed=0)
    options = dict(epochs=2, val_fraction=0.25, test_fraction=0.25)
    off_dir, off_findings, _ = _run(tmp_path, data, "off", bn_recalibration="off", **options)
    on_dir, _, lines = _run(tmp_path, data, "on", report="false", **options)
    off, on = (json.loads((d / "metrics.json").read_text()) for d in (off_dir, on_dir))
    assert [e["train_loss"] for e in on["history"]] == pytest.approx([e["train_loss"] for e in off["history"]])
    # Stale statistics wash the photo out: the model without recalibration gives every test bin the same answer.
    # (On 12 test bins an accuracy margin is noise that moves between CPUs; what each model answers is not.)
    answered = {
        name: [sum(column) for column in zip(*m["test"]["confusion_matrix"])] for name, m in (("off", off), ("on", on))
    }
    assert sum(1 for n in answered["off"] if n) == 1, answered
    assert sum(1 for n in answered["on"] if n) >= 3, answered
    assert on["test"]["accuracy"] > off["test"]["accuracy"], (on["test"], off["test"])
    assert max(e["val_acc"] for e in on["history"]) >= max(e["val_acc"] for e in off["history"])
    assert _status(off_findings, "stale_batchnorm_statistics") == "issue"
    assert any(line.startswith("bn_recalibrated: epoch: 1 layers: 49") for line in lines)
    assert load_artifact(on_dir.parent.parent / "model").metadata.training["bn_recalibration_used"] is True
    # report=false: the timing lines and summary.csv stay, the rest of the report does not run.
    assert (on_dir / "summary.csv").exists() and not (on_dir / "report.html").exists()
    assert not (on_dir.parent / "tensorboard").exists()


def test_recalibration_auto_is_for_small_momentum_only() -> None:
    assert wanted("auto", build_model("efficientnet_lite0", 4)) and not wanted("auto", build_model("resnet18", 4))
    assert wanted("on", build_model("resnet18", 4)) and not wanted("off", build_model("efficientnet_lite0", 4))
    assert not wanted("auto", build_model("efficientnet_lite0", 4), "frozen")
    assert wanted("on", build_model("efficientnet_lite0", 4), "frozen")


# ------------------------------------------------------------------------------------------------ profiler, thresholds


def test_profiler_window_is_bounded_gzipped_and_summarised(tmp_path: Path, data: Path) -> None:
    out, _, _ = _run(tmp_path, data, "profiled", epochs=1, profile_steps=2, profile_wait_steps=1)
    ops = json.loads((out / "report/profile/ops.json").read_text())
    assert ops["steps"] == 2 and {"forward", "backward", "optimizer"} <= set(ops["ranges"])
    assert ops["ranges"]["forward"]["count"] == 2 and ops["top_operators"]
    with gzip.open(out / "report/profile/trace.json.gz") as fh:
        assert json.load(fh)["traceEvents"]
    assert "binsight" not in {o["name"].split(".")[0] for o in ops["top_operators"]}
    assert "forward" in (out / "report.html").read_text()

    window = ProfileWindow(tmp_path / "capped", steps=1, wait_steps=0, max_mb=1e-6, cuda=False)
    window.before_step()
    torch.ones(64, 64) @ torch.ones(64, 64)
    window.after_step()
    assert window.summary["trace"]["file"] is None and "profile_max_mb" in window.summary["trace"]["dropped"]
    assert not (tmp_path / "capped/trace.json.gz").exists() and (tmp_path / "capped/ops.json").exists()


def test_thresholds_are_configurable_and_checked() -> None:
    assert parse_thresholds("gpu_util_p95=60, step_outlier_sigma=4").step_outlier_sigma == 4
    assert parse_thresholds("").gpu_util_p95 == 70
    with pytest.raises(ConfigError, match="unknown report threshold 'gpu_util'"):
        build_config([("test", {"report_thresholds": "gpu_util=1"})])
    with pytest.raises(ConfigError, match="not name=value"):
        build_config([("test", {"report_thresholds": "gpu_util_p95"})])


def test_binsight_aws_train_sets_tensorboard_output_and_metric_definitions() -> None:
    import boto3
    from botocore.validate import ParamValidator

    from binsight_aws.configs import TrainingJobConfig
    from binsight_aws.training_job import training_job_request

    base = dict(
        image_uri="123456789012.dkr.ecr.us-east-1.amazonaws.com/binsight-train:1",
        role_arn="arn:aws:iam::123456789012:role/binsight",
        train_uri="s3://bucket/t",
        output_uri="s3://bucket/o",
        job_name="x",
    )
    request = training_job_request(TrainingJobConfig(**base, tensorboard_uri="s3://bucket/tb"))
    assert request["TensorBoardOutputConfig"] == {
        "S3OutputPath": "s3://bucket/tb",
        "LocalPath": "/opt/ml/output/tensorboard",
    }
    shape = boto3.client("sagemaker", region_name="us-east-1").meta.service_model.operation_model("CreateTrainingJob")
    assert not ParamValidator().validate(request, shape.input_shape).has_errors()
    definitions = request["AlgorithmSpecification"]["MetricDefinitions"]
    assert len(definitions) <= 40  # SageMaker's limit
    assert {"data_wait_share", "epoch_img_per_s", "grad_norm", "report_issues"} <= {d["Name"] for d in definitions}
    assert "TensorBoardOutputConfig" not in training_job_request(TrainingJobConfig(**base))


def test_gpu_rules_on_recorded_samples() -> None:
    """No GPU here: the GPU rules read what a GPU run's sampler and epochs record (the same columns NVML fills)."""
    from training.report.rules import batch_too_small, cpu_bottleneck, gpu_memory_growth, low_gpu_utilization
    from training.report.store import RunRecords

    idle = RunRecords(
        folder=Path("."),
        run={"config": {"batch_size": 8}},
        system={
            "cpu_percent": [95.0] * 8 + [40.0] * 2,
            "gpu0_util": [5.0] * 8 + [60.0] * 2,
            "gpu0_mem_percent": [10.0] * 10,
        },
        epochs=[{"epoch": 1, "device_memory_mb": 1000.0}, {"epoch": 2, "device_memory_mb": 1300.0}],
    )
    t = parse_thresholds("")
    assert low_gpu_utilization(idle, t).status == "issue"
    assert cpu_bottleneck(idle, t).status == "issue"  # 80% of samples: CPU busy, GPU idle
    assert gpu_memory_growth(idle, t).status == "issue"
    busy = RunRecords(
        folder=Path("."),
        system={"cpu_percent": [50.0] * 10, "gpu0_util": [97.0] * 10, "gpu0_mem_percent": [85.0] * 10},
        epochs=[{"epoch": 1, "device_memory_mb": 1000.0}, {"epoch": 2, "device_memory_mb": 1001.0}],
    )
    assert [r(busy, t).status for r in (low_gpu_utilization, cpu_bottleneck, gpu_memory_growth)] == ["ok"] * 3
    assert batch_too_small(busy, t).status == "ok"
    small = RunRecords(
        folder=Path("."),
        run={"config": {"batch_size": 4}},
        system={"cpu_percent": [30.0] * 10, "gpu0_util": [40.0] * 10, "gpu0_mem_percent": [5.0] * 10},
    )
    assert batch_too_small(small, t).status == "issue" and "batch_size 4" in batch_too_small(small, t).evidence
