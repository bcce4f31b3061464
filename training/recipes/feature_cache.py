"""Disk caches of the recipe: photos decoded as serving decodes them, then frozen-trunk features.

Both are keyed by what decides their content (the bins and their file sizes, the architecture,
the input size, the block the trunk stops at, the mirror/rotation variant), so a changed option
never reads a stale cache, and an interrupted recipe restarts from what is already on disk.

The trunk runs on ONNX Runtime when it is installed (about 3x torch eager on a CPU); its output is
checked against torch's on the first chunk and the cache falls back to torch when they differ.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from service.files import atomic_write
from service.preprocess import PreprocessSpec, decode_image, normalize, pil_to_tensor, resize_image
from service.test_time import VIEW_TRANSFORMS, VIEWS
from training.labels import LabelledBin
from training.recipes.lite_parts import Trunk

Log = Callable[..., None]
Runtime = Literal["auto", "onnxruntime", "torch"]

#: The count-preserving variants of a photo (the same table serving averages its test-time views over).
VARIANT_TRANSFORMS = VIEW_TRANSFORMS
VARIANTS = VIEWS
#: Largest difference between ONNX Runtime's and torch's trunk features accepted (features are O(1-10)).
PARITY_TOLERANCE = 1e-3


def cache_key(items: Sequence[LabelledBin], *parts: object) -> str:
    h = hashlib.sha256("|".join(str(p) for p in parts).encode())
    for item in items:
        h.update(f"{item.id}:{item.record.image_path.stat().st_size};".encode())
    return h.hexdigest()[:16]


def save_tensor_atomically(obj: object, path: Path) -> None:
    """torch.save to ``path`` through a temporary file, so an interrupted run never leaves half a cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: torch.save(obj, f))


def cached_images(cache_dir: Path, items: Sequence[LabelledBin], size: int, log: Log) -> torch.Tensor:
    """uint8 [N, 3, size, size]: every photo decoded and resized exactly as serving does."""
    path = cache_dir / f"images_{size}_{cache_key(items, 'images', size)}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    start = time.time()
    images = torch.empty(len(items), 3, size, size, dtype=torch.uint8)
    for i, item in enumerate(items):
        images[i] = pil_to_tensor(resize_image(decode_image(item.record.image_path.read_bytes()), size, "squash"))
        if (i + 1) % 2000 == 0:
            log(stage="decode", done=i + 1, of=len(items), seconds=round(time.time() - start))
    save_tensor_atomically(images, path)
    return images


class ModuleRunner:
    """Runs a module in eval mode on ONNX Runtime (checked against torch on the first call) or on torch.

    ``dynamic`` names the input's axes that vary besides the batch (e.g. ``{2: "h", 3: "w"}``).
    ``log_key`` is the field of the one line that says which runtime answers.
    """

    def __init__(
        self,
        module: nn.Module,
        example: torch.Tensor,
        runtime: Runtime,
        threads: int,
        log: Log,
        log_key: str,
        tolerance: float,
        dynamic: dict[int, str] | None = None,
    ) -> None:
        self.module = module.eval()
        self.session = None
        self.runtime = "torch"
        self.log, self.log_key, self.tolerance = log, log_key, tolerance
        if runtime != "torch" and importlib.util.find_spec("onnxruntime") is not None:
            self.session = self._onnx_session(example, threads, dynamic or {})
            self.runtime = "onnxruntime"
        elif runtime == "onnxruntime":
            raise RuntimeError("runtime onnxruntime was asked for but the package onnxruntime is not installed")
        self._checked = False

    def _onnx_session(self, example: torch.Tensor, threads: int, dynamic: dict[int, str]):
        import warnings

        import onnxruntime as ort

        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                self.module,
                example,
                buffer,
                input_names=["x"],
                output_names=["y"],
                dynamic_axes={"x": {0: "n", **dynamic}, "y": {0: "n"}},
                dynamo=False,
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        return ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.session is None:
            return self.module(x)
        out = torch.from_numpy(self.session.run(None, {"x": x.contiguous().numpy()})[0])
        if not self._checked:
            self._checked = True
            diff = float((out - self.module(x)).abs().max())
            if diff > self.tolerance:
                self.log(**{self.log_key: "torch", "reason": f"onnxruntime_differs_by_{diff:.2e}"})
                self.session, self.runtime = None, "torch"
                return self.module(x)
            self.log(**{self.log_key: "onnxruntime", "parity_max_abs_diff": f"{diff:.2e}"})
        return out


class TrunkRunner(ModuleRunner):
    """Runs the frozen trunk over normalised batches, on ONNX Runtime or torch."""

    def __init__(self, model: nn.Module, stop_block: int, runtime: Runtime, threads: int, log: Log) -> None:
        example = torch.zeros(2, 3, 64, 64)
        trunk = Trunk(model, stop_block)
        super().__init__(trunk, example, runtime, threads, log, "feature_runtime", PARITY_TOLERANCE, {2: "h", 3: "w"})


def cached_features(
    path: Path,
    images: torch.Tensor | None,
    spec: PreprocessSpec,
    runner_factory: Callable[[], TrunkRunner],
    variant: str,
    log: Log,
    chunk: int = 64,
) -> torch.Tensor:
    """float16 trunk features of every photo under ``variant`` (computed once, then read from ``path``).

    ``images`` (and the runner ``runner_factory`` builds) are needed only when ``path`` is missing.
    """
    if path.is_file():
        return torch.load(path, weights_only=True)
    transform = VARIANT_TRANSFORMS[variant]
    batches = (transform(normalize(images[s : s + chunk], spec)) for s in range(0, len(images), chunk))
    return run_and_cache(path, batches, len(images), runner_factory(), f"features_{variant}", log)


def run_and_cache(
    path: Path, batches: Iterable[torch.Tensor], total: int, runner: TrunkRunner, stage: str, log: Log
) -> torch.Tensor:
    """float16 trunk features of ``batches`` (``total`` photos in all), saved to ``path``, with progress lines."""
    start, chunks, done = time.time(), [], 0
    for i, x in enumerate(batches):
        chunks.append(runner(x.contiguous()).half())
        done += len(x)
        if (i + 1) % 40 == 0:
            log(stage=stage, done=done, of=total, img_per_s=round(done / (time.time() - start), 1))
    features = torch.cat(chunks)
    save_tensor_atomically(features, path)
    log(stage=stage, done=total, seconds=round(time.time() - start), runtime=runner.runtime)
    return features
