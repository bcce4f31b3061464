"""One way for an entry point to take its options: a pydantic model whose fields are the options.

A field ``some_name`` is ``--some-name`` on the command line and ``<PREFIX>SOME_NAME`` in the
environment (an empty variable counts as unset: compose passes ``X=`` for an unset ``${X}``); the
command line wins. The model validates both, and :func:`error_lines` is the one formatter of its
:class:`pydantic.ValidationError`: one ``<where>: <message>`` line per problem.

It lives in ``service`` because every entry point may import it: ``serve`` (whose package imports
nothing else of binsight), ``train`` and ``python -m training.evaluate``, and ``binsight-aws``.
A field may carry ``json_schema_extra={"flags": [...], "metavar": "..."}`` for extra spellings, and
``{"env": "NAME"}`` for a variable outside the prefix (``serve`` reads SageMaker's ``SAGEMAKER_*``).
"""

from __future__ import annotations

import argparse
import os
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo


def option_flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def env_name(prefix: str, field: str) -> str:
    return prefix + field.upper()


def env_names(model: type[BaseModel], env_prefix: str) -> dict[str, str]:
    """Field -> its environment variable: ``<PREFIX><FIELD>``, unless the field names its own with
    ``json_schema_extra={"env": "NAME"}`` (a variable another system defines, e.g. SageMaker's), or
    ``{"env": None}`` for a field no variable sets."""
    names = {}
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        own = extra.get("env", env_name(env_prefix, name))
        if own is not None:
            names[name] = str(own)
    return names


def field_kind(annotation: Any) -> str:
    """``list``, ``dict``, ``bool`` or ``scalar``: how the command line spells a field (``X | None`` as ``X``)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[0] if len(args) == 1 else annotation
    origin = typing.get_origin(annotation)
    if origin in (list, dict):
        return origin.__name__
    return "bool" if annotation is bool else "scalar"


def _shown_default(info: FieldInfo, unset: str) -> str:
    if info.is_required():
        return "required"
    if info.default_factory is not None:
        return "generated"
    if isinstance(info.default, list):
        return ",".join(map(str, info.default))
    return unset if info.default is None else str(info.default)


def add_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    model: type[BaseModel],
    env_prefix: str,
    *,
    dest_prefix: str = "",
    as_strings: bool = False,
    unset: str = "None",
) -> None:
    """An option per field of ``model``, its help ending ``[default; env NAME]``; an absent option
    leaves no attribute (so the environment and the field default stay in charge).

    ``as_strings``: every option takes one VALUE that the model types (``train``'s SageMaker-style
    hyperparameters); otherwise booleans are ``--x/--no-x``, lists take several values and dicts
    ``KEY=VALUE`` items (repeatable). ``unset`` is how a ``None`` default is shown.
    """
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        flags = [option_flag(name)] + [f for f in extra.get("flags", []) if f != option_flag(name)]
        kind = "scalar" if as_strings else field_kind(info.annotation)
        variable = env_names(model, env_prefix).get(name, "none")
        help_text = f"{info.description or ''} [{_shown_default(info, unset)}; env {variable}]"
        kwargs: dict[str, Any] = {
            "dest": dest_prefix + name,
            "default": argparse.SUPPRESS,
            "help": help_text.replace("%", "%%"),
        }
        if kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind == "dict":
            kwargs.update(action="append", metavar=extra.get("metavar", "KEY=VALUE"))
        elif kind == "list":
            kwargs.update(nargs="+", metavar=extra.get("metavar", name.rstrip("s").upper()))
        else:
            kwargs["metavar"] = extra.get("metavar", "VALUE" if as_strings else name.upper())
        parser.add_argument(*flags, **kwargs)


def cli_values(
    args: argparse.Namespace | Mapping[str, Any], model: type[BaseModel], dest_prefix: str = ""
) -> dict[str, Any]:
    """The fields given on the command line (parsed with :func:`add_options`)."""
    given = vars(args) if isinstance(args, argparse.Namespace) else args
    return {name: given[dest_prefix + name] for name in model.model_fields if dest_prefix + name in given}


def env_values(model: type[BaseModel], env_prefix: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The variables of ``model``'s fields (see :func:`env_names`) that are set and not empty."""
    found = {name: environ.get(variable, "") for name, variable in env_names(model, env_prefix).items()}
    return {name: value for name, value in found.items() if value.strip() != ""}


def load_options(
    model: type[BaseModel], cli: Mapping[str, Any], env_prefix: str, environ: Mapping[str, str]
) -> BaseModel:
    """``model`` from the environment, overridden by ``cli``; raises :class:`ValidationError`."""
    return model.model_validate({**env_values(model, env_prefix, environ), **cli})


def _flag(field: str | None) -> str | None:
    return option_flag(field) if field is not None else None


def error_lines(
    exc: ValidationError,
    where: Callable[[str | None], str | None] = _flag,
    *,
    env_prefix: str | None = None,
    values: Mapping[str, Any] | None = None,
) -> list[str]:
    """One ``<where(field)>: <message>`` line per problem (just the message when ``where`` gives ``None``).

    ``where(None)`` names a problem of several fields together. A missing field says which variable
    could set it (with ``env_prefix``); with ``values``, the offending value is quoted (``, got ...``).
    """
    lines = []
    for error in exc.errors():
        loc = error.get("loc") or ()
        field = str(loc[0]) if loc else None
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if error.get("type") == "missing":
            message = f"required (or set {env_name(env_prefix, field)})" if env_prefix and field else "required"
        elif values is not None and field in values:
            message += f", got {values[field]!r}"
        prefix = where(field)
        lines.append(f"{prefix}: {message}" if prefix else message)
    return lines


M = typing.TypeVar("M", bound=BaseModel)


def parse_options(
    model: type[M],
    env_prefix: str,
    prog: str,
    doc: str | None,
    argv: typing.Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> M:
    """A command's ``model`` from ``environ`` (default: the process's; ``<env_prefix>*`` variables), overridden by
    ``argv``: the one argparse + pydantic step of the ``python -m`` tools. ``doc`` is the tool's module docstring,
    whose first paragraph is its ``--help`` description. Bad input exits 2 with one line per problem."""
    parser = argparse.ArgumentParser(prog=prog, description=(doc or "").split("\n\n")[0] or None)
    add_options(parser, model, env_prefix)
    args = parser.parse_args(argv)
    try:
        environ = os.environ if environ is None else environ
        return typing.cast(M, load_options(model, cli_values(args, model), env_prefix, environ))
    except ValidationError as exc:
        parser.error("; ".join(error_lines(exc, env_prefix=env_prefix)))
        raise  # unreachable: parser.error exits
