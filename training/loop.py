"""The training run: data, model, epochs (train, validate, checkpoint), then the best epoch's artifact.

Read it top to bottom:

* :func:`build_run` makes every part of a run (model, optimiser, schedule, loss, loaders, placement)
  and returns them in one typed :class:`RunParts`;
* :func:`train_one_epoch` and :func:`validate` are the two phases, with their inputs in their
  signatures (as torchvision's reference ``train_one_epoch``); :func:`train_step` is one step;
* :func:`run_training` only sequences: resume from the checkpoint, run the epochs, checkpoint after
  each (and on a graceful stop), then :func:`write_outputs` for the best epoch.

One process or several (DistributedDataParallel under torchrun); only rank 0 logs, writes
checkpoints and writes the artifact. The run ends in one of two ways:

* ``completed``: the best epoch on validation (``select_metric``) is evaluated on the test split
  with serving's preprocessing (:func:`training.evaluate.evaluate_model`) and saved with
  :func:`service.artifact.save_artifact`, with ``split.json`` and ``history.json`` beside it and
  the metrics in the output data dir;
* ``interrupted``: SIGTERM (or a hook) stopped it; the checkpoint holds everything to resume.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.profiler import record_function
from torch.utils.data import DataLoader

from service.architectures import build_model, get_architecture
from service.artifact import metadata_for, save_artifact
from service.files import atomic_write_json
from service.preprocess import PreprocessSpec
from training import metric_names as names
from training.channels import PreparedData, prepare_data
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
from training.dataset import BadSample
from training.device import Placement
from training.distributed import DistContext, all_reduce, check_replicas, init_distributed, shutdown_distributed
from training.evaluate import HISTORY_FILE, evaluate_model
from training.init_weights import initialise_from_artifact
from training.labels import class_counts
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
from training.log import Log, fields_text, print_line, quiet
from training.log import Progress as ProgressDisplay
from training.losses import CornLoss, CountLoss, class_weights
from training.metrics import scalar_metrics
from training.norms import recalibrate, sample_items, smallest_momentum
from training.norms import wanted as recalibration_wanted
from training.optim import (
    apply_freeze,
    frozen_norms_to_eval,
    make_optimizer,
    make_scheduler,
    norms_to_eval,
    param_groups,
)
from training.report.run_report import NoWatch, RunReport
from training.sagemaker_env import RunPaths
from training.splits import SPLIT_MANIFEST_FILE, write_split_manifest

METRICS_FILE = "metrics.json"
MAX_SKIP_LOG_LINES = 20

#: ``after_step(global_step, stop)``: called after every optimiser step; may call ``stop.request()``.
AfterStep = Callable[[int, GracefulStop], None]


@dataclass
class TrainHooks:
    """Test and tooling hooks."""

    after_step: AfterStep | None = None


@dataclass
class RunResult:
    status: Literal["completed", "interrupted"]
    epochs_completed: int
    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    test_metrics: dict[str, Any] | None = None
    model_dir: Path | None = None


# --------------------------------------------------------------------------------------------
# Building a run
# --------------------------------------------------------------------------------------------


@dataclass
class RunParts:
    """Everything a run is made of, built once by :func:`build_run` and never reassigned."""

    config: TrainConfig
    ctx: DistContext
    placement: Placement
    data: PreparedData
    spec: PreprocessSpec  # serving's preprocessing, recorded in the artifact
    labels: list[str]
    class_values: list[float]  # the count of each class ("6+" counts as 6)
    model: nn.Module  # the bare module: state dicts, validation, the artifact
    net: nn.Module  # what trains: ``model``, or DistributedDataParallel around it
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    train_loader: DataLoader
    val_loader: DataLoader | None  # this worker's shard of the validation part
    norm_loader: DataLoader | None  # un-augmented training bins BatchNorm statistics are recomputed on, or None
    steps: int  # optimiser steps per epoch (per worker)
    num_workers: int
    trainable_params: int
    total_params: int
    init_model: dict[str, Any] | None = None  # the artifact the weights started from (init_model_dir), or None


@dataclass
class RunState:
    """What changes as the run goes, all of it in the checkpoint: progress and the best weights so far."""

    progress: Progress = field(default_factory=Progress)
    best_state: dict[str, torch.Tensor] | None = None
    resumed: bool = False


def build_run(config: TrainConfig, ctx: DistContext, data: PreparedData, log: Log) -> RunParts:
    """The model, optimiser, schedule, loss and loaders of a run on ``data``, seeded by ``config``'s train seed."""
    arch = get_architecture(config.architecture)
    spec = PreprocessSpec(input_size=config.effective_input_size, resize=config.resize, mean=arch.mean, std=arch.std)
    labels = data.policy.labels
    class_values = [float(label.rstrip("+")) for label in labels]
    placement = Placement.on(ctx.device, channels_last=config.channels_last, amp=config.amp, amp_dtype=config.amp_dtype)
    torch.manual_seed(mix_seed("init", config.effective_train_seed))
    random.seed(config.effective_train_seed)
    model = build_model(
        config.architecture,
        len(labels),
        pretrained=config.pretrained and config.init_model_dir is None,
        dropout=config.dropout,
        head=config.head,
        output_stride=config.output_stride,
    )
    init_model = initialise_from_artifact(model, config, labels, log) if config.init_model_dir else None
    trainable, total = apply_freeze(model, arch, config.freeze)
    placement.place_model(model)
    optimizer = make_optimizer(param_groups(model, arch, config), config)
    criterion = _make_criterion(config, data, class_values, log).to(ctx.device)
    train_items = data.split.train
    sampler = _train_sampler(config, ctx, train_items, len(labels))
    steps = steps_per_epoch(sampler, config.batch_size)
    net = _wrap_distributed(model, ctx, placement)
    num_workers = config.num_workers if config.num_workers is not None else auto_num_workers(ctx.local_world_size)
    norm_loader = _norm_loader(config, model, train_items, spec, placement)
    return RunParts(
        config=config,
        ctx=ctx,
        placement=placement,
        data=data,
        spec=spec,
        labels=labels,
        class_values=class_values,
        model=model,
        net=net,
        criterion=criterion,
        optimizer=optimizer,
        scheduler=make_scheduler(optimizer, config, steps),
        scaler=torch.amp.GradScaler(ctx.device.type, enabled=placement.scales_gradients),
        train_loader=train_loader(train_items, sampler, spec, config, num_workers, placement.cuda),
        val_loader=_val_loader(config, ctx, data, spec, num_workers, placement),
        norm_loader=norm_loader,
        steps=steps,
        num_workers=num_workers,
        trainable_params=trainable,
        total_params=total,
        init_model=init_model,
    )


