"""Download ABID bins (``bin-images/<id>.jpg`` + ``metadata/<id>.json``) into the layout training reads.

* Parallel (a thread pool), each file retried with backoff (:mod:`binsight_aws.retry`).
* Resumable: a file already on disk that verifies is skipped; one that does not is fetched again.
  Verified means: metadata parses and has a usable ``EXPECTED_QUANTITY``; an image starts with the
  JPEG SOI marker, ends with EOI and its header decodes; sizes match the object's where known.
* Atomic: bytes go to a hidden temporary file beside the target, then ``os.replace``; a run killed
  half-way leaves only ``.*.part`` files, which the next run removes.
* A bin is written only when both files verify; a bin above ``max_count`` is not written at all.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError
from PIL import Image

from binsight_aws.retry import Backoff, IncompleteBody, describe_error
from binsight_aws.validate import error_code
from service.files import atomic_write, atomic_write_json
from training.layouts import ABID_IMAGE_DIR, ABID_METADATA_DIR, parse_expected_quantity
from training.log import Log, Progress, print_line

IMAGE_PREFIX = f"{ABID_IMAGE_DIR}/"
METADATA_PREFIX = f"{ABID_METADATA_DIR}/"
SUMMARY_FILE = ".binsight-download.json"
PART_SUFFIX = ".part"
_JPEG_PADDING = b"\x00\r\n \t"


class CorruptObject(Exception):
    """Bytes arrived but do not verify (the reason is the message)."""


class Interrupted(Exception):
    """The run was stopped (Ctrl-C) before every bin was handled."""


def image_key(bin_id: str) -> str:
    return f"{IMAGE_PREFIX}{bin_id}.jpg"


def metadata_key(bin_id: str) -> str:
    return f"{METADATA_PREFIX}{bin_id}.json"


# ------------------------------------------------------------------------------------------------
# Verification
# ------------------------------------------------------------------------------------------------


def check_metadata(data: bytes) -> int:
    """``EXPECTED_QUANTITY`` of metadata bytes; :class:`CorruptObject` when unusable."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptObject(f"metadata is not valid JSON ({exc})") from None
    try:
        return parse_expected_quantity(raw)
    except ValueError as exc:
        raise CorruptObject(f"metadata unusable: {exc}") from None


def check_jpeg(data: bytes) -> None:
    """SOI at the start, EOI at the end (padding allowed), and a header PIL can read."""
    if len(data) < 4 or data[:2] != b"\xff\xd8":
        raise CorruptObject("not a JPEG (no SOI marker at the start)")
    if not data.rstrip(_JPEG_PADDING).endswith(b"\xff\xd9"):
        raise CorruptObject("JPEG is truncated (no EOI marker at the end)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "JPEG" or image.width < 1 or image.height < 1:
                raise CorruptObject(f"JPEG header unreadable (format {image.format}, size {image.size})")
    except CorruptObject:
        raise
    except Exception as exc:  # PIL raises many types for bad headers
        raise CorruptObject(f"JPEG header unreadable ({type(exc).__name__}: {exc})") from None


def remove_stale_parts(dest: Path) -> int:
    """Delete temporary files a killed run left behind; returns how many."""
    removed = 0
    for sub in (ABID_IMAGE_DIR, ABID_METADATA_DIR):
        folder = dest / sub
        if folder.is_dir():
            for part in folder.glob(f".*{PART_SUFFIX}"):
                part.unlink(missing_ok=True)
                removed += 1
    return removed


# ------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------


@dataclass
class DownloadSummary:
    requested_bins: int = 0
    complete_bins: int = 0
    filtered_bins: int = 0  # above max_count: not written
    files_downloaded: int = 0
    files_skipped: int = 0  # already on disk and verified
    files_refetched: int = 0  # on disk but failed verification, fetched again
    bytes_downloaded: int = 0
    retries: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    failures: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)

    @property
    def failed_bins(self) -> int:
        return len(self.failures)

    def lines(self, limit: int = 20) -> list[str]:
        rate = self.bytes_downloaded / 1e6 / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"download_summary: requested_bins: {self.requested_bins} complete_bins: {self.complete_bins} "
            f"failed_bins: {self.failed_bins} filtered_bins: {self.filtered_bins} "
            f"interrupted: {str(self.interrupted).lower()}",
            f"download_files: downloaded: {self.files_downloaded} skipped: {self.files_skipped} "
            f"refetched: {self.files_refetched} retries: {self.retries}",
            f"download_bytes: {self.bytes_downloaded} seconds: {self.seconds:.1f} mb_per_s: {rate:.2f}",
        ]
        lines += [f"download_failed: {key} reason: {reason}" for key, reason in self.failures[:limit]]
        if len(self.failures) > limit:
            lines.append(f"download_failed_more: {len(self.failures) - limit} (all listed in {SUMMARY_FILE})")
        return lines

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "failures"} | {
            "failures": [{"key": k, "reason": r} for k, r in self.failures]
        }


