"""Fine-tuning the top of a network on cached trunk features, with the library's loss and schedule.

One call trains for ``epochs`` epochs and keeps the epoch with the best validation accuracy (the
served answer: argmax over every class). After every epoch the state goes to a checkpoint file, so
an interrupted recipe resumes where it stopped and ends with the same weights.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from service.files import atomic_write
from service.ordinal_head import corn_log_probs
from training.item_targets import masked_mse
from training.losses import CornLoss, CountLoss
from training.metrics import compute_metrics
from training.optim import lr_factor
from training.recipes.lite_parts import classify, num_blocks, top_forward, top_pooled, top_state, tuned_prefixes

Log = Callable[..., None]


@dataclass(frozen=True)
class TopTraining:
    """The optimisation settings of :func:`train_top` (a slice of the recipe's config)."""

    first_block: int
    epochs: int
    batch_size: int
    lr: float
    head_lr: float
    weight_decay: float
    label_smoothing: float
    ordinal_weight: float
    feature_dropout: float
    warmup_epochs: float
    min_lr_ratio: float
    augment: tuple[str, ...]
    seed: int
    select_best: bool = True
    aux_weight: float = 0.0  # weight of the item-metadata targets' loss (training.item_targets), 0: off
    distill_weight: float = 0.0  # share of the loss that matches the teachers' probabilities (with soft targets)
    head: str = "softmax"  # or "corn" (service.ordinal_head): the model's classifier is then a CornHead
    block_lr_decay: float = 1.0  # block i learns at lr * decay ** (last block - i); 1: every block at lr
    drop_connect: float = 0.0  # stochastic depth of the tuned blocks (lite_parts.blocks_forward); 0: off
    lr_cycles: int = 1  # cosine cycles with warm restarts (training.optim.lr_factor); 1: one cosine
    early_augment: tuple[str, ...] = ()  # progressive resizing: the views the first early_epochs draw from
    early_epochs: int = 0  # (features of lower-resolution photos, e.g. "orig@224"); 0: off

    def views(self, epoch: int) -> tuple[str, ...]:
        """The feature sets epoch ``epoch`` (from 1) draws its batches from."""
        return self.early_augment if epoch <= self.early_epochs else self.augment


@dataclass
class _AuxTask:
    """A train-time head that predicts the item-metadata targets from the pooled features (not saved)."""

    head: nn.Linear
    targets: torch.Tensor  # (bins, targets), NaN where unknown
    weight: float

    def loss(self, pooled: torch.Tensor, batch: list[int]) -> torch.Tensor:
        return self.weight * masked_mse(self.head(pooled), self.targets[batch])


def _aux_task(model: nn.Module, targets: torch.Tensor | None, cfg: TopTraining) -> _AuxTask | None:
    if not cfg.aux_weight or targets is None:
        return None
    return _AuxTask(nn.Linear(model._fc.in_features, targets.shape[1]), targets, cfg.aux_weight)


def _lr_scale(name: str, last_block: int, decay: float) -> float:
    """Layer-wise learning-rate decay: ``decay ** (last_block - i)`` for a parameter of block i, 1 otherwise
    (the head convolution, its norm and the classifier)."""
    if decay == 1.0 or not name.startswith("_blocks."):
        return 1.0
    return decay ** (last_block - int(name.split(".")[1]))


def _param_groups(
    model: nn.Module, prefixes: tuple[str, ...], cfg: TopTraining, aux: _AuxTask | None = None
) -> list[dict]:
    groups: dict[tuple[bool, bool, float], list[nn.Parameter]] = {}
    last_block = num_blocks(model) - 1
    for name, param in model.named_parameters():
        tuned = name.startswith(prefixes)
        param.requires_grad_(tuned)
        if tuned:
            scale = _lr_scale(name, last_block, cfg.block_lr_decay)
            groups.setdefault((name.startswith("_fc."), param.ndim > 1, scale), []).append(param)
    if aux is not None:  # trained like the classifier
        for param in aux.head.parameters():
            groups.setdefault((True, param.ndim > 1, 1.0), []).append(param)
    return [
        {
            "params": params,
            "lr": cfg.head_lr if head else cfg.lr * scale,
            "weight_decay": cfg.weight_decay if decay else 0.0,
        }
        for (head, decay, scale), params in sorted(groups.items())
    ]


@torch.inference_mode()
def top_probabilities(
    model: nn.Module, features: torch.Tensor, index: Sequence[int], first_block: int, chunk: int = 256
) -> torch.Tensor:
    """Softmax of the top over ``features[index]`` in eval mode."""
    model.eval()
    out = [
        top_forward(model, features[list(index[s : s + chunk])].float(), first_block).softmax(1)
        for s in range(0, len(index), chunk)
    ]
    return torch.cat(out) if out else torch.empty(0)


@torch.no_grad()
def recalibrate_norms(
    model: nn.Module,
    features: torch.Tensor,
    index: Sequence[int],
    first_block: int,
    prefixes: tuple[str, ...],
    samples: int = 2048,
    seed: int = 0,
    chunk: int = 128,
) -> None:
    """Recompute the running statistics of the top's BatchNorm layers on un-augmented training features.

    EfficientNet-Lite's BatchNorm momentum is 0.01 (TensorFlow's 0.99): while the tuned weights move,
    its running statistics trail them by about a hundred steps, and the network evaluated with them
    answers far worse than it trained (measured: validation accuracy 28% with the trailing statistics,
    42% recalibrated, after two epochs). A cumulative average over a fixed, seeded sample of training
    bins gives the statistics of the current weights; the features are un-augmented and without
    dropout, as at evaluation.
    """
    norms = [
        m
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and f"{name}.".startswith(prefixes)
    ]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    sample = random.Random(seed).sample(list(index), min(samples, len(index)))
    model.train()
    for s in range(0, len(sample), chunk):
        rows = sample[s : s + chunk]
        if len(rows) > 1:
            top_forward(model, features[rows].float(), first_block)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()


def _batch(
    features: dict[str, torch.Tensor], batch: list[int], augment: tuple[str, ...], rng: random.Random
) -> tuple[torch.Tensor, list[int]]:
    """The batch's features, each bin under one randomly chosen view, and the index of that view."""
    choice = [rng.randrange(len(augment)) for _ in batch]
    return _gather(features, batch, augment, choice), choice


def _gather(
    per_view: dict[str, torch.Tensor], batch: list[int], augment: tuple[str, ...], choice: list[int]
) -> torch.Tensor:
    """Row ``batch[r]`` of ``per_view[augment[choice[r]]]`` for each r: features or teachers' probabilities."""
    first = per_view[augment[0]]
    x = torch.empty((len(batch), *first.shape[1:]), dtype=first.dtype)
    for v, name in enumerate(augment):
        rows = [r for r, c in enumerate(choice) if c == v]
        if rows:
            x[rows] = per_view[name][[batch[r] for r in rows]]
    return x.float()


def distillation_loss(logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against the teachers' probabilities (KL divergence up to a constant)."""
    return -(teacher_probs * logits.float().log_softmax(1)).sum(1).mean()


@dataclass
class _Progress:
    """What a checkpoint holds besides the weights and the optimizer: enough to resume exactly."""

    history: list[dict]
    best_acc: float = -1.0
    best_state: dict[str, torch.Tensor] | None = None


def _restore(
    checkpoint: Path | None,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    rng: random.Random,
    log: Log,
    aux: _AuxTask | None = None,
) -> _Progress:
    if checkpoint is None or not checkpoint.is_file():
        return _Progress(history=[])
    saved = torch.load(checkpoint, weights_only=False)
    model.load_state_dict(saved["top"], strict=False)
    if aux is not None:
        aux.head.load_state_dict(saved["aux_head"])
    optimizer.load_state_dict(saved["optimizer"])
    rng.setstate(saved["rng"])
    torch.set_rng_state(saved["torch_rng"])
    log(resumed_from_epoch=len(saved["history"]), checkpoint=checkpoint)
    return _Progress(saved["history"], saved["best_acc"], saved["best_state"])


def _save(
    checkpoint: Path,
    model: nn.Module,
    prefixes: tuple[str, ...],
    optimizer: torch.optim.Optimizer,
    rng: random.Random,
    progress: _Progress,
    aux: _AuxTask | None = None,
) -> None:
    state = {
        "top": {n: t for n, t in model.state_dict().items() if n.startswith(prefixes)},
        "aux_head": aux.head.state_dict() if aux is not None else None,
        "optimizer": optimizer.state_dict(),
        "rng": rng.getstate(),
        "torch_rng": torch.get_rng_state(),
        "history": progress.history,
        "best_acc": progress.best_acc,
        "best_state": progress.best_state,
    }
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(checkpoint, lambda f: torch.save(state, f))


@dataclass
class _Optimisation:
    """The optimizer and its schedule: the base learning rates scaled by :func:`training.optim.lr_factor`."""

    optimizer: torch.optim.Optimizer
    base_lrs: list[float]
    total_steps: int
    warmup_steps: int
    min_lr_ratio: float
    cycles: int = 1

    def set_lr(self, step: int) -> None:
        factor = lr_factor(step, self.total_steps, self.warmup_steps, "cosine", self.min_lr_ratio, self.cycles)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor


def _train_epoch(
    model: nn.Module,
    features: dict[str, torch.Tensor],
    labels: torch.Tensor,
    order: list[int],
    epoch: int,
    opt: _Optimisation,
    criterion: nn.Module,
    cfg: TopTraining,
    rng: random.Random,
    aux: _AuxTask | None = None,
    soft_targets: dict[str, torch.Tensor] | None = None,
) -> dict:
    """One pass over ``order`` (shuffled in place); returns the epoch's training figures."""
    started, seen, loss_sum, correct = time.time(), 0, 0.0, 0
    steps_per_epoch = math.ceil(len(order) / cfg.batch_size)
    model.train()
    rng.shuffle(order)
    for s in range(0, len(order), cfg.batch_size):
        opt.set_lr((epoch - 1) * steps_per_epoch + s // cfg.batch_size)
        batch = order[s : s + cfg.batch_size]
        if len(batch) < 2:  # BatchNorm in the tuned blocks needs two samples
            continue
        x, choice = _batch(features, batch, cfg.views(epoch), rng)
        if cfg.feature_dropout:
            x = F.dropout2d(x, cfg.feature_dropout, training=True)
        y = labels[batch]
        pooled = top_pooled(model, x, cfg.first_block, cfg.drop_connect)
        if cfg.head == "corn":  # the loss reads the conditional logits; the figures the class log-probabilities
            conditional = model._fc.conditional(model._dropout(pooled))
            loss = criterion(conditional, y)
            logits = corn_log_probs(conditional)
        else:
            logits = classify(model, pooled)
            loss = criterion(logits, y)
        if soft_targets is not None and cfg.distill_weight:
            teacher = _gather(soft_targets, batch, cfg.augment, choice)
            loss = (1 - cfg.distill_weight) * loss + cfg.distill_weight * distillation_loss(logits, teacher)
        if aux is not None:
            loss = loss + aux.loss(pooled, batch)
        opt.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        opt.optimizer.step()
        seen += len(batch)
        loss_sum += loss.item() * len(batch)
        correct += (logits.argmax(1) == y).sum().item()
    return {
        "epoch": epoch,
        "train_loss": round(loss_sum / max(1, seen), 4),
        "train_acc": round(correct / max(1, seen), 4),
        "lr": round(opt.optimizer.param_groups[0]["lr"], 7),
        "epoch_time_s": round(time.time() - started, 1),
        "train_img_per_s": round(seen / (time.time() - started), 1),
    }


def _validate(
    model: nn.Module, features: torch.Tensor, labels: torch.Tensor, val_idx: list[int], first_block: int, class_values
) -> dict:
    probs = top_probabilities(model, features, val_idx, first_block)
    val_y = labels[val_idx]
    val = compute_metrics(probs.argmax(1), val_y, class_values)
    return {
        "val_loss": round(F.nll_loss(probs.clamp_min(1e-8).log(), val_y).item(), 4),
        "val_acc": round(val["accuracy"], 4),
        "val_rmse": round(val["rmse"], 4),
    }


def train_top(
    model: nn.Module,
    features: dict[str, torch.Tensor],
    labels: torch.Tensor,
    train_idx: list[int],
    val_idx: list[int],
    class_values: Sequence[float],
    cfg: TopTraining,
    log: Log,
    checkpoint: Path | None = None,
    aux_targets: torch.Tensor | None = None,
    soft_targets: dict[str, torch.Tensor] | None = None,
) -> list[dict]:
    """Fine-tune the top of ``model`` in place; returns the per-epoch history.

    With ``select_best`` (and a validation part) the weights of the best validation epoch are kept,
    otherwise those of the last epoch (a final fit on train + validation). With ``cfg.aux_weight``
    and ``aux_targets`` (one row per bin, :func:`training.item_targets.read_item_targets`) a
    train-time head also learns the item-metadata targets; it is dropped afterwards. With
    ``cfg.distill_weight`` and ``soft_targets`` (per augmentation view, one probability row per bin:
    the teachers' average) that share of the loss matches the teachers instead of the labels. With
    ``cfg.early_epochs`` the first epochs draw from ``cfg.early_augment`` (progressive resizing: the
    feature maps of the photos at a lower resolution, smaller but through the same blocks), the rest
    from ``cfg.augment``; BatchNorm is recomputed and validation run at the served resolution.
    """
    if cfg.distill_weight and soft_targets is not None and not set(cfg.augment) <= soft_targets.keys():
        raise ValueError(f"soft targets for {sorted(soft_targets)}, the training views are {list(cfg.augment)}")
    if cfg.early_epochs and (cfg.distill_weight or not cfg.early_augment or cfg.early_epochs > cfg.epochs):
        raise ValueError("early_epochs needs early_augment, no more than epochs, and no distillation")
    missing = set(cfg.augment + cfg.early_augment) - features.keys()
    if missing:
        raise ValueError(f"no features for the training views {sorted(missing)}")
    k = cfg.first_block
    prefixes = tuned_prefixes(model, k)
    torch.manual_seed(cfg.seed)
    aux = _aux_task(model, aux_targets, cfg)
    optimizer = torch.optim.AdamW(_param_groups(model, prefixes, cfg, aux))
    steps_per_epoch = math.ceil(len(train_idx) / cfg.batch_size)
    opt = _Optimisation(
        optimizer,
        [g["lr"] for g in optimizer.param_groups],
        cfg.epochs * steps_per_epoch,
        round(cfg.warmup_epochs * steps_per_epoch),
        cfg.min_lr_ratio,
        cfg.lr_cycles,
    )
    criterion = (
        CornLoss(class_values, ordinal_weight=cfg.ordinal_weight)
        if cfg.head == "corn"
        else CountLoss(class_values, label_smoothing=cfg.label_smoothing, ordinal_weight=cfg.ordinal_weight)
    )
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    progress = _restore(checkpoint, model, optimizer, rng, log, aux)
    order = list(train_idx)
    for epoch in range(len(progress.history) + 1, cfg.epochs + 1):
        row = _train_epoch(model, features, labels, order, epoch, opt, criterion, cfg, rng, aux, soft_targets)
        recalibrate_norms(model, features["orig"], train_idx, k, prefixes, seed=cfg.seed)
        if val_idx:
            row.update(_validate(model, features["orig"], labels, val_idx, k, class_values))
        progress.history.append(row)
        log(**row)
        if cfg.select_best and val_idx and row["val_acc"] > progress.best_acc:
            progress.best_acc = row["val_acc"]
            progress.best_state = top_state(model, k)
        if checkpoint is not None:
            _save(checkpoint, model, prefixes, optimizer, rng, progress, aux)
    if progress.best_state is not None:
        model.load_state_dict(progress.best_state, strict=False)
    for param in model.parameters():
        param.requires_grad_(True)
    model.eval()
    return progress.history
