"""Full-size photos served as sent vs through a shrunk copy like the sample's: does the model prefer its training look?

    python benchmarks/full_size_copies.py --model-dir service/default_model --data-dir ../shared/abid

Two thirds of the ABID sample are copies already shrunk to 224x224 (JPEG quality 75); a warehouse camera sends
larger photos. For every full-size photo (not listed in ``resized_224.txt``) of the ``--parts`` of the model's
``split.json``, this sends the photo's JPEG bytes through the serving predictor (``predict_bytes``, the code behind
``/invocations``) as they are and as a 224x224 quality-75 copy, and prints the served answer's accuracy of each.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.served_accuracy import served_probabilities  # noqa: E402
from service.predictor import Predictor  # noqa: E402
from training.evaluate import label_policy_for  # noqa: E402
from training.labels import apply_label_policy  # noqa: E402
from training.layouts import read_abid, shrunk_copy_ids  # noqa: E402
from training.log import fields_text  # noqa: E402
from training.recipes.served_metrics import headline, served_metrics  # noqa: E402
from training.splits import read_split_manifest  # noqa: E402


def shrunk_copy(raw: bytes, size: int = 224, quality: int = 75) -> bytes:
    """The photo as the sample's copies were made: squashed to size x size, re-encoded as JPEG at ``quality``."""
    with Image.open(io.BytesIO(raw)) as image:
        small = image.convert("RGB").resize((size, size))
    out = io.BytesIO()
    small.save(out, "JPEG", quality=quality)
    return out.getvalue()


class _Copied:
    """A bin whose photo bytes are a shrunk copy (what ``served_probabilities`` reads is ``image_path``)."""

    def __init__(self, item) -> None:
        self.item = item
        self.image_path = self

    def read_bytes(self) -> bytes:
        return shrunk_copy(self.item.image_path.read_bytes())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--parts", default="val,test", help="comma-separated parts of split.json")
    parser.add_argument("--runtime", default="auto", choices=("auto", "onnxruntime", "torch"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    shrunk = shrunk_copy_ids(args.data_dir)
    split = read_split_manifest(args.model_dir / "split.json")
    predictor = Predictor.from_artifact(args.model_dir, runtime=args.runtime, threads=args.threads)
    meta = predictor.metadata
    records = read_abid(args.data_dir, log=None)
    for part in args.parts.split(","):
        ids = set(split.ids(part))
        items, _ = apply_label_policy(
            [r for r in records if r.id in ids and r.id not in shrunk], label_policy_for(meta)
        )
        items.sort(key=lambda it: it.id)
        if not items:
            print(f"part: {part} full_size_photos: 0")
            continue
        labels = torch.tensor([it.label for it in items])
        for view, batch in (("as_sent", items), ("shrunk_copy", [_Copied(it) for it in items])):
            probs = served_probabilities(predictor, batch)
            figures = headline(served_metrics(probs, labels, meta.class_values, meta.labels))
            print(f"part: {part} view: {view} full_size_photos: {len(items)} {fields_text(figures)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
