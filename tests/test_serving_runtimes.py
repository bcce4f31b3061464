"""Runtimes: ONNX Runtime from model.pth (selection, parity with torch, cache by weights hash, refusal
on mismatch), /model's report, and the int8 graph of ``python -m training.quantize``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from service import runtimes
from service.app import create_app
from service.architectures import build_model
from service.onnx_graph import CacheDir, file_sha256, onnx_graph, resolve_cache_dir
from service.predictor import Prediction, Predictor
from service.runtimes import FP32_TOLERANCE, INT8_GRAPH_FILE, INT8_TOLERANCE, RuntimeUnavailable
from service.settings import ServeSettings

from serving_support import ARCH, LABELS, client_for, jpeg, make_artifact

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return make_artifact(tmp_path_factory.mktemp("model"))


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def load(model_dir: Path, cache_dir: Path, **kwargs) -> Predictor:
    return Predictor.from_artifact(model_dir, max_batch_size=4, cache_dir=cache_dir, threads=1, **kwargs)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# ------------------------------------------------------------------------------- selection and parity


def test_onnxruntime_answers_as_torch_does_within_tolerance(artifact: Path, cache: Path) -> None:
    torch_predictor = load(artifact, cache, runtime="torch")
    ort_predictor = load(artifact, cache, runtime="onnxruntime")
    assert torch_predictor.runtime.name == "torch" and ort_predictor.runtime.name == "onnxruntime"
    assert ort_predictor.runtime.parity_max_abs_diff <= FP32_TOLERANCE
    images = [jpeg(seed, size=(90 + 20 * seed, 70 + 9 * seed)) for seed in range(7)]  # 7 = chunks of 4 and 3
    expected, got = torch_predictor.predict_bytes(images), ort_predictor.predict_bytes(images)
    for a, b in zip(expected, got):
        assert isinstance(a, Prediction) and isinstance(b, Prediction)
        assert a.label == b.label
        assert max(abs(a.probabilities[k] - b.probabilities[k]) for k in LABELS) <= FP32_TOLERANCE
        assert abs(a.expected_count - b.expected_count) <= 1e-3


def test_auto_picks_onnxruntime_and_torch_stays_torch(artifact: Path, cache: Path) -> None:
    auto = load(artifact, cache, runtime="auto")
    assert (auto.runtime.name, auto.runtime.requested, auto.runtime.fallback_reason) == ("onnxruntime", "auto", None)
    assert auto.runtime.graph.startswith(str(cache)) and auto.runtime.threads == 1
    plain = load(artifact, cache, runtime="torch")
    assert isinstance(plain.model, torch.nn.Module) and not isinstance(plain.model, runtimes.OnnxRuntimeModule)


def test_without_onnxruntime_auto_serves_torch_and_onnxruntime_fails(artifact: Path, cache: Path, monkeypatch) -> None:
    monkeypatch.setattr(runtimes, "onnxruntime_version", lambda: None)
    auto = load(artifact, cache, runtime="auto")
    assert auto.runtime.name == "torch" and "not installed" in auto.runtime.fallback_reason
    with pytest.raises(RuntimeUnavailable, match="onnxruntime is not installed"):
        load(artifact, cache, runtime="onnxruntime")


def test_a_graph_that_differs_from_torch_is_refused(artifact: Path, cache: Path, monkeypatch) -> None:
    """A graph of other weights (what a stale or wrong cache entry would be) fails the parity check."""
    real = runtimes.onnx_graph

    def other_weights(model, metadata, weights, cache_dir, refresh=False):
        torch.manual_seed(123)
        return real(build_model(ARCH, len(LABELS)).eval(), metadata, weights, CacheDir(None, "test"))

    monkeypatch.setattr(runtimes, "onnx_graph", other_weights)
    with pytest.raises(RuntimeUnavailable, match="differ from torch's|different class"):
        load(artifact, cache, runtime="onnxruntime")
    auto = load(artifact, cache, runtime="auto")
    assert auto.runtime.name == "torch" and "torch" in auto.runtime.fallback_reason
    assert isinstance(auto.predict_bytes([jpeg()])[0], Prediction)


def test_parity_check_limits() -> None:
    reference = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    assert runtimes.check_parity(reference, reference + 5e-5, FP32_TOLERANCE, argmax=True) <= FP32_TOLERANCE
    with pytest.raises(RuntimeUnavailable, match="differ"):
        runtimes.check_parity(reference, reference + 2e-4, FP32_TOLERANCE, argmax=True)
    swapped = torch.tensor([[0.45, 0.46, 0.09], [0.1, 0.3, 0.6]])
    with pytest.raises(RuntimeUnavailable, match="different class"):
        runtimes.check_parity(torch.tensor([[0.46, 0.45, 0.09], [0.1, 0.3, 0.6]]), swapped, 0.1, argmax=True)
    with pytest.raises(RuntimeUnavailable, match="NaN"):
        runtimes.check_parity(reference, torch.full_like(reference, float("nan")), 0.1, argmax=False)


# ------------------------------------------------------------------------------- cache


def test_graph_is_cached_by_the_weights_hash(tmp_path: Path, cache: Path) -> None:
    first = load(make_artifact(tmp_path / "a", seed=0), cache, runtime="onnxruntime").runtime
    again = load(tmp_path / "a", cache, runtime="onnxruntime").runtime
    assert (first.cache, again.cache) == ("miss", "hit") and first.graph == again.graph
    assert again.export_s == 0.0
    other = load(make_artifact(tmp_path / "b", seed=1), cache, runtime="onnxruntime").runtime
    assert other.cache == "miss" and other.graph != first.graph
    assert file_sha256(tmp_path / "a" / "model.pth")[:12] in first.graph
    assert sorted(p.name for p in (cache / "onnx").glob("*.onnx")) == sorted(
        Path(g).name for g in (first.graph, other.graph)
    )


def test_an_unreadable_cache_entry_is_exported_again(tmp_path: Path, cache: Path) -> None:
    model_dir = make_artifact(tmp_path / "m")
    graph = Path(load(model_dir, cache, runtime="onnxruntime").runtime.graph)
    graph.write_bytes(b"truncated")
    again = load(model_dir, cache, runtime="onnxruntime")
    assert again.runtime.cache == "miss" and again.runtime.graph == str(graph)
    assert graph.stat().st_size > 100_000


def test_without_a_writable_cache_the_graph_is_exported_to_memory(artifact: Path, tmp_path: Path, monkeypatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    resolved = resolve_cache_dir(blocker / "sub", environ={"HOME": str(blocker)})
    assert resolved.path is not None and resolved.path.parent.parent == tmp_path / "tmp"  # the temp fallback
    monkeypatch.setattr("tempfile.tempdir", str(blocker))
    nowhere = resolve_cache_dir(blocker / "sub", environ={"HOME": str(blocker)})
    assert nowhere.path is None and "no writable cache directory" in nowhere.note
    from service.artifact import load_artifact

    loaded = load_artifact(artifact)
    graph = onnx_graph(loaded.model, loaded.metadata, artifact / "model.pth", CacheDir(None, "none"))
    assert graph.cache == "off" and graph.path is None and len(graph.data) > 100_000


def test_cache_dir_order(tmp_path: Path) -> None:
    assert resolve_cache_dir(tmp_path / "x", environ={}).path == tmp_path / "x" / "onnx"
    assert (
        resolve_cache_dir(None, environ={"XDG_CACHE_HOME": str(tmp_path / "xdg")}).path
        == tmp_path / "xdg" / "binsight" / "onnx"
    )
    assert (
        resolve_cache_dir(None, environ={"HOME": str(tmp_path / "home")}).path
        == tmp_path / "home" / ".cache" / "binsight" / "onnx"
    )


# ------------------------------------------------------------------------------- /model


@pytest.mark.anyio
async def test_model_route_reports_the_runtime(artifact: Path, cache: Path) -> None:
    settings = ServeSettings.from_env({"MODEL_DIR": str(artifact)})
    for runtime in ("onnxruntime", "torch"):
        app = create_app(settings, load(artifact, cache, runtime=runtime))
        async with client_for(app) as client:
            info = (await client.get("/model")).json()
        assert info["runtime"]["name"] == runtime
    assert info["runtime"]["requested"] == "torch" and info["runtime"]["fallback_reason"] is None


@pytest.mark.anyio
async def test_settings_choose_the_runtime_at_load(artifact: Path, cache: Path) -> None:
    """The default loader follows BINSIGHT_RUNTIME / BINSIGHT_CACHE_DIR; /ping is 503 with the reason when
    int8 is asked for and the artifact has no int8 graph."""
    from serving_support import wait_settled

    environ = {"MODEL_DIR": str(artifact), "BINSIGHT_CACHE_DIR": str(cache), "BINSIGHT_ORT_THREADS": "1"}
    async with client_for(create_app(ServeSettings.from_env(environ))) as client:
        assert (await wait_settled(client)).status_code == 200
        info = (await client.get("/model")).json()["runtime"]
    assert (info["name"], info["requested"], info["threads"]) == ("onnxruntime", "auto", 1)
    assert info["graph"].startswith(str(cache))
    async with client_for(create_app(ServeSettings.from_env({**environ, "BINSIGHT_PRECISION": "int8"}))) as client:
        ping = await wait_settled(client)
    assert ping.status_code == 503 and INT8_GRAPH_FILE in ping.json()["detail"]


# ------------------------------------------------------------------------------- int8


@pytest.fixture(scope="module")
def quantized(tmp_path_factory) -> tuple[Path, dict]:
    """A tiny model and synthetic ABID bins with a split manifest, through ``python -m training.quantize``."""
    from training.quantize import QuantizeConfig, run
    from training.synthetic import make_synthetic_abid

    root = tmp_path_factory.mktemp("quantize")
    records = make_synthetic_abid(root / "data", n_bins=36, size=96, seed=3)
    model_dir = make_artifact(root / "model", seed=2)
    ids = [r.id for r in records]
    (model_dir / "split.json").write_text(
        json.dumps({"seed": 0, "parts": {"train": ids[:20], "val": ids[20:24], "test": ids[24:]}})
    )
    lines: list[str] = []
    record = run(
        QuantizeConfig(model_dir=model_dir, data_dir=root / "data", calibration_images=12, batch_size=6, threads=1),
        log=lines.append,
    )
    assert any(line.startswith("quantize_accuracy_change_points:") for line in lines)
    return model_dir, record


def test_quantize_writes_the_graph_and_its_accuracy_change(quantized) -> None:
    model_dir, record = quantized
    stored = json.loads((model_dir / "model.json").read_text())["quantization"]["int8"]
    assert stored["graph_sha256"] == file_sha256(model_dir / INT8_GRAPH_FILE)
    assert stored["weights_sha256"] == file_sha256(model_dir / "model.pth")
    assert stored["calibration"] == {**stored["calibration"], "part": "train", "images": 12}
    evaluation = stored["evaluation"]
    assert evaluation["part"] == "test" and evaluation["n"] == 12
    assert evaluation["accuracy_change_points"] == pytest.approx(
        (evaluation["int8"]["accuracy"] - evaluation["fp32"]["accuracy"]) * 100, abs=0.01
    )
    assert 0 <= evaluation["same_prediction_share"] <= 1
    assert json.loads((model_dir / "model.json").read_text())["labels"] == LABELS  # the rest is untouched


def test_calibration_reader_serves_one_batch_range_at_a_time(quantized) -> None:
    """onnxruntime calibrates one batch per pass (memory stays one batch's activations): the ranges cover every
    photo once, the last batch may be short, and the count of photos used runs across the ranges."""
    from service.artifact import read_metadata
    from training.quantize import PhotoBatches

    model_dir, _ = quantized
    photos = sorted((model_dir.parent / "data").rglob("*.jpg"))[:7]
    reader = PhotoBatches(photos, read_metadata(model_dir), "input", batch_size=3)
    assert len(reader) == 3
    sizes = []
    for batch in range(len(reader)):
        reader.set_range(start_index=batch, end_index=batch + 1)
        while (inputs := reader.get_next()) is not None:
            sizes.append(inputs["input"].shape[0])
    assert sizes == [3, 3, 1] and reader.used == 7
    reader.rewind()
    assert sum(inputs["input"].shape[0] for inputs in iter(reader.get_next, None)) == 7


def test_int8_serves_only_when_asked(quantized, cache: Path) -> None:
    model_dir, _ = quantized
    default = load(model_dir, cache, runtime="auto")
    assert default.runtime.precision == "fp32" and default.runtime.graph != str(model_dir / INT8_GRAPH_FILE)
    int8 = load(model_dir, cache, runtime="auto", precision="int8")
    assert (int8.runtime.name, int8.runtime.precision, int8.runtime.graph) == (
        "onnxruntime",
        "int8",
        str(model_dir / INT8_GRAPH_FILE),
    )
    assert int8.runtime.parity_max_abs_diff <= INT8_TOLERANCE
    assert isinstance(int8.predict_bytes([jpeg()])[0], Prediction)
    with pytest.raises(ValueError, match="int8 runs on ONNX Runtime"):
        load(model_dir, cache, runtime="torch", precision="int8")


def test_int8_graph_of_other_weights_is_refused(quantized, tmp_path: Path, cache: Path) -> None:
    import shutil

    model_dir = tmp_path / "retrained"
    shutil.copytree(quantized[0], model_dir)
    make_artifact(model_dir / "new", seed=9)
    shutil.copy(model_dir / "new" / "model.pth", model_dir / "model.pth")
    with pytest.raises(RuntimeUnavailable, match="other weights"):
        load(model_dir, cache, runtime="auto", precision="int8")
    (model_dir / INT8_GRAPH_FILE).unlink()
    with pytest.raises(RuntimeUnavailable, match="training.quantize"):
        load(model_dir, cache, runtime="onnxruntime", precision="int8")
