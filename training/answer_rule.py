"""Tune the answer rule of a trained model on its validation bins and write the model with the rule folded in.

    python -m training.answer_rule --model-dir model/ --data-dir ../shared/abid --output-dir model_rule/

The CPU recipe (``training.recipes.default_model``) tunes one offset per class on the validation
split's log-probabilities for the accuracy of the served answer, and folds them into the classifier
(:mod:`training.recipes.decision`): that added about one point on validation for every recipe run.
Models from the training loop (``train``, a GPU box or SageMaker) are saved answering the argmax.
This command gives them the same rule afterwards: it scores the model on the bins of ``--part``
(default ``val``) of its split manifest through serving's preprocessing and test-time views, tunes
the offsets there, and writes a new artifact into ``--output-dir`` (never over the input) whose
``model.json`` records the offsets and the accuracy before and after under ``training.answer_rule``.
The held-out ``metrics`` of the input are moved there too: they were measured without the rule, so
evaluate the new model on the test part again (``python -m training.evaluate``). ``split.json`` and
``history.json`` are copied; an int8 graph is not (it would be stale: quantize again).

Every option can also be set in the environment as ``BINSIGHT_ANSWER_RULE_<OPTION>``.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.artifact import ArtifactError, ModelMetadata, load_artifact, save_artifact
from service.options import parse_options
from service.runtimes import QUANTIZATION_KEY
from training.device import resolve_device
from training.evaluate import HISTORY_FILE, EvaluateConfig, predict_items, select_items
from training.layouts import DataError
from training.log import Log, print_line
from training.recipes.decision import answer_rule, fold_offsets, output_layer
from training.splits import SPLIT_MANIFEST_FILE

ENV_PREFIX = "BINSIGHT_ANSWER_RULE_"


class AnswerRuleConfig(BaseModel):
    """Options of ``python -m training.answer_rule``."""

    model_config = ConfigDict(extra="forbid")

    model_dir: Path = Field(..., description="Artifact directory (model.pth + model.json) to start from.")
    data_dir: Path = Field(..., description="ABID or count-folder data directory holding the tuning bins.")
    output_dir: Path = Field(..., description="Where the model with the rule is written (not the model dir).")
    split_manifest: Path | None = Field(
        None, description="Split manifest whose --part holds the tuning bins; default <model-dir>/split.json."
    )
    part: Literal["train", "val", "test"] = Field("val", description="Part of the manifest to tune on.")
    batch_size: int = Field(64, ge=1, le=4096)
    num_workers: int = Field(0, ge=0, le=64, description="DataLoader worker processes.")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    max_bad_fraction: float = Field(0.01, ge=0.0, le=1.0, description="Fail above this share of unreadable images.")
    min_bins: int = Field(200, ge=1, description="Refuse to tune on fewer bins: the rule would fit their noise.")

    @model_validator(mode="after")
    def _checks(self) -> "AnswerRuleConfig":
        if self.split_manifest is None:
            self.split_manifest = self.model_dir / SPLIT_MANIFEST_FILE
        if self.output_dir.resolve() == self.model_dir.resolve():
            raise ValueError("output_dir must differ from model_dir: the input model is kept as it is")
        return self


def run(config: AnswerRuleConfig, log: Log = print_line) -> dict[str, Any]:
    """Tune, fold and write; returns what ``model.json`` records under ``training.answer_rule``."""
    start = time.monotonic()
    if not Path(config.split_manifest).is_file():
        raise DataError(
            f"{config.split_manifest} is missing: pass --split-manifest (the rule is tuned on held-out bins only)"
        )
    if config.part == "test":
        log("answer_rule_warning: tuning on the test part leaves no held-out bins to report the rule on")
    device = resolve_device(config.device)
    artifact = load_artifact(config.model_dir, device=device)
    metadata = artifact.metadata
    if metadata.training.get("answer_rule") or metadata.training.get("answer_rule_offsets"):
        raise ArtifactError(f"{config.model_dir} already answers with a tuned rule; start from the model without it")
    selection = EvaluateConfig(
        model_dir=config.model_dir,
        data_dir=config.data_dir,
        split_manifest=config.split_manifest,
        part=config.part,
        max_bad_fraction=config.max_bad_fraction,
    )
    items, _ = select_items(selection, metadata, log)
    if len(items) < config.min_bins:
        raise DataError(
            f"only {len(items)} bins in part {config.part!r}; the rule needs at least {config.min_bins} "
            "(--min-bins) or it fits their noise"
        )
    probs, labels, _, skipped = predict_items(
        artifact.model, metadata, items, config.batch_size, num_workers=config.num_workers, device=device
    )
    before, offsets, after = answer_rule(probs, labels, metadata.class_values, metadata.labels, tune=True)
    model = artifact.model.cpu()
    fold_offsets(output_layer(model, metadata.num_classes), offsets)
    record = {
        "offsets": [round(float(v), 4) for v in offsets],
        "tuned_on": {"part": config.part, "split_manifest": str(config.split_manifest), "n": int(labels.numel())},
        "accuracy_before": round(before["accuracy"], 4),
        "accuracy_after": round(after["accuracy"], 4),
        "rmse_before": round(before["rmse"], 4),
        "rmse_after": round(after["rmse"], 4),
        "skipped": len(skipped),
        "metrics_without_rule": metadata.metrics,
        "from_model": str(config.model_dir),
    }
    fields = metadata.model_dump(mode="json", exclude={QUANTIZATION_KEY})  # the int8 graph's record: stale now
    new = ModelMetadata.model_validate(
        {**fields, "metrics": {}, "training": {**metadata.training, "answer_rule": record}}
    )
    out = Path(config.output_dir)
    save_artifact(out, model, new)
    for name in (SPLIT_MANIFEST_FILE, HISTORY_FILE):
        if (Path(config.model_dir) / name).is_file():
            shutil.copyfile(Path(config.model_dir) / name, out / name)
    log(
        f"answer_rule_{config.part}_acc_before: {before['accuracy']:.4f} answer_rule_{config.part}_acc_after: "
        f"{after['accuracy']:.4f} n: {labels.numel()} offsets: {record['offsets']}"
    )
    log(f"answer_rule_saved: {out} seconds: {time.monotonic() - start:.1f}")
    return record


def parse_config(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> AnswerRuleConfig:
    """Options from ``BINSIGHT_ANSWER_RULE_*`` variables, overridden by the command line; exits 2 on bad input."""
    return parse_options(AnswerRuleConfig, ENV_PREFIX, "python -m training.answer_rule", __doc__, argv, environ)


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(argv)
    try:
        run(config)
    except (ArtifactError, DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
