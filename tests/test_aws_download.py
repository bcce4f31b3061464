"""ABID download against a real S3 API on loopback (moto server): selection, resume, corruption, retries."""

from __future__ import annotations

import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from binsight_aws.abid_download import SUMMARY_FILE, CorruptObject, check_jpeg, check_metadata
from binsight_aws.abid_selection import parse_file_list, read_ids_file
from binsight_aws.cli import main
from binsight_aws.configs import DownloadAbidConfig
from binsight_aws.download import make_downloader
from binsight_aws.validate import InputError
from training.layouts import read_abid
from training.log import Progress

from aws_support import (  # noqa: F401
    client,
    fake_aws_env,
    jpeg_bytes,
    make_public_bucket,
    metadata_bytes,
    moto_endpoint,
    put_abid_bins,
    reset_moto,
)

BUCKET = "aft-vbi-pds"
COUNTS = {"00001": 1, "00002": 3, "00003": 0, "00010": 7, "10": 2, "104573": 5, "00042": 2, "00043": 9}


@pytest.fixture
def abid_bucket(moto_endpoint: str):  # noqa: F811
    reset_moto(moto_endpoint)
    s3 = client("s3", moto_endpoint)
    make_public_bucket(s3, BUCKET)
    put_abid_bins(s3, BUCKET, COUNTS)
    return s3


def run_cli(*args: str, endpoint: str) -> tuple[int, list[str]]:
    lines: list[str] = []
    rc = main(["download-abid", *args, "--endpoint-url", endpoint], log=lines.append)
    return rc, lines


def line(lines: list[str], key: str) -> str:
    return next(entry for entry in lines if entry.startswith(key + ":"))


def summary(dest: Path) -> dict:
    return json.loads((dest / SUMMARY_FILE).read_text())


# ------------------------------------------------------------------------------------------------
# Verification and selection (no server)
# ------------------------------------------------------------------------------------------------


def test_verification_accepts_good_and_names_what_is_wrong() -> None:
    good = jpeg_bytes(1)
    check_jpeg(good)
    check_jpeg(good + b"\x00\x00")  # zero padding after EOI is common and harmless
    for bad, reason in (
        (good[:-10], "no EOI"),
        (b"GIF89a" + good, "no SOI"),
        (b"\xff\xd8" + b"\x00" * 50 + b"\xff\xd9", "header unreadable"),
    ):
        with pytest.raises(CorruptObject, match=reason):
            check_jpeg(bad)
    assert check_metadata(metadata_bytes(4)) == 4
    for bad, reason in (
        (b"{not json", "not valid JSON"),
        (b'{"X": 1}', "no EXPECTED_QUANTITY"),
        (b'{"EXPECTED_QUANTITY": -1}', "negative"),
    ):
        with pytest.raises(CorruptObject, match=reason):
            check_metadata(bad)


def test_file_list_course_format_and_variants(tmp_path: Path) -> None:
    course = {"1": ["data/metadata/100313.json", "data/metadata/09915.json"], "2": ["data/metadata/00010.json"]}
    assert parse_file_list(course) == ["100313", "09915", "00010"]
    # bare ids, image names, numbers, Windows paths, a plain list; duplicates dropped, order kept
    assert parse_file_list({"3": ["00010", "bin-images/00011.jpg", 12, "a\\b\\00013.json", "00010"]}) == [
        "00010",
        "00011",
        "12",
        "00013",
    ]
    assert parse_file_list(["7.json", "8"]) == ["7", "8"]
    with pytest.raises(InputError, match="must be a list"):
        parse_file_list({"1": "00010.json"})
    with pytest.raises(InputError, match="not a bin id"):
        parse_file_list({"1": ["../../etc/passwd json"]})
    with pytest.raises(InputError, match="names no bins"):
        parse_file_list({"1": []})
    ids = tmp_path / "ids.txt"
    ids.write_text("# a comment\n00010, 00011\n\n104573  # trailing comment\n00010\n")
    assert read_ids_file(ids) == ["00010", "00011", "104573"]


# ------------------------------------------------------------------------------------------------
# Downloads
# ------------------------------------------------------------------------------------------------


def test_ids_download_writes_abid_layout_and_reports_missing(abid_bucket, moto_endpoint, tmp_path) -> None:  # noqa: F811
    dest = tmp_path / "abid"
    rc, lines = run_cli(
        "--dest", str(dest), "--ids", "00001", "00010", "10", "99999", "--retries", "1", endpoint=moto_endpoint
    )
    assert rc == 1  # a missing bin is a failure, reported by name
    assert "download_failed: metadata/99999.json reason: not in the bucket" in lines
    assert "complete_bins: 3 failed_bins: 1" in line(lines, "download_summary")
    assert line(lines, "download_progress").startswith("download_progress: done: 4 total: 4")  # no TTY: lines
    assert sorted(p.name for p in (dest / "bin-images").iterdir()) == ["00001.jpg", "00010.jpg", "10.jpg"]
    records = {r.id: r.count for r in read_abid(dest, log=None)}
    assert records == {"00001": 1, "00010": 7, "10": 2}  # ids stay strings: "10" is not "00010"
    assert summary(dest)["failures"] == [{"key": "metadata/99999.json", "reason": "not in the bucket"}]
    assert not list(dest.rglob("*.part"))