@dataclass
class FileOutcome:
    status: str  # downloaded | skipped | failed
    data: bytes | None = None
    reason: str | None = None
    nbytes: int = 0
    refetched: bool = False


def _tally(result: dict[str, Any], outcome: FileOutcome) -> None:
    """Add one file's outcome to a bin's counters (see :meth:`AbidDownloader.fetch_bin`)."""
    if outcome.status == "downloaded":
        result["downloaded"] += 1
        result["bytes"] += outcome.nbytes
    elif outcome.status == "skipped":
        result["skipped"] += 1
    if outcome.refetched:
        result["refetched"] += 1


# ------------------------------------------------------------------------------------------------
# Downloader
# ------------------------------------------------------------------------------------------------


class ObjectFetcher:
    """One verified object into one file: fetched with retries, checked, written atomically (or skipped)."""

    def __init__(self, s3: Any, bucket: str, backoff: Backoff, stop: threading.Event) -> None:
        self.s3, self.bucket, self.backoff, self.stop = s3, bucket, backoff, stop
        self._lock = threading.Lock()
        self.retries = 0

    def _note_retry(self, attempt: int, exc: BaseException) -> None:
        with self._lock:
            self.retries += 1

    def get_bytes(self, key: str, check: Callable[[bytes], Any]) -> bytes:
        """The object's bytes, verified by ``check``; transient errors and one corrupt read are retried."""
        corrupt_reads = 0

        def attempt() -> bytes:
            nonlocal corrupt_reads
            if self.stop.is_set():
                raise Interrupted()
            response = self.s3.get_object(Bucket=self.bucket, Key=key)
            data = response["Body"].read()
            expected = response.get("ContentLength")
            if expected is not None and len(data) != expected:
                raise IncompleteBody(f"got {len(data)} of {expected} bytes")
            try:
                check(data)
            except CorruptObject:
                corrupt_reads += 1
                if corrupt_reads == 1 and self.backoff.retries > 0:
                    raise IncompleteBody("verification failed; reading once more") from None
                raise
            return data

        return self.backoff.call(attempt, self._note_retry)

    def ensure_file(
        self,
        key: str,
        path: Path,
        check: Callable[[bytes], Any],
        *,
        expected_size: int | None = None,
        write: bool = True,
        accept: Callable[[bytes], str | None] | None = None,
    ) -> FileOutcome:
        """Make ``path`` hold the verified object ``key``: skip when it already does, else fetch.

        ``accept(data)`` may veto writing (returns a reason); the bytes are still returned.
        """
        refetch = False
        if path.is_file():
            try:
                data = path.read_bytes()
                if expected_size is not None and len(data) != expected_size:
                    raise CorruptObject(f"size {len(data)} differs from the bucket's {expected_size}")
                check(data)
                return FileOutcome("skipped", data=data)
            except (OSError, CorruptObject):
                refetch = True
        try:
            data = self.get_bytes(key, check)
        except Interrupted:
            raise
        except CorruptObject as exc:
            return FileOutcome("failed", reason=f"corrupt in the bucket: {exc}", refetched=refetch)
        except ClientError as exc:
            code = error_code(exc)
            reason = "not in the bucket" if code in ("NoSuchKey", "404", "NotFound") else describe_error(exc)
            return FileOutcome("failed", reason=reason, refetched=refetch)
        except Exception as exc:  # noqa: BLE001 - connection errors after the last retry, disk errors
            return FileOutcome("failed", reason=describe_error(exc), refetched=refetch)
        veto = accept(data) if accept else None
        if write and veto is None:
            atomic_write(path, data, suffix=PART_SUFFIX)
        return FileOutcome("downloaded", data=data, nbytes=len(data), refetched=refetch, reason=veto)


