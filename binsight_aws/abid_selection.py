"""Which ABID bins to download: a course ``file_list.json``, a list of ids, or a random sample.

``file_list.json`` (the Udacity inventory-monitoring course's) maps a class to a list of metadata
files, e.g. ``{"1": ["data/metadata/100313.json", ...], "2": [...]}``; entries may also be bare
ids, image names or numbers, and a plain list is accepted too. The id is the file name without
its suffix, kept as a string (``00010`` and ``10`` are different bins).

A random sample lists ``metadata/`` (cached in the destination, so a resumed run does not list
535k keys again), shuffles the ids with the seed and reads metadata in parallel chunks until N
bins with ``EXPECTED_QUANTITY <= max_count`` are found; the choice depends on the seed only,
never on thread timing. At most ``metadata_read_limit`` metadata files are read.
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from binsight_aws.abid_download import METADATA_PREFIX, AbidDownloader, atomic_write, check_metadata, metadata_key
from binsight_aws.retry import describe_error
from binsight_aws.validate import InputError, check_abid_id
from training.layouts import ABID_METADATA_DIR
from training.log import Log, Progress, print_line

LISTING_FILE = ".binsight-abid-listing.json"
_SUFFIXES = (".json", ".jpg", ".jpeg")


def id_from_entry(entry: Any) -> str:
    """``"data/metadata/00010.json"``, ``"00010.jpg"``, ``"00010"`` or ``10`` -> the bin id."""
    if isinstance(entry, bool) or not isinstance(entry, (str, int)):
        raise InputError(f"file list entry {entry!r} is neither a file name nor an id")
    text = str(entry).strip().replace("\\", "/").rsplit("/", 1)[-1]
    for suffix in _SUFFIXES:
        if text.lower().endswith(suffix):
            text = text[: -len(suffix)]
            break
    try:
        return check_abid_id(text)
    except ValueError as exc:
        raise InputError(f"file list entry {entry!r}: {exc}") from None


def parse_file_list(raw: Any, where: str = "file list") -> list[str]:
    """Ids of a parsed ``file_list.json`` in file order, duplicates dropped."""
    if isinstance(raw, dict):
        entries = []
        for key, values in raw.items():
            if not isinstance(values, list):
                raise InputError(
                    f"{where}: the value of {key!r} must be a list of metadata files or ids, "
                    f"not {type(values).__name__}"
                )
            entries.extend(values)
    elif isinstance(raw, list):
        entries = raw
    else:
        raise InputError(f"{where} must hold a JSON object {{class: [files]}} or a list, not {type(raw).__name__}")
    ids = list(dict.fromkeys(id_from_entry(e) for e in entries))
    if not ids:
        raise InputError(f"{where} names no bins")
    return ids


def read_file_list(path: str | os.PathLike) -> list[str]:
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"--file-list {path}: not readable JSON ({exc})") from None
    return parse_file_list(raw, f"--file-list {path}")


def read_ids_file(path: str | os.PathLike) -> list[str]:
    """Ids one per line or separated by commas/whitespace; ``#`` starts a comment."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--ids-file {path}: not readable ({exc})") from None
    ids = []
    for number, line in enumerate(text.splitlines(), 1):
        for token in re.split(r"[\s,]+", line.split("#", 1)[0].strip()):
            if token:
                try:
                    ids.append(id_from_entry(token))
                except InputError as exc:
                    raise InputError(f"--ids-file {path} line {number}: {exc}") from None
    if not ids:
        raise InputError(f"--ids-file {path} names no bins")
    return list(dict.fromkeys(ids))


# ------------------------------------------------------------------------------------------------
# Random sample
# ------------------------------------------------------------------------------------------------


@dataclass
class Sample:
    ids: list[str]
    metadata: dict[str, bytes] = field(default_factory=dict)  # fetched while sampling, written later
    sizes: dict[str, int] = field(default_factory=dict)  # metadata sizes from the listing
    listed: int = 0
    metadata_read: int = 0
    metadata_bytes: int = 0
    rejected: int = 0
    unreadable: int = 0

    def consider(
        self,
        candidate: tuple[str, bytes | None, int, bool, str | None],
        size: int,
        *,
        want: int,
        max_count: int | None,
        log: Log,
    ) -> bool:
        """Count one read candidate (see :func:`_read_candidate`); ``True`` when it joins the sample (which
        holds at most ``want`` bins; candidates read past that are still counted)."""
        bin_id, data, count, fetched, why = candidate
        self.metadata_read += 1
        if data is None:
            self.unreadable += 1
            if self.unreadable <= 5:
                log(f"sample_unreadable: {metadata_key(bin_id)} reason: {why}")
            return False
        if fetched:
            self.metadata_bytes += len(data)
        if max_count is not None and count > max_count:
            self.rejected += 1
            return False
        if len(self.ids) >= want:
            return False
        self.ids.append(bin_id)
        self.metadata[bin_id] = data
        self.sizes[bin_id] = size
        return True


