"""Forward cost of served models: multiply-accumulates and img/s through the serving predictor.

    python benchmarks/forward_cost.py --model-dir service/default_model --model-dir lite1_model --threads 2

For each model folder: GMAC per photo (torch's flop counter over one forward pass at the model's
input size) and, per runtime, forward img/s on a batch of ``--batch-size`` prepared photos (the
predictor's own ``forward``: normalisation, the network over its test-time views, the answer),
the median of ``--rounds`` timed rounds after one warm-up. Decoding is left out (it depends on the
photo, not the model: ``benchmarks/image_path_bench.py``). Prints ``key: value`` lines; the
reference of the serving budget is Lite0 at 224 px (``--reference``, built untrained).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from service.architectures import build_model  # noqa: E402
from service.artifact import load_artifact, metadata_for, save_artifact  # noqa: E402
from service.predictor import Predictor, PreparedImage  # noqa: E402
from training.log import fields_text  # noqa: E402


def gmac(model: torch.nn.Module, size: int) -> float:
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 2e9


def img_per_s(predictor: Predictor, batch_size: int, rounds: int) -> float:
    size = predictor.input_size
    generator = torch.Generator().manual_seed(0)
    images = [
        PreparedImage(
            torch.randint(0, 256, (size * size * 3,), dtype=torch.uint8, generator=generator).numpy().tobytes(), size
        )
        for _ in range(batch_size)
    ]
    predictor.forward(images)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        predictor.forward(images)
        times.append(time.perf_counter() - start)
    return batch_size / statistics.median(times)


def reference_model(folder: Path, architecture: str, size: int) -> Path:
    labels = ["0", "1", "2", "3", "4", "5", "6+"]
    model = build_model(architecture, len(labels))
    save_artifact(folder, model, metadata_for(architecture, labels, input_size=size, resize="squash"))
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, action="append", default=[])
    parser.add_argument("--reference", default="efficientnet_lite0:224", help="ARCHITECTURE:SIZE, or empty for none")
    parser.add_argument("--runtimes", default="torch,onnxruntime")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folders = list(args.model_dir)
        if args.reference:
            architecture, size = args.reference.split(":")
            folders.insert(0, reference_model(Path(tmp) / "reference", architecture, int(size)))
        for folder in folders:
            artifact = load_artifact(folder)
            cost = round(gmac(artifact.model, artifact.metadata.input_size), 3)  # the same network on every runtime
            for runtime in args.runtimes.split(","):
                predictor = Predictor.from_artifact(
                    folder, runtime=runtime, threads=args.threads, cache_dir=Path(tmp) / "graphs", warm_up=False
                )
                meta = predictor.metadata
                fields = {
                    "model": "reference" if folder.parent == Path(tmp) else folder,
                    "architecture": meta.architecture,
                    "input_size": meta.input_size,
                    "views": len(meta.test_time_views),
                    "runtime": predictor.runtime.name,
                    "gmac_per_view": cost,
                    "img_per_s": round(img_per_s(predictor, args.batch_size, args.rounds), 1),
                }
                print(fields_text(fields), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
