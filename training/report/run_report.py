"""What the training loop talks to: :class:`RunReport` times every step (always), and with ``report=true``
also samples the machine, checks the model's health, profiles a window on request, writes TensorBoard
scalars and, at the end, the rules' findings and the HTML report.

The loop calls, per step, :meth:`batch_wanted`, :meth:`batch_arrived`, :meth:`batch_placed`,
:meth:`health_probe` (a probe on the steps to check, else ``None``) and :meth:`step_done`; per epoch
:meth:`start_epoch` and :meth:`end_epoch`; per run :meth:`start`, :meth:`finish` (completed runs) and
:meth:`close` (always). Only the main process writes; the others time their steps and stay quiet.
"""

from __future__ import annotations

import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from service.files import atomic_write_json
from training import metric_names as names
from training.config import TrainConfig
from training.log import Log, fields_text, quiet
from training.report.health import HealthProbe
from training.report.profiling import ProfileWindow
from training.report.render import render, write_summary
from training.report.rules import ISSUE, NOT_EVALUATED
from training.report.sampler import Sink, SystemSampler
from training.report.store import (
    EPOCHS_FILE,
    HEALTH_FILE,
    PROFILE_DIR,
    RAW_DIR,
    REPORT_FILE,
    RUN_FILE,
    STEP_COLUMNS,
    STEPS_FILE,
    SUMMARY_FILE,
    SYSTEM_FILE,
    CsvAppender,
    append_jsonl,
    load_records,
)
from training.report.thresholds import Thresholds, parse_thresholds
from training.report.timing import StepTimer, Window, device_memory_mb, peak_memory_mb

TENSORBOARD_DIR = "tensorboard"


