"""int8 graph of a model artifact for ONNX Runtime, calibrated on training photos, its accuracy change measured.

    python -m training.quantize --model-dir service/default_model --data-dir ../shared/abid

1. The fp32 graph is exported from ``model.pth`` exactly as serving derives it
   (:mod:`service.onnx_graph`) and checked against torch.
2. Static quantization (QDQ, per-channel int8 weights, uint8 activations) with ranges calibrated
   on photos of the split manifest's **training** part (default ``<model-dir>/split.json``), fed
   through the serving preprocessing.
3. The fp32 and int8 graphs are evaluated on the manifest's **test** part, from the JPEG bytes
   through the serving preprocessing (:func:`training.evaluate.evaluate_model`).
4. ``model.int8.onnx`` is written into the artifact folder and ``model.json`` gets a
   ``quantization.int8`` record: the weights' and graph's SHA-256 (serving refuses a graph made
   from other weights), the calibration, and both evaluations with the accuracy change in points.

Serving uses the int8 graph only when asked (``BINSIGHT_PRECISION=int8``). Rerun this command
after every retraining: a new ``model.pth`` makes the old record stale, and serving says so.
Every option can also be set as ``BINSIGHT_QUANTIZE_<OPTION>``; command-line options win.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.artifact import METADATA_FILE, WEIGHTS_FILE, ArtifactError, ModelMetadata, load_artifact
from service.files import atomic_write, atomic_write_json
from service.onnx_graph import export_onnx, file_sha256
from service.options import parse_options
from service.preprocess import ImageDecodeError, preprocess_bytes
from service.runtimes import (
    FP32_TOLERANCE,
    INT8_GRAPH_FILE,
    QUANTIZATION_KEY,
    OnnxRuntimeModule,
    RuntimeUnavailable,
    available_cpus,
    check_parity,
    new_session,
    onnxruntime_version,
)
from training.evaluate import EvaluateConfig, counts_task_key, evaluate_model, select_items
from training.log import Log, print_line
from training.model_card import refresh_model_card

ENV_PREFIX = "BINSIGHT_QUANTIZE_"


class QuantizeConfig(BaseModel):
    """Options of ``python -m training.quantize``."""

    model_config = ConfigDict(extra="forbid")

    model_dir: Path = Field(..., description="Artifact directory (model.pth + model.json); the int8 graph goes here.")
    data_dir: Path = Field(..., description="ABID or count-folder data directory holding the manifest's bins.")
    split_manifest: Path | None = Field(None, description="Split manifest (default <model-dir>/split.json).")
    calibration_part: Literal["train", "val"] = Field("train", description="Manifest part the ranges come from.")
    calibration_images: int = Field(256, ge=1, le=100_000, description="Photos (a seeded sample) to calibrate on.")
    method: Literal["minmax", "percentile", "entropy"] = Field("minmax", description="Calibration method.")
    eval_part: Literal["train", "val", "test"] = Field(
        "test", description="Manifest part the accuracy change is measured on."
    )
    eval_limit: int | None = Field(None, ge=1, description="Evaluate a seeded sample of this many bins.")
    tta_flip: bool = Field(False, description="Evaluate with flip test-time augmentation (serving does not).")
    batch_size: int = Field(32, ge=1, le=1024)
    threads: int = Field(0, ge=0, le=512, description="ONNX Runtime threads; 0: one per available CPU.")
    seed: int = Field(0)
    dry_run: bool = Field(False, description="Measure and print, but write nothing into the model directory.")

    @model_validator(mode="after")
    def _manifest(self) -> "QuantizeConfig":
        if self.split_manifest is None:
            self.split_manifest = self.model_dir / "split.json"
        if self.eval_part == self.calibration_part:
            raise ValueError(
                f"the accuracy change must be measured on other photos than the calibration's "
                f"(both are {self.eval_part!r})"
            )
        return self


def _items(cfg: QuantizeConfig, metadata: ModelMetadata, part: str, limit: int | None, log: Log):
    evaluate_cfg = EvaluateConfig(
        model_dir=cfg.model_dir,
        data_dir=cfg.data_dir,
        split_manifest=cfg.split_manifest,
        part=part,
        limit=limit,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
    )
    return select_items(evaluate_cfg, metadata, log)


class PhotoBatches:
    """onnxruntime's calibration reader: the photos through the serving preprocessing, ``batch_size`` at a time."""

    def __init__(self, paths: Sequence[Path], metadata: ModelMetadata, input_name: str, batch_size: int) -> None:
        self.paths, self.spec, self.input_name, self.batch_size = (
            list(paths),
            metadata.preprocess_spec(),
            input_name,
            batch_size,
        )
        self.used = 0
        self._batches: Iterator[dict] = iter(())
        self.rewind()

    def __len__(self) -> int:
        """Number of batches (onnxruntime's strided calibration counts in ``get_next`` calls)."""
        return -(-len(self.paths) // self.batch_size)

    def set_range(self, start_index: int, end_index: int) -> None:
        """Read only batches ``start_index`` to ``end_index`` next; ``used`` keeps counting across ranges."""
        self._batches = self._generate(start_index, end_index)

    def _generate(self, first_batch: int = 0, end_batch: int | None = None) -> Iterator[dict]:
        stop = len(self.paths) if end_batch is None else min(len(self.paths), end_batch * self.batch_size)
        for start in range(first_batch * self.batch_size, stop, self.batch_size):
            tensors = []
            for path in self.paths[start : start + self.batch_size]:
                try:
                    tensors.append(preprocess_bytes(Path(path).read_bytes(), self.spec))
                except (OSError, ImageDecodeError):
                    continue
            if tensors:
                self.used += len(tensors)
                yield {self.input_name: torch.stack(tensors).contiguous().numpy()}

    def get_next(self) -> dict | None:
        return next(self._batches, None)

    def rewind(self) -> None:
        self.used = 0
        self._batches = self._generate()


def quantize_graph(fp32_path: Path, int8_path: Path, reader: PhotoBatches, method: str) -> None:
    """Static QDQ quantization of ``fp32_path`` into ``int8_path`` (per-channel int8 weights, uint8 activations)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    prepared = int8_path.with_name(int8_path.stem + ".prep.onnx")
    # Shape inference and graph optimisation first, as onnxruntime recommends for static quantization.
    quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
    quantize_static(
        str(prepared),
        str(int8_path),
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=methods[method],
        # One batch per collection pass: the histogram methods otherwise keep every activation of every
        # calibration photo in memory at once (the percentile run at 288 px was killed at 24 GiB); min-max
        # ranges merge exactly, and histograms widen as onnxruntime merges them.
        extra_options={"CalibStridedMinMax": 1},
    )


def _summary(metrics: dict[str, Any], task_key: str) -> dict[str, Any]:
    out = {
        key: metrics[key] for key in ("n", "accuracy", "rmse", "mae", "off_by_one_accuracy", "loss") if key in metrics
    }
    if task_key in metrics:
        out[task_key] = {
            key: metrics[task_key][key]
            for key in ("n", "accuracy", "rmse", "off_by_one_accuracy")
            if key in metrics[task_key]
        }
    return out


def _points(after: float, before: float) -> float:
    return round((after - before) * 100, 2)


@dataclass
class _Graphs:
    """What quantizing produced: both graphs evaluated, the int8 graph's bytes and the calibration used."""

    results: dict[str, dict[str, Any]]
    int8_bytes: bytes
    int8_sha256: str
    calibrated_images: int


def _quantize_and_evaluate(
    cfg: QuantizeConfig, artifact, calibration: list, evaluation: list, threads: int, log: Log
) -> _Graphs:
    """Export fp32 (checked against torch), calibrate and quantize, then evaluate both graphs."""
    metadata = artifact.metadata
    with tempfile.TemporaryDirectory(prefix="binsight-quantize-") as tmp:
        work = Path(tmp)
        fp32_path, int8_path = work / "model.onnx", work / INT8_GRAPH_FILE
        export_onnx(artifact.model, metadata.input_size, fp32_path)
        fp32 = OnnxRuntimeModule(new_session(str(fp32_path), threads), "onnxruntime fp32")
        reader = PhotoBatches([item.image_path for item in calibration], metadata, "input", cfg.batch_size)
        check = next(iter(reader._generate()))["input"]
        reader.rewind()
        with torch.inference_mode():
            reference = torch.softmax(artifact.model(torch.from_numpy(check)).float(), 1)
            check_parity(
                reference, torch.softmax(fp32(torch.from_numpy(check)).float(), 1), FP32_TOLERANCE, argmax=True
            )
        quantize_started = time.monotonic()
        quantize_graph(fp32_path, int8_path, reader, cfg.method)
        quantize_s = time.monotonic() - quantize_started
        log(f"quantize_calibrated: images: {reader.used} method: {cfg.method} seconds: {quantize_s:.1f}")
        int8 = OnnxRuntimeModule(new_session(str(int8_path), threads), "onnxruntime int8")
        results = {}
        for name, module in (("fp32", fp32), ("int8", int8)):
            started = time.monotonic()
            metrics = evaluate_model(
                module,
                metadata,
                evaluation,
                batch_size=cfg.batch_size,
                tta_flip=cfg.tta_flip,
                device="cpu",
                return_predictions=True,
            )
            results[name] = metrics
            log(
                f"quantize_eval: graph: {name} part: {cfg.eval_part} n: {metrics['n']} "
                f"accuracy: {metrics['accuracy']:.4f} rmse: {metrics['rmse']:.4f} "
                f"seconds: {time.monotonic() - started:.1f}"
            )
        return _Graphs(results, int8_path.read_bytes(), file_sha256(int8_path), reader.used)


def _evaluation_record(cfg: QuantizeConfig, results: dict[str, dict[str, Any]], task_key: str) -> dict[str, Any]:
    """Both graphs' figures on the evaluation part, and how far int8 moved the answers."""
    fp32_predicted = {p["id"]: p["predicted"] for p in results["fp32"].pop("predictions")}
    int8_predicted = {p["id"]: p["predicted"] for p in results["int8"].pop("predictions")}
    same = sum(fp32_predicted.get(i) == label for i, label in int8_predicted.items())
    evaluation = {
        "part": cfg.eval_part,
        "n": results["int8"]["n"],
        "tta_flip": cfg.tta_flip,
        "fp32": _summary(results["fp32"], task_key),
        "int8": _summary(results["int8"], task_key),
        "accuracy_change_points": _points(results["int8"]["accuracy"], results["fp32"]["accuracy"]),
        "same_prediction_share": round(same / max(1, len(int8_predicted)), 4),
        "note": "fp32 is the ONNX Runtime fp32 graph, equal to torch within the serving tolerance",
    }
    if task_key in results["fp32"] and task_key in results["int8"]:
        evaluation[f"{task_key}_accuracy_change_points"] = _points(
            results["int8"][task_key]["accuracy"], results["fp32"][task_key]["accuracy"]
        )
    return evaluation


def run(cfg: QuantizeConfig, log: Log = print_line) -> dict[str, Any]:
    """Quantize, evaluate both graphs, write ``model.int8.onnx`` and the ``model.json`` record (unless dry run)."""
    version = onnxruntime_version()
    if version is None:
        raise RuntimeUnavailable("quantizing needs onnxruntime (pip install onnxruntime onnx)")
    if not cfg.split_manifest.is_file():
        raise ValueError(
            f"{cfg.split_manifest} does not exist: calibration needs the training part and the "
            "accuracy change the test part of the model's split (pass --split-manifest)"
        )
    start = time.monotonic()
    artifact = load_artifact(cfg.model_dir)
    metadata = artifact.metadata
    threads = cfg.threads or available_cpus()
    # torch only preprocesses and runs one check batch here; one thread keeps its OpenMP team from
    # spinning on the cores ONNX Runtime calibrates and evaluates on.
    torch.set_num_threads(1)
    weights_sha256 = file_sha256(cfg.model_dir / WEIGHTS_FILE)
    calibration, calibration_info = _items(cfg, metadata, cfg.calibration_part, cfg.calibration_images, log)
    evaluation, evaluation_info = _items(cfg, metadata, cfg.eval_part, cfg.eval_limit, log)
    log(
        f"quantize_model: {cfg.model_dir} architecture: {metadata.architecture} input_size: {metadata.input_size} "
        f"calibration_images: {len(calibration)} eval_images: {len(evaluation)} onnxruntime: {version}"
    )
    graphs = _quantize_and_evaluate(cfg, artifact, calibration, evaluation, threads, log)
    task_key = counts_task_key(metadata.labels)
    record: dict[str, Any] = {
        "file": INT8_GRAPH_FILE,
        "graph_sha256": graphs.int8_sha256,
        "weights_sha256": weights_sha256,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m training.quantize",
        "onnxruntime": version,
        "torch": torch.__version__,
        "format": "QDQ, per-channel int8 weights, uint8 activations",
        "calibration": {
            "part": cfg.calibration_part,
            "images": graphs.calibrated_images,
            "method": cfg.method,
            "seed": cfg.seed,
            "split_manifest": str(cfg.split_manifest),
        },
        "evaluation": _evaluation_record(cfg, graphs.results, task_key),
    }
    evaluation_record = record["evaluation"]
    task_change = evaluation_record.get(f"{task_key}_accuracy_change_points")
    log(
        f"quantize_accuracy_change_points: {evaluation_record['accuracy_change_points']:+.2f} "
        f"same_prediction_share: {evaluation_record['same_prediction_share']:.4f}"
        + (f" {task_key}_change_points: {task_change:+.2f}" if task_change is not None else "")
    )
    if not cfg.dry_run:
        atomic_write(cfg.model_dir / INT8_GRAPH_FILE, graphs.int8_bytes)
        write_record(cfg.model_dir, record)
        log(f"quantize_wrote: {cfg.model_dir / INT8_GRAPH_FILE} {cfg.model_dir / METADATA_FILE}")
        card = refresh_model_card(cfg.model_dir, cfg.data_dir)  # a recipe model's card shows the int8 figures
        if card is not None:
            log(f"model_card: {card}")
    record["seconds"] = round(time.monotonic() - start, 1)
    record["data"] = {"calibration": calibration_info, "evaluation": evaluation_info}
    return record


def write_record(model_dir: Path, record: dict[str, Any]) -> None:
    """Put ``record`` at ``quantization.int8`` in model.json, leaving every other key as it was."""
    path = model_dir / METADATA_FILE
    payload = json.loads(path.read_text())
    section = payload.get(QUANTIZATION_KEY)
    payload[QUANTIZATION_KEY] = {**(section if isinstance(section, dict) else {}), "int8": record}
    atomic_write_json(path, payload)


def parse_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> QuantizeConfig:
    """Options from ``BINSIGHT_QUANTIZE_*`` variables, overridden by the command line (:mod:`service.options`);
    exits 2 on bad input."""
    return parse_options(QuantizeConfig, ENV_PREFIX, "python -m training.quantize", __doc__, argv, environ)


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(argv)
    try:
        run(config)
    except (ArtifactError, RuntimeUnavailable, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
