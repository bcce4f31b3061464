"""``/opt/ml/input/config/inputdataconfig.json``: how SageMaker delivers each channel, checked before any
data is read.

SageMaker writes one entry per channel of the job, for example
``{"train": {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None",
"ContentType": "application/x-image"}}`` (the SDK's local mode writes ``TrainingInputMode`` and, when given,
``ContentType`` only). binsight reads files: image files plus ABID metadata, or count folders.

* ``File`` (copied to the volume) and ``FastFile`` (S3 mounted as a file system, read on demand) both give
  the channel as a directory under ``input/data/<channel>``: accepted.
* ``Pipe`` gives FIFOs (``input/data/<channel>_<epoch>``) of concatenated objects, not files: refused with
  a failure reason that says to use File or FastFile.
* ``RecordWrapperType: RecordIO`` wraps each object in a RecordIO record: refused (the images would not be
  image files).
* ``S3DistributionType: ShardedByS3Key`` on several hosts gives each host a different part of the data,
  while every rank of ``train`` splits the whole dataset the same way: refused on more than one host.
* ``ContentType`` is not interpreted (the layout decides how a channel is read); one that does not look
  like images or a directory is logged as a warning.
* Channels other than ``train``, ``validation``, ``test`` are logged as ignored; a job without a ``train``
  channel fails naming the channels it has (``training`` instead of ``train`` is a common slip).

A missing file means a local run: nothing to check.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from training.sagemaker_env import SageMakerEnvError

FILE_NAME = "inputdataconfig.json"
READ_CHANNELS = ("train", "validation", "test")
#: The channel that carries a model to start from (``init_model_dir``): a model directory or its ``model.tar.gz``.
INIT_MODEL_CHANNEL = "init_model"
FILE_MODES = ("File", "FastFile")
#: Content types that describe what binsight reads (any image/*, too); others get a warning.
EXPECTED_CONTENT_TYPES = (
    "application/x-image",
    "application/x-directory",
    "application/octet-stream",
    "application/json",
)


class InputModeError(SageMakerEnvError):
    """A channel is delivered in a way ``train`` cannot read; the message says what to change."""


@dataclass(frozen=True)
class ChannelConfig:
    name: str
    input_mode: str = "File"
    content_type: str | None = None
    distribution: str = "FullyReplicated"
    record_wrapper: str = "None"


def read_input_data_config(path: str | os.PathLike) -> dict[str, ChannelConfig]:
    """The channels of the job (``{}`` when the file does not exist: a local run)."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SageMakerEnvError(f"{path} is not readable JSON: {exc}") from None
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise SageMakerEnvError(f"{path} must hold a JSON object of channel name -> channel settings")
    return {
        name: ChannelConfig(
            name=name,
            input_mode=str(entry.get("TrainingInputMode") or "File"),
            content_type=entry.get("ContentType") or None,
            distribution=str(entry.get("S3DistributionType") or "FullyReplicated"),
            record_wrapper=str(entry.get("RecordWrapperType") or "None"),
        )
        for name, entry in raw.items()
    }


def check_channels(
    channels: dict[str, ChannelConfig], *, num_hosts: int = 1, train_dir_exists: bool = True
) -> list[str]:
    """Raise :class:`InputModeError` for a channel ``train`` cannot read; else the ``key: value`` log lines."""
    if not channels:
        return []
    if "train" not in channels and not train_dir_exists:
        raise InputModeError(
            f"the job has no 'train' channel (its channels: {', '.join(sorted(channels))}); "
            "name the training data channel 'train' (optional: 'validation', 'test')"
        )
    lines = []
    for channel in channels.values():
        if channel.name == INIT_MODEL_CHANNEL:
            _refuse_unreadable(channel, 1)
            lines.append(
                f"channel: {channel.name} input_mode: {channel.input_mode} (the start weights: pass "
                f"init_model_dir=/opt/ml/input/data/{channel.name})"
            )
            continue
        if channel.name not in READ_CHANNELS:
            lines.append(f"channel_ignored: {channel.name} (train reads {', '.join(READ_CHANNELS)})")
            continue
        _refuse_unreadable(channel, num_hosts)
        lines.append(
            f"channel: {channel.name} input_mode: {channel.input_mode} "
            f"content_type: {channel.content_type or 'none'} distribution: {channel.distribution}"
        )
        if channel.content_type and not _expected_content_type(channel.content_type):
            lines.append(
                f"warning: channel {channel.name!r} has ContentType {channel.content_type!r}; train reads "
                "image files with ABID metadata or count folders whatever the ContentType says"
            )
    return lines


def _refuse_unreadable(channel: ChannelConfig, num_hosts: int) -> None:
    if channel.input_mode not in FILE_MODES:
        raise InputModeError(
            f"channel {channel.name!r} uses input mode {channel.input_mode!r}; train reads image files from a "
            f'directory, so use File or FastFile (TrainingInputMode / input_mode="FastFile" for large datasets)'
        )
    if channel.record_wrapper.lower() not in ("none", ""):
        raise InputModeError(
            f"channel {channel.name!r} has RecordWrapperType {channel.record_wrapper!r}; train "
            "reads plain image files: set RecordWrapperType to None"
        )
    if channel.distribution == "ShardedByS3Key" and num_hosts > 1:
        raise InputModeError(
            f"channel {channel.name!r} is ShardedByS3Key on {num_hosts} hosts, so each host would see other "
            "bins while every rank splits the whole dataset the same way; use FullyReplicated (train shards "
            "the data across ranks itself)"
        )


def _expected_content_type(content_type: str) -> bool:
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind.startswith("image/") or kind in EXPECTED_CONTENT_TYPES