def tensorboard_dir(output_data_dir: Path) -> Path:
    """``/opt/ml/output/tensorboard`` on SageMaker (TensorBoardOutputConfig's default local path) from
    ``/opt/ml/output/data``; locally the same place relative to ``--output-dir``."""
    return Path(output_data_dir).parent / TENSORBOARD_DIR


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class _Scalars:
    """TensorBoard scalars through ``torch.utils.tensorboard`` when the tensorboard package is installed."""

    def __init__(self, folder: Path, log: Log):
        self.writer: Any = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log("report_tensorboard: off (the tensorboard package is not installed)")
            return
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(log_dir=str(folder), flush_secs=30)
        except Exception as exc:  # an unwritable folder, a broken install: the run goes on without scalars
            log(f"report_tensorboard: off ({type(exc).__name__}: {exc})")

    def add(self, prefix: str, values: dict[str, Any], step: int, walltime: float | None = None) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
                self.writer.add_scalar(f"{prefix}/{key}", value, step, walltime=walltime)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class RunReport:
    """Times every step; with ``report=true`` also samples, checks health, profiles and reports (see above)."""

    def __init__(
        self,
        config: TrainConfig,
        output_data_dir: Path,
        device: torch.device,
        *,
        is_main: bool,
        log: Log = quiet,
        started: float | None = None,
    ):
        self.config, self.device, self.is_main = config, device, is_main
        self.out = Path(output_data_dir)
        self.raw = self.out / RAW_DIR
        self.log = log if is_main else quiet
        self.started = started if started is not None else time.monotonic()
        self.timer = StepTimer(device)
        self.enabled = config.report and is_main
        self.log_every = config.log_every_steps
        self.thresholds = parse_thresholds(config.report_thresholds)
        self._steps: CsvAppender | None = None
        self._sampler: SystemSampler | None = None
        self._scalars: _Scalars | None = None
        self._profile: ProfileWindow | None = None
        self._probe: HealthProbe | None = None
        self._active_probe: HealthProbe | None = None
        self._run: dict[str, Any] = {}
        self._global_step = 0
        self._grad_norms: list[float] = []
        self._epoch = 0
        # What the report itself costs: wall time of its health checks and writes in the loop's thread,
        # plus the sampler thread's CPU time (reported per epoch as report_cost_share).
        self._cost_s = 0.0
        self._epoch_cost_start = (0.0, 0.0)

    # -------------------------------------------------------------------------------------- run

    def start(self, run_info: dict[str, Any], params: Sequence[torch.Tensor], resumed: bool, global_step: int) -> None:
        """``run_info``: what :mod:`.rules` reads of the run (labels, class counts, workers, steps, BatchNorm)."""
        self._global_step = global_step
        if not self.is_main:
            return
        self.raw.mkdir(parents=True, exist_ok=True)
        if not resumed:  # a new run in an old folder: its records are not this run's
            _clear_records(self.raw)
        self._run = _run_record(self.config, self.device, resumed, run_info)
        self._write_run()
        self._steps = CsvAppender(self.raw / STEPS_FILE, STEP_COLUMNS)
        if not self.enabled:
            return
        self._scalars = _Scalars(tensorboard_dir(self.out), self.log)
        self._sampler = _start_sampler(self.raw, self.config.report_sample_interval_s, self._system_scalars, self.log)
        self._probe = HealthProbe(params, self.config.report_health_every_steps)
        self._profile = _profile_window(self.config, self.raw, self.device)

    def _write_run(self) -> None:
        atomic_write_json(self.raw / RUN_FILE, self._run)

    def _system_scalars(self, row: dict[str, float], t: float) -> None:
        if self._scalars is not None:
            self._scalars.add("system", row, int(t * 1000))

    # -------------------------------------------------------------------------------------- steps

    def start_epoch(self, epoch: int) -> None:
        self.timer.start_epoch(epoch)
        self._epoch = epoch
        self._grad_norms = []
        self._epoch_cost_start = (self._cost_s, self._sampler_cpu_s())

    def _sampler_cpu_s(self) -> float:
        return self._sampler.cpu_s if self._sampler is not None else 0.0

    def batch_wanted(self) -> None:
        if self._profile is not None:
            self._profile.before_step()
        self.timer.waiting()

    def batch_arrived(self) -> None:
        self.timer.arrived()

    def batch_placed(self) -> None:
        self.timer.placed()

    def health_probe(self, global_step: int) -> Callable[[torch.Tensor, torch.Tensor], None] | None:
        """A callable ``(loss, images)`` for the step that becomes ``global_step`` when it is checked."""
        probe = self._probe
        if probe is None or not probe.due(global_step):
            self._active_probe = None
            return None
        self._active_probe = probe
        epoch = self._epoch

        def before_update(loss: torch.Tensor, images: torch.Tensor) -> None:
            started = time.perf_counter()
            probe.before_update(global_step, epoch, loss, images)
            self._cost_s += time.perf_counter() - started

        return before_update

    def step_done(self, step: int, global_step: int, sums: torch.Tensor | None) -> None:
        self._global_step = global_step
        self.timer.done(step, sums)
        if self._active_probe is not None:
            started = time.perf_counter()
            record = self._active_probe.after_update()
            self._active_probe = None
            if record is not None and self.is_main:
                _keep_health(record, self.raw, self._grad_norms, self._scalars, global_step)
            self._cost_s += time.perf_counter() - started
        if self._profile is not None:
            self._profile.after_step()
        if self.is_main and "first_step_s" not in self._run:
            self._run["first_step_s"] = round(time.monotonic() - self.started, 3)
            self._write_run()
        if self.log_every and step % self.log_every == 0:
            self._flush()

    def _flush(self) -> Window:
        window = self.timer.flush()
        if not self.is_main or not window.records:
            return window
        started = time.perf_counter()
        try:
            self._write_window(window)
        finally:
            self._cost_s += time.perf_counter() - started
        return window

    def _write_window(self, window: Window) -> None:
        if self._steps is not None:
            self._steps.write(r.row() for r in window.records)
        fields = window.fields()
        if self.log_every:
            step = {names.EPOCH: self._epoch, "step": window.records[-1].step}
            self.log(f"{names.STEP_TIMING}: " + fields_text({**step, **{k: float(v) for k, v in fields.items()}}))
        if self._scalars is not None:
            losses = [r.loss for r in window.records if r.loss == r.loss]
            if losses:
                fields["loss"] = sum(losses) / len(losses)
            self._scalars.add("step", fields, self._global_step)

    # -------------------------------------------------------------------------------------- epochs

    def end_training(self) -> dict[str, Any]:
        """After the epoch's last step: flush the timer; returns the epoch's timing."""
        self._flush()
        if self._profile is not None:
            self._profile.finish()
        timing = self.timer.epoch_timing
        cost = self._cost_s - self._epoch_cost_start[0] + self._sampler_cpu_s() - self._epoch_cost_start[1]
        timing.extra = _memory_and_cost(self.device, cost if self.enabled else None, timing.train_s)
        return timing.as_dict()

    def end_epoch(
        self,
        entry: dict[str, Any],
        history: list[dict[str, Any]],
        timing: dict[str, Any],
        recalibration: dict[str, Any] | None,
    ) -> None:
        """The epoch's history entry is in: log its timing line, record it, rewrite ``summary.csv``."""
        grad_norm = sum(self._grad_norms) / len(self._grad_norms) if self._grad_norms else None
        record = {**timing, "bn_recalibration": recalibration, "grad_norm": grad_norm}
        self.log(f"{names.EPOCH_TIMING}: " + fields_text(_epoch_figures(entry, timing, grad_norm)))
        if recalibration:
            self.log("bn_recalibrated: " + fields_text({names.EPOCH: entry[names.EPOCH], **recalibration}))
        if not self.is_main:
            return
        append_jsonl(self.raw / EPOCHS_FILE, record)
        if self._scalars is not None:
            self._scalars.add("epoch", {**entry, **{k: v for k, v in record.items() if k != "epoch"}}, entry["epoch"])
        _rewrite_summary(self.out, history, self.log)

    # -------------------------------------------------------------------------------------- the end

    def finish(self) -> None:
        """The run completed (``metrics.json`` written): evaluate the rules and write the report."""
        self.close()
        if self.enabled:
            _write_report(self.out, self.thresholds, self.log)

    def close(self) -> None:
        """Stop the sampler, the profiler and the writers (idempotent; also for interrupted runs)."""
        if self._profile is not None:
            self._profile.finish()
        if self._sampler is not None:
            self._sampler.stop()
            self._sampler = None
        if self._steps is not None:
            self._steps.close()
            self._steps = None
        if self._scalars is not None:
            self._scalars.close()
            self._scalars = None