def list_metadata(
    s3: Any, bucket: str, limit: int, dest: Path, *, refresh: bool = False, log: Log = print_line
) -> dict[str, int]:
    """``{id: size}`` of up to ``limit`` keys under ``metadata/`` (cached in ``dest``)."""
    cache = dest / LISTING_FILE
    if cache.is_file() and not refresh:
        try:
            cached = json.loads(cache.read_text(encoding="utf-8"))
            if cached.get("bucket") == bucket and (cached.get("complete") or len(cached["keys"]) >= limit):
                keys = dict(list(cached["keys"].items())[:limit])
                log(f"listing_cached: keys: {len(keys)} file: {cache}")
                return keys
        except (OSError, ValueError, KeyError, AttributeError):
            pass  # a bad cache is listed again
    keys: dict[str, int] = {}
    complete = True
    paginator = s3.get_paginator("list_objects_v2")
    with Progress("listing", total=None, unit="key", log=log) as progress:
        for page in paginator.paginate(Bucket=bucket, Prefix=METADATA_PREFIX, PaginationConfig={"PageSize": 1000}):
            for obj in page.get("Contents", []):
                name = obj["Key"][len(METADATA_PREFIX) :]
                if "/" in name or not name.endswith(".json"):
                    continue
                try:
                    keys[check_abid_id(name[:-5])] = int(obj.get("Size", 0))
                except ValueError:
                    continue
                if len(keys) >= limit:
                    break
            progress.update(len(page.get("Contents", [])))
            if len(keys) >= limit:
                complete = not page.get("IsTruncated", False)
                break
    dest.mkdir(parents=True, exist_ok=True)
    atomic_write(cache, json.dumps({"bucket": bucket, "complete": complete, "keys": keys}).encode())
    log(f"listing_done: keys: {len(keys)} complete: {str(complete).lower()}")
    return keys


def _read_candidate(
    downloader: AbidDownloader, listing: dict[str, int], bin_id: str
) -> tuple[str, bytes | None, int, bool, str | None]:
    """(id, bytes or None when unreadable, count, fetched?, why unreadable); a local copy of the
    listed size is used as it is."""
    local = downloader.dest / ABID_METADATA_DIR / f"{bin_id}.json"
    if local.is_file():
        try:
            data = local.read_bytes()
            if len(data) == listing[bin_id]:
                return bin_id, data, check_metadata(data), False, None
        except (OSError, ValueError):
            pass
    try:
        data = downloader.get_bytes(metadata_key(bin_id), check_metadata)
        return bin_id, data, check_metadata(data), True, None
    except Exception as exc:  # noqa: BLE001 - an unreadable candidate is skipped, the sample goes on
        return bin_id, None, -1, True, describe_error(exc)


def sample_bins(
    downloader: AbidDownloader,
    n: int,
    *,
    max_count: int | None,
    seed: int,
    list_limit: int,
    read_limit: int | None = None,
    refresh_listing: bool = False,
    log: Log = print_line,
) -> Sample:
    """Pick ``n`` bins at random (with ``EXPECTED_QUANTITY <= max_count``), reading metadata in chunks."""
    listing = list_metadata(
        downloader.s3, downloader.bucket, list_limit, downloader.dest, refresh=refresh_listing, log=log
    )
    if not listing:
        raise InputError(f"no metadata/*.json keys in bucket {downloader.bucket}")
    candidates = sorted(listing)
    random.Random(seed).shuffle(candidates)
    read_limit = read_limit or 5 * n + 100
    candidates = candidates[:read_limit]
    sample = Sample(ids=[], listed=len(listing))
    chunk = max(8, downloader.workers * 4)
    read = functools.partial(_read_candidate, downloader, listing)
    log(
        f"sample_start: want: {n} max_count: {max_count} seed: {seed} candidates: {len(candidates)} "
        f"listed: {len(listing)}"
    )
    with (
        ThreadPoolExecutor(max_workers=downloader.workers, thread_name_prefix="sample") as pool,
        Progress("sample", total=n, unit="bin", log=log) as progress,
    ):
        for start in range(0, len(candidates), chunk):
            if len(sample.ids) >= n:
                break
            for candidate in pool.map(read, candidates[start : start + chunk]):
                if sample.consider(candidate, listing[candidate[0]], want=n, max_count=max_count, log=log):
                    progress.update(1)
    log(
        f"sample_done: chosen: {len(sample.ids)} metadata_read: {sample.metadata_read} rejected_over_max: "
        f"{sample.rejected} unreadable: {sample.unreadable} metadata_bytes: {sample.metadata_bytes}"
    )
    if len(sample.ids) < n:
        log(
            f"sample_short: found {len(sample.ids)} of {n} bins within {read_limit} metadata reads "
            "(raise --metadata-read-limit or --max-count)"
        )
    return sample
