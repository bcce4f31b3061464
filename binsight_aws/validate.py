"""Checks on user input that must fail with a clear message before any AWS call is made.

Each checker returns the (normalised) value or raises :class:`ValueError` with a message that
says what is wrong and what a right value looks like; pydantic validators call them, so the
message reaches the user as ``error: --<option>: <message>``.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

ROLE_ARN_RE = re.compile(r"^arn:aws(-cn|-us-gov|-iso|-iso-b)?:iam::\d{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}$")
ECR_IMAGE_RE = re.compile(
    r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(\.cn)?/"
    r"(?P<repo>[a-z0-9]+(?:[._/-][a-z0-9]+)*)(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})|@sha256:[0-9a-f]{64})$"
)
#: SageMaker names: training jobs, models, endpoints, endpoint configs, transform jobs (63 chars).
SAGEMAKER_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
#: Hyperparameter tuning job names are shorter (32 chars).
TUNING_JOB_NAME_MAX = 32
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
ABID_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
REGION_RE = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d$")

#: Instance families SageMaker offers for training, hosting or batch transform (any of them).
#: A family AWS adds later can be used with ``--allow-unknown-instance-type``.
INSTANCE_FAMILIES = frozenset(
    """
    t2 t3 m4 m5 m5d m6g m6gd m6i m6id m7g m7i c4 c5 c5d c5n c6g c6gd c6gn c6i c6id c6in c7g c7i
    r5 r5d r6g r6gd r6i r6id r7g r7i r8g x1 z1d g4dn g5 g5g g6 g6e gr6 p2 p3 p3dn p4d p4de p5 p5e p5en
    inf1 inf2 trn1 trn1n trn2 dl1
""".split()
)
_INSTANCE_RE = re.compile(r"^ml\.(?P<family>[a-z]+[0-9]+[a-z]*)\.(?P<size>medium|large|xlarge|[0-9]{1,2}xlarge)$")
_SIZES = frozenset({"medium", "large", "xlarge"} | {f"{n}xlarge" for n in (2, 3, 4, 6, 8, 9, 12, 16, 18, 24, 32, 48)})


class InputError(ValueError):
    """User input that cannot work; raised before anything is sent to AWS."""


def check_role_arn(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError(
            "an IAM role ARN is needed (the role SageMaker assumes), e.g. "
            "arn:aws:iam::123456789012:role/SageMakerExecutionRole; set --role-arn or "
            "BINSIGHT_AWS_ROLE_ARN"
        )
    if not ROLE_ARN_RE.match(value):
        raise ValueError(
            f"{value!r} is not an IAM role ARN: expected arn:aws:iam::<12-digit account>:role/<name>, "
            "e.g. arn:aws:iam::123456789012:role/SageMakerExecutionRole"
        )
    return value


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str  # may be "" (the bucket root); a prefix keeps its trailing slash when it had one

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def join(self, *parts: str) -> S3Uri:
        """Append path parts with single slashes (``prefix/part``)."""
        key = self.key.rstrip("/")
        for part in parts:
            part = part.strip("/")
            if part:
                key = f"{key}/{part}" if key else part
        return S3Uri(self.bucket, key)

    def as_prefix(self) -> S3Uri:
        """The key with a trailing slash, so ``data/train`` never also matches ``data/train2``."""
        return S3Uri(self.bucket, self.key if not self.key or self.key.endswith("/") else self.key + "/")

    def __str__(self) -> str:
        return self.uri


def parse_s3_uri(value: str, *, need_key: bool = False) -> S3Uri:
    """``s3://bucket/key`` -> :class:`S3Uri`; anything else is a :class:`ValueError` that says why."""
    value = value.strip()
    if not value.startswith("s3://"):
        raise ValueError(f"{value!r} is not an S3 URI: expected s3://<bucket>/<prefix>")
    rest = value[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not BUCKET_RE.match(bucket) or ".." in bucket or re.match(r"^\d+\.\d+\.\d+\.\d+$", bucket):
        raise ValueError(
            f"{value!r}: {bucket!r} is not a valid bucket name (3-63 lowercase letters, digits, "
            "dots and hyphens, starting and ending with a letter or digit)"
        )
    if need_key and not key.strip("/"):
        raise ValueError(f"{value!r} names a bucket but no key/prefix: expected s3://{bucket}/<prefix>")
    if "//" in key:
        raise ValueError(f"{value!r} has an empty path segment ('//')")
    if len(value) > 1024:
        raise ValueError(f"{value!r} is longer than SageMaker's 1024-character limit")
    return S3Uri(bucket, key)


def check_s3_uri(value: str) -> str:
    """Validator form: returns the URI text unchanged (a prefix needs a key)."""
    return parse_s3_uri(value, need_key=True).uri


def check_instance_type(value: str, allow_unknown: bool = False) -> str:
    value = value.strip()
    match = _INSTANCE_RE.match(value)
    if not match:
        raise ValueError(
            f"{value!r} is not a SageMaker instance type: expected ml.<family>.<size>, "
            "e.g. ml.g4dn.xlarge or ml.m5.large"
        )
    if allow_unknown:
        return value
    family, size = match["family"], match["size"]
    if family not in INSTANCE_FAMILIES:
        close = difflib.get_close_matches(family, sorted(INSTANCE_FAMILIES), n=3)
        hint = f" (did you mean {', '.join('ml.' + c + '.' + size for c in close)}?)" if close else ""
        raise ValueError(
            f"unknown instance family in {value!r}{hint}; if AWS offers it, pass --allow-unknown-instance-type"
        )
    if size not in _SIZES:
        raise ValueError(f"unknown instance size {size!r} in {value!r}; sizes are {', '.join(sorted(_SIZES))}")
    return value


def check_sagemaker_name(value: str, what: str = "name", max_len: int = 63) -> str:
    if len(value) > max_len or not SAGEMAKER_NAME_RE.match(value):
        raise ValueError(
            f"{value!r} is not a valid SageMaker {what}: 1-{max_len} letters, digits and hyphens, "
            "starting and ending with a letter or digit"
        )
    return value


def check_image_uri(value: str) -> str:
    value = value.strip()
    if not ECR_IMAGE_RE.match(value):
        raise ValueError(
            f"{value!r} is not an ECR image URI: expected "
            "<account>.dkr.ecr.<region>.amazonaws.com/<repository>:<tag> (push-images prints it)"
        )
    return value


def check_region(value: str) -> str:
    value = value.strip()
    if not REGION_RE.match(value):
        raise ValueError(f"{value!r} is not an AWS region name (e.g. us-east-1, eu-west-1)")
    return value


def check_endpoint_url(value: str) -> str:
    value = value.strip()
    if not re.match(r"^https?://[^/\s]+(/.*)?$", value):
        raise ValueError(f"{value!r} is not an endpoint URL: expected http(s)://host[:port]")
    return value


def check_abid_id(value: str) -> str:
    if not ABID_ID_RE.match(value):
        raise ValueError(f"{value!r} is not a bin id (letters, digits, '_' or '-', e.g. 00010 or 104573)")
    return value


def error_code(exc: Exception) -> str:
    """The AWS error code of a botocore ``ClientError`` (``"NoSuchKey"``, ``"ValidationException"``); "" otherwise."""
    response = getattr(exc, "response", None)
    error = response.get("Error") if isinstance(response, dict) else None
    return str(error.get("Code") or "") if isinstance(error, dict) else ""
