"""The model contract: the only thing that crosses from training to serving.

An artifact is a directory holding

* ``model.pth``: a plain ``state_dict`` (loaded with ``weights_only=True``; never a pickled module),
* ``model.json``: :class:`ModelMetadata`, which says how to rebuild the module and feed it.

:func:`save_artifact` and :func:`load_artifact` validate everything and raise
:class:`ArtifactError` with a message that names the file and the problem.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from service.architectures import ArchitectureError, build_model, get_architecture
from service.files import atomic_write, atomic_write_json
from service.model_metadata import FORMAT_VERSION, ModelMetadata, ResizePolicy  # noqa: F401 - re-exported

WEIGHTS_FILE = "model.pth"
METADATA_FILE = "model.json"


class ArtifactError(ValueError):
    """A model directory cannot be saved or loaded; the message says why."""


def count_labels(max_count: int, overflow: bool) -> list[str]:
    """Labels for counts 0..max_count, plus ``"{max_count+1}+"`` when ``overflow``."""
    labels = [str(i) for i in range(max_count + 1)]
    if overflow:
        labels.append(f"{max_count + 1}+")
    return labels


def metadata_for(architecture: str, labels: list[str], **fields: Any) -> ModelMetadata:
    """Metadata with the architecture's default input size and normalisation filled in."""
    arch = get_architecture(architecture)
    fields.setdefault("input_size", arch.input_size)
    fields.setdefault("mean", arch.mean)
    fields.setdefault("std", arch.std)
    return ModelMetadata(architecture=architecture, labels=labels, **fields)


@dataclass
class LoadedArtifact:
    model: nn.Module
    metadata: ModelMetadata
    path: Path


def _check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(state))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} shape mismatches (e.g. {'; '.join(wrong_shape[:3])})")
    if problems:
        raise ArtifactError(f"{where} does not match the architecture in model.json: " + ", ".join(problems))


def module_for(metadata: ModelMetadata) -> nn.Module:
    """The untrained module ``model.json`` describes (architecture, classes, dropout, head, output stride)."""
    return build_model(
        metadata.architecture,
        metadata.num_classes,
        pretrained=False,
        dropout=metadata.dropout,
        head=metadata.head,
        output_stride=metadata.output_stride,
    )


def save_artifact(model_dir: str | os.PathLike, model: nn.Module, metadata: ModelMetadata) -> Path:
    """Validate and write ``model.pth`` + ``model.json`` into ``model_dir`` (atomically, file by file).

    The state_dict is checked against a freshly built module of ``metadata.architecture``, so an
    artifact that saves is one that loads.
    """
    model_dir = Path(model_dir)
    try:
        reference = module_for(metadata)
    except ArchitectureError as exc:
        raise ArtifactError(f"cannot save: {exc}") from None
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    _check_state_dict(reference, state, "the model being saved")
    model_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(model_dir / WEIGHTS_FILE, lambda fh: torch.save(state, fh))
    atomic_write_json(model_dir / METADATA_FILE, metadata.model_dump(mode="json"))
    return model_dir


def read_metadata(model_dir: str | os.PathLike) -> ModelMetadata:
    """Read and validate ``model.json`` alone (cheap: no weights are touched)."""
    model_dir = Path(model_dir)
    path = model_dir / METADATA_FILE
    if not model_dir.is_dir():
        raise ArtifactError(f"model directory {model_dir} does not exist")
    if not path.is_file():
        raise ArtifactError(f"{path} is missing: a model directory needs {METADATA_FILE} and {WEIGHTS_FILE}")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ArtifactError(f"{path} must hold a JSON object")
    version = raw.get("format_version", FORMAT_VERSION)
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise ArtifactError(
            f"{path} has format_version {version}, newer than this code understands ({FORMAT_VERSION}); "
            "upgrade binsight to serve this model"
        )
    try:
        metadata = ModelMetadata.model_validate(raw)
    except ValidationError as exc:
        details = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors())
        raise ArtifactError(f"{path} is invalid: {details}") from None
    try:
        get_architecture(metadata.architecture)
    except ArchitectureError as exc:
        raise ArtifactError(f"{path}: {exc}") from None
    return metadata


def load_artifact(model_dir: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedArtifact:
    """Load and validate an artifact; the module is returned in eval mode on ``device``."""
    model_dir = Path(model_dir)
    metadata = read_metadata(model_dir)
    weights = model_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise ArtifactError(f"{weights} is missing: a model directory needs {METADATA_FILE} and {WEIGHTS_FILE}")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated zip, refused globals
        raise ArtifactError(
            f"{weights} cannot be read as a state_dict ({type(exc).__name__}: {str(exc).splitlines()[0][:300]})"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ArtifactError(f"{weights} must hold a state_dict (a dict of tensors), not {type(state).__name__}")
    try:
        model = module_for(metadata)
    except ArchitectureError as exc:
        raise ArtifactError(f"{model_dir}: {exc}") from None
    _check_state_dict(model, state, str(weights))
    model.load_state_dict(state)
    model.eval()
    return LoadedArtifact(model=model.to(device), metadata=metadata, path=model_dir)
