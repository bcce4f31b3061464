"""The SageMaker training contract, end to end in subprocesses: a temporary /opt/ml tree, the ``train``
command, SIGTERM and resume, and a two-process DistributedDataParallel run on CPU (gloo)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from service.artifact import load_artifact
from training.checkpoint import CHECKPOINT_FILE
from training.loop import run_training

from training_support import (
    TINY,
    history_without_times,
    local_paths,
    make_opt_ml,
    subprocess_env,
    tiny_config,
    train_command,
)

# What a SageMaker estimator's metric_definitions would use.
EPOCH_LINE = re.compile(
    r"^epoch: (\d+) train_loss: ([\d.]+) train_acc: ([\d.]+) val_loss: ([\d.]+) "
    r"val_acc: ([\d.]+) val_rmse: ([\d.]+) .*lr: \S+ epoch_time_s: [\d.]+$",
    re.M,
)
TEST_LINE = re.compile(r"^test_acc: ([\d.]+) test_rmse: ([\d.]+) ", re.M)


def _run(cmd: list[str], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def test_sagemaker_training_contract(tmp_path: Path) -> None:
    """hyperparameters.json (strings) + train and validation channels in, artifact + metrics out."""
    root = make_opt_ml(
        tmp_path / "opt_ml",
        {**TINY, "overflow": "true", "epochs": "2", "tta_flip": "true", "log_every_steps": "2"},
        n_bins=40,
        overflow_extra=1,
        validation_bins=10,
    )
    proc = _run(train_command(), subprocess_env(root))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert not (root / "output/failure").exists()
    assert [int(m.group(1)) for m in EPOCH_LINE.finditer(proc.stdout)] == [1, 2], proc.stdout
    test_line = TEST_LINE.search(proc.stdout)
    assert test_line, proc.stdout

    artifact = load_artifact(root / "model")
    meta = artifact.metadata
    assert meta.architecture == "efficientnet_lite0" and meta.labels == ["0", "1", "2", "3", "4+"]
    assert meta.input_size == 32 and meta.resize == "squash"
    assert meta.metrics["test"]["accuracy"] == pytest.approx(float(test_line.group(1)), abs=1e-4)
    assert meta.metrics["test"]["tta_flip"] is True and meta.metrics["best_epoch"] in (1, 2)
    assert meta.training["epochs"] == 2 and meta.training["overflow"] is True and meta.training["lr"] == 0.003
    assert meta.data["dropped_above_max_count"] == 0 and meta.data["bad_images"] == 0
    assert meta.data["split"]["val_source"] == "validation channel"
    with torch.no_grad():
        assert artifact.model(torch.zeros(1, 3, 32, 32)).shape == (1, 5)

    split = json.loads((root / "model/split.json").read_text())
    assert len(split["parts"]["val"]) == 10 and all(i >= "50001" for i in split["parts"]["val"])
    assert split["sizes"]["train"] + split["sizes"]["test"] == 40
    history = json.loads((root / "model/history.json").read_text())
    assert [e["epoch"] for e in history] == [1, 2]
    metrics = json.loads((root / "output/data/metrics.json").read_text())
    assert metrics["test"]["rmse"] == pytest.approx(float(test_line.group(2)), abs=1e-4)
    assert (root / "checkpoints" / CHECKPOINT_FILE).is_file()
    _check_sagemaker_metrics(proc.stdout, history, metrics["test"])


def _check_sagemaker_metrics(stdout: str, history: list[dict], test: dict) -> None:
    """The regexes binsight-aws registers with the training job read every charted figure off this run's
    real output (no terminal: step lines too), with the values the run recorded."""
    from binsight_aws.training_job import METRIC_REGEXES

    def values(name: str) -> list[float]:
        return [float(v) for v in re.findall(METRIC_REGEXES[name], stdout)]

    for name in METRIC_REGEXES:
        assert values(name), f"no line of the training output matches the {name} regex"
    for name in ("train_loss", "val_acc", "val_rmse", "lr"):
        assert values(name) == pytest.approx([e[name] for e in history], rel=1e-3, abs=5e-5), name
    assert values("test_acc") == pytest.approx([test["accuracy"]], abs=1e-4)
    assert values("test_off_by_one_acc") == pytest.approx([test["off_by_one_accuracy"]], abs=1e-4)
    assert all(v > 0 for v in values("img_per_s")) and re.search(r"^step_progress: done: 2 total: \d+ ", stdout, re.M)


def test_bad_hyperparameter_in_a_subprocess_exits_non_zero_with_failure_file(tmp_path: Path) -> None:
    root = make_opt_ml(tmp_path / "opt_ml", {**TINY, "optimiser": "sgd"}, n_bins=4)
    proc = _run(train_command(), subprocess_env(root), timeout=120)
    assert proc.returncode == 2
    reason = (root / "output/failure").read_text()
    assert "unknown hyperparameter 'optimiser'" in reason and "did you mean 'optimizer'" in reason
    assert "Traceback" not in proc.stderr and "error: unknown hyperparameter 'optimiser'" in proc.stderr


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_the_next_run_resumes(tmp_path: Path) -> None:
    """A spot interruption: SIGTERM in epoch 2 -> checkpoint + exit 143 quickly; the rerun finishes
    with the same history as a run that was never interrupted."""
    hps = {**TINY, "epochs": "3"}
    root = make_opt_ml(tmp_path / "opt_ml", hps, n_bins=40)
    env = subprocess_env(root)
    proc = subprocess.Popen(train_command(), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, sent = [], None
    try:
        for line in proc.stdout:
            out.append(line)
            if line.startswith("epoch: 1 "):
                proc.send_signal(signal.SIGTERM)
                sent = time.monotonic()
                break
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    out.append(rest)
    stdout = "".join(out)
    assert sent is not None, f"the run ended before its first epoch line: {stdout[-2000:]} {err[-2000:]}"
    stopped_after = time.monotonic() - sent
    assert proc.returncode == 143, stdout[-2000:] + err[-2000:]
    assert stopped_after < 30
    assert re.search(r"^training_interrupted: SIGTERM epoch: 2 step: \d/4 ", stdout, re.M), stdout
    assert not (root / "output/failure").exists() and not (root / "model/model.json").exists()
    assert "Traceback" not in err

    resumed = _run(train_command(), env)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert re.search(r"^resumed_from: .* epoch: 1 step_in_epoch: \d", resumed.stdout, re.M)
    history = json.loads((root / "model/history.json").read_text())
    assert [e["epoch"] for e in history] == [1, 2, 3]

    torch.set_num_threads(1)
    data = root / "input/data/train"
    reference = run_training(tiny_config(epochs=3), local_paths(tmp_path, data, "reference"), log=lambda _: None)
    for a, b in zip(history_without_times(reference.history), history_without_times(history)):
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-4), (key, a, b)


@pytest.mark.slow
def test_two_process_gloo_ddp_run_completes(tmp_path: Path) -> None:
    root = make_opt_ml(tmp_path / "opt_ml", {**TINY, "epochs": "2", "device": "cpu"}, n_bins=40)
    proc = _run(train_command("--nproc-per-node", "2"), subprocess_env(root, BINSIGHT_MASTER_PORT="29731"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "distributed_launch: nnodes: 1 nproc_per_node: 2" in proc.stdout
    assert "world_size: 2" in proc.stdout
    assert "replicas: world_size: 2 parameters_equal: true" in proc.stdout  # DDP kept one model
    assert [int(m.group(1)) for m in EPOCH_LINE.finditer(proc.stdout)] == [1, 2]  # rank 0 logs, once
    meta = load_artifact(root / "model").metadata
    assert meta.training["world_size"] == 2 and meta.training["steps_per_epoch"] == 2
    assert (root / "output/data/metrics.json").is_file()
