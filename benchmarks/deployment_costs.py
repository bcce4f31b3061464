"""Cost per 1,000 photos of each way to deploy binsight, from a price table you can update and measured figures.

    .venv/bin/python benchmarks/deployment_costs.py                                  # the README's table
    .venv/bin/python benchmarks/deployment_costs.py --prices my_prices.json --photos-per-hour 2000
    .venv/bin/python benchmarks/deployment_costs.py --bench-json serverless.json      # figures of your own run

Prices: ``benchmarks/aws_prices.json`` (USD, on demand; edit it). Figures (defaults: this project's
measurements, README "Serverless, Lambda and batch"): the serving container's latency per photo on one vCPU
(what a serverless endpoint bills), an instance's throughput, the Lambda function's duration, the photo size.
Prints a Markdown table. The model: real-time instances bill every hour whether photos come or not (autoscaling
cannot go below one instance); serverless bills memory x the time each request runs plus data in and out;
the Lambda trigger adds its own GB-seconds, its request fee and the S3 calls (GET photo, LIST result key, PUT
result) to the serverless endpoint it calls; a batch transform job bills its instances from start-up to the
last photo.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: Measured here (benchmarks/serverless_bench.py, serve_bench.py; README). Overridable from the command line.
DEFAULTS = {
    "serverless_latency_s": 0.08,  # one photo, warm container, 1 vCPU (first /invocations after a cold start)
    "instance_img_per_s": 35.7,  # serve_bench: default model v3, ONNX Runtime fp32 end to end, c8, 2 vCPUs
    "lambda_duration_s": 0.25,  # S3 GET + LIST + model call + PUT; the model call dominates
    "photo_kb": 36.0,  # ABID photos (the sample the benchmarks use)
    "answer_kb": 0.3,
    "batch_startup_s": 360.0,  # a transform job's instance start-up, billed
}


def per_1000(prices: dict, figures: dict, photos_per_hour: float, hours_per_day: float, memory_mb: int) -> list:
    gb_moved = 1000 * (figures["photo_kb"] + figures["answer_kb"]) / 2**20
    data = gb_moved * prices["sagemaker_data_per_gb"]
    per_day = photos_per_hour * hours_per_day
    rows = []
    for instance in ("ml.m5.large", "ml.c5.large"):
        hourly = prices["sagemaker_realtime_per_hour"][instance]
        rows.append(
            (
                f"real-time, 1 x {instance} always on ({per_day:,.0f} photos/day)",
                24 * hourly / per_day * 1000 + data,
                f"{24 * hourly:.2f} USD/day whatever the traffic; full: {figures['instance_img_per_s']:g} img/s",
            )
        )
    full = prices["sagemaker_realtime_per_hour"]["ml.m5.large"] / (figures["instance_img_per_s"] * 3600) * 1000
    rows.append(("real-time ml.m5.large, fully busy (autoscaled to the load)", full + data, "the floor of real-time"))
    serverless = 1000 * figures["serverless_latency_s"] * memory_mb / 1024 * prices["serverless_per_gb_second"] + data
    rows.append((f"serverless, {memory_mb} MB", serverless, "nothing while idle; billed per request duration"))
    lam = (
        1000 * figures["lambda_duration_s"] * 0.5 * prices["lambda_per_gb_second"]
        + prices["lambda_per_million_requests"] / 1000
        + prices["s3_get_per_1000"]
        + prices["s3_list_per_1000"]
        + prices["s3_put_per_1000"]
    )
    rows.append(
        (f"Lambda S3 trigger (512 MB) + serverless {memory_mb} MB", serverless + lam, f"Lambda + S3: {lam:.4f}")
    )
    for photos in (1_000, 100_000):
        hourly = prices["sagemaker_batch_per_hour"]["ml.m5.large"]
        seconds = figures["batch_startup_s"] + photos / figures["instance_img_per_s"]
        cost = seconds / 3600 * hourly / photos * 1000 + data + prices["s3_put_per_1000"]
        rows.append((f"batch transform, 1 x ml.m5.large, a job of {photos:,} photos", cost, f"{seconds / 60:.0f} min"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prices", type=Path, default=HERE / "aws_prices.json")
    parser.add_argument("--bench-json", type=Path, help="serverless_bench.py --json output: its latency and memory")
    parser.add_argument("--photos-per-hour", type=float, default=300.0, help="real-time: photos per working hour")
    parser.add_argument("--hours-per-day", type=float, default=16.0, help="real-time: working hours per day")
    parser.add_argument("--memory-mb", type=int, default=None, help="serverless memory (default: the suggested one)")
    for name, value in DEFAULTS.items():
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=value)
    args = parser.parse_args(argv)
    prices = json.loads(args.prices.read_text())
    figures = {name: getattr(args, name) for name in DEFAULTS}
    memory = args.memory_mb
    if args.bench_json:
        bench = json.loads(args.bench_json.read_text())
        firsts = [f for _, f in bench["cold_starts"] if f is not None]
        if firsts:
            figures["serverless_latency_s"] = sorted(firsts)[len(firsts) // 2]
        memory = memory or bench["suggested_memory_size_mb"]
    if memory is None:
        from sys import path

        path.insert(0, str(HERE.parent))
        from binsight_aws.serverless import DEFAULT_MEMORY_MB

        memory = DEFAULT_MEMORY_MB
    print(f"prices: {args.prices.name} region: {prices.get('region')}")
    print("| deployment | USD per 1,000 photos | note |\n|---|---:|---|")
    for name, cost, note in per_1000(prices, figures, args.photos_per_hour, args.hours_per_day, memory):
        print(f"| {name} | {cost:.4f} | {note} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
