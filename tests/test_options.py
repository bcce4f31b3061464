"""service.options: the one bridge from a pydantic model to command line and environment."""

from __future__ import annotations

import argparse

import pytest
from pydantic import BaseModel, Field, ValidationError, model_validator

from service.options import add_options, cli_values, error_lines, load_options, parse_options


class Options(BaseModel):
    count: int = Field(3, ge=1, description="How many.")
    name: str = Field(..., description="Required.")
    fast: bool = False
    tags: list[str] = Field(default_factory=list)
    low: int = 0
    high: int = 10

    @model_validator(mode="after")
    def _order(self) -> "Options":
        if self.low > self.high:
            raise ValueError("low must not exceed high")
        return self


def _parse(argv: list[str], **kwargs) -> dict:
    parser = argparse.ArgumentParser()
    add_options(parser, Options, "X_", **kwargs)
    return cli_values(parser.parse_args(argv), Options, kwargs.get("dest_prefix", ""))


def test_command_line_beats_environment_and_empty_variables_are_unset() -> None:
    cli = _parse(["--count", "5", "--no-fast", "--tags", "a", "b"])
    assert cli == {"count": "5", "fast": False, "tags": ["a", "b"]}  # absent options are absent, not None
    options = load_options(Options, cli, "X_", {"X_COUNT": "9", "X_NAME": "env", "X_LOW": ""})
    assert (options.count, options.name, options.fast, options.tags, options.low) == (5, "env", False, ["a", "b"], 0)


def test_strings_mode_takes_one_value_per_option_and_help_names_the_variable() -> None:
    parser = argparse.ArgumentParser()
    add_options(parser, Options, "X_", dest_prefix="hp_", as_strings=True, unset="auto")
    assert cli_values(parser.parse_args(["--fast", "true"]), Options, "hp_") == {"fast": "true"}
    text = parser.format_help()
    assert "[3; env X_COUNT]" in text and "[required; env X_NAME]" in text and "[generated; env X_TAGS]" in text


def test_one_line_per_problem_naming_the_option_the_variable_and_the_value() -> None:
    with pytest.raises(ValidationError) as exc:
        Options.model_validate({"count": "0"})
    assert error_lines(exc.value, env_prefix="X_", values={"count": "0"}) == [
        "--count: Input should be greater than or equal to 1, got '0'",
        "--name: required (or set X_NAME)",
    ]
    with pytest.raises(ValidationError) as exc:
        Options.model_validate({"name": "n", "low": 5, "high": 1})
    assert error_lines(exc.value) == ["low must not exceed high"]
    assert error_lines(exc.value, lambda field: f"option {field or '(combination)'}") == [
        "option (combination): low must not exceed high"
    ]


def test_parse_options_takes_the_environment_lets_the_command_line_win_and_exits_2_on_bad_input(capsys):
    parsed = parse_options(Options, "X_", "prog", "What it does.", ["--count", "5"], {"X_NAME": "a", "X_COUNT": "2"})
    assert isinstance(parsed, Options) and (parsed.name, parsed.count) == ("a", 5)
    for argv, environ, message in [
        (["--count", "0"], {"X_NAME": "a"}, "--count: Input should be greater than or equal to 1"),
        ([], {}, "--name: required (or set X_NAME)"),
        (["--low", "11"], {"X_NAME": "a"}, "low must not exceed high"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            parse_options(Options, "X_", "prog", "What it does.", argv, environ)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
