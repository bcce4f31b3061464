"""S3 trigger: a photo written under the input prefix -> its result JSON under the results prefix.

``<input_prefix><path>`` gets ``<results_prefix><path>.json``: :class:`~service.schemas.PredictResponse`
(what ``POST /predict`` answers for that one photo) plus ``source``, ``source_etag`` and ``status``
(``ok``, or ``error`` for a photo the model could not read: an error record, not a retry).

* Expected quantity: the object's metadata ``expected-quantity`` (``x-amz-meta-expected-quantity``), else a
  ``qty-N`` / ``qty=N`` part of its key (``station-4/bin-17_qty-3.jpg``); then the manual-check verdict is in.
* Idempotent: the result records the photo's ETag; an event for a photo whose result has that ETag is
  skipped (S3 delivers events at least once), a photo written again with new bytes is counted again.
  The check lists the one result key (ListBucket on the results prefix), so a missing result reads as
  missing, not as the 403 a HEAD without ListBucket gets.
* Only a model that could not answer (:class:`ModelUnavailable`) fails the invocation, after every other
  record was handled: Lambda then retries the event (``deploy-lambda`` bounds the retries), and the photos
  already counted are skipped as duplicates.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from binsight_aws.lambda_fn.counting import Counter
from binsight_aws.lambda_fn.invokers import ModelUnavailable
from service.schemas import PhotoResult

EXPECTED_METADATA = "expected-quantity"
_KEY_QUANTITY = re.compile(r"(?:^|[/_.-])qty[=-]?(\d{1,5})(?=[/_.-]|$)", re.IGNORECASE)
ETAG_METADATA = "source-etag"


@dataclass(frozen=True)
class Outcome:
    key: str
    status: str  # ok, error, duplicate, skipped, retry
    result_key: str | None = None
    detail: str = ""

    def log_line(self) -> str:
        line = f"photo: {self.key} status: {self.status}"
        if self.result_key:
            line += f" result: {self.result_key}"
        return line + (f" detail: {self.detail}" if self.detail else "")


def result_key(key: str, input_prefix: str, results_prefix: str) -> str:
    return results_prefix + key[len(input_prefix) :] + ".json"


def expected_from(key: str, metadata: dict[str, str]) -> tuple[int | None, str | None]:
    """(expected quantity, problem): from metadata, else from the key; a bad metadata value is a problem."""
    raw = metadata.get(EXPECTED_METADATA)
    if raw is not None:
        text = raw.strip()
        if text.isdigit() and int(text) <= 10_000:
            return int(text), None
        return None, f"metadata {EXPECTED_METADATA}={raw!r} is not a whole number 0..10000"
    match = _KEY_QUANTITY.search(key)
    return (int(match.group(1)), None) if match else (None, None)


class S3Trigger:
    def __init__(self, counter: Counter, s3: Any, log: Callable[[str], None] = print) -> None:
        self.counter = counter
        self.s3 = s3
        self.settings = counter.settings
        self.log = log

    def handle(self, event: dict[str, Any]) -> dict[str, Any]:
        outcomes = [self.record(r) for r in event.get("Records", []) if r.get("eventSource") == "aws:s3"]
        for outcome in outcomes:
            self.log(outcome.log_line())
        retry = [o for o in outcomes if o.status == "retry"]
        if retry:
            raise ModelUnavailable("; ".join(f"{o.key}: {o.detail}" for o in retry))
        return {"photos": [o.__dict__ for o in outcomes]}

    def record(self, record: dict[str, Any]) -> Outcome:
        bucket = record["s3"]["bucket"]["name"]
        key = urllib.parse.unquote_plus(record["s3"]["object"]["key"])
        if not record.get("eventName", "ObjectCreated").startswith("ObjectCreated"):
            return Outcome(key, "skipped", detail=f"event {record.get('eventName')}")
        if key.startswith(self.settings.results_prefix) or not key.startswith(self.settings.input_prefix):
            return Outcome(key, "skipped", detail="outside the input prefix")
        if key.endswith("/"):
            return Outcome(key, "skipped", detail="folder marker")
        target = result_key(key, self.settings.input_prefix, self.settings.results_prefix)
        etag = str(record["s3"]["object"].get("eTag") or "").strip('"')
        if etag and self._has_result(bucket, target, etag):
            return Outcome(key, "duplicate", target)
        photo = self.s3.get_object(Bucket=bucket, Key=key)
        etag = str(photo.get("ETag", etag)).strip('"')
        if self._has_result(bucket, target, etag):
            return Outcome(key, "duplicate", target)
        expected, problem = expected_from(key, photo.get("Metadata") or {})
        filename = key.rsplit("/", 1)[-1]
        try:
            result = self.counter.count(photo["Body"].read(), filename, expected)
        except ModelUnavailable as exc:
            return Outcome(key, "retry", detail=str(exc))
        if problem:
            result = result.model_copy(
                update={"needs_manual_check": True, "manual_check_reasons": [*result.manual_check_reasons, problem]}
            )
        self._write(bucket, key, target, etag, result)
        return Outcome(key, "error" if result.error else "ok", target, result.error or "")

    def _has_result(self, bucket: str, target: str, etag: str) -> bool:
        listed = self.s3.list_objects_v2(Bucket=bucket, Prefix=target, MaxKeys=1).get("Contents", [])
        if not listed or listed[0]["Key"] != target:
            return False
        head = self.s3.head_object(Bucket=bucket, Key=target)
        return (head.get("Metadata") or {}).get(ETAG_METADATA) == etag

    def _write(self, bucket: str, key: str, target: str, etag: str, result: PhotoResult) -> None:
        document = {
            "source": f"s3://{bucket}/{key}",
            "source_etag": etag,
            "status": "error" if result.error else "ok",
            "counted_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "model": self.counter.invoker.description,
            **self.counter.response([result]).model_dump(mode="json"),
        }
        self.s3.put_object(
            Bucket=bucket,
            Key=target,
            Body=json.dumps(document, indent=1).encode(),
            ContentType="application/json",
            Metadata={ETAG_METADATA: etag},
        )
