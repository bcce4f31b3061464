"""service.predictor, service.engine (micro-batching) and service.manual_check."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest
import torch

from service.artifact import ArtifactError, metadata_for
from service.engine import InferenceEngine, InferenceError
from service.manual_check import assess, expected_label
from service.predictor import ImageFailure, Prediction, Predictor, WarmUpError
from service.preprocess import preprocess_bytes

from serving_support import ARCH, LABELS, FixedLogits, image_bytes, jpeg, make_artifact, png_claiming


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    return make_artifact(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def predictor(artifact: Path) -> Predictor:
    torch.set_num_threads(1)
    return Predictor.from_artifact(artifact, max_batch_size=4)


def fixed(logits: list[float], max_batch_size: int = 16, labels=LABELS) -> Predictor:
    return Predictor(FixedLogits(logits), metadata_for(ARCH, labels, input_size=32), max_batch_size=max_batch_size)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# ------------------------------------------------------------------------------- predictor


def test_same_pixels_as_the_shared_preprocessing(predictor: Predictor) -> None:
    for data in (
        jpeg(1),
        image_bytes("CMYK", fmt="JPEG"),
        image_bytes("RGBA", fmt="PNG"),
        image_bytes("I;16", fmt="PNG"),
        image_bytes("P", fmt="PNG"),
    ):
        ours = predictor.batch_tensor([predictor.prepare(data)])[0]
        reference = preprocess_bytes(data, predictor.metadata.preprocess_spec())
        assert torch.allclose(ours, reference, atol=1e-5)


def test_prediction_fields_are_consistent(predictor: Predictor) -> None:
    (result,) = predictor.predict_bytes([jpeg(2)])
    assert isinstance(result, Prediction)
    assert list(result.probabilities) == LABELS
    assert math.isclose(sum(result.probabilities.values()), 1.0, abs_tol=1e-4)
    assert result.label == max(result.probabilities, key=result.probabilities.get)
    assert result.confidence == result.probabilities[result.label]
    assert result.count == int(result.label.rstrip("+"))
    values = predictor.metadata.class_values
    assert math.isclose(
        result.expected_count, sum(p * v for p, v in zip(result.probabilities.values(), values)), abs_tol=1e-3
    )


def test_overflow_class_counts_as_its_lower_bound() -> None:
    (result,) = fixed([0, 0, 0, 0, 0, 0, 9]).predict_bytes([jpeg()])
    assert (result.label, result.count) == ("6+", 6)
    assert result.confidence > 0.99 and 5.9 < result.expected_count <= 6.0


def test_batches_run_in_chunks_of_max_batch_size() -> None:
    predictor = fixed([1, 2, 3, 0, 0, 0, 0], max_batch_size=3)
    results = predictor.predict_bytes([jpeg(i) for i in range(7)])
    assert predictor.model.batch_sizes == [3, 3, 1]
    assert all(r.label == "2" and r.count == 2 for r in results)


def test_unreadable_images_fail_one_by_one(predictor: Predictor) -> None:
    good = jpeg(3)
    results = predictor.predict_bytes(
        [good, b"", b"hello", good[: len(good) // 2], png_claiming(50000, 50000), png_claiming(8000, 6000), good]
    )
    kinds = [type(r).__name__ for r in results]
    assert kinds == ["Prediction"] + ["ImageFailure"] * 5 + ["Prediction"]
    assert "empty" in results[1].error
    assert "not a recognised image" in results[2].error
    assert "truncated" in results[3].error
    assert "decompression bomb" in results[4].error
    assert "8000x6000" in results[5].error and "decompression bomb" in results[5].error
    assert results[0] == results[6]


def test_pixel_limit_is_the_predictors(artifact: Path) -> None:
    small = Predictor.from_artifact(artifact, max_image_pixels=100 * 100, warm_up=False)
    (result,) = small.predict_bytes([jpeg(size=(200, 150))])
    assert isinstance(result, ImageFailure) and "above the limit of 10000" in result.error


def test_warm_up_refuses_a_model_that_answers_nan(tmp_path: Path) -> None:
    with pytest.raises(WarmUpError, match="invalid probabilities"):
        Predictor.from_artifact(make_artifact(tmp_path / "nan", nan=True))


def test_broken_artifact_fails_to_load_with_the_contracts_message(tmp_path: Path) -> None:
    model_dir = make_artifact(tmp_path / "m")
    (model_dir / "model.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ArtifactError, match="model.pth cannot be read"):
        Predictor.from_artifact(model_dir)


# ------------------------------------------------------------------------------- engine


@pytest.mark.anyio
async def test_engine_batches_concurrent_requests_and_keeps_order(predictor: Predictor) -> None:
    engine = InferenceEngine(predictor, decode_workers=2, max_wait_s=1.0)
    await engine.start()
    try:
        images = [jpeg(i) for i in range(8)]
        singles = await asyncio.gather(*(engine.predict([data]) for data in images))
        assert engine.images == 8
        assert engine.batches <= 4, "concurrent requests should share forward passes"
        direct = predictor.predict_bytes(images)
        for (answer,), expected in zip(singles, direct):
            assert answer.label == expected.label
            assert answer.probabilities == pytest.approx(expected.probabilities, abs=1e-4)
        mixed = await engine.predict([images[0], b"junk", images[1]])
        assert isinstance(mixed[1], ImageFailure) and mixed[0].label == direct[0].label
    finally:
        await engine.close()


@pytest.mark.anyio
async def test_engine_lone_request_does_not_wait(predictor: Predictor) -> None:
    engine = InferenceEngine(predictor, decode_workers=1, max_wait_s=5.0)
    await engine.start()
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await engine.predict([jpeg()])
        assert loop.time() - start < 4.0, "a request with nobody else decoding must not wait for max_wait"
    finally:
        await engine.close()


class Exploding(torch.nn.Module):
    def forward(self, x):
        raise RuntimeError("kaboom")


@pytest.mark.anyio
async def test_engine_reports_a_failing_model_and_keeps_running() -> None:
    predictor = Predictor(Exploding(), metadata_for(ARCH, LABELS, input_size=32))
    engine = InferenceEngine(predictor, max_wait_s=0.0)
    await engine.start()
    try:
        for _ in range(2):
            with pytest.raises(InferenceError, match="kaboom"):
                await engine.predict([jpeg()])
    finally:
        await engine.close()


# ------------------------------------------------------------------------------- manual check


def test_expected_label() -> None:
    assert expected_label(LABELS, 3) == "3"
    assert expected_label(LABELS, 6) == "6+" and expected_label(LABELS, 40) == "6+"
    assert expected_label(["0", "1", "2"], 5) is None


def _prediction(probabilities: dict[str, float]) -> Prediction:
    label = max(probabilities, key=probabilities.get)
    return Prediction(
        count=int(label.rstrip("+")),
        label=label,
        confidence=probabilities[label],
        probabilities=probabilities,
        expected_count=0.0,
    )


def test_manual_check_flags() -> None:
    confident = _prediction({"0": 0.0, "1": 0.05, "2": 0.9, "3": 0.05})
    labels = list(confident.probabilities)
    ok = assess(confident, labels, "a.jpg", 2, 0.5, 0.5)
    assert (ok.probability_expected, ok.matches_expected, ok.needs_manual_check) == (0.9, True, False)
    wrong = assess(confident, labels, "a.jpg", 3, 0.5, 0.5)
    assert (wrong.probability_expected, wrong.matches_expected, wrong.needs_manual_check) == (0.05, False, True)
    assert "expected quantity 3" in wrong.manual_check_reasons[0]
    unsure = _prediction({"0": 0.3, "1": 0.3, "2": 0.4, "3": 0.0})
    flagged = assess(unsure, labels, None, None, 0.5, 0.5)
    assert flagged.needs_manual_check and "confidence 0.40" in flagged.manual_check_reasons[0]
    assert flagged.probability_expected is None and flagged.matches_expected is None
    beyond = assess(confident, labels, None, 9, 0.5, 0.5)
    assert (
        beyond.probability_expected == 0.0 and beyond.needs_manual_check and "beyond" in beyond.manual_check_reasons[0]
    )


@pytest.mark.parametrize("orientation", range(1, 9))
def test_decode_turns_every_exif_orientation_upright_as_pillow_does(orientation: int) -> None:
    """decode_image transposes in place (no copy of an unrotated photo); the pixels must be Pillow's own."""
    import io

    from PIL import Image, ImageOps

    from service.preprocess import decode_image

    source = Image.open(io.BytesIO(jpeg(4, size=(96, 64))))
    exif = source.getexif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    source.save(buffer, "JPEG", quality=95, exif=exif)
    data = buffer.getvalue()
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    got = decode_image(data)
    assert got.size == expected.size and got.tobytes() == expected.tobytes()
    assert got.size == ((64, 96) if orientation >= 5 else (96, 64))
