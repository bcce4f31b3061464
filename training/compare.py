"""Is the candidate model better than the baseline? A paired test on the same bins.

    python -m training.evaluate --model-dir service/default_model --data-dir ../shared/abid \\
        --split-manifest service/default_model/split.json --part test --output-dir eval/baseline
    python -m training.evaluate --model-dir new_model --data-dir ../shared/abid \\
        --split-manifest service/default_model/split.json --part test --output-dir eval/candidate
    python -m training.compare --baseline eval/baseline --candidate eval/candidate

Reads the two evaluations' ``predictions.csv`` (one row per bin: id, true label, served answer),
so it costs nothing to rerun and works for evaluations made anywhere (a GPU box, SageMaker). For
every bin, then for the bins below the overflow class (``6+``), it prints each model's accuracy
with its Wilson interval and the paired difference with a bootstrap interval and the exact
McNemar p-value (:mod:`training.intervals`), as ``compare_*`` key: value lines, and a verdict:
``candidate better`` / ``baseline better`` only when the interval of the difference excludes 0.

Every option can also be set as ``BINSIGHT_COMPARE_<OPTION>``; command-line options win.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

from service.files import atomic_write_json
from service.options import parse_options
from training.intervals import PairedComparison, paired_comparison
from training.layouts import DataError
from training.log import Log, print_line

ENV_PREFIX = "BINSIGHT_COMPARE_"
PREDICTIONS_FILE = "predictions.csv"


class CompareConfig(BaseModel):
    """Options of ``python -m training.compare``."""

    model_config = ConfigDict(extra="forbid")

    baseline: Path = Field(..., description="The baseline's evaluation folder (or its predictions.csv).")
    candidate: Path = Field(..., description="The candidate's evaluation folder (or its predictions.csv).")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Confidence of the intervals.")
    resamples: int = Field(10_000, ge=100, le=1_000_000, description="Bootstrap resamples of the difference.")
    seed: int = Field(0, description="Seed of the bootstrap (the same report on every run).")
    output: Path | None = Field(None, description="Also write the figures to this JSON file.")


@dataclass(frozen=True)
class Answers:
    """One evaluation's served answers, by bin id: (true label, answered label)."""

    source: Path
    rows: dict[str, tuple[str, str]]


def read_answers(path: Path) -> Answers:
    """The rows of an evaluation's ``predictions.csv`` (``path`` is the file or its folder)."""
    file = path / PREDICTIONS_FILE if path.is_dir() else path
    try:
        with file.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = {"id", "label", "predicted"} - set(reader.fieldnames or ())
            if missing:
                raise DataError(f"{file} lacks the column(s) {', '.join(sorted(missing))}: not a predictions.csv")
            rows: dict[str, tuple[str, str]] = {}
            for line, row in enumerate(reader, start=2):
                if row["id"] in rows:
                    raise DataError(f"{file} line {line}: bin {row['id']} appears twice")
                rows[row["id"]] = (row["label"], row["predicted"])
    except FileNotFoundError:
        raise DataError(f"{file} does not exist (run python -m training.evaluate --output-dir first)") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{file} is not a readable CSV: {exc}") from None
    if not rows:
        raise DataError(f"{file} holds no predictions")
    return Answers(file, rows)


def paired_rows(baseline: Answers, candidate: Answers) -> tuple[list[str], list[str], list[str], list[str]]:
    """Bin ids, true labels and the two answers, in one order; refuses evaluations of different bins."""
    a, b = baseline.rows, candidate.rows
    if a.keys() != b.keys():
        only_a, only_b = sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())
        raise DataError(
            f"the evaluations cover different bins ({len(only_a)} only in {baseline.source}, e.g. "
            f"{only_a[:3]}; {len(only_b)} only in {candidate.source}, e.g. {only_b[:3]}): evaluate both "
            "on the same split manifest and part"
        )
    ids = sorted(a)
    disagree = [i for i in ids if a[i][0] != b[i][0]]
    if disagree:
        raise DataError(
            f"the evaluations disagree on the true label of {len(disagree)} bins (e.g. {disagree[0]}: "
            f"{a[disagree[0]][0]} vs {b[disagree[0]][0]}): the models use different labels"
        )
    return ids, [a[i][0] for i in ids], [a[i][1] for i in ids], [b[i][1] for i in ids]


def verdict(result: PairedComparison) -> str:
    if result.difference_low > 0:
        return "candidate better"
    if result.difference_high < 0:
        return "baseline better"
    return "no detectable difference"


def compare(config: CompareConfig, log: Log = print_line) -> dict[str, dict]:
    """The figures of every part (``all`` and, with an overflow class, ``below_overflow``), logged."""
    baseline, candidate = read_answers(config.baseline), read_answers(config.candidate)
    ids, labels, answers_a, answers_b = paired_rows(baseline, candidate)
    log(f"compare_baseline: {baseline.source}")
    log(f"compare_candidate: {candidate.source}")
    parts = {"all": list(range(len(ids)))}
    below = [k for k, label in enumerate(labels) if not label.endswith("+")]
    if 0 < len(below) < len(ids):  # the bins a count can be checked on exactly (e.g. 0-5 below "6+")
        parts["below_overflow"] = below
    figures: dict[str, dict] = {}
    for part, rows in parts.items():
        right_a = torch.tensor([answers_a[k] == labels[k] for k in rows])
        right_b = torch.tensor([answers_b[k] == labels[k] for k in rows])
        result = paired_comparison(right_a, right_b, config.confidence, config.resamples, config.seed)
        entry = {**result.as_dict(), "verdict": verdict(result)}
        for who, accuracy, (low, high) in (
            ("baseline", result.accuracy_a, result.interval_a),
            ("candidate", result.accuracy_b, result.interval_b),
        ):
            log(f"compare_{part}_{who}_accuracy: {accuracy:.4f} [{low:.4f}, {high:.4f}]")
        log(f"compare_{part}_n: {result.n}")
        log(
            f"compare_{part}_difference: {result.difference:+.4f} "
            f"[{result.difference_low:+.4f}, {result.difference_high:+.4f}]"
        )
        log(f"compare_{part}_only_baseline_right: {result.only_a_right}")
        log(f"compare_{part}_only_candidate_right: {result.only_b_right}")
        log(f"compare_{part}_mcnemar_p: {result.mcnemar_p:.4f}")
        log(f"compare_{part}_verdict: {entry['verdict']}")
        figures[part] = entry
    if config.output is not None:
        atomic_write_json(
            config.output,
            {"baseline": str(baseline.source), "candidate": str(candidate.source), "parts": figures},
        )
        log(f"compare_wrote: {config.output}")
    return figures


def parse_config(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> CompareConfig:
    """Options from ``BINSIGHT_COMPARE_*`` variables, overridden by the command line; exits 2 on bad input."""
    return parse_options(CompareConfig, ENV_PREFIX, "python -m training.compare", __doc__, argv, environ)


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(argv)
    try:
        compare(config)
    except (DataError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
