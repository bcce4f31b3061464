"""Compare served models on the bins none of them trained or was selected on.

    python benchmarks/compare_models.py --data-dir ../shared/abid --part-of service/default_model \\
        --model-dir /tmp/old_model --model-dir service/default_model

The bins are the ``--part`` (default ``test``) of ``--part-of``'s ``split.json``, minus every bin in the
train or validation part of any compared model's ``split.json``: so each model is measured only on
bins it never saw, and all models on the same bins. Prints the served answer's accuracy (all bins,
bins 0..N) and the ABID challenge protocol for each model, as ``key: value`` lines.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.artifact import load_artifact  # noqa: E402
from training.evaluate import label_policy_for, predict_items  # noqa: E402
from training.labels import apply_label_policy  # noqa: E402
from training.layouts import read_abid  # noqa: E402
from training.log import fields_text  # noqa: E402
from training.recipes.served_metrics import headline, served_metrics  # noqa: E402
from training.splits import read_split_manifest  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--part-of", type=Path, required=True, help="model folder whose split.json names the bins")
    parser.add_argument("--part", default="test", choices=("train", "val", "test"))
    parser.add_argument("--model-dir", type=Path, action="append", required=True)
    args = parser.parse_args(argv)
    wanted = set(read_split_manifest(args.part_of / "split.json").ids(args.part))
    for model_dir in args.model_dir:
        manifest = read_split_manifest(model_dir / "split.json")
        wanted -= set(manifest.ids("train")) | set(manifest.ids("val"))
    records = [r for r in read_abid(args.data_dir, log=None) if r.id in wanted]
    print(f"bins: {len(records)} part: {args.part} of: {args.part_of}", flush=True)
    for model_dir in args.model_dir:
        loaded = load_artifact(model_dir)
        meta = loaded.metadata
        items, _ = apply_label_policy(records, label_policy_for(meta))
        probs, labels, _, _ = predict_items(loaded.model, meta, items, batch_size=64)
        figures = headline(served_metrics(probs, labels, meta.class_values, meta.labels))
        print(f"model: {model_dir} {fields_text(figures)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