def test_file_list_with_max_count_filters_without_half_bins(abid_bucket, moto_endpoint, tmp_path) -> None:  # noqa: F811
    file_list = tmp_path / "file_list.json"
    file_list.write_text(
        json.dumps(
            {
                "1": ["data/metadata/00001.json"],
                "3": ["data/metadata/00002.json"],
                "7": ["data/metadata/00010.json"],
                "9": ["00043"],
            }
        )
    )
    dest = tmp_path / "abid"
    rc, lines = run_cli("--dest", str(dest), "--file-list", str(file_list), "--max-count", "5", endpoint=moto_endpoint)
    assert rc == 0, lines
    assert "complete_bins: 2 failed_bins: 0 filtered_bins: 2" in line(lines, "download_summary")
    assert sorted(p.name for p in (dest / "metadata").iterdir()) == ["00001.json", "00002.json"]
    assert sorted(p.name for p in (dest / "bin-images").iterdir()) == ["00001.jpg", "00002.jpg"]


def test_resume_after_interrupted_run(abid_bucket, moto_endpoint, tmp_path) -> None:  # noqa: F811
    dest = tmp_path / "abid"
    config = DownloadAbidConfig(dest=dest, ids=list(COUNTS), endpoint_url=moto_endpoint, workers=2)

    class StopAfterTwo(Progress):
        def update(self, n: int = 1, **fields) -> None:
            super().update(n, **fields)
            if self.done >= 2:
                raise KeyboardInterrupt

    lines: list[str] = []
    downloader = make_downloader(config, lines.append)
    downloader.progress_factory = StopAfterTwo
    first = downloader.download(list(COUNTS))
    assert first.interrupted and 2 <= first.complete_bins < len(COUNTS)
    assert any(entry.startswith("download_interrupted:") for entry in lines)
    done_first = first.complete_bins
    # a run killed outright (no clean-up) leaves a temporary file behind: the next run removes it
    (dest / "bin-images" / ".00043.jpg.abc123.part").write_bytes(b"partial")

    rc, lines = run_cli("--dest", str(dest), "--ids", *COUNTS, endpoint=moto_endpoint)
    assert rc == 0, lines
    assert "download_cleanup: removed 1 partial files of an earlier run" in lines
    files = line(lines, "download_files")
    assert f"skipped: {2 * done_first}" in files and f"downloaded: {2 * (len(COUNTS) - done_first)}" in files
    assert len(read_abid(dest, log=None)) == len(COUNTS)
    assert not list(dest.rglob("*.part"))


