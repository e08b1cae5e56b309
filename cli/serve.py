"""`ddrnet serve`: serve a model repository over HTTP and gRPC (OIP v2, classify, metrics).

Every option is a field of ``server.settings.ServerSettings`` (``--max-batch-size`` is
``max_batch_size``), derived from the class so the two cannot drift; each can also come from the
environment (``DDRNET_MAX_BATCH_SIZE``) or a YAML file (``--config``). Precedence: option, environment,
file, default. List options take commas or several values (``--preferred-batch-sizes 1,4,8``).
"""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any

from cli.errors import CliError

# Help texts come from the field descriptions; these fields get a metavar that says what they take.
_METAVARS = {"model_repository": "DIR", "runtime_python": "PYTHON", "tls_cert": "PEM", "tls_key": "PEM",
             "auth_token": "TOKEN", "otel_endpoint": "URL", "models": "NAME", "preferred_batch_sizes": "N"}


def _metavar(name: str, annotation: Any) -> str:
    if name in _METAVARS:
        return _METAVARS[name]
    for suffix, metavar in (("_port", "PORT"), ("_host", "HOST"), ("_ms", "MS"), ("_s", "SECONDS"),
                            ("_bytes", "BYTES")):
        if name.endswith(suffix):
            return metavar
    return {int: "N", float: "NUM", Path: "PATH"}.get(annotation, "VALUE")


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _unwrap_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per ServerSettings field, plus ``--config``. Defaults stay None ("not given"), so
    the environment and the file are not masked; pydantic validates and converts the values."""
    from server.settings import ServerSettings

    parser.add_argument(
        "--config", type=Path, metavar="FILE",
        help="YAML file of settings (the option names in snake_case)",
    )
    for name, field in ServerSettings.model_fields.items():
        annotation = _unwrap_optional(field.annotation)
        help_text = field.description or name
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        if default not in (None, [], False):
            help_text += f" (default: {default})"
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": help_text}
        if annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(annotation) is typing.Literal:
            kwargs["choices"] = list(typing.get_args(annotation))
        elif typing.get_origin(annotation) is list:
            kwargs.update(nargs="+", metavar=_METAVARS.get(name, "VALUE"))
        else:
            kwargs["metavar"] = _metavar(name, annotation)
        if name == "model_repository":
            help_text += " (required, or DDRNET_MODEL_REPOSITORY / the config file)"
            kwargs["help"] = help_text
        parser.add_argument(_option(name), **kwargs)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    from server.settings import ServerSettings

    out: dict[str, Any] = {}
    for name, field in ServerSettings.model_fields.items():
        value = getattr(args, name, None)
        if value is None:
            continue
        if typing.get_origin(_unwrap_optional(field.annotation)) is list:
            value = [part.strip() for item in value for part in str(item).split(",") if part.strip()]
        out[name] = value
    return out


def _describe_error(error: dict[str, Any]) -> str:
    loc = [p for p in error.get("loc", ()) if isinstance(p, str)]
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    if not loc:
        return message
    name = loc[0]
    from server.settings import ServerSettings

    if name not in ServerSettings.model_fields:
        return f"config key {name!r}: {message}"
    where = f"{_option(name)} (or DDRNET_{name.upper()})"
    if error.get("type") == "missing":
        return f"{where} is required"
    given = error.get("input")
    shown = f" (got {given!r})" if given is not None and not isinstance(given, dict) else ""
    return f"{where}: {message}{shown}"


def settings_from_args(args: argparse.Namespace) -> Any:
    """ServerSettings from the parsed options (+ environment + file); CliError naming a bad value."""
    from pydantic import ValidationError

    from server.settings import load_settings

    try:
        return load_settings(args.config, **_overrides(args))
    except ValidationError as exc:
        raise CliError(_describe_error(exc.errors()[0])) from None
    except ValueError as exc:  # the config file is missing
        raise CliError(f"--config: {exc}") from None
    except Exception as exc:  # e.g. YAML syntax errors from the file source
        why = f"{type(exc).__name__}: {exc}"
        raise CliError(f"--config {args.config}: cannot read settings ({why})") from None


def check_runtime_installed(runtime: str, runtime_python: object) -> None:
    """CliError naming the pip extra when the chosen runtime's library is not in this install (the
    workers run this Python unless --runtime-python names another)."""
    from inference.runtimes import RuntimeUnavailableError, check_installed

    if runtime_python is None:
        try:
            check_installed(runtime)
        except RuntimeUnavailableError as exc:
            raise CliError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    check_runtime_installed(settings.runtime, settings.runtime_python)
    from server.logs import configure_logging
    from server.tracing import tracing_config

    try:
        tracing = tracing_config(settings.otel_endpoint, settings.otel_protocol)
    except ValueError as exc:
        raise CliError(f"tracing: {exc}") from None
    configure_logging(settings.log_level, settings.log_json, trace_ids=tracing is not None)
    import asyncio

    from server.app import serve
    from server.model_manager import StartupError

    try:
        return asyncio.run(serve(settings))
    except StartupError as exc:
        raise CliError(str(exc)) from None
