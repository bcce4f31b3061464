"""``upload-dataset``: a local dataset folder -> S3 prefixes SageMaker mounts as training channels.

``<source>/train``, ``<source>/validation`` (or ``val``) and ``<source>/test`` become
``<prefix>/train/``, ``<prefix>/validation/``, ``<prefix>/test/``; a folder without them (an ABID
folder, count folders) becomes the train channel alone. A file whose object already exists with
the same size and ETag (MD5, or the multipart ETag for large files) is not sent again. Objects
under a channel prefix with no local file are reported, not deleted: the job would train on them.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig

from binsight_aws.configs import UploadDatasetConfig
from binsight_aws.retry import describe_error
from binsight_aws.session import AwsClients
from binsight_aws.validate import InputError, S3Uri, parse_s3_uri
from training.log import Log, Progress, print_line

MULTIPART_CHUNK = 8 * 1024 * 1024
CHANNEL_FOLDERS = {"train": "train", "validation": "validation", "val": "validation", "test": "test"}


@dataclass(frozen=True)
class LocalFile:
    path: Path
    key: str
    size: int


@dataclass
class UploadSummary:
    files: int = 0
    uploaded: int = 0
    unchanged: int = 0
    bytes_uploaded: int = 0
    remote_only: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)

    def lines(self, limit: int = 20) -> list[str]:
        lines = [
            f"upload_summary: files: {self.files} uploaded: {self.uploaded} unchanged: {self.unchanged} "
            f"failed: {len(self.failures)} remote_only: {self.remote_only}",
            f"upload_bytes: {self.bytes_uploaded} seconds: {self.seconds:.1f}",
        ]
        lines += [f"upload_failed: {key} reason: {reason}" for key, reason in self.failures[:limit]]
        return lines


def find_channels(source: Path, explicit: dict[str, Path] | None) -> dict[str, Path]:
    """Channel name -> local folder."""
    if explicit:
        return {name: (path if path.is_absolute() else source / path) for name, path in explicit.items()}
    found: dict[str, Path] = {}
    for folder, channel in CHANNEL_FOLDERS.items():
        path = source / folder
        if path.is_dir():
            if channel in found:
                raise InputError(
                    f"{source} has both {found[channel].name}/ and {folder}/; keep one, or pass "
                    "--channel validation=DIR"
                )
            found[channel] = path
    if found and "train" not in found:
        raise InputError(f"{source} has {', '.join(p.name + '/' for p in found.values())} but no train/")
    return found or {"train": source}


def local_files(root: Path, prefix: S3Uri) -> list[LocalFile]:
    """Regular files under ``root`` (hidden files and folders skipped), keyed under ``prefix``."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            if not path.is_file():
                continue
            rel = path.relative_to(root).as_posix()
            files.append(LocalFile(path, prefix.join(rel).key, path.stat().st_size))
    return files


def s3_etag(path: Path, chunk: int = MULTIPART_CHUNK) -> str:
    """The ETag S3 gives this file when uploaded with ``chunk``-sized parts (plain MD5 below one part)."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        if size < chunk:
            return hashlib.md5(fh.read(), usedforsecurity=False).hexdigest()
        digests = []
        while block := fh.read(chunk):
            digests.append(hashlib.md5(block, usedforsecurity=False).digest())
    return f"{hashlib.md5(b''.join(digests), usedforsecurity=False).hexdigest()}-{len(digests)}"


def remote_objects(s3: Any, prefix: S3Uri) -> dict[str, tuple[int, str]]:
    """key -> (size, ETag without quotes) under ``prefix``."""
    objects = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=prefix.bucket, Prefix=prefix.as_prefix().key):
        for obj in page.get("Contents", []):
            objects[obj["Key"]] = (int(obj["Size"]), str(obj.get("ETag", "")).strip('"'))
    return objects


def is_unchanged(file: LocalFile, remote: tuple[int, str] | None) -> bool:
    return remote is not None and remote[0] == file.size and remote[1] == s3_etag(file.path)


def plan_channels(base: S3Uri, channels: dict[str, Path], log: Log) -> dict[str, list[LocalFile]]:
    """Channel name -> the local files to send under ``<base>/<channel>/``; an empty channel is an error."""
    plan: dict[str, list[LocalFile]] = {}
    for name, folder in channels.items():
        files = local_files(folder, base.join(name))
        if not files:
            raise InputError(f"channel {name}: {folder} holds no files")
        plan[name] = files
        log(
            f"upload_channel: {name} folder: {folder} files: {len(files)} "
            f"bytes: {sum(f.size for f in files)} uri: {base.join(name).as_prefix().uri}"
        )
    return plan


def run(config: UploadDatasetConfig, log: Log = print_line, clients: AwsClients | None = None) -> int:
    started = time.monotonic()
    base = parse_s3_uri(config.s3_uri, need_key=True)
    plan = plan_channels(base, find_channels(config.source, config.channel), log)
    clients = clients or AwsClients.for_command(config, max_pool_connections=config.workers + 4)
    s3 = clients.client("s3")
    summary = UploadSummary()
    todo: list[LocalFile] = []
    for name, files in plan.items():
        remote = remote_objects(s3, base.join(name))
        keys = {f.key for f in files}
        summary.remote_only += sum(1 for key in remote if key not in keys)
        for file in files:
            summary.files += 1
            if is_unchanged(file, remote.get(file.key)):
                summary.unchanged += 1
            else:
                todo.append(file)
    if summary.remote_only:
        log(
            f"upload_warning: {summary.remote_only} objects under the channel prefixes have no local file; "
            "the training job will read them too (delete them, or upload to a new prefix)"
        )
    if config.dry_run:
        for file in todo[:20]:
            log(f"would_upload: {file.path} -> s3://{base.bucket}/{file.key}")
        log(f"upload_dry_run: to_upload: {len(todo)} unchanged: {summary.unchanged}")
        return 0
    transfer = TransferConfig(
        use_threads=False, multipart_threshold=MULTIPART_CHUNK, multipart_chunksize=MULTIPART_CHUNK
    )

    def send(file: LocalFile) -> LocalFile:
        content_type = mimetypes.guess_type(file.path.name)[0] or "application/octet-stream"
        s3.upload_file(str(file.path), base.bucket, file.key, ExtraArgs={"ContentType": content_type}, Config=transfer)
        return file

    with (
        ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="upload") as pool,
        Progress("upload", total=len(todo), unit="file", log=log) as progress,
    ):
        futures = {pool.submit(send, f): f for f in todo}
        for future in as_completed(futures):
            file = futures[future]
            try:
                future.result()
                summary.uploaded += 1
                summary.bytes_uploaded += file.size
            except Exception as exc:  # noqa: BLE001 - reported per file; the others go on
                summary.failures.append((file.key, describe_error(exc)))
            progress.update(1, failed=len(summary.failures))
    summary.seconds = time.monotonic() - started
    for line in summary.lines():
        log(line)
    for name in plan:
        log(f"channel_uri: {name} {base.join(name).as_prefix().uri}")
    return 1 if summary.failures else 0