def _make_criterion(config: TrainConfig, data: PreparedData, class_values: list[float], log: Log) -> nn.Module:
    """The count loss, its class weights (logged) when ``class_weighting`` is ``inverse``; CORN's with ``head=corn``
    (the model answers log class probabilities, which :class:`CornLoss` reads as they are)."""
    ordinal_weight = config.ordinal_weight if config.loss == "ordinal" else 0.0
    if config.head == "corn":
        if config.label_smoothing:
            log(f"label_smoothing: {config.label_smoothing} not used: the CORN head's loss has none")
        return CornLoss(class_values, ordinal_weight, inputs="log_probs")
    weights = None
    if config.class_weighting == "inverse":
        weights = class_weights(data.train_class_counts, power=config.class_weight_power)
        log(f"class_weights: {[round(float(w), 4) for w in weights]}")
    return CountLoss(class_values, config.label_smoothing, weights, ordinal_weight)


def _train_sampler(config: TrainConfig, ctx: DistContext, train_items: Sequence[Any], num_classes: int) -> EpochSampler:
    """This worker's epoch order over the training part (weighted with ``class_weighting=balanced_sampler``)."""
    balanced = config.class_weighting == "balanced_sampler"
    return EpochSampler(
        len(train_items),
        config.effective_train_seed,
        ctx.rank,
        ctx.world_size,
        weights=(sampling_weights(train_items, num_classes) if balanced else None),
    )


def _wrap_distributed(model: nn.Module, ctx: DistContext, placement: Placement) -> nn.Module:
    """What trains: ``model`` itself, or DistributedDataParallel around it under torchrun."""
    if not ctx.enabled:
        return model
    return DistributedDataParallel(model, device_ids=[ctx.device.index] if placement.cuda else None)