# ------------------------------------------------------------------------------------------ the pieces


def _clear_records(raw: Path) -> None:
    """Remove an earlier run's records from ``raw`` (the run record itself is rewritten)."""
    for name in (EPOCHS_FILE, STEPS_FILE, HEALTH_FILE, SYSTEM_FILE):
        (raw / name).unlink(missing_ok=True)
    shutil.rmtree(raw / PROFILE_DIR, ignore_errors=True)


def _run_record(config: TrainConfig, device: torch.device, resumed: bool, run_info: dict[str, Any]) -> dict[str, Any]:
    """``run.json``: when and where the run started, its configuration, and ``run_info``."""
    return {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": config.model_dump(mode="json"),
        "device": str(device),
        "cores": _cores(),
        "torch": torch.__version__,
        "resumed": resumed,
        "report": config.report,
        **run_info,
    }


def _start_sampler(raw: Path, interval_s: float, sink: Sink, log: Log) -> SystemSampler:
    """The machine sampler, started (it samples nothing, and a line says so, without psutil)."""
    sampler = SystemSampler(raw / SYSTEM_FILE, interval_s, sink=sink)
    if not sampler.available:
        log("report_sampler: off (psutil is not installed)")
    sampler.start()
    return sampler


def _keep_health(
    record: dict[str, Any], raw: Path, grad_norms: list[float], scalars: _Scalars | None, global_step: int
) -> None:
    """A health check's record: into ``health.jsonl``, the epoch's gradient norms and TensorBoard."""
    append_jsonl(raw / HEALTH_FILE, record)
    if isinstance(record.get("grad_norm"), float):
        grad_norms.append(record["grad_norm"])
    if scalars is not None:
        scalars.add("health", record, global_step)


