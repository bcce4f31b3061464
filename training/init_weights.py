"""Start a training run from a binsight artifact's weights instead of ImageNet's (``init_model_dir``).

Two uses: fine-tune the shipped default model (or any earlier run) on a warehouse's own photos, and the
"linear probe, then fine-tune" schedule (train the top on a frozen trunk first, then every layer from there at a
low rate), which keeps a randomly initialised head from pulling the pretrained features apart early on.

The artifact must describe the same network as the run (architecture, labels, head, output stride): anything
else would not load, and the message names the options to pass. Differences that only change what the network
sees (input size, resize policy, dropout) are allowed and logged, since continuing at another resolution is a
legitimate schedule. ``init_model_dir`` may also hold (or be) the ``model.tar.gz`` a SageMaker training job wrote:
an S3 channel hands that file over as it is.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from service.artifact import METADATA_FILE, WEIGHTS_FILE, ArtifactError, count_labels, load_artifact, read_metadata
from service.model_metadata import ModelMetadata
from service.onnx_graph import file_sha256
from training.config import ConfigError, TrainConfig
from training.log import Log


class InitModelError(ConfigError):
    """``init_model_dir`` is not an artifact this run can start from; the message says why and what to pass."""


TARBALL = "model.tar.gz"


def resolve_start(path: Path) -> Path:
    """The model directory ``path`` names: itself, or the ``model.json`` and ``model.pth`` of its ``model.tar.gz``
    (or of ``path`` itself when it is the file) unpacked into a temporary folder named by the archive's hash."""
    tarball = path if path.is_file() else path / TARBALL
    if (path.is_dir() and (path / METADATA_FILE).exists()) or not tarball.is_file():
        return path
    target = Path(tempfile.gettempdir()) / f"binsight-init-model-{file_sha256(tarball)[:16]}"
    if (target / METADATA_FILE).is_file() and (target / WEIGHTS_FILE).is_file():
        return target
    staging = Path(tempfile.mkdtemp(prefix="binsight-init-model-", dir=tempfile.gettempdir()))
    try:
        try:
            with tarfile.open(tarball, "r:*") as tar:
                members = {m.name.removeprefix("./"): m for m in tar.getmembers() if m.isfile()}
                missing = [name for name in (METADATA_FILE, WEIGHTS_FILE) if name not in members]
                if missing:
                    raise InitModelError(
                        f"init_model_dir: {tarball} has no {' or '.join(missing)} at its top level "
                        f"(a model.tar.gz of a binsight training job has both)"
                    )
                for name in (METADATA_FILE, WEIGHTS_FILE):  # read by name: no member path reaches the disk
                    source = tar.extractfile(members[name])
                    assert source is not None
                    with source, (staging / name).open("wb") as out:
                        shutil.copyfileobj(source, out)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise InitModelError(f"init_model_dir: {tarball} is not a readable tar.gz ({exc})") from None
        try:
            os.replace(staging, target)
        except OSError:  # another process unpacked the same archive first
            if not (target / WEIGHTS_FILE).is_file():
                raise
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _mismatches(meta: ModelMetadata, config: TrainConfig, labels: list[str]) -> list[str]:
    found = []
    if meta.architecture != config.architecture:
        found.append(f"architecture {meta.architecture!r} (run: {config.architecture!r}; pass --architecture)")
    if list(meta.labels) != list(labels):
        found.append(f"labels {list(meta.labels)} (run: {list(labels)}; pass --max-count and --overflow to match)")
    if meta.head != config.head:
        found.append(f"head {meta.head!r} (run: {config.head!r}; pass --head {meta.head})")
    if meta.output_stride != config.output_stride:
        stride = meta.output_stride
        found.append(f"output_stride {stride} (run: {config.output_stride}; pass --output-stride {stride})")
    return found


def _refuse(config: TrainConfig, meta: ModelMetadata, labels: list[str]) -> None:
    mismatches = _mismatches(meta, config, labels)
    if mismatches:
        raise InitModelError(f"init_model_dir {config.init_model_dir} is another network: " + "; ".join(mismatches))


def _start_dir(config: TrainConfig) -> Path:
    assert config.init_model_dir is not None
    return resolve_start(Path(config.init_model_dir))


def check_init_model(config: TrainConfig) -> None:
    """Refuse a wrong ``init_model_dir`` from its ``model.json`` alone, before any data is read (cheap)."""
    if config.init_model_dir is None:
        return
    try:
        meta = read_metadata(_start_dir(config))
    except ArtifactError as exc:
        raise InitModelError(f"init_model_dir: {exc}") from None
    _refuse(config, meta, count_labels(config.max_count, config.overflow))


def initialise_from_artifact(model: nn.Module, config: TrainConfig, labels: list[str], log: Log) -> dict[str, Any]:
    """Load ``config.init_model_dir``'s weights into ``model`` (built from ``config``); return their provenance.

    Raises :class:`InitModelError` before touching ``model`` when the artifact cannot serve as the start.
    """
    model_dir = _start_dir(config)
    try:
        loaded = load_artifact(model_dir)
    except ArtifactError as exc:
        raise InitModelError(f"init_model_dir: {exc}") from None
    meta = loaded.metadata
    _refuse(config, meta, labels)
    model.load_state_dict(loaded.model.state_dict())
    provenance = {
        "path": config.init_model_dir,
        "weights_sha256": file_sha256(model_dir / WEIGHTS_FILE),
        "created_at": meta.created_at,
        "input_size": meta.input_size,
    }
    unpacked = f" (unpacked to {model_dir})" if model_dir != Path(str(config.init_model_dir)) else ""
    log(f"init_model: {config.init_model_dir}{unpacked}")
    log(f"init_model_weights_sha256: {provenance['weights_sha256']}")
    for name, theirs, ours in (
        ("input_size", meta.input_size, config.effective_input_size),
        ("resize", meta.resize, config.resize),
        ("dropout", meta.dropout, config.dropout),
    ):
        if theirs != ours:
            log(f"init_model_{name}: {theirs} (this run: {ours})")
    return provenance
