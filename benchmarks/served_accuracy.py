"""Accuracy of what the server answers: a model folder's test bins through the serving predictor.

    python benchmarks/served_accuracy.py --model-dir service/default_model --data-dir ../shared/abid \\
        --runtime auto            # the runtime `serve` picks (ONNX Runtime when installed)

Loads the artifact exactly as ``serve`` does (``Predictor.from_artifact``: runtime choice, parity
check, warm-up), sends every photo of the ``--part`` of the folder's ``split.json`` as its JPEG bytes
through ``predict_bytes`` (the code behind ``/invocations``) in batches, and prints the served answer's
accuracy (all bins, bins 0..N, the challenge protocol), the runtime, img/s, and how many answers differ
from the evaluation's (torch) answers when ``--compare-torch`` is given.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.predictor import Predictor  # noqa: E402
from training.evaluate import label_policy_for  # noqa: E402
from training.labels import apply_label_policy  # noqa: E402
from training.layouts import read_abid  # noqa: E402
from training.log import fields_text  # noqa: E402
from training.recipes.served_metrics import headline, served_metrics  # noqa: E402
from training.splits import read_split_manifest  # noqa: E402


def served_probabilities(predictor: Predictor, items, batch: int = 16) -> torch.Tensor:
    labels = predictor.metadata.labels
    rows = []
    for s in range(0, len(items), batch):
        results = predictor.predict_bytes([it.image_path.read_bytes() for it in items[s : s + batch]])
        for result in results:
            rows.append([result.probabilities[name] for name in labels])
    return torch.tensor(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--part", default="test", choices=("train", "val", "test"))
    parser.add_argument("--runtime", default="auto", choices=("auto", "onnxruntime", "torch"))
    parser.add_argument("--compare-torch", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    ids = set(read_split_manifest(args.model_dir / "split.json").ids(args.part))
    predictor = Predictor.from_artifact(args.model_dir, runtime=args.runtime, threads=args.threads)
    meta = predictor.metadata
    items, _ = apply_label_policy(
        [r for r in read_abid(args.data_dir, log=None) if r.id in ids], label_policy_for(meta)
    )
    items.sort(key=lambda it: it.id)
    labels = torch.tensor([it.label for it in items])
    started = time.time()
    probs = served_probabilities(predictor, items)
    seconds = time.time() - started
    figures = headline(served_metrics(probs, labels, meta.class_values, meta.labels))
    print(f"runtime: {predictor.runtime.name} bins: {len(items)} img_per_s: {len(items) / seconds:.1f}")
    print(fields_text(figures))
    if args.compare_torch:
        reference = Predictor.from_artifact(args.model_dir, runtime="torch", threads=args.threads)
        ref = served_probabilities(reference, items)
        differ = int((ref.argmax(1) != probs.argmax(1)).sum())
        print(
            f"answers_differing_from_torch: {differ} of: {len(items)} "
            f"max_abs_probability_diff: {float((ref - probs).abs().max()):.2e}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