def _norm_loader(
    config: TrainConfig, model: nn.Module, train_items: Sequence[Any], spec: PreprocessSpec, placement: Placement
) -> DataLoader | None:
    """Un-augmented training bins to recompute BatchNorm statistics on (the same on every worker), or None."""
    if not recalibration_wanted(config.bn_recalibration, model, config.norm_mode):
        return None
    norm_items = sample_items(train_items, config.bn_recalibration_samples, config.seed)
    return eval_loader(norm_items, spec, config.batch_size, 0, placement.cuda)


def _val_loader(
    config: TrainConfig,
    ctx: DistContext,
    data: PreparedData,
    spec: PreprocessSpec,
    num_workers: int,
    placement: Placement,
) -> DataLoader | None:
    """This worker's shard of the validation part, or None without validation data."""
    if not data.split.val:
        return None
    val_shard = data.split.val[ctx.rank :: ctx.world_size]
    return eval_loader(val_shard, spec, config.effective_eval_batch_size, num_workers, placement.cuda)


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def resume(parts: RunParts, checkpoint: Path, log: Log) -> RunState:
    """Load the run's checkpoint into ``parts`` when there is one (rank 0's copy is the truth)."""
    ctx = parts.ctx
    payload = None
    if ctx.is_main:
        payload = load_checkpoint(checkpoint, parts.config, parts.data.fingerprint, ctx.world_size)
    if ctx.enabled:  # other hosts may not have the file (or an older one)
        shared = [payload]
        dist.broadcast_object_list(shared, src=0)
        payload = shared[0]
    if payload is None:
        return RunState()
    parts.model.load_state_dict(payload["model"])
    parts.optimizer.load_state_dict(payload["optimizer"])
    parts.scheduler.load_state_dict(payload["scheduler"])
    parts.scaler.load_state_dict(payload["scaler"])
    state = RunState(Progress.from_dict(payload["progress"]), payload.get("best_state"), resumed=True)
    restore_rng(payload.get("rng") or {})
    progress = state.progress
    log(
        f"resumed_from: {checkpoint} epoch: {progress.epoch} step_in_epoch: {progress.step_in_epoch} "
        f"global_step: {progress.global_step}"
    )
    return state


def save(parts: RunParts, state: RunState, checkpoint: Path) -> None:
    if parts.ctx.is_main:
        save_checkpoint(
            checkpoint,
            config=parts.config,
            data_fingerprint=parts.data.fingerprint,
            world_size=parts.ctx.world_size,
            progress=state.progress,
            model=parts.model,
            optimizer=parts.optimizer,
            scheduler=parts.scheduler,
            scaler=parts.scaler,
            best_state=state.best_state,
        )


# --------------------------------------------------------------------------------------------
# The phases
# --------------------------------------------------------------------------------------------


class SkippedImages:
    """Counts the images that failed to load (in ``progress.skipped_ids``, so a resumed run keeps
    counting) and fails the run when, with those found bad up front, they pass ``max_bad_fraction``."""

    def __init__(self, progress: Progress, data: PreparedData, max_bad_fraction: float, log: Log):
        self.progress, self.log, self.max_bad_fraction = progress, log, max_bad_fraction
        self.total = len(data.split.train) + len(data.split.val)
        self.bad_up_front = int(data.provenance["bad_images"])

    def __call__(self, skipped: Sequence[BadSample]) -> None:
        ids = self.progress.skipped_ids
        known = set(ids)
        for bad in skipped:
            if bad.id in known:
                continue
            known.add(bad.id)
            ids.append(bad.id)
            if len(ids) <= MAX_SKIP_LOG_LINES:
                self.log(f"skipped_image: {bad.id} reason: {bad.reason}")
        if (len(ids) + self.bad_up_front) / max(1, self.total) > self.max_bad_fraction:
            raise DataError(
                f"{len(ids)} images failed to load during training (plus {self.bad_up_front} found unreadable "
                f"up front), above max_bad_fraction {self.max_bad_fraction} of {self.total}; "
                f"e.g. {', '.join(ids[:3])}"
            )


