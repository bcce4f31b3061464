"""The training report: where each step's time goes, what the machine did, and rules that catch a sick run.

* :mod:`.timing`: the step timer (data wait, host-to-device copy, compute, iteration), always on; the device
  is synchronised only when a window is read (the loop's log interval and the epoch's end);
* :mod:`.sampler`: a background thread sampling CPU, memory, I/O, network (psutil) and GPUs (NVML);
* :mod:`.health`: gradients, weights and the update/weight ratio read from ``param.grad`` every N steps
  (no module hooks, so it holds under ``torch.compile``);
* :mod:`.profiling`: a bounded ``torch.profiler`` window on request (gzipped, size-capped);
* :mod:`.thresholds` and :mod:`.rules`: the findings, each ``not evaluated``, ``ok`` or ``issue`` with evidence;
* :mod:`.store`: the run folder's raw records (``report/`` beside ``metrics.json``), which :mod:`.render`
  turns into ``report.html``, ``findings.json`` and ``summary.csv``, during the run or again later with
  ``python -m training.report RUN_FOLDER``;
* :mod:`.run_report`: what the training loop talks to.
"""