class AbidDownloader:
    """Fetches bins from ``bucket`` into ``dest``; ``s3`` is a boto3 S3 client (botocore retries off)."""

    def __init__(
        self,
        s3: Any,
        bucket: str,
        dest: str | os.PathLike,
        *,
        workers: int = 16,
        backoff: Backoff | None = None,
        log: Log = print_line,
        progress_factory: Callable[..., Progress] = Progress,
    ) -> None:
        self.s3, self.bucket, self.dest = s3, bucket, Path(dest)
        self.workers = workers
        self.backoff = backoff or Backoff()
        self.log = log
        self.progress_factory = progress_factory
        self.stop = threading.Event()
        self.files = ObjectFetcher(s3, bucket, self.backoff, self.stop)

    def get_bytes(self, key: str, check: Callable[[bytes], Any]) -> bytes:
        """See :meth:`ObjectFetcher.get_bytes` (the sampler reads metadata through it)."""
        return self.files.get_bytes(key, check)

    # -- one bin ----------------------------------------------------------------------------------
    def fetch_bin(
        self,
        bin_id: str,
        *,
        max_count: int | None = None,
        metadata: bytes | None = None,
        metadata_size: int | None = None,
    ) -> dict[str, Any]:
        """Metadata first (it may filter the bin out), then the image. Returns counters for the summary."""
        result: dict[str, Any] = {
            "downloaded": 0,
            "skipped": 0,
            "refetched": 0,
            "bytes": 0,
            "failure": None,
            "filtered": False,
        }
        meta_path = self.dest / ABID_METADATA_DIR / f"{bin_id}.json"

        def too_many(data: bytes) -> str | None:
            count = check_metadata(data)
            return (
                f"EXPECTED_QUANTITY {count} > max_count {max_count}"
                if max_count is not None and count > max_count
                else None
            )

        if metadata is not None:  # already fetched (and checked) while sampling
            if meta_path.is_file() and meta_path.read_bytes() == metadata:
                meta = FileOutcome("skipped", data=metadata)
            else:
                atomic_write(meta_path, metadata, suffix=PART_SUFFIX)
                meta = FileOutcome("downloaded", data=metadata, nbytes=len(metadata))
        else:
            meta = self.files.ensure_file(
                metadata_key(bin_id), meta_path, check_metadata, expected_size=metadata_size, accept=too_many
            )
        _tally(result, meta)
        if meta.status == "failed":
            result["failure"] = (metadata_key(bin_id), meta.reason)
            return result
        veto = meta.reason if metadata is None and meta.status == "downloaded" else too_many(meta.data)
        if veto is not None:
            if meta.status == "skipped" and metadata is None:
                meta_path.unlink(missing_ok=True)  # an earlier run without the filter wrote it
            result["filtered"] = True
            return result
        image_path = self.dest / ABID_IMAGE_DIR / f"{bin_id}.jpg"
        try:
            image = self.files.ensure_file(image_key(bin_id), image_path, check_jpeg)
        except Interrupted:
            if meta.status == "downloaded" and not image_path.is_file():
                meta_path.unlink(missing_ok=True)  # no half bins, even when stopped
            raise
        _tally(result, image)
        if image.status == "failed":
            result["failure"] = (image_key(bin_id), image.reason)
            # no half bins: training would count a metadata file without its image as a skip
            meta_path.unlink(missing_ok=True)
        return result

    # -- many bins --------------------------------------------------------------------------------
    def download(
        self,
        ids: Iterable[str],
        *,
        max_count: int | None = None,
        metadata: Mapping[str, bytes] | None = None,
        metadata_sizes: Mapping[str, int] | None = None,
    ) -> DownloadSummary:
        """Fetch every bin in ``ids``; Ctrl-C stops cleanly (the summary says ``interrupted``)."""
        ids = list(dict.fromkeys(ids))
        metadata, metadata_sizes = metadata or {}, metadata_sizes or {}
        summary = DownloadSummary(requested_bins=len(ids))
        started = time.monotonic()
        self.dest.mkdir(parents=True, exist_ok=True)
        stale = remove_stale_parts(self.dest)
        if stale:
            self.log(f"download_cleanup: removed {stale} partial files of an earlier run")
        self.log(f"download_start: bins: {len(ids)} bucket: {self.bucket} dest: {self.dest} workers: {self.workers}")
        self.stop.clear()
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="abid")
        inflight: set[Future] = set()  # submitted and not yet counted
        try:
            with self.progress_factory("download", total=len(ids), unit="bin", log=self.log) as progress:
                # a bounded queue of futures: memory stays flat for 500k ids and Ctrl-C is prompt
                for bin_id in ids:
                    inflight.add(
                        pool.submit(
                            self._safe_fetch, bin_id, max_count, metadata.get(bin_id), metadata_sizes.get(bin_id)
                        )
                    )
                    if len(inflight) >= self.workers * 4:
                        done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                        self._collect(done, inflight, summary, progress)
                while inflight:
                    done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                    self._collect(done, inflight, summary, progress)
        except KeyboardInterrupt:
            summary.interrupted = True
            self.stop.set()
            for future in inflight:
                future.cancel()
            self.log("download_interrupted: stopping; finished files are kept, run the same command to resume")
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            if summary.interrupted:  # bins that finished before or while shutting down still count
                self._collect({f for f in inflight if f.done() and not f.cancelled()}, inflight, summary, None)
        summary.retries = self.files.retries
        summary.seconds = time.monotonic() - started
        self._write_summary(summary)
        return summary

    def _safe_fetch(
        self, bin_id: str, max_count: int | None, metadata: bytes | None, metadata_size: int | None
    ) -> dict[str, Any]:
        try:
            return self.fetch_bin(bin_id, max_count=max_count, metadata=metadata, metadata_size=metadata_size)
        except Interrupted:
            return {"interrupted": True}

    def _collect(
        self, done: Iterable[Future], inflight: set[Future], summary: DownloadSummary, progress: Progress | None
    ) -> None:
        for future in list(done):
            inflight.discard(future)
            result = future.result()
            if result.get("interrupted"):
                continue
            summary.files_downloaded += result["downloaded"]
            summary.files_skipped += result["skipped"]
            summary.files_refetched += result["refetched"]
            summary.bytes_downloaded += result["bytes"]
            if result["failure"]:
                summary.failures.append(result["failure"])
            elif result["filtered"]:
                summary.filtered_bins += 1
            else:
                summary.complete_bins += 1
            if progress is not None:
                progress.update(1, failed=summary.failed_bins, mb=f"{summary.bytes_downloaded / 1e6:.1f}")

    def _write_summary(self, summary: DownloadSummary) -> None:
        try:
            atomic_write_json(self.dest / SUMMARY_FILE, summary.as_dict())
        except OSError as exc:
            self.log(f"download_summary_not_written: {exc}")