def train_step(
    net: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    placement: Placement,
    images: torch.Tensor,
    targets: torch.Tensor,
    grad_clip: float,
    params: Sequence[torch.Tensor],
    before_update: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """One optimiser step; returns ``[loss * n, correct, n]`` (float64, on the device, not synchronised).

    ``before_update(loss, images)``, when given, sees the gradients unscaled and not yet clipped (the
    report's health probe). The ``record_function`` ranges split a profiler window's time by phase.
    """
    images, targets = placement.place_batch(images, targets)
    with record_function("binsight.forward"), placement.autocast():
        logits = net(images)
        loss = criterion(logits, targets)
    optimizer.zero_grad(set_to_none=True)
    with record_function("binsight.backward"):
        scaler.scale(loss).backward()
    with record_function("binsight.optimizer"):
        if grad_clip > 0 or before_update is not None:
            scaler.unscale_(optimizer)
        if before_update is not None:
            before_update(loss, images)
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        scaler.step(optimizer)
        scaler.update()
    n = targets.numel()
    correct = (logits.detach().argmax(1) == targets).sum()
    return torch.stack(
        [
            loss.detach().double() * n,
            correct.double(),
            torch.tensor(float(n), dtype=torch.float64, device=targets.device),
        ]
    )


def _agree_to_stop(stop: GracefulStop, too_small: bool, ctx: DistContext) -> bool:
    """Every worker stops at the same step; returns whether this step's batch is too small for all."""
    if not ctx.enabled:
        return too_small
    flags = torch.tensor([float(stop.requested), float(too_small)], device=ctx.device)
    all_reduce(flags, ctx, op="max")
    if bool(flags[0]) and not stop.requested:
        stop.request("peer")  # another worker was told to stop
    return bool(flags[1])


def _step_display(
    epoch: int,
    steps: int,
    start: int,
    every: int,
    sums: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    images_per_step: int,
    log: Log,
    wanted: bool = True,
) -> ProgressDisplay | None:
    """A bar on a terminal; else a ``step_progress:`` line every ``every`` steps (loss, lr, img/s, eta);
    None when not ``wanted``."""
    if not wanted:
        return None
    started = time.monotonic()

    def describe() -> dict[str, Any]:
        done = display.done - start
        return {
            names.EPOCH: epoch,
            names.STEP_LOSS: float(sums[0] / sums[2].clamp_min(1)),
            names.STEP_LR: optimizer.param_groups[0]["lr"],
            names.IMAGES_PER_S: f"{done * images_per_step / max(time.monotonic() - started, 1e-9):.1f}",
        }

    display = ProgressDisplay(
        names.STEP_PROGRESS,
        total=steps,
        unit="step",
        log=log,
        initial=start,
        interval_s=None,
        every=every,
        describe=describe,
    )
    return display


def train_one_epoch(
    net: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    loader: DataLoader,
    placement: Placement,
    ctx: DistContext,
    *,
    epoch: int,
    steps: int,
    seed: int,
    grad_clip: float,
    progress: Progress,
    stop: GracefulStop,
    norm_mode: str = "train",
    on_skipped: Callable[[list], None],
    log: Log = quiet,
    log_every: int = 0,
    after_step: AfterStep | None = None,
    watch: RunReport | NoWatch | None = None,
) -> torch.Tensor:
    """Train the rest of epoch ``epoch`` from ``progress.step_in_epoch``; returns the train sums
    ``[loss * n, correct, n]`` of the whole epoch (a resumed epoch starts from ``progress.partial``).

    Each step is seeded from ``(seed, epoch, step, rank)`` and the loader's order from ``(seed,
    epoch)``, so an epoch resumed part-way sees the batches the uninterrupted run saw. ``watch`` (the
    run's :class:`training.report.run_report.RunReport`) times each step and checks the model's health.
    """
    watch = watch or NoWatch()
    sums = torch.tensor(progress.partial.get("sums", [0.0, 0.0, 0.0]), dtype=torch.float64, device=ctx.device)
    start = step = progress.step_in_epoch
    if start >= steps:
        return sums
    batch_size = loader.batch_size or 1
    trainable = _enter_epoch(net, loader, epoch, start, norm_mode)
    tools = StepTools(net, criterion, optimizer, scaler, placement, grad_clip, trainable)
    wanted = ctx.is_main and log_every > 0
    display = _step_display(epoch, steps, start, log_every, sums, optimizer, batch_size * ctx.world_size, log, wanted)
    for images, targets, too_small in _batches(loader, batch_size, stop, on_skipped, ctx, watch):
        step_sums = None
        if not too_small:
            torch.manual_seed(mix_seed("step", seed, epoch, step, ctx.rank))
            step_sums = _placed_step(tools, images, targets, watch, progress.global_step + 1)
            sums += step_sums
        scheduler.step()
        step += 1
        _count_step(progress, step, step_sums, watch, display, after_step, stop)
        if step >= steps:
            break
    if display is not None:
        display.close()
    return sums


@dataclass(frozen=True)
class StepTools:
    """What every optimiser step of an epoch uses besides its batch (:func:`train_step`'s other inputs)."""

    net: nn.Module
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    placement: Placement
    grad_clip: float
    params: list[torch.Tensor]  # the trainable ones, clipped together


def _enter_epoch(net: nn.Module, loader: DataLoader, epoch: int, start: int, norm_mode: str) -> list[torch.Tensor]:
    """Train mode (frozen norms kept in eval; every norm with ``norm_mode`` frozen), the loader's order for
    ``epoch`` from step ``start`` on; returns the trainable parameters."""
    net.train()
    if norm_mode == "frozen":
        norms_to_eval(net)
    else:
        frozen_norms_to_eval(net)
    loader.sampler.set_epoch(epoch, start * (loader.batch_size or 1))
    return [p for p in net.parameters() if p.requires_grad]


def _batches(
    loader: DataLoader,
    batch_size: int,
    stop: GracefulStop,
    on_skipped: Callable[[list], None],
    ctx: DistContext,
    watch: RunReport | NoWatch,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, bool]]:
    """``(images, targets, too_small)`` per step until the loader ends or a stop (on any worker) is agreed;
    tells ``watch`` when each batch is wanted and when it arrived, and ``on_skipped`` what failed to load.

    The caller's leaving the loop (the epoch's last step) means no next batch is wanted."""
    batches = iterate_until_stopped(loader, stop)
    while True:
        watch.batch_wanted()
        try:
            images, targets, skipped = next(batches)
        except StopIteration:
            return
        watch.batch_arrived()
        if skipped:
            on_skipped(skipped)
        too_small = _agree_to_stop(stop, targets.numel() < min(2, batch_size), ctx)
        if stop.requested:
            return
        yield images, targets, too_small


