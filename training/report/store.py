"""The raw records of a run's report, in the output data dir (``/opt/ml/output/data`` on SageMaker, so they
arrive in ``output.tar.gz``), and reading them back to render the report again.

Layout under the output data dir::

    summary.csv            one row per epoch: losses, metrics, lr, time, img/s, data-wait share, memory, grad norm
    report.html            the report (self-contained: inline images, no external request)
    findings.json          every rule: status (not evaluated / ok / issue), evidence, threshold
    report/run.json        what the run was: config, device, cores, workers, class counts, start and first-step times
    report/epochs.jsonl    per epoch: timing, memory, BatchNorm recalibration
    report/steps.csv       per step: timing and loss
    report/health.jsonl    gradient/weight checks every N steps
    report/system.csv      the sampler's rows
    report/profile/        trace.json.gz (opens in Perfetto) and ops.json, when a profiler window was asked for
    metrics.json           the loop's: history, best epoch, test metrics
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

RAW_DIR = "report"
RUN_FILE = "run.json"
EPOCHS_FILE = "epochs.jsonl"
STEPS_FILE = "steps.csv"
HEALTH_FILE = "health.jsonl"
SYSTEM_FILE = "system.csv"
PROFILE_DIR = "profile"
SUMMARY_FILE = "summary.csv"
REPORT_FILE = "report.html"
FINDINGS_FILE = "findings.json"
METRICS_FILE = "metrics.json"

STEP_COLUMNS = ("epoch", "step", "data_wait_s", "h2d_s", "compute_s", "step_s", "loss", "images")


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, allow_nan=True) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a killed job
                continue
    return rows


class CsvAppender:
    """Rows appended to a CSV file, header written once (also when the file is appended to by a resumed run)."""

    def __init__(self, path: Path, columns: Sequence[str]):
        self.path, self.columns = path, list(columns)
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists() or path.stat().st_size == 0
        self._fh = path.open("a", encoding="utf-8", newline="")
        self._writer = csv.writer(self._fh)
        if new:
            self._writer.writerow(self.columns)
            self._fh.flush()

    def write(self, rows: Iterable[Sequence[Any]]) -> None:
        self._writer.writerows(rows)
        self._fh.flush()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def read_csv(path: Path) -> tuple[list[str], list[list[float]]]:
    """Header and rows as floats (``nan`` for blanks) of a numeric CSV; rows of another width are left out."""
    if not path.exists():
        return [], []
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        rows = [[_number(v) for v in row] for row in reader if len(row) == len(header)]
    return header, rows


@dataclass
class RunRecords:
    """Everything a report is made from, read back from a run's output data dir."""

    folder: Path
    run: dict[str, Any] = field(default_factory=dict)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    steps: dict[str, list[float]] = field(default_factory=dict)
    health: list[dict[str, Any]] = field(default_factory=list)
    system: dict[str, list[float]] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] | None = None

    @property
    def history(self) -> list[dict[str, Any]]:
        return list(self.metrics.get("history") or self.run.get("history") or [])


def columns(header: list[str], rows: list[list[float]]) -> dict[str, list[float]]:
    return {name: [row[i] for row in rows] for i, name in enumerate(header)}


def find_output_dir(folder: Path) -> Path:
    """The output data dir inside ``folder``: itself, or the one folder below it that holds ``report/run.json``
    (an extracted ``output.tar.gz`` puts it at the top; a local run at ``output/data``)."""
    folder = Path(folder)
    if (folder / RAW_DIR / RUN_FILE).exists():
        return folder
    found = sorted(p.parent.parent for p in folder.glob(f"**/{RAW_DIR}/{RUN_FILE}"))
    if not found:
        raise FileNotFoundError(f"no {RAW_DIR}/{RUN_FILE} under {folder}: not the output of a binsight training run")
    return found[0]


def load_records(folder: Path) -> RunRecords:
    out = find_output_dir(folder)
    raw = out / RAW_DIR
    run = json.loads((raw / RUN_FILE).read_text(encoding="utf-8"))
    metrics_path = out / METRICS_FILE
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.exists() else {}
    ops = raw / PROFILE_DIR / "ops.json"
    return RunRecords(
        folder=out,
        run=run,
        epochs=read_jsonl(raw / EPOCHS_FILE),
        steps=columns(*read_csv(raw / STEPS_FILE)),
        health=read_jsonl(raw / HEALTH_FILE),
        system=columns(*read_csv(raw / SYSTEM_FILE)),
        metrics=metrics,
        profile=json.loads(ops.read_text(encoding="utf-8")) if ops.exists() else None,
    )
