"""Test support for binsight_aws: a moto server on loopback, fake credentials, tiny ABID objects.

Every request the tests make goes to ``http://127.0.0.1:<port>``; AWS credentials and endpoint
variables are replaced so nothing can reach AWS, even by mistake.
"""

from __future__ import annotations

import io
import json
import logging
import urllib.request
from collections.abc import Iterator

import boto3
import pytest
from PIL import Image

ROLE_ARN = "arn:aws:iam::123456789012:role/SageMakerRole"
TRAIN_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/binsight-train:latest"
SERVE_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/binsight-serve:latest"
REGION = "us-east-1"


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def fake_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Fake credentials; no config files, profiles or endpoint settings from the developer's machine."""
    empty = tmp_path_factory.mktemp("aws-config") / "none"
    for name in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ENDPOINT_URL_SAGEMAKER",
    ):
        monkeypatch.delenv(name, raising=False)
    for name in list(__import__("os").environ):
        if name.startswith("BINSIGHT_AWS_"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def client(service: str, endpoint: str):
    return boto3.client(
        service, endpoint_url=endpoint, region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing"
    )


def reset_moto(endpoint: str) -> None:
    request = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
    urllib.request.urlopen(request, timeout=10).read()


def jpeg_bytes(seed: int = 0, size: int = 24) -> bytes:
    image = Image.new("RGB", (size, size), ((seed * 37) % 256, (seed * 91) % 256, 120))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


def metadata_bytes(count: int) -> bytes:
    return json.dumps({"EXPECTED_QUANTITY": count, "BIN_FCSKU_DATA": {}}).encode()


def make_public_bucket(s3, bucket: str) -> None:
    """A bucket anyone may list and read, like ``aft-vbi-pds`` (unsigned requests work)."""
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_policy(
        Bucket=bucket,
        Policy=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": "*",
                        "Action": ["s3:GetObject", "s3:ListBucket"],
                        "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
                    }
                ],
            }
        ),
    )


def put_abid_bins(s3, bucket: str, counts: dict[str, int]) -> None:
    """A fake ABID bucket: ``bin-images/<id>.jpg`` + ``metadata/<id>.json`` per bin."""
    for i, (bin_id, count) in enumerate(counts.items()):
        s3.put_object(Bucket=bucket, Key=f"bin-images/{bin_id}.jpg", Body=jpeg_bytes(i))
        s3.put_object(Bucket=bucket, Key=f"metadata/{bin_id}.json", Body=metadata_bytes(count))