def _placed_step(
    tools: StepTools, images: torch.Tensor, targets: torch.Tensor, watch: RunReport | NoWatch, global_step: int
) -> torch.Tensor:
    """:func:`train_step` on the batch, placed here to time the copy apart, with the health probe for the
    step that becomes ``global_step`` when it is checked."""
    images, targets = tools.placement.place_batch(images, targets)
    watch.batch_placed()
    probe = watch.health_probe(global_step)
    return train_step(
        tools.net,
        tools.criterion,
        tools.optimizer,
        tools.scaler,
        tools.placement,
        images,
        targets,
        tools.grad_clip,
        tools.params,
        before_update=probe,
    )


def _count_step(
    progress: Progress,
    step: int,
    step_sums: torch.Tensor | None,
    watch: RunReport | NoWatch,
    display: ProgressDisplay | None,
    after_step: AfterStep | None,
    stop: GracefulStop,
) -> None:
    """Step ``step`` of the epoch is done (trained, or skipped as too small): progress, report, display, hook."""
    progress.step_in_epoch = step
    progress.global_step += 1
    watch.step_done(step, progress.global_step, step_sums)
    if display is not None:
        display.update(1)
    if after_step is not None:
        after_step(progress.global_step, stop)


@torch.no_grad()
def validate(
    model: nn.Module,
    loader: DataLoader | None,
    placement: Placement,
    class_values: Sequence[float],
    stop: GracefulStop,
    on_skipped: Callable[[list], None],
) -> tuple[torch.Tensor, bool]:
    """Sums ``[loss * n, correct, squared error, absolute error, n]`` on ``loader`` (this worker's shard)
    and whether a stop was requested meanwhile (then the sums are partial)."""
    sums = torch.zeros(5, dtype=torch.float64, device=placement.device)
    if loader is None:
        return sums, False
    values = torch.tensor(list(class_values), dtype=torch.float64, device=placement.device)
    model.eval()
    try:
        for images, targets, skipped in loader:
            if stop.requested:
                return sums, True
            if skipped:
                on_skipped(skipped)
            if targets.numel() == 0:
                continue
            images, targets = placement.place_batch(images, targets)
            with placement.autocast():
                logits = model(images)
            logits = logits.float()
            error = values[logits.argmax(1)] - values[targets]
            sums += torch.stack(
                [
                    F.cross_entropy(logits, targets, reduction="sum").double(),
                    (error == 0).sum().double(),
                    (error**2).sum(),
                    error.abs().sum(),
                    torch.tensor(float(targets.numel()), dtype=torch.float64, device=placement.device),
                ]
            )
    finally:
        model.train()
    return sums, stop.requested


