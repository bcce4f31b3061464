"""The ONNX graph of an artifact: exported from the module ``model.pth`` + ``model.json`` build, cached on disk.

``model.pth`` + ``model.json`` stay the artifact contract; the graph is derived from them when a
model loads. It is the very ``nn.Module`` that :func:`service.artifact.load_artifact` returns,
exported with the TorchScript-based exporter (``dynamo=False``: it needs the ``onnx`` package but
not ``onnxscript``, and works offline), with a dynamic batch axis, float32 NCHW input named
``input`` (normalised as the artifact's preprocessing says) and the logits as ``logits``.

Exported graphs are cached by a key made of the weights' SHA-256, what ``model.json`` says about
the module, and the torch version and export settings, so a second start of the same model skips
the export and a different ``model.pth`` gets a new graph. The cache directory is
``BINSIGHT_CACHE_DIR`` when set, else the user's cache directory (``$XDG_CACHE_HOME/binsight`` or
``~/.cache/binsight``), else a private folder in the temp directory; not the model directory,
which is read-only in a container (``/opt/ml/model``) and part of the source tree for the
built-in model. Without a writable directory the graph is exported to memory on every start.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from service.artifact import ModelMetadata

logger = logging.getLogger(__name__)

OPSET = 17
#: Part of the cache key: change it when the export settings change, so old graphs are not reused.
EXPORT_TAG = f"torchscript-opset{OPSET}-dynamic-batch-v1"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
CACHE_SUBDIR = "onnx"


class ExportError(RuntimeError):
    """The module could not be exported to ONNX; the message says why."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def graph_key(weights_sha256: str, metadata: ModelMetadata) -> str:
    """What makes two exports the same graph: the weights, the module model.json builds, the exporter."""
    fields = {
        "weights_sha256": weights_sha256,
        "architecture": metadata.architecture,
        "num_classes": metadata.num_classes,
        "input_size": metadata.input_size,
        "torch": torch.__version__,
        "export": EXPORT_TAG,
    }
    if metadata.output_stride != 32:  # the same weights make another graph (keys of stride-32 graphs unchanged)
        fields["output_stride"] = metadata.output_stride
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def export_onnx(model: nn.Module, input_size: int, destination: str | os.PathLike | io.BytesIO) -> None:
    """Export ``model`` (in eval mode) with a dynamic batch axis; raises :class:`ExportError`."""
    try:
        import onnx  # noqa: F401  (the TorchScript exporter needs it; say so plainly when it is missing)
    except ImportError:
        raise ExportError("exporting to ONNX needs the package 'onnx' (pip install onnx)") from None
    was_training = model.training
    model.eval()
    # Batch 2, not 1: a trace at batch 1 can hide a batch size baked into a reshape.
    example = torch.zeros(2, 3, input_size, input_size)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The exporter's deprecation note and its per-op constant-folding notes say nothing
            # about this model; the parity check against torch is what tells whether the graph is right.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                destination,
                dynamo=False,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                do_constant_folding=True,
            )
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"torch.onnx.export failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from exc
    finally:
        model.train(was_training)


# ------------------------------------------------------------------------------- cache directory


@dataclass(frozen=True)
class CacheDir:
    """The directory exported graphs go to, or ``path=None`` with why there is none."""

    path: Path | None
    note: str


def _usable(path: Path) -> str | None:
    """None when ``path`` is a directory we own and can write to; else why not."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        if hasattr(os, "getuid") and path.stat().st_uid != os.getuid():
            return f"{path} belongs to another user"
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
    except OSError as exc:
        return f"{path} is not writable ({exc.strerror or exc})"
    return None


def resolve_cache_dir(configured: Path | None = None, environ: Mapping[str, str] | None = None) -> CacheDir:
    """``configured`` (BINSIGHT_CACHE_DIR), else the user's cache dir, else a private temp folder."""
    environ = os.environ if environ is None else environ
    candidates: list[tuple[Path, str]] = []
    if configured is not None:
        candidates.append((Path(configured), "BINSIGHT_CACHE_DIR"))
    xdg = environ.get("XDG_CACHE_HOME", "").strip()
    home = environ.get("HOME", "").strip()
    if xdg:
        candidates.append((Path(xdg) / "binsight", "XDG_CACHE_HOME"))
    elif home:
        candidates.append((Path(home) / ".cache" / "binsight", "~/.cache"))
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    candidates.append((Path(tempfile.gettempdir()) / f"binsight-cache-{uid}", "temp dir"))
    problems = []
    for path, source in candidates:
        problem = _usable(path)
        if problem is None:
            return CacheDir(path / CACHE_SUBDIR, source)
        problems.append(problem)
    return CacheDir(None, "no writable cache directory: " + "; ".join(problems))


# ------------------------------------------------------------------------------- cached export


@dataclass(frozen=True)
class OnnxGraph:
    """An exported graph: a file in the cache, or bytes when there is no cache."""

    path: Path | None
    data: bytes | None
    cache: str  # "hit", "miss" (exported and stored) or "off" (exported to memory)
    export_s: float
    weights_sha256: str

    @property
    def source(self) -> str | bytes:
        return str(self.path) if self.path is not None else self.data

    def describe(self) -> str:
        return str(self.path) if self.path is not None else "in memory (no cache directory)"


def onnx_graph(
    model: nn.Module, metadata: ModelMetadata, weights: Path, cache: CacheDir, refresh: bool = False
) -> OnnxGraph:
    """The graph of ``model`` (built from ``weights`` as ``metadata`` says): from the cache when it
    holds it (unless ``refresh``), else exported now and stored there (atomically)."""
    weights_sha256 = file_sha256(weights)
    key = graph_key(weights_sha256, metadata)
    if cache.path is None:
        buffer = io.BytesIO()
        start = time.perf_counter()
        export_onnx(model, metadata.input_size, buffer)
        return OnnxGraph(None, buffer.getvalue(), "off", time.perf_counter() - start, weights_sha256)
    path = cache.path / f"{metadata.architecture}-{metadata.input_size}px-{weights_sha256[:12]}-{key[:12]}.onnx"
    if path.is_file() and not refresh:
        return OnnxGraph(path, None, "hit", 0.0, weights_sha256)
    start = time.perf_counter()
    try:
        cache.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=cache.path, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as exc:  # the directory went away or filled up since it was probed
        logger.warning("onnx cache unusable: dir: %s error: %s", cache.path, exc)
        return onnx_graph(model, metadata, weights, CacheDir(None, str(exc)))
    try:
        export_onnx(model, metadata.input_size, tmp)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return OnnxGraph(path, None, "miss", time.perf_counter() - start, weights_sha256)