def _profile_window(config: TrainConfig, raw: Path, device: torch.device) -> ProfileWindow | None:
    """The profiler window ``profile_steps`` asks for, or None."""
    if config.profile_steps <= 0:
        return None
    return ProfileWindow(
        raw / PROFILE_DIR,
        config.profile_steps,
        config.profile_wait_steps,
        config.profile_max_mb,
        device.type == "cuda",
    )


def _memory_and_cost(device: torch.device, cost: float | None, train_s: float) -> dict[str, Any]:
    """The epoch timing's extra figures: memory, and what the report cost (``cost`` None: report off)."""
    return {
        "peak_memory_mb": round(peak_memory_mb(device), 1),
        "device_memory_mb": (round(m, 1) if (m := device_memory_mb(device)) is not None else None),
        "report_cost_s": round(cost, 4) if cost is not None else None,
        "report_cost_share": round(cost / train_s, 5) if cost is not None and train_s > 0 else None,
    }


def _epoch_figures(entry: dict[str, Any], timing: dict[str, Any], grad_norm: float | None) -> dict[str, Any]:
    """The ``epoch_timing:`` line's fields."""
    return {
        names.EPOCH: entry[names.EPOCH],
        names.EPOCH_IMAGES_PER_S: timing.get("img_per_s"),
        names.EPOCH_DATA_WAIT_SHARE: timing.get("data_wait_share"),
        names.PEAK_MEMORY_MB: timing.get("peak_memory_mb"),
        names.GRAD_NORM: grad_norm,
    }


def _rewrite_summary(out: Path, history: list[dict[str, Any]], log: Log) -> None:
    """``summary.csv`` from the records so far; a failure is logged, never raised (the run goes on)."""
    try:
        records = load_records(out)
        records.metrics = {"history": history}
        write_summary(records, out / SUMMARY_FILE)
    except Exception as exc:  # the report must never stop a run
        log(f"report_error: summary.csv: {type(exc).__name__}: {exc}")


def _write_report(out: Path, thresholds: Thresholds, log: Log) -> None:
    """Evaluate the rules on the records in ``out``, write the HTML report and log its findings; a failure is
    logged, never raised (the run has finished)."""
    try:
        findings = render(load_records(out), thresholds)
    except Exception as exc:  # the report must never fail a finished run
        log(f"report_error: {type(exc).__name__}: {exc}")
        return
    issues = [f for f in findings if f.status == ISSUE]
    for f in findings:
        if f.status != NOT_EVALUATED:
            family, status = f.family.replace(" ", "_"), f.status.replace(" ", "_")
            log(f"report_finding: {f.rule} family: {family} status: {status} evidence: {f.evidence}")
    listed = ", ".join(f.rule for f in issues) or "none"
    log(f"report_done: {names.REPORT_ISSUES}: {len(issues)} report: {out / REPORT_FILE} issues: {listed}")


class NoWatch:
    """What :func:`training.loop.train_one_epoch` uses when it is given no :class:`RunReport`."""

    def start_epoch(self, epoch: int) -> None: ...

    def batch_wanted(self) -> None: ...

    def batch_arrived(self) -> None: ...

    def batch_placed(self) -> None: ...

    def health_probe(self, global_step: int) -> None:
        return None

    def step_done(self, step: int, global_step: int, sums: torch.Tensor | None) -> None: ...