def epoch_entry(
    epoch: int, train_sums: torch.Tensor, val_sums: torch.Tensor, lr: float, seconds: float
) -> dict[str, Any]:
    """The epoch's line in ``history.json`` (and the log), keys from :mod:`training.metric_names`."""
    n = max(1.0, float(train_sums[2]))
    entry: dict[str, Any] = {
        names.EPOCH: epoch,
        "train_loss": float(train_sums[0]) / n,
        "train_acc": float(train_sums[1]) / n,
    }
    if float(val_sums[4]) > 0:
        vn = float(val_sums[4])
        entry.update(
            val_loss=float(val_sums[0]) / vn,
            val_acc=float(val_sums[1]) / vn,
            val_rmse=(float(val_sums[2]) / vn) ** 0.5,
            val_mae=float(val_sums[3]) / vn,
        )
    entry.update(lr=lr, epoch_time_s=round(seconds, 2))
    return entry


def _is_better(metric: str, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value > best if metric == "val_acc" else value < best


def _keep_if_best(parts: RunParts, state: RunState, entry: dict[str, Any]) -> None:
    progress, metric_name = state.progress, parts.config.select_metric
    metric = entry.get(metric_name)
    if metric is None:  # no validation data: the last epoch is the best one
        progress.best_epoch, progress.best_metric = entry[names.EPOCH], None
        state.best_state = None
    elif _is_better(metric_name, metric, progress.best_metric):
        progress.best_epoch, progress.best_metric = entry[names.EPOCH], metric
        state.best_state = {k: v.detach().to("cpu", copy=True) for k, v in parts.model.state_dict().items()}


# --------------------------------------------------------------------------------------------
# The runner
# --------------------------------------------------------------------------------------------


def run_epoch(
    parts: RunParts,
    state: RunState,
    epoch: int,
    stop: GracefulStop,
    checkpoint: Path,
    log: Log,
    hooks: TrainHooks,
    report: RunReport,
) -> bool:
    """Train, recalibrate BatchNorm statistics, validate and checkpoint epoch ``epoch``; ``False`` when
    stopped (after saving)."""
    ctx, progress = parts.ctx, state.progress
    started = time.monotonic()
    on_skipped = SkippedImages(progress, parts.data, parts.config.max_bad_fraction, log)
    report.start_epoch(epoch)
    sums = _train_phase(parts, progress, epoch, stop, on_skipped, log, hooks, report)
    timing = report.end_training()
    stopped = stop.requested and progress.step_in_epoch < parts.steps
    recalibration = None
    if not stopped and parts.norm_loader is not None:
        # The statistics validation uses and the checkpoint, best weights and artifact keep (training.norms).
        recalibration = recalibrate(parts.model, parts.norm_loader, parts.placement)
    if not stopped:
        val_sums, stopped = validate(
            parts.model, parts.val_loader, parts.placement, parts.class_values, stop, on_skipped
        )
    if ctx.enabled:
        stopped = bool(all_reduce(torch.tensor([float(stopped)], device=ctx.device), ctx, op="max")[0])
    if stopped:
        progress.partial = {"sums": sums.tolist()}
        save(parts, state, checkpoint)
        return False
    all_reduce(sums, ctx)
    all_reduce(val_sums, ctx)
    entry = epoch_entry(epoch, sums, val_sums, parts.optimizer.param_groups[0]["lr"], time.monotonic() - started)
    _record_epoch(parts, state, entry, log, report, timing, recalibration.as_dict() if recalibration else None)
    save(parts, state, checkpoint)
    return True


def _train_phase(
    parts: RunParts,
    progress: Progress,
    epoch: int,
    stop: GracefulStop,
    on_skipped: SkippedImages,
    log: Log,
    hooks: TrainHooks,
    report: RunReport,
) -> torch.Tensor:
    """:func:`train_one_epoch` with the run's parts and configuration; returns the epoch's train sums."""
    cfg = parts.config
    return train_one_epoch(
        parts.net,
        parts.criterion,
        parts.optimizer,
        parts.scheduler,
        parts.scaler,
        parts.train_loader,
        parts.placement,
        parts.ctx,
        epoch=epoch,
        steps=parts.steps,
        seed=cfg.effective_train_seed,
        grad_clip=cfg.grad_clip,
        norm_mode=cfg.norm_mode,
        progress=progress,
        stop=stop,
        on_skipped=on_skipped,
        log=log,
        log_every=cfg.log_every_steps,
        after_step=hooks.after_step,
        watch=report,
    )


def _record_epoch(
    parts: RunParts,
    state: RunState,
    entry: dict[str, Any],
    log: Log,
    report: RunReport,
    timing: dict[str, Any],
    recalibration: dict[str, Any] | None,
) -> None:
    """A completed epoch: into the history (keeping the best weights), the log and the report; the
    progress then points at the next epoch's start (the caller checkpoints)."""
    progress = state.progress
    progress.history.append(entry)
    _keep_if_best(parts, state, entry)
    log(fields_text(entry))
    report.end_epoch(entry, progress.history, timing, recalibration)
    progress.epoch, progress.step_in_epoch, progress.partial = entry[names.EPOCH], 0, {}


def run_training(
    config: TrainConfig, paths: RunPaths, log: Log = print_line, hooks: TrainHooks | None = None
) -> RunResult:
    """Train per ``config`` on ``paths``; joins the process group when started by torchrun."""
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    ctx = init_distributed(config)
    hooks = hooks or TrainHooks()
    log = log if ctx.is_main else quiet
    started = time.monotonic()
    report = RunReport(config, paths.output_data_dir, ctx.device, is_main=ctx.is_main, log=log, started=started)
    try:
        with GracefulStop() as stop:
            log(
                f"train_start: architecture: {config.architecture} device: {ctx.device} "
                f"world_size: {ctx.world_size} recipe_hash: {config.recipe_hash()}"
            )
            parts = build_run(config, ctx, prepare_data(config, paths, log), log)
            checkpoint = paths.checkpoint_dir / CHECKPOINT_FILE
            state = resume(parts, checkpoint, log)
            progress = state.progress
            report.start(
                run_info(parts),
                [p for p in parts.model.parameters() if p.requires_grad],
                resumed=state.resumed,
                global_step=progress.global_step,
            )
            log(
                f"train_plan: epochs: {config.epochs} steps_per_epoch: {parts.steps} batch_size: {config.batch_size} "
                f"num_workers: {parts.num_workers} trainable_params: {parts.trainable_params} "
                f"total_params: {parts.total_params} start_epoch: {progress.epoch + 1}"
            )
            for epoch in range(progress.epoch + 1, config.epochs + 1):
                if not run_epoch(parts, state, epoch, stop, checkpoint, log, hooks, report):
                    log(
                        f"training_interrupted: {stop.reason} epoch: {epoch} "
                        f"step: {progress.step_in_epoch}/{parts.steps} checkpoint: {checkpoint}"
                    )
                    return RunResult("interrupted", progress.epoch, progress.best_epoch, progress.history)
            if replicas := check_replicas(parts.model, ctx):  # every worker: a collective
                log(replicas)
            # Everything worth keeping is in the checkpoint: from here a SIGTERM may end the process at once.
            stop.release()
            if not ctx.is_main:
                return RunResult("completed", progress.epoch, progress.best_epoch, progress.history)
            result = write_outputs(parts, state, paths, time.monotonic() - started, log)
            report.finish()
            return result
    finally:
        report.close()
        shutdown_distributed()


def run_info(parts: RunParts) -> dict[str, Any]:
    """What the report's rules read of the run besides its records (training.report.rules)."""
    split, k = parts.data.split, len(parts.labels)
    return {
        "labels": parts.labels,
        "train_class_counts": [int(c) for c in parts.data.train_class_counts],
        "val_class_counts": [int(c) for c in class_counts(split.val, k)] if split.val else [],
        "num_workers": parts.num_workers,
        "steps_per_epoch": parts.steps,
        "world_size": parts.ctx.world_size,
        "trainable_parameters": parts.trainable_params,
        "batchnorm": {
            "recalibration": parts.norm_loader is not None,
            "smallest_momentum": smallest_momentum(parts.model),
        },
    }


# --------------------------------------------------------------------------------------------
# The outputs
# --------------------------------------------------------------------------------------------


def _recipe(parts: RunParts, state: RunState) -> dict[str, Any]:
    """What the artifact records of how it was trained (``model.json``'s ``training``)."""
    cfg, progress = parts.config, state.progress
    return {
        **cfg.model_dump(mode="json"),
        "input_size": parts.spec.input_size,
        "recipe_hash": cfg.recipe_hash(),
        "epochs_completed": progress.epoch,
        "best_epoch": progress.best_epoch,
        "select_metric": cfg.select_metric,
        "steps_per_epoch": parts.steps,
        "world_size": parts.ctx.world_size,
        "device_used": str(parts.ctx.device),
        "amp_used": cfg.amp_dtype if parts.placement.amp else None,
        "trainable_parameters": parts.trainable_params,
        "total_parameters": parts.total_params,
        "resumed": state.resumed,
        "init_model": parts.init_model,
        "bn_recalibration_used": parts.norm_loader is not None,
        "torch": torch.__version__,
    }


def write_outputs(parts: RunParts, state: RunState, paths: RunPaths, seconds: float, log: Log) -> RunResult:
    """Evaluate the best epoch on the test part and write the artifact, split, history and metrics."""
    cfg, data, progress = parts.config, parts.data, state.progress
    if state.best_state is not None:
        parts.model.load_state_dict(state.best_state)
    parts.model.eval()
    provenance = {
        **data.provenance,
        "skipped_at_load": len(progress.skipped_ids),
        "skipped_at_load_examples": progress.skipped_ids[:10],
        "split_manifest": SPLIT_MANIFEST_FILE,
    }
    metadata = metadata_for(
        cfg.architecture,
        parts.labels,
        input_size=parts.spec.input_size,
        resize=cfg.resize,
        dropout=cfg.dropout,
        head=cfg.head,
        output_stride=cfg.output_stride,
        data=provenance,
        training=_recipe(parts, state),
    )
    best_entry = next((e for e in progress.history if e[names.EPOCH] == progress.best_epoch), {})
    metrics: dict[str, Any] = {
        "best_epoch": progress.best_epoch,
        "val": {k: v for k, v in best_entry.items() if k.startswith("val_")},
    }
    test_metrics = None
    if data.split.test:
        test_metrics = evaluate_model(
            parts.model,
            metadata,
            data.split.test,
            batch_size=cfg.effective_eval_batch_size,
            tta_flip=cfg.tta_flip,
            num_workers=parts.num_workers,
            device=parts.ctx.device,
        )
        metrics["test"] = test_metrics
        log(format_test_line(test_metrics))
    else:
        log("test: none (test_fraction is 0 and there is no test channel)")
    metadata = metadata.model_copy(update={"metrics": metrics})
    model_dir = paths.model_dir
    save_artifact(model_dir, parts.model, metadata)
    write_split_manifest(
        model_dir / SPLIT_MANIFEST_FILE,
        data.split,
        extra={"labels": parts.labels, "channels": data.provenance["channels"]},
    )
    atomic_write_json(model_dir / HISTORY_FILE, progress.history)
    atomic_write_json(
        paths.output_data_dir / METRICS_FILE,
        {**metrics, "history": progress.history, "data": provenance, "train_seconds": round(seconds, 1)},
    )
    log(f"model_saved: {model_dir} metrics: {paths.output_data_dir / METRICS_FILE}")
    return RunResult("completed", progress.epoch, progress.best_epoch, progress.history, test_metrics, model_dir)


def format_test_line(metrics: dict[str, Any]) -> str:
    """``test_acc: 0.4000 test_rmse: ... test_n: 1104 test_skipped: 0`` from :func:`evaluate_model`'s dict."""
    scalars = {**scalar_metrics(metrics), "loss": metrics["loss"]}
    fields: dict[str, Any] = {name: float(scalars[key]) for key, name in names.TEST_METRICS.items() if key in scalars}
    return fields_text({**fields, names.TEST_N: metrics["n"], names.TEST_SKIPPED: metrics["skipped"]})
