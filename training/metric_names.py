"""The names of the figures the training loop prints, defined once: the loop writes its lines from
these, and ``binsight-aws train`` builds the SageMaker metric regexes from them.

Three kinds of lines carry them (``key: value``, numbers as :func:`training.log.format_value` writes):

* one per epoch: ``epoch: 3 train_loss: 0.8100 train_acc: 0.4100 val_loss: ... lr: 3.000e-04 epoch_time_s: 61.2``
  (the keys are also those of ``history.json``);
* one after training: ``test_acc: 0.4000 test_rmse: 1.0100 ... test_n: 1104 test_skipped: 0``;
* without a terminal, one every ``log_every_steps`` steps:
  ``step_progress: done: 120 total: 400 ... epoch: 2 step_loss: 0.8123 step_lr: 1.000e-03 img_per_s: 85.2``.
"""

from __future__ import annotations

EPOCH = "epoch"
#: Keys of an epoch line after ``epoch`` (the val_ ones only with validation data).
EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "val_rmse", "val_mae", "lr", "epoch_time_s")
#: :func:`training.evaluate.evaluate_model`'s key -> the name on the test line.
TEST_METRICS = {
    "accuracy": "test_acc",
    "rmse": "test_rmse",
    "mae": "test_mae",
    "off_by_one_accuracy": "test_off_by_one_acc",
    "macro_f1": "test_macro_f1",
    "loss": "test_loss",
}
#: Counts on the test line; not charted.
TEST_N, TEST_SKIPPED = "test_n", "test_skipped"
#: The name of the step lines' :class:`training.log.Progress` and the fields it adds.
STEP_PROGRESS = "step"
STEP_LOSS, STEP_LR, IMAGES_PER_S = "step_loss", "step_lr", "img_per_s"
#: The step timer's line at the same steps (training.report.timing): means per step over the window since
#: the last one, ``step_timing: epoch: 2 step: 50 data_wait_ms: 3.1 h2d_ms: 0.4 compute_ms: 80.2 step_ms: 84.0
#: data_wait_share: 0.0370 window_img_per_s: 380.9``.
STEP_TIMING = "step_timing"
STEP_TIMING_METRICS = ("data_wait_ms", "h2d_ms", "compute_ms", "step_ms", "data_wait_share", "window_img_per_s")
#: One per epoch after its line: ``epoch_timing: epoch: 2 epoch_img_per_s: 371.2 epoch_data_wait_share: 0.0410
#: peak_memory_mb: 2210.5 grad_norm: 1.2130`` (grad_norm: the mean of the epoch's health checks, with the report).
EPOCH_TIMING = "epoch_timing"
EPOCH_IMAGES_PER_S, EPOCH_DATA_WAIT_SHARE = "epoch_img_per_s", "epoch_data_wait_share"
PEAK_MEMORY_MB, GRAD_NORM = "peak_memory_mb", "grad_norm"
#: The report's last line: ``report_done: report_issues: 2 report: .../report.html issues: data_wait, ...``.
REPORT_ISSUES = "report_issues"
#: Everything SageMaker should chart, in the order of the lines (SageMaker takes at most 40).
CHARTED = (
    *EPOCH_METRICS,
    *TEST_METRICS.values(),
    STEP_LOSS,
    IMAGES_PER_S,
    *STEP_TIMING_METRICS,
    EPOCH_IMAGES_PER_S,
    EPOCH_DATA_WAIT_SHARE,
    PEAK_MEMORY_MB,
    GRAD_NORM,
    REPORT_ISSUES,
)
