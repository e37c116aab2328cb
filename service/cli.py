"""The `embserve` console script: compress / import / inspect / eval (from runtime) and serve."""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
import types
import typing
from pathlib import Path
from typing import Any, NoReturn

from runtime import cli as offline
from runtime.table import __version__
from service.sync import cli as sync_cli

# a field whose flag is not its name with dashes (repeatable, so singular)
FLAG_NAMES = {"tables": "--table"}
FLAG_METAVARS = {"tables": "NAME=DIR"}


def settings_flag(name: str) -> str:
    return FLAG_NAMES.get(name, "--" + name.replace("_", "-"))


def _flag_type(annotation: Any) -> Any:
    """The argparse type of a settings field: `X | None` -> X, list[X] -> X."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return _flag_type(args[0])
    if typing.get_origin(annotation) is list:
        return _flag_type(args[0])
    return annotation


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per Settings field, its description as the help. Defaults stay None so an unset
    flag leaves the EMBSERVE_* variable (or the field's default) in force."""
    from service.settings import Settings

    prefix = Settings.model_config.get("env_prefix", "")
    for name, field in Settings.model_fields.items():
        kind = _flag_type(field.annotation)
        unset = field.default_factory is not None or field.default is None
        default = "" if unset else f"; default {field.default}"
        help_text = f"{field.description} (env {prefix}{name.upper()}{default})".replace("%", "%%")
        flag = settings_flag(name)
        if kind is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, help=help_text)
        elif typing.get_origin(field.annotation) is list:
            parser.add_argument(flag, dest=name, action="append", metavar=FLAG_METAVARS.get(name), help=help_text)
        else:
            parser.add_argument(flag, dest=name, type=kind if kind in (int, float, Path) else str, help=help_text)


def settings_problems(exc: Any) -> str:
    """A pydantic ValidationError of Settings as one line: each bad setting by its flag and
    variable, what was wrong and the value given (pydantic's own text spans lines and links)."""
    from service.settings import Settings

    prefix = Settings.model_config.get("env_prefix", "")
    problems = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else ""
        where = f"{settings_flag(name)} / {prefix}{name.upper()}" if name in Settings.model_fields else name
        message = str(error["msg"]).removeprefix("Value error, ")
        value = error.get("input")
        value = str(value) if isinstance(value, Path) else value
        given = f" (got {value!r})" if "input" in error and not isinstance(value, dict) else ""
        problems.append(f"{where}: {message}{given}")
    return "; ".join(problems)


class OneLineErrors(argparse.ArgumentParser):
    """A usage error is one line and a pointer to --help: `serve` has a flag a setting, and
    argparse's default prints every one of them before the error. A flag is taken only whole:
    abbreviated, `--tables` was read as `--tables-file` (this class makes the subcommands' parsers too)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(prog="embserve", description="Compress and serve embedding tables.")
    parser.add_argument("--version", action="version", version=f"embserve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    offline.add_commands(sub)
    sync_cli.add_commands(sub)
    p = sub.add_parser(
        "serve",
        help="serve tables over HTTP and gRPC (the demo table when none is given)",
        description="Every setting is a flag here or an EMBSERVE_* environment variable; flags win.",
    )
    add_settings_flags(p)
    p.set_defaults(func=cmd_serve)
    return parser


def port_in_use(host: str, port: int) -> bool:
    """Whether binding `host:port` fails with EADDRINUSE (port 0 never does)."""
    if port == 0:
        return False
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # both servers bind with SO_REUSEADDR, so a port in TIME_WAIT is not "in use" for them either
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def host_problem(host: str) -> str | None:
    """Why no socket can be bound on `host` (not an address, or none of this machine's), or None."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, 0))
        except OSError as exc:
            return f"host {host!r} cannot be bound here: {exc.strerror or exc}"
    return None


def busy_port_message(host: str, ports: dict[str, int]) -> str | None:
    for transport, port in ports.items():
        if port_in_use(host, port):
            return f"{transport} port {port} on {host} is already in use (another server running?)"
    return None


def cmd_serve(args: argparse.Namespace) -> int:
    """Flags override EMBSERVE_* environment variables, which override defaults. A port in use is
    one line and exit status 1; a bad setting or table one line and exit status 2."""
    from pydantic import ValidationError

    from runtime.artifact import read_manifest
    from service.server import serve
    from service.settings import Settings, unread_variables

    overrides = {n: getattr(args, n) for n in Settings.model_fields if getattr(args, n, None) is not None}
    try:
        settings = Settings(**overrides)
        specs = settings.table_specs()
        settings.check_redis()
    except ValueError as exc:  # a pydantic ValidationError is one
        problems = settings_problems(exc) if isinstance(exc, ValidationError) else exc
        print(f"embserve serve: invalid settings: {problems}", file=sys.stderr)
        return 2
    for name in unread_variables(os.environ):
        print(
            f"embserve serve: warning: {name} is no setting, ignored (misspelt? see embserve serve --help)",
            file=sys.stderr,
        )
    unbindable = host_problem(settings.host)
    if unbindable is not None:
        print(f"embserve serve: invalid settings: {unbindable}", file=sys.stderr)
        return 2
    for _, path in specs:
        read_manifest(path)  # a missing or wrong path is refused before any port is bound
    ports = {"HTTP": settings.http_port, "gRPC": settings.grpc_port}
    busy = busy_port_message(settings.host, ports)
    if busy is None:
        try:
            if settings.workers > 1:
                from service.workers import exec_supervisor

                exec_supervisor(settings)  # does not return: the supervisor exits 0, or 1 naming the worker
            else:
                serve(settings)
        except (OSError, RuntimeError) as exc:
            # lost a race for a port after the check: grpc raises RuntimeError, the HTTP bind OSError
            busy = busy_port_message(settings.host, ports)
            if busy is None:
                raise exc from None
    if busy is not None:
        print(f"embserve serve: error: {busy}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # refused by the command's own parser, so the message names `embserve <command>`
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        commands.choices[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    return offline.run_command(args)


if __name__ == "__main__":
    sys.exit(main())
