"""The runtime that runs the forward pass: torch (eager) or ONNX Runtime.

ONNX Runtime runs either the fp32 graph derived from ``model.pth`` when the model loads
(:mod:`service.onnx_graph`) or, only when asked (``precision="int8"``), the artifact's int8
graph ``model.int8.onnx`` written by ``python -m training.quantize``. Either way the graph is
checked against torch before it serves: the same check batch goes through both, and the
probabilities must agree within :data:`FP32_TOLERANCE` (fp32, argmax equal too) or
:data:`INT8_TOLERANCE` (int8, whose accuracy change is measured on real photos by the quantize
command and recorded in ``model.json``). When they do not, :class:`RuntimeUnavailable` says why.

:class:`OnnxRuntimeModule` puts a session behind the ``nn.Module`` call interface
(``module(batch) -> logits``), so code written for a torch model (the predictor, evaluation) runs
it unchanged.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from service.artifact import WEIGHTS_FILE, ModelMetadata
from service.onnx_graph import INPUT_NAME, OUTPUT_NAME, CacheDir, ExportError, file_sha256, onnx_graph

logger = logging.getLogger(__name__)

RuntimeChoice = Literal["auto", "onnxruntime", "torch"]
Precision = Literal["fp32", "int8"]

#: The int8 graph inside an artifact folder, and where model.json records how it was made.
INT8_GRAPH_FILE = "model.int8.onnx"
QUANTIZATION_KEY = "quantization"

#: Largest absolute difference of any class probability between torch and ONNX Runtime fp32.
FP32_TOLERANCE = 1e-4
#: The same for the int8 graph: a broken or foreign graph is far off; the real accuracy change
#: on photos is what ``python -m training.quantize`` measures and records.
INT8_TOLERANCE = 0.1


class RuntimeUnavailable(RuntimeError):
    """ONNX Runtime cannot serve this model (not installed, export failed, outputs differ from torch)."""


def onnxruntime_version() -> str | None:
    """The installed onnxruntime's version, or None when it is not installed."""
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    import onnxruntime

    return onnxruntime.__version__


def available_cpus() -> int:
    """CPUs this process may run on (the affinity mask, which containers and ``taskset`` narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def new_session(source: str | bytes, threads: int):
    """A CPU inference session: ``threads`` intra-op threads, all graph optimisations, no spinning.

    Idle intra-op threads sleep instead of spinning, for the reason ``serve`` sets
    ``OMP_WAIT_POLICY=PASSIVE`` for torch: spinning threads steal the cores that decode images
    and run the event loop (on our 2-core machines the forward was also faster without it).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: its warnings about unused initializers are noise here
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


class OnnxRuntimeModule(nn.Module):
    """An ONNX Runtime session called like the torch model it came from: float [N, 3, S, S] -> logits [N, K]."""

    def __init__(self, session, label: str = "onnxruntime") -> None:
        super().__init__()
        self.session = session
        self.label = label
        inputs, outputs = session.get_inputs(), session.get_outputs()
        self._input = inputs[0].name if inputs else INPUT_NAME
        self._output = outputs[0].name if outputs else OUTPUT_NAME

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (logits,) = self.session.run([self._output], {self._input: array})
        return torch.from_numpy(logits)

    def extra_repr(self) -> str:
        return self.label


@dataclass(frozen=True)
class RuntimeInfo:
    """Which runtime serves, and how it got there (reported by ``/model`` and the start-up log)."""

    name: Literal["torch", "onnxruntime"]
    precision: Precision = "fp32"
    requested: RuntimeChoice = "torch"
    threads: int = 0
    graph: str | None = None
    cache: str | None = None
    export_s: float | None = None
    prepare_s: float | None = None
    parity_max_abs_diff: float | None = None
    parity_tolerance: float | None = None
    fallback_reason: str | None = None
    onnxruntime_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def log_fields(self) -> str:
        fields = [
            f"runtime: {self.name}",
            f"precision: {self.precision}",
            f"requested: {self.requested}",
            f"threads: {self.threads}",
        ]
        if self.graph:
            fields += [f"graph: {self.graph}", f"cache: {self.cache}"]
        if self.parity_max_abs_diff is not None:
            fields.append(f"parity_max_abs_diff: {self.parity_max_abs_diff:.2e}")
        if self.prepare_s is not None:
            fields.append(f"prepare_s: {self.prepare_s:.2f}")
        if self.fallback_reason:
            fields.append(f"fallback_reason: {self.fallback_reason}")
        return " ".join(fields)