def test_corrupt_local_files_are_refetched(abid_bucket, moto_endpoint, tmp_path) -> None:  # noqa: F811
    dest = tmp_path / "abid"
    assert run_cli("--dest", str(dest), "--ids", "00001", "00002", "00003", endpoint=moto_endpoint)[0] == 0
    image = dest / "bin-images" / "00001.jpg"
    good = image.read_bytes()
    image.write_bytes(good[: len(good) // 2])  # truncated by a non-atomic tool
    (dest / "metadata" / "00002.json").write_text("{broken")  # not JSON
    rc, lines = run_cli("--dest", str(dest), "--ids", "00001", "00002", "00003", endpoint=moto_endpoint)
    assert rc == 0
    assert "downloaded: 2 skipped: 4 refetched: 2" in line(lines, "download_files")
    assert image.read_bytes() == good
    assert check_metadata((dest / "metadata" / "00002.json").read_bytes()) == 3


def test_corrupt_object_in_bucket_is_read_twice_then_reported(abid_bucket, moto_endpoint, tmp_path) -> None:  # noqa: F811
    abid_bucket.put_object(Bucket=BUCKET, Key="bin-images/00099.jpg", Body=jpeg_bytes(5)[:-40])
    abid_bucket.put_object(Bucket=BUCKET, Key="metadata/00099.json", Body=metadata_bytes(2))
    dest = tmp_path / "abid"
    rc, lines = run_cli("--dest", str(dest), "--ids", "00001", "00099", endpoint=moto_endpoint)
    assert rc == 1
    failure = line(lines, "download_failed")
    assert failure.startswith("download_failed: bin-images/00099.jpg reason: corrupt in the bucket: JPEG is truncated")
    assert "retries: 1" in line(lines, "download_files")  # one more read before giving up
    assert not (dest / "metadata" / "00099.json").exists()  # no half bin left for training
    assert [r.id for r in read_abid(dest, log=None)] == ["00001"]


def test_sample_is_deterministic_bounded_and_filtered(abid_bucket, moto_endpoint, tmp_path) -> None:  # noqa: F811
    chosen = []
    for workers, dest in ((1, tmp_path / "a"), (8, tmp_path / "b")):
        rc, lines = run_cli(
            "--dest",
            str(dest),
            "--sample",
            "4",
            "--max-count",
            "3",
            "--seed",
            "7",
            "--workers",
            str(workers),
            endpoint=moto_endpoint,
        )
        assert rc == 0, lines
        records = read_abid(dest, log=None)
        assert len(records) == 4 and all(r.count <= 3 for r in records)
        chosen.append(sorted(r.id for r in records))
    assert chosen[0] == chosen[1]  # the seed decides, not thread timing
    # the listing is cached: a second run lists nothing and skips every verified file
    rc, lines = run_cli(
        "--dest", str(tmp_path / "a"), "--sample", "4", "--max-count", "3", "--seed", "7", endpoint=moto_endpoint
    )
    assert rc == 0 and any(entry.startswith("listing_cached: keys: 8") for entry in lines)
    assert "downloaded: 0 skipped: 8" in line(lines, "download_files")
    # a metadata file whose size differs from the listing's is read again
    first = tmp_path / "a" / "metadata" / f"{chosen[0][0]}.json"
    first.write_text(json.dumps(json.loads(first.read_text()), indent=4))
    rc, lines = run_cli(
        "--dest", str(tmp_path / "a"), "--sample", "4", "--max-count", "3", "--seed", "7", endpoint=moto_endpoint
    )
    assert rc == 0 and "downloaded: 1 skipped: 7" in line(lines, "download_files")
    # bounded: 3 metadata reads cannot find 4 bins; the run says so and fails
    rc, lines = run_cli(
        "--dest", str(tmp_path / "c"), "--sample", "4", "--metadata-read-limit", "3", endpoint=moto_endpoint
    )
    assert rc == 1 and any(entry.startswith("sample_short: found 3 of 4") for entry in lines)


class FlakyProxy(ThreadingHTTPServer):
    """Forwards to moto; the first GET of each object answers 503 SlowDown or is cut short."""

    def __init__(self, upstream: str, mode: str) -> None:
        self.upstream, self.mode, self.seen = urlsplit(upstream), mode, set()
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _ProxyHandler)


class _ProxyHandler(BaseHTTPRequestHandler):
    server: FlakyProxy

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        with self.server.lock:
            first = "?" not in self.path and self.path not in self.server.seen
            self.server.seen.add(self.path)
        if first and self.server.mode == "503":
            body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            self.send_response(503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        upstream = http.client.HTTPConnection(self.server.upstream.hostname, self.server.upstream.port, timeout=10)
        upstream.request("GET", self.path, headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
        response = upstream.getresponse()
        body = response.read()
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if first and self.server.mode == "truncate":
            self.wfile.write(body[: len(body) // 2])  # then the connection drops
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.mark.parametrize("mode", ["503", "truncate"])
def test_transient_errors_are_retried_with_backoff(abid_bucket, moto_endpoint, tmp_path, mode) -> None:  # noqa: F811
    proxy = FlakyProxy(moto_endpoint, mode)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{proxy.server_address[1]}"
        config = DownloadAbidConfig(
            dest=tmp_path / "abid", ids=["00001", "00002"], endpoint_url=endpoint, workers=2, retries=3
        )
        delays: list[float] = []
        downloader = make_downloader(config, lambda _: None, backoff_base_s=0.01)
        downloader.backoff.sleep = delays.append
        result = downloader.download(config.ids)
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert result.failures == [] and result.complete_bins == 2
    assert result.retries == 4 and len(delays) == 4  # every one of the 4 objects failed once
    assert all(0 <= d <= 0.01 for d in delays)  # first retry: up to base_s
    assert len(read_abid(tmp_path / "abid", log=None)) == 2


def test_retries_give_up_with_the_reason(tmp_path) -> None:
    # nothing listens on this port: connection refused, retried, then reported per file
    config = DownloadAbidConfig(dest=tmp_path / "abid", ids=["00001"], endpoint_url="http://127.0.0.1:9", retries=2)
    downloader = make_downloader(config, lambda _: None, backoff_base_s=0.001)
    result = downloader.download(config.ids)
    assert result.retries == 2 and len(result.failures) == 1
    key, reason = result.failures[0]
    assert key == "metadata/00001.json" and "EndpointConnectionError" in reason


def test_bad_selection_fails_before_any_request(tmp_path, capsys) -> None:
    assert main(["download-abid", "--dest", str(tmp_path), "--ids", "1", "--sample", "3"]) == 2
    assert "exactly one of --file-list, --ids, --ids-file or --sample" in capsys.readouterr().err
    assert main(["download-abid", "--dest", str(tmp_path), "--file-list", str(tmp_path / "nope.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "list.json"
    bad.write_text('{"1": "00010.json"}')
    assert main(["download-abid", "--dest", str(tmp_path / "d"), "--file-list", str(bad)]) == 2
    assert "must be a list of metadata files or ids" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
