"""One way every Strata component builds its settings object: defaults, then environment, then flags.

Each component declares a frozen dataclass whose fields say unit, default and why; :func:`load_settings` turns
``<PREFIX><FIELD>`` environment variables and ``--field-name`` flags into it, with one set of spellings for
booleans and one usage error that names the variable or flag when a value does not parse or is out of range (a
number from a flag or variable is finite and 0 or more, unless its field's metadata says otherwise: :data:`SIGNED`,
:data:`POSITIVE`, :data:`PORT`). Standard library only.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

TRUE_VALUES = frozenset({"1", "true", "yes", "on"})
FALSE_VALUES = frozenset({"0", "false", "no", "off"})


SIGNED: Mapping[str, float] = {"at_least": -math.inf}
"""Field metadata: a number that may be negative."""
POSITIVE: Mapping[str, float] = {"above": 0.0}
"""Field metadata: a number more than 0 (a timeout, an interval: 0 would never wait, or spin)."""
PORT: Mapping[str, float] = {"at_most": 65535}
"""Field metadata: a TCP port, 0 to 65535 (0 where the field says it turns the listener off)."""


def check_number(value: float, bounds: Mapping[str, Any]) -> None:
    """A ValueError saying what is wrong with ``value`` for a field of metadata ``bounds``: finite, at least
    ``at_least`` (default 0), more than ``above`` and at most ``at_most`` where given."""
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value!r}")
    above, at_most = bounds.get("above"), bounds.get("at_most")
    at_least = bounds.get("at_least", 0)
    if above is not None and not value > above:
        raise ValueError(f"expected a number more than {above:g}, got {value!r}")
    if value < at_least:
        raise ValueError(f"expected {at_least:g} or more, got {value!r}")
    if at_most is not None and value > at_most:
        raise ValueError(f"expected at most {at_most:g}, got {value!r}")


def _bounded(parse: Callable[[str], Any], bounds: Mapping[str, Any]) -> Callable[[str], Any]:
    """``parse`` for a number field, refusing a value out of the field's bounds (:func:`check_number`)."""

    def parse_number(raw: str) -> Any:
        value = parse(raw)
        try:
            check_number(value, bounds)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        return value

    parse_number.__name__ = parse.__name__  # argparse names the type in its own message for a value that does not parse
    return parse_number


def parse_bool(raw: str) -> bool:
    """``1/true/yes/on`` and ``0/false/no/off`` (any case); anything else is an error, never a silent False."""
    value = raw.strip().lower()
    if value in TRUE_VALUES:
        return True
    if value in FALSE_VALUES:
        return False
    raise ValueError(f"expected one of {', '.join(sorted(TRUE_VALUES | FALSE_VALUES))}, got {raw!r}")


def env_name(env_prefix: str, field_name: str) -> str:
    """The environment variable that sets ``field_name``: ``STRATA_`` + ``seq_len`` -> ``STRATA_SEQ_LEN``."""
    return f"{env_prefix}{field_name.upper()}"


def _split(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _parser_of(hint: Any) -> tuple[Callable[[str], Any], bool]:
    """How one raw string becomes the field's value, and whether the field is a tuple (repeatable, comma list)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (inner,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return _parser_of(inner)
    if typing.get_origin(hint) is tuple:
        return str, True
    if hint is bool:
        return parse_bool, False
    if hint in (int, float, str, Path):
        return typing.cast(Callable[[str], Any], hint), False
    raise TypeError(f"a settings field is bool, int, float, str, Path, an optional of one, or tuple[str, ...]: {hint}")


def load_settings(
    cls: type[T],
    *,
    env_prefix: str,
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    prog: str | None = None,
    description: str | None = None,
) -> T:
    """Build ``cls`` from its defaults, then ``{env_prefix}{FIELD}`` variables, then ``--field-name`` flags.

    Booleans take ``--flag`` / ``--no-flag`` or ``--flag true``; tuples take a comma list from the environment and
    a repeatable flag. A value that does not parse, from a flag or from the environment, is argparse's usage error:
    one line naming the flag or the variable on stderr, then ``SystemExit(2)`` (for a worker, exit code 2 is
    :attr:`strata_api.workload.ExitCode.INVALID_CONFIGURATION`: retrying cannot help).
    """
    env = os.environ if env is None else env
    hints = typing.get_type_hints(cls)
    parser = argparse.ArgumentParser(prog=prog, description=description)
    values: dict[str, Any] = {}
    unparsable: list[str] = []
    for field in dataclasses.fields(typing.cast(Any, cls)):
        parse, is_tuple = _parser_of(hints[field.name])
        if parse in (int, float):
            parse = _bounded(parse, field.metadata)
        variable = env_name(env_prefix, field.name)
        default = field.default if field.default is not dataclasses.MISSING else None
        shown = ",".join(default) if isinstance(default, tuple) else default
        where = f"env {variable}; default {shown}"
        if variable in env:
            try:
                values[field.name] = _split(env[variable]) if is_tuple else parse(env[variable])
            except (ValueError, argparse.ArgumentTypeError) as error:
                unparsable.append(f"{variable}: {error}")
        flag = "--" + field.name.replace("_", "-")
        if parse is parse_bool:
            parser.add_argument(flag, dest=field.name, type=parse_bool, nargs="?", const=True, help=where)
            parser.add_argument("--no-" + flag[2:], dest=field.name, action="store_const", const=False)
        elif is_tuple:
            parser.add_argument(flag, dest=field.name, action="append", help=f"{where} (repeatable)")
        else:
            parser.add_argument(flag, dest=field.name, type=parse, help=where)
    if unparsable:
        parser.error("; ".join(unparsable))
    parser.set_defaults(**{field.name: None for field in dataclasses.fields(typing.cast(Any, cls))})
    for name, value in vars(parser.parse_args(argv)).items():
        if value is not None:
            values[name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)
