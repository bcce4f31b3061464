"""The training run: data, model, epochs (train, validate, checkpoint), then the best epoch's artifact.

One process or several (DistributedDataParallel under torchrun); only rank 0 logs epochs, writes
checkpoints and writes the artifact. The run ends in one of two ways:

* ``completed``: the best epoch on validation (``select_metric``) is evaluated on the test split
  with serving's preprocessing (:func:`training.evaluate.evaluate_model`) and saved with
  :func:`service.artifact.save_artifact`, with ``split.json`` and ``history.json`` beside it and
  the metrics in the output data dir;
* ``interrupted``: SIGTERM (or a hook) stopped it; the checkpoint holds everything to resume.
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from service.architectures import build_model, get_architecture
from service.artifact import metadata_for, save_artifact
from service.preprocess import PreprocessSpec
from training.checkpoint import (
    CHECKPOINT_FILE,
    GracefulStop,
    Progress,
    iterate_until_stopped,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from training.config import TrainConfig
from training.channels import prepare_data
from training.distributed import DistContext, all_reduce, init_distributed, shutdown_distributed
from training.evaluate import HISTORY_FILE, evaluate_model
from training.layouts import DataError
from training.loaders import (
    EpochSampler,
    auto_num_workers,
    eval_loader,
    mix_seed,
    sampling_weights,
    steps_per_epoch,
    train_loader,
)
from training.losses import CountLoss, class_weights
from training.metrics import scalar_metrics
from training.optim import apply_freeze, frozen_norms_to_eval, make_optimizer, make_scheduler, param_groups
from training.sagemaker_env import RunPaths
from training.splits import SPLIT_MANIFEST_FILE, write_split_manifest

Log = Callable[[str], None]
METRICS_FILE = "metrics.json"
MAX_SKIP_LOG_LINES = 20


def _print(line: str) -> None:
    print(line, flush=True)


def _quiet(line: str) -> None:
    pass


@dataclass
class TrainHooks:
    """Test and tooling hooks. ``after_step(global_step, stop)`` may call ``stop.request()``."""

    after_step: Callable[[int, GracefulStop], None] | None = None


@dataclass
class RunResult:
    status: Literal["completed", "interrupted"]
    epochs_completed: int
    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    test_metrics: dict[str, Any] | None = None
    model_dir: Path | None = None


def _fmt(value: float) -> str:
    return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"


def _is_better(metric: str, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value > best if metric == "val_acc" else value < best


def run_training(config: TrainConfig, paths: RunPaths, log: Log = _print,
                 hooks: TrainHooks | None = None) -> RunResult:
    """Train per ``config`` on ``paths``; joins the process group when started by torchrun."""
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    ctx = init_distributed(config)
    try:
        with GracefulStop() as stop:
            return _Run(config, paths, ctx, stop, log if ctx.is_main else _quiet, hooks or TrainHooks()).run()
    finally:
        shutdown_distributed()


class _Run:
    """One run's state; methods are the phases. Kept in a class so the phases share it without globals."""

    def __init__(self, config: TrainConfig, paths: RunPaths, ctx: DistContext, stop: GracefulStop, log: Log,
                 hooks: TrainHooks):
        self.config, self.paths, self.ctx, self.stop, self.log, self.hooks = config, paths, ctx, stop, log, hooks
        self.device = ctx.device
        self.cuda = self.device.type == "cuda"
        self.use_amp = self.cuda and config.amp
        self.amp_dtype = getattr(torch, config.amp_dtype)
        self.started = time.monotonic()

    # ---------------------------------------------------------------------------------------
    def run(self) -> RunResult:
        cfg, log = self.config, self.log
        log(f"train_start: architecture: {cfg.architecture} device: {self.device} world_size: {self.ctx.world_size} "
            f"recipe_hash: {cfg.recipe_hash()}")
        self.data = prepare_data(cfg, self.paths, log)
        self._build()
        self._resume()
        num_workers = cfg.num_workers if cfg.num_workers is not None else auto_num_workers(self.ctx.local_world_size)
        self.num_workers = num_workers
        self.loader = train_loader(self.data.split.train, self.sampler, self.spec, cfg, num_workers, self.cuda)
        val_shard = self.data.split.val[self.ctx.rank::self.ctx.world_size]
        self.val_loader = (eval_loader(val_shard, self.spec, cfg.effective_eval_batch_size, num_workers, self.cuda)
                           if self.data.split.val else None)
        log(f"train_plan: epochs: {cfg.epochs} steps_per_epoch: {self.steps} batch_size: {cfg.batch_size} "
            f"num_workers: {num_workers} trainable_params: {self.trainable} total_params: {self.total_params} "
            f"start_epoch: {self.progress.epoch + 1}")
        for epoch in range(self.progress.epoch + 1, cfg.epochs + 1):
            if not self._epoch(epoch):
                log(f"training_interrupted: {self.stop.reason} epoch: {epoch} "
                    f"step: {self.progress.step_in_epoch}/{self.steps} checkpoint: {self.checkpoint_path}")
                return RunResult("interrupted", self.progress.epoch, self.progress.best_epoch, self.progress.history)
        # Everything worth keeping is in the checkpoint: from here a SIGTERM may end the process at once.
        self.stop.release()
        if not self.ctx.is_main:
            return RunResult("completed", self.progress.epoch, self.progress.best_epoch, self.progress.history)
        return self._finish()

    # ---------------------------------------------------------------------------------------
    def _build(self) -> None:
        cfg, data = self.config, self.data
        self.arch = get_architecture(cfg.architecture)
        self.spec = PreprocessSpec(input_size=cfg.effective_input_size, resize=cfg.resize,
                                   mean=self.arch.mean, std=self.arch.std)
        self.labels = data.policy.labels
        self.class_values = [float(label.rstrip("+")) for label in self.labels]
        torch.manual_seed(mix_seed("init", cfg.seed))
        random.seed(cfg.seed)
        model = build_model(cfg.architecture, len(self.labels), pretrained=cfg.pretrained, dropout=cfg.dropout)
        self.trainable, self.total_params = apply_freeze(model, self.arch, cfg.freeze)
        model.to(self.device)
        if self.cuda and cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.trainable_params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(param_groups(model, self.arch, cfg), cfg)
        weights = None
        if cfg.class_weighting == "inverse":
            weights = class_weights(data.train_class_counts, power=cfg.class_weight_power)
            self.log(f"class_weights: {[round(float(w), 4) for w in weights]}")
        self.criterion = CountLoss(self.class_values, cfg.label_smoothing, weights,
                                   cfg.ordinal_weight if cfg.loss == "ordinal" else 0.0).to(self.device)
        sample_weights = (sampling_weights(data.split.train, len(self.labels))
                          if cfg.class_weighting == "balanced_sampler" else None)
        self.sampler = EpochSampler(len(data.split.train), cfg.seed, self.ctx.rank, self.ctx.world_size,
                                    weights=sample_weights)
        self.steps = steps_per_epoch(self.sampler, cfg.batch_size)
        self.scheduler = make_scheduler(self.optimizer, cfg, self.steps)
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=self.use_amp and self.amp_dtype == torch.float16)
        self.net: nn.Module = model
        if self.ctx.enabled:
            self.net = DistributedDataParallel(model, device_ids=[self.device.index] if self.cuda else None)

    def _resume(self) -> None:
        self.checkpoint_path = self.paths.checkpoint_dir / CHECKPOINT_FILE
        self.progress = Progress()
        self.best_state: dict[str, torch.Tensor] | None = None
        payload = None
        if self.ctx.is_main:
            payload = load_checkpoint(self.checkpoint_path, self.config, self.data.fingerprint, self.ctx.world_size)
        if self.ctx.enabled:
            # Rank 0's checkpoint is the truth: other hosts may not have the file (or an older one).
            shared = [payload]
            dist.broadcast_object_list(shared, src=0)
            payload = shared[0]
        if payload is None:
            self.resumed = False
            return
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.scaler.load_state_dict(payload["scaler"])
        self.progress = Progress.from_dict(payload["progress"])
        self.best_state = payload.get("best_state")
        restore_rng(payload.get("rng") or {})
        self.resumed = True
        self.log(f"resumed_from: {self.checkpoint_path} epoch: {self.progress.epoch} "
                 f"step_in_epoch: {self.progress.step_in_epoch} global_step: {self.progress.global_step}")

    def _save(self) -> None:
        if self.ctx.is_main:
            save_checkpoint(self.checkpoint_path, config=self.config, data_fingerprint=self.data.fingerprint,
                            world_size=self.ctx.world_size, progress=self.progress, model=self.model,
                            optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler,
                            best_state=self.best_state)

    # ---------------------------------------------------------------------------------------
    def _note_skipped(self, skipped: list) -> None:
        known = set(self.progress.skipped_ids)
        for bad in skipped:
            if bad.id in known:
                continue
            known.add(bad.id)
            self.progress.skipped_ids.append(bad.id)
            if len(self.progress.skipped_ids) <= MAX_SKIP_LOG_LINES:
                self.log(f"skipped_image: {bad.id} reason: {bad.reason}")
        total = len(self.data.split.train) + len(self.data.split.val)
        bad_share = (len(self.progress.skipped_ids) + self.data.provenance["bad_images"]) / max(1, total)
        if bad_share > self.config.max_bad_fraction:
            raise DataError(
                f"{len(self.progress.skipped_ids)} images failed to load during training (plus "
                f"{self.data.provenance['bad_images']} found unreadable up front), above max_bad_fraction "
                f"{self.config.max_bad_fraction} of {total}; e.g. {', '.join(self.progress.skipped_ids[:3])}")

    def _progress_bar(self, epoch: int, start: int):
        if not (self.ctx.is_main and sys.stderr.isatty()):
            return None
        from tqdm import tqdm

        return tqdm(total=self.steps, initial=start, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True)

    def _train_steps(self, epoch: int) -> torch.Tensor:
        """Run the rest of epoch ``epoch``; returns the train sums ``[loss * n, correct, n]``."""
        cfg, progress = self.config, self.progress
        sums = torch.tensor(progress.partial.get("sums", [0.0, 0.0, 0.0]), dtype=torch.float64, device=self.device)
        start = progress.step_in_epoch
        if start >= self.steps:
            return sums
        self.net.train()
        frozen_norms_to_eval(self.net)
        self.sampler.set_epoch(epoch, start * cfg.batch_size)
        bar = self._progress_bar(epoch, start)
        step = start
        for images, targets, skipped in iterate_until_stopped(self.loader, self.stop):
            if skipped:
                self._note_skipped(skipped)
            too_small = targets.numel() < min(2, cfg.batch_size)
            if self.ctx.enabled:
                flags = torch.tensor([float(self.stop.requested), float(too_small)], device=self.device)
                all_reduce(flags, self.ctx, op="max")
                if bool(flags[0]) and not self.stop.requested:
                    self.stop.request("peer")  # another worker was told to stop: stop at the same step
                too_small = bool(flags[1])
            if self.stop.requested:
                break
            if not too_small:
                torch.manual_seed(mix_seed("step", cfg.seed, epoch, step, self.ctx.rank))
                sums += self._step(images, targets)
            self.scheduler.step()
            step += 1
            progress.step_in_epoch = step
            progress.global_step += 1
            if bar is not None:
                bar.update(1)
            if self.hooks.after_step is not None:
                self.hooks.after_step(progress.global_step, self.stop)
            if step >= self.steps:
                break
        if bar is not None:
            bar.close()
        return sums

    def _step(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        if self.cuda and cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            logits = self.net(images)
            loss = self.criterion(logits, targets)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.trainable_params, cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        n = targets.numel()
        correct = (logits.detach().argmax(1) == targets).sum()
        return torch.stack([loss.detach().double() * n, correct.double(),
                            torch.tensor(float(n), dtype=torch.float64, device=self.device)])

    @torch.no_grad()
    def _validate(self) -> tuple[torch.Tensor, bool]:
        """Sums ``[loss * n, correct, squared error, absolute error, n]`` on this worker's val shard."""
        sums = torch.zeros(5, dtype=torch.float64, device=self.device)
        if self.val_loader is None:
            return sums, False
        values = torch.tensor(self.class_values, dtype=torch.float64, device=self.device)
        self.model.eval()
        try:
            for images, targets, skipped in self.val_loader:
                if self.stop.requested:
                    return sums, True
                if skipped:
                    self._note_skipped(skipped)
                if targets.numel() == 0:
                    continue
                images = images.to(self.device, non_blocking=True)
                targets = targets.to(self.device, non_blocking=True)
                if self.cuda and self.config.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
                    logits = self.model(images)
                logits = logits.float()
                error = values[logits.argmax(1)] - values[targets]
                sums += torch.stack([F.cross_entropy(logits, targets, reduction="sum").double(),
                                     (error == 0).sum().double(), (error ** 2).sum(), error.abs().sum(),
                                     torch.tensor(float(targets.numel()), dtype=torch.float64, device=self.device)])
        finally:
            self.model.train()
        return sums, self.stop.requested

    def _epoch(self, epoch: int) -> bool:
        """Train, validate and checkpoint one epoch; ``False`` when stopped (after saving)."""
        cfg, progress = self.config, self.progress
        started = time.monotonic()
        sums = self._train_steps(epoch)
        stopped = self.stop.requested and progress.step_in_epoch < self.steps
        if not stopped:
            val_sums, stopped = self._validate()
        if self.ctx.enabled:
            flag = torch.tensor([float(stopped)], device=self.device)
            stopped = bool(all_reduce(flag, self.ctx, op="max")[0])
        if stopped:
            progress.partial = {"sums": sums.tolist()}
            self._save()
            return False
        all_reduce(sums, self.ctx)
        all_reduce(val_sums, self.ctx)
        entry: dict[str, Any] = {"epoch": epoch}
        n = max(1.0, float(sums[2]))
        entry["train_loss"] = float(sums[0]) / n
        entry["train_acc"] = float(sums[1]) / n
        if float(val_sums[4]) > 0:
            vn = float(val_sums[4])
            entry.update(val_loss=float(val_sums[0]) / vn, val_acc=float(val_sums[1]) / vn,
                         val_rmse=(float(val_sums[2]) / vn) ** 0.5, val_mae=float(val_sums[3]) / vn)
        entry["lr"] = self.optimizer.param_groups[0]["lr"]
        entry["epoch_time_s"] = round(time.monotonic() - started, 2)
        progress.history.append(entry)
        metric = entry.get(cfg.select_metric)
        if metric is None:  # no validation data: the last epoch is the best one
            progress.best_epoch, progress.best_metric = epoch, None
            self.best_state = None
        elif _is_better(cfg.select_metric, metric, progress.best_metric):
            progress.best_epoch, progress.best_metric = epoch, metric
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        self.log(" ".join(f"{k}: {v if k == 'epoch' else _fmt(v)}" for k, v in entry.items()))
        progress.epoch, progress.step_in_epoch, progress.partial = epoch, 0, {}
        self._save()
        return True

    # ---------------------------------------------------------------------------------------
    def _finish(self) -> RunResult:
        cfg, data, progress = self.config, self.data, self.progress
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        self.model.eval()
        provenance = dict(data.provenance)
        provenance["skipped_at_load"] = len(progress.skipped_ids)
        provenance["skipped_at_load_examples"] = progress.skipped_ids[:10]
        provenance["split_manifest"] = SPLIT_MANIFEST_FILE
        recipe = {
            **cfg.model_dump(mode="json"),
            "input_size": self.spec.input_size,
            "recipe_hash": cfg.recipe_hash(),
            "epochs_completed": progress.epoch,
            "best_epoch": progress.best_epoch,
            "select_metric": cfg.select_metric,
            "steps_per_epoch": self.steps,
            "world_size": self.ctx.world_size,
            "device_used": str(self.device),
            "amp_used": cfg.amp_dtype if self.use_amp else None,
            "trainable_parameters": self.trainable,
            "total_parameters": self.total_params,
            "resumed": self.resumed,
            "torch": torch.__version__,
        }
        metadata = metadata_for(cfg.architecture, self.labels, input_size=self.spec.input_size, resize=cfg.resize,
                                dropout=cfg.dropout, data=provenance, training=recipe)
        best_entry = next((e for e in progress.history if e["epoch"] == progress.best_epoch), {})
        metrics: dict[str, Any] = {"best_epoch": progress.best_epoch,
                                   "val": {k: v for k, v in best_entry.items() if k.startswith("val_")}}
        test_metrics = None
        if data.split.test:
            test_metrics = evaluate_model(self.model, metadata, data.split.test,
                                          batch_size=cfg.effective_eval_batch_size, tta_flip=cfg.tta_flip,
                                          num_workers=self.num_workers, device=self.device)
            metrics["test"] = test_metrics
            self._log_test(test_metrics)
        else:
            self.log("test: none (test_fraction is 0 and there is no test channel)")
        metadata = metadata.model_copy(update={"metrics": metrics})
        model_dir = self.paths.model_dir
        save_artifact(model_dir, self.model, metadata)
        write_split_manifest(model_dir / SPLIT_MANIFEST_FILE, data.split,
                             extra={"labels": self.labels, "channels": data.provenance["channels"]})
        _write_json(model_dir / HISTORY_FILE, progress.history)
        _write_json(self.paths.output_data_dir / METRICS_FILE,
                    {**metrics, "history": progress.history, "data": provenance,
                     "train_seconds": round(time.monotonic() - self.started, 1)})
        self.log(f"model_saved: {model_dir} metrics: {self.paths.output_data_dir / METRICS_FILE}")
        return RunResult("completed", progress.epoch, progress.best_epoch, progress.history, test_metrics, model_dir)

    def _log_test(self, m: dict[str, Any]) -> None:
        names = {"accuracy": "test_acc", "rmse": "test_rmse", "mae": "test_mae",
                 "off_by_one_accuracy": "test_off_by_one_acc", "macro_f1": "test_macro_f1", "n": "test_n"}
        scalars = scalar_metrics(m)
        parts = [f"{name}: {scalars[k] if k == 'n' else f'{scalars[k]:.4f}'}" for k, name in names.items()
                 if k in scalars]
        self.log(" ".join(parts + [f"test_loss: {m['loss']:.4f}", f"test_skipped: {m['skipped']}"]))


def _write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)
