"""Helpers for the training tests: a SageMaker /opt/ml tree with synthetic bins, tiny configs, runs."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from training.config import TrainConfig
from training.sagemaker_env import RunPaths, resolve_paths
from training.synthetic import make_synthetic_abid

#: A model and images small enough for a 2-core CPU shared with other jobs (all SageMaker-style strings).
TINY: dict[str, str] = {
    "architecture": "efficientnet_lite0",
    "pretrained": "false",
    "input_size": "32",
    "max_count": "3",
    "epochs": "2",
    "batch_size": "8",
    "lr": "0.003",
    "backbone_lr_mult": "1",
    "warmup_epochs": "0.5",
    "num_workers": "0",
    "threads": "1",
    "seed": "3",
}


def make_opt_ml(
    root: Path,
    hyperparameters: dict[str, str] | None = None,
    n_bins: int = 40,
    size: int = 40,
    max_count: int = 3,
    overflow_extra: int = 0,
    validation_bins: int = 0,
    seed: int = 0,
) -> Path:
    """A SageMaker training tree under ``root``: channels, hyperparameters.json, resourceconfig.json."""
    make_synthetic_abid(
        root / "input/data/train", n_bins, max_count=max_count, size=size, seed=seed, overflow_extra=overflow_extra
    )
    if validation_bins:
        make_synthetic_abid(
            root / "input/data/validation",
            validation_bins,
            max_count=max_count,
            size=size,
            seed=seed + 1,
            overflow_extra=overflow_extra,
            first_id=50_001,
        )
    config = root / "input/config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters if hyperparameters is not None else TINY))
    (config / "resourceconfig.json").write_text(
        json.dumps({"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0"})
    )
    return root


def tiny_config(**overrides: Any) -> TrainConfig:
    return TrainConfig(**{**TINY, **{k: str(v) for k, v in overrides.items()}})


def local_paths(root: Path, data: Path, name: str = "run") -> RunPaths:
    """Paths of a local run: data from ``data``, everything written under ``root/name``."""
    out = root / name
    return resolve_paths({"root": out, "train": data, "checkpoint_dir": out / "ckpt"}, environ={})


def subprocess_env(root: Path | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BINSIGHT_", "SM_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    if root is not None:
        env["BINSIGHT_OPT_ML"] = str(root)
    return env


def train_command(*args: str) -> list[str]:
    """The ``train`` console script of this environment, run the way SageMaker does (``train`` first)."""
    script = Path(sys.executable).parent / "train"
    base = [str(script)] if script.exists() else [sys.executable, "-m", "training"]
    return [*base, "train", *args]


def history_without_times(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in entry.items() if k != "epoch_time_s"} for entry in history]


def tiny_recipe_argv(root: Path, *options: str, seed: int = 4) -> tuple[list[str], Path, Path]:
    """Command line of a one-epoch default-model recipe run on 40 synthetic 96 px bins served at 64 px
    (augment ``orig``), with ``options`` after it; also the run's output and cache folders."""
    data, out, cache = root / "abid", root / "model", root / "cache"
    make_synthetic_abid(data, n_bins=40, max_count=5, size=96, seed=seed)
    argv = ["--data-dir", str(data), "--output-dir", str(out), "--cache-dir", str(cache), "--input-size", "64"]
    argv += ["--epochs", "1", "--batch-size", "16", "--threads", "1", "--augment", "orig", *options]
    return argv, out, cache