def _probabilities(module: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.softmax(module(batch).float(), dim=1)


def check_parity(reference: torch.Tensor, candidate: torch.Tensor, tolerance: float, argmax: bool) -> float:
    """Max absolute probability difference; raises :class:`RuntimeUnavailable` above ``tolerance``
    (or, with ``argmax``, when a most probable class differs) or on invalid output."""
    if not bool(torch.isfinite(reference).all()):
        raise RuntimeUnavailable("the torch model itself answers NaN or infinity on the check images")
    if candidate.shape != reference.shape:
        raise RuntimeUnavailable(
            f"ONNX Runtime output shape {tuple(candidate.shape)} differs from torch's {tuple(reference.shape)}"
        )
    if not bool(torch.isfinite(candidate).all()):
        raise RuntimeUnavailable("ONNX Runtime output holds NaN or infinity where torch's does not")
    difference = float((candidate - reference).abs().max())
    if difference > tolerance:
        raise RuntimeUnavailable(
            f"ONNX Runtime probabilities differ from torch's by up to {difference:.2e} "
            f"on the check images (tolerance {tolerance:g})"
        )
    if argmax and not torch.equal(candidate.argmax(1), reference.argmax(1)):
        raise RuntimeUnavailable(
            "ONNX Runtime picks a different class than torch on the check images "
            f"(max probability difference {difference:.2e})"
        )
    return difference


def int8_graph_path(model_dir: Path, metadata: ModelMetadata, weights_sha256: str) -> Path:
    """The artifact's int8 graph, after checking model.json says it was made from these weights."""
    path = model_dir / INT8_GRAPH_FILE
    record = (metadata.model_extra or {}).get(QUANTIZATION_KEY, {})
    record = record.get("int8") if isinstance(record, dict) else None
    if not path.is_file():
        raise RuntimeUnavailable(
            f"precision int8 needs {path}; make it with "
            f"`python -m training.quantize --model-dir {model_dir} --data-dir DATA`"
        )
    if not isinstance(record, dict):
        raise RuntimeUnavailable(
            f"{model_dir / 'model.json'} has no {QUANTIZATION_KEY}.int8 record for "
            f"{INT8_GRAPH_FILE}; rerun python -m training.quantize"
        )
    if record.get("weights_sha256") != weights_sha256:
        raise RuntimeUnavailable(
            f"{INT8_GRAPH_FILE} was made from other weights than {WEIGHTS_FILE} "
            "(the model changed since it was quantized); rerun python -m training.quantize"
        )
    if record.get("graph_sha256") != file_sha256(path):
        raise RuntimeUnavailable(
            f"{path} is not the file model.json records (its SHA-256 differs); rerun python -m training.quantize"
        )
    return path


_Session = tuple[Any, str, str | None, float | None, float]  # session, graph label, cache state, export s, tolerance


def _int8_session(model_dir: Path, metadata: ModelMetadata, weights: Path, threads: int) -> _Session:
    """The artifact's quantized graph (refused when made from other weights)."""
    path = int8_graph_path(Path(model_dir), metadata, file_sha256(weights))
    try:
        session = new_session(str(path), threads)
    except Exception as exc:
        raise RuntimeUnavailable(f"ONNX Runtime cannot load {path}: {type(exc).__name__}: {exc}") from exc
    return session, str(path), "artifact", None, INT8_TOLERANCE


def _fp32_session(model: nn.Module, metadata: ModelMetadata, weights: Path, cache: CacheDir, threads: int) -> _Session:
    """The fp32 graph exported from the weights (or read from the cache; a bad cache entry is exported again)."""
    try:
        graph = onnx_graph(model, metadata, weights, cache)
        try:
            session = new_session(graph.source, threads)
        except Exception:
            if graph.cache != "hit":
                raise
            logger.warning("onnx cache entry unreadable, exporting again: path: %s", graph.path)
            graph = onnx_graph(model, metadata, weights, cache, refresh=True)
            session = new_session(graph.source, threads)
    except ExportError as exc:
        raise RuntimeUnavailable(str(exc)) from exc
    except Exception as exc:
        raise RuntimeUnavailable(
            f"ONNX Runtime cannot load the exported graph: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        ) from exc
    return session, graph.describe(), graph.cache, graph.export_s, FP32_TOLERANCE


def onnxruntime_module(
    model: nn.Module,
    metadata: ModelMetadata,
    model_dir: Path,
    check_batch: torch.Tensor,
    *,
    precision: Precision = "fp32",
    cache: CacheDir,
    threads: int,
    requested: RuntimeChoice = "onnxruntime",
) -> tuple[OnnxRuntimeModule, RuntimeInfo]:
    """ONNX Runtime for ``model`` (the torch module of the artifact in ``model_dir``), checked
    against it on ``check_batch``; raises :class:`RuntimeUnavailable` with the reason."""
    version = onnxruntime_version()
    if version is None:
        raise RuntimeUnavailable("onnxruntime is not installed (pip install onnxruntime)")
    start = time.perf_counter()
    reference = _probabilities(model, check_batch)
    weights = Path(model_dir) / WEIGHTS_FILE
    if precision == "int8":
        session, graph_label, cache_state, export_s, tolerance = _int8_session(model_dir, metadata, weights, threads)
    else:
        session, graph_label, cache_state, export_s, tolerance = _fp32_session(model, metadata, weights, cache, threads)
    module = OnnxRuntimeModule(session, label=f"onnxruntime {version} {precision} {graph_label}")
    try:
        candidate = _probabilities(module, check_batch)
    except Exception as exc:
        raise RuntimeUnavailable(
            f"ONNX Runtime failed on the check images: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        ) from exc
    difference = check_parity(reference, candidate, tolerance, argmax=precision == "fp32")
    info = RuntimeInfo(
        name="onnxruntime",
        precision=precision,
        requested=requested,
        threads=threads,
        graph=graph_label,
        cache=cache_state,
        export_s=None if export_s is None else round(export_s, 3),
        prepare_s=round(time.perf_counter() - start, 3),
        parity_max_abs_diff=difference,
        parity_tolerance=tolerance,
        onnxruntime_version=version,
    )
    return module, info
