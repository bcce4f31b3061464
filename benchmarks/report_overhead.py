"""What the training report costs: img/s of the same run of the loop with ``report=true`` and ``report=false``.

Runs ``training.loop.run_training`` (one epoch on synthetic bins, loading in the process) alternating the two
settings ``--repeats`` times, so a neighbour's load hits both alike, and prints per run the img/s and the CPU
time per step (the whole process: training, loading, the sampler thread) over the steps after the first 5,
then the medians. On a shared CPU the wall-clock figure is noisy and the CPU time is the steadier measure of
the cost. The step timer is on in both (it is always on). On a GPU pass ``--device cuda``::

    nice -n 15 .venv/bin/python benchmarks/report_overhead.py --repeats 3
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from training.config import TrainConfig
from training.loop import TrainHooks, run_training
from training.report.store import read_jsonl
from training.sagemaker_env import resolve_paths
from training.synthetic import make_synthetic_abid

SKIP = 5  # the first steps: loader start-up, and the report's first health checks (a one-off)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of the process: the sampler's too
    return usage.ru_utime + usage.ru_stime


def one_run(
    root: Path, data: Path, name: str, report: bool, args: argparse.Namespace
) -> tuple[float, float, float | None]:
    """``(img/s, CPU ms per step)`` over the steps after the first ``SKIP`` (start-up) of a one-epoch run, and
    the report's own accounting of its cost (``report_cost_share`` of the epoch; ``None`` when off)."""
    config = TrainConfig(
        architecture=args.architecture,
        pretrained=False,
        input_size=args.input_size,
        max_count=3,
        epochs=1,
        batch_size=args.batch_size,
        num_workers=0,  # loading in this process, so its CPU time is counted too
        threads=args.threads,
        device=args.device,
        val_fraction=0.02,
        test_fraction=0.02,
        log_every_steps=args.log_every,
        report=report,
    )
    paths = resolve_paths({"root": root / name, "train": data, "checkpoint_dir": root / name / "ckpt"}, environ={})
    marks: list[tuple[int, float, float]] = []

    def mark(step: int, stop: object) -> None:
        if args.device == "cuda":
            torch.cuda.synchronize()
        marks.append((step, time.perf_counter(), _cpu_s()))

    run_training(config, paths, log=lambda line: None, hooks=TrainHooks(after_step=mark))
    (s0, w0, c0), (s1, w1, c1) = marks[SKIP - 1], marks[-1]
    epochs = read_jsonl(paths.output_data_dir / "report" / "epochs.jsonl")
    accounted = epochs[-1].get("report_cost_share") if epochs else None
    return (s1 - s0) * args.batch_size / (w1 - w0), 1000 * (c1 - c0) / (s1 - s0), accounted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bins", type=int, default=1100, help="about 1000 training bins: 62 steps of 16")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--architecture", default="efficientnet_lite0")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--log-every", type=int, default=50, help="log_every_steps (train's default 50)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = root / "data"
        make_synthetic_abid(data, args.bins, max_count=3, size=args.input_size + 16, seed=0)
        results: dict[bool, list[tuple[float, float, float | None]]] = {True: [], False: []}
        for i in range(args.repeats):
            for report in (False, True) if i % 2 == 0 else (True, False):
                rate, cpu_ms, accounted = one_run(root, data, f"r{i}-{report}", report, args)
                results[report].append((rate, cpu_ms, accounted))
                share = f" report_cost_share: {accounted:.4f}" if accounted is not None else ""
                print(
                    f"run: {i} report: {str(report).lower()} img_per_s: {rate:.2f} cpu_ms_per_step: {cpu_ms:.1f}{share}"
                )

        def median(report: bool, k: int) -> float:
            return statistics.median(r[k] for r in results[report])

        off, on = median(False, 0), median(True, 0)
        cpu_off, cpu_on = median(False, 1), median(True, 1)
        print(
            f"report_overhead: device: {args.device} img_per_s_off: {off:.2f} img_per_s_on: {on:.2f} "
            f"img_per_s_overhead_percent: {100 * (off - on) / off:.2f} cpu_ms_per_step_off: {cpu_off:.1f} "
            f"cpu_ms_per_step_on: {cpu_on:.1f} cpu_overhead_percent: {100 * (cpu_on - cpu_off) / cpu_off:.2f} "
            f"accounted_percent: {100 * median(True, 2):.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
