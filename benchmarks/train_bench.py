"""Training throughput: data loading alone, the model step alone, and the full step, in images/s.

    python benchmarks/train_bench.py --data-dir ../shared/abid --architecture efficientnet_lite0 \\
        --input-size 224 --batch-size 16 --limit 256 --num-workers 2

Prints ``key: value`` lines. Loading uses the training pipeline's own pieces (seeded sampler,
train augmentation, skip-bad collate); the model step is forward + loss + backward + optimiser
step on random tensors already on the device; the full step is both, as in ``train``.
Figures on a shared machine are noisy: run more steps, or compare runs side by side.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from service.architectures import build_model, get_architecture
from service.preprocess import PreprocessSpec
from training.dataset import collate_skip_bad
from training.device import resolve_device
from training.labels import LabelPolicy, apply_label_policy
from training.layouts import scan_records
from training.loaders import AugmentedBins, EpochSampler
from training.losses import CountLoss


def _loader(items, spec: PreprocessSpec, batch_size: int, workers: int, seed: int, pin: bool) -> DataLoader:
    sampler = EpochSampler(len(items), seed)
    return DataLoader(
        AugmentedBins(items, spec, 1.0),
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate_skip_bad,
        num_workers=workers,
        pin_memory=pin,
        drop_last=True,
        persistent_workers=workers > 0,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--architecture", default="efficientnet_lite0")
    parser.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--limit", type=int, default=256, help="images used for the loading figures")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8, help="timed model steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True, help="bf16 on CUDA")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True, help="on CUDA")
    return parser.parse_args()


def bench_loading(items, spec: PreprocessSpec, args: argparse.Namespace, cuda: bool) -> float:
    """Data loading alone (decode + augmentation + collate), one pass over the items: img/s."""
    loader = _loader(items, spec, args.batch_size, args.num_workers, 0, cuda)
    start, n = time.perf_counter(), 0
    for _, labels, _ in loader:
        n += labels.numel()
    return n / (time.perf_counter() - start)


def make_step(args: argparse.Namespace, device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One training step of a fresh model: forward + loss + backward + clipped AdamW update."""
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    model = build_model(args.architecture, 7, pretrained=args.pretrained).to(device)
    if cuda and args.channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    criterion = CountLoss([0, 1, 2, 3, 4, 5, 6], label_smoothing=0.1).to(device)
    use_amp = cuda and args.amp

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        if cuda and args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    return step


def bench_model_step(step, args: argparse.Namespace, device: torch.device) -> float:
    """The model step alone on tensors already on the device: seconds per step."""
    x = torch.randn(args.batch_size, 3, args.input_size, args.input_size, device=device)
    y = torch.randint(0, 7, (args.batch_size,), device=device)
    for _ in range(args.warmup):
        step(x, y)
    _sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step(x, y)
    _sync(device)
    return (time.perf_counter() - start) / args.steps


def bench_full_step(
    step, items, spec: PreprocessSpec, args: argparse.Namespace, device: torch.device
) -> tuple[int, float]:
    """The loader feeding the model, as in training (at most --steps batches): (images, seconds)."""
    loader = _loader(items, spec, args.batch_size, args.num_workers, 1, device.type == "cuda")
    it = iter(loader)
    for _ in range(min(args.warmup, len(loader) - 1)):
        images, labels, _ = next(it)
        step(images.to(device, non_blocking=True), labels.to(device, non_blocking=True))
    _sync(device)
    start, n = time.perf_counter(), 0
    for _, (images, labels, _) in zip(range(args.steps), it):
        step(images.to(device, non_blocking=True), labels.to(device, non_blocking=True))
        n += labels.numel()
    _sync(device)
    return n, time.perf_counter() - start


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    arch = get_architecture(args.architecture)
    spec = PreprocessSpec(input_size=args.input_size, mean=arch.mean, std=arch.std)
    records, _ = scan_records(args.data_dir)
    items, _ = apply_label_policy(records, LabelPolicy(max_count=5, overflow=True))
    items = items[: args.limit]
    print(
        f"machine: {platform.processor() or platform.machine()} cpus: {os.cpu_count()} "
        f"torch_threads: {torch.get_num_threads()} device: {device}"
        + (f" gpu: {torch.cuda.get_device_name(device)}" if cuda else ""),
        flush=True,
    )
    print(
        f"config: architecture: {args.architecture} input_size: {args.input_size} batch_size: {args.batch_size} "
        f"num_workers: {args.num_workers} images: {len(items)} amp: {cuda and args.amp}",
        flush=True,
    )
    print(f"data_loading_img_per_s: {bench_loading(items, spec, args, cuda):.1f}", flush=True)
    step = make_step(args, device)
    step_s = bench_model_step(step, args, device)
    print(f"model_step_img_per_s: {args.batch_size / step_s:.1f}", flush=True)
    print(f"model_step_ms: {1000 * step_s:.1f}", flush=True)
    n, full_s = bench_full_step(step, items, spec, args, device)
    print(f"full_step_img_per_s: {n / full_s:.1f}", flush=True)
    print(f"full_step_images: {n}", flush=True)


if __name__ == "__main__":
    main()
