"""``python -m training.quantize`` takes its options like every entry point: flags, then BINSIGHT_QUANTIZE_*."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.quantize import parse_config


def test_environment_fills_what_the_command_line_leaves_out() -> None:
    cfg = parse_config(
        ["--model-dir", "m", "--method", "entropy"],
        environ={
            "BINSIGHT_QUANTIZE_DATA_DIR": "d",
            "BINSIGHT_QUANTIZE_METHOD": "percentile",
            "BINSIGHT_QUANTIZE_SEED": "",
        },
    )
    assert (cfg.model_dir, cfg.data_dir, cfg.method, cfg.seed) == (Path("m"), Path("d"), "entropy", 0)
    assert cfg.split_manifest == Path("m/split.json")


def test_bad_values_exit_2_with_one_line_naming_the_option(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_config(["--model-dir", "m", "--data-dir", "d", "--calibration-images", "0"], environ={})
    assert exit_info.value.code == 2
    assert "--calibration-images" in capsys.readouterr().err


def test_calibrating_and_measuring_on_the_same_part_is_refused(capsys) -> None:
    with pytest.raises(SystemExit):
        parse_config(
            ["--model-dir", "m", "--data-dir", "d", "--eval-part", "val", "--calibration-part", "val"], environ={}
        )
    assert "other photos than the calibration" in capsys.readouterr().err
