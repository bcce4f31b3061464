"""Model set-up for fine-tuning: freeze policy, parameter groups, optimiser and learning-rate schedule."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from service.architectures import Architecture
from training.config import ConfigError, TrainConfig


def apply_freeze(model: nn.Module, arch: Architecture, policy: str) -> tuple[int, int]:
    """Set ``requires_grad`` per ``policy``; returns ``(trainable, total)`` parameter counts.

    ``backbone`` trains the head only; ``all_but_last_stage`` trains the last stage and the head.
    """
    trainable = total = 0
    for name, param in model.named_parameters():
        if policy == "none":
            keep = True
        elif policy == "backbone":
            keep = arch.is_head(name)
        elif policy == "all_but_last_stage":
            keep = arch.is_last_stage(name)
        else:
            raise ConfigError(f"unknown freeze policy {policy!r}")
        param.requires_grad_(keep)
        total += param.numel()
        trainable += param.numel() if keep else 0
    if trainable == 0:
        raise ConfigError(f"hyperparameter freeze={policy!r} leaves no trainable parameter in {arch.name}")
    return trainable, total


def frozen_norms_to_eval(model: nn.Module) -> None:
    """Keep the running statistics of fully frozen BatchNorm layers fixed (call after ``model.train()``)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()


def norms_to_eval(model: nn.Module) -> None:
    """Every BatchNorm layer normalises by its running statistics and keeps them (``norm_mode`` frozen; call after
    ``model.train()``); their scale and shift still learn."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def param_groups(model: nn.Module, arch: Architecture, config: TrainConfig) -> list[dict[str, Any]]:
    """Head and backbone at their own learning rates; no weight decay on biases and norm weights."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        key = (arch.is_head(name), param.ndim > 1)
        groups.setdefault(key, []).append(param)
    result = []
    for (head, decay), params in sorted(groups.items(), reverse=True):  # head groups first
        result.append(
            {
                "params": params,
                "lr": config.lr if head else config.lr * config.backbone_lr_mult,
                "weight_decay": config.weight_decay if decay else 0.0,
                "name": f"{'head' if head else 'backbone'}{'' if decay else '_no_decay'}",
            }
        )
    return result


def make_optimizer(groups: list[dict[str, Any]], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)
    return torch.optim.AdamW(groups, lr=config.lr)


def lr_factor(
    step: int, total_steps: int, warmup_steps: int, schedule: str, min_ratio: float, cycles: int = 1
) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based).

    ``cycles`` > 1 splits the cosine after warmup into that many equal cycles, each restarting at the
    full rate (SGDR's warm restarts, which the public ABID results report helping); 1 is one cosine.
    """
    if cycles < 1:
        raise ValueError(f"cycles must be at least 1, got {cycles}")
    if warmup_steps > 0 and step < warmup_steps:
        return 0.01 + 0.99 * step / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if cycles > 1 and progress < 1.0:
        progress = (progress * cycles) % 1.0
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup then cosine (or constant), stepped once per optimiser step."""
    total = config.epochs * steps_per_epoch
    warmup = min(total, round(config.warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        return lr_factor(step, total, warmup, config.schedule, config.min_lr_ratio, config.lr_cycles)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
