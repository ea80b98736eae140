"""Every component builds its settings with strata_api.settings.load_settings: the order of precedence, the one
set of boolean spellings, and errors that name the variable are the same for the operator, the extender and the
workloads, so they are asserted once here on a settings object with every kind of field."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from strata_api.settings import PORT, POSITIVE, SIGNED, load_settings, parse_bool


@dataclass(frozen=True)
class Knobs:
    port: int = 80
    ratio: float = 0.5
    name: str = "a"
    folder: Path = Path("/tmp")
    kubeconfig: str | None = None
    fast: bool = True
    namespaces: tuple[str, ...] = ()
    offset: float = field(default=0.0, metadata=SIGNED)
    interval_s: float = field(default=1.0, metadata=POSITIVE)
    listen: int = field(default=0, metadata=PORT)


def load(argv: list[str], env: dict[str, str]) -> Knobs:
    return load_settings(Knobs, env_prefix="X_", argv=argv, env=env, prog="knobs")


def test_flags_win_over_the_environment_which_wins_over_defaults() -> None:
    assert load([], {}) == Knobs()
    env = {"X_PORT": "81", "X_RATIO": "0.25", "X_NAME": "b", "X_FOLDER": "/srv", "X_KUBECONFIG": "k"}
    assert load([], env) == Knobs(81, 0.25, "b", Path("/srv"), "k")
    assert load(["--port", "82", "--kubeconfig", "f"], env).port == 82
    assert load(["--port", "82", "--kubeconfig", "f"], env).kubeconfig == "f"


@pytest.mark.parametrize(
    ("raw", "value"),
    [("1", True), ("true", True), ("Yes", True), ("ON", True), ("0", False), ("false", False), ("no", False)],
)
def test_one_set_of_boolean_spellings(raw: str, value: bool) -> None:
    assert parse_bool(raw) is value
    assert load([], {"X_FAST": raw}).fast is value
    assert load(["--fast", raw], {}).fast is value


def test_boolean_flags_take_the_bare_and_the_negated_form() -> None:
    assert load(["--fast"], {"X_FAST": "0"}).fast is True
    assert load(["--no-fast"], {}).fast is False


def test_tuples_are_a_comma_list_in_the_environment_and_a_repeatable_flag() -> None:
    assert load([], {"X_NAMESPACES": "a, b,,c"}).namespaces == ("a", "b", "c")
    assert load(["--namespaces", "d", "--namespaces", "e"], {"X_NAMESPACES": "a"}).namespaces == ("d", "e")


@pytest.mark.parametrize(("variable", "raw"), [("X_PORT", "eighty"), ("X_RATIO", "half"), ("X_FAST", "maybe")])
def test_a_value_that_does_not_parse_is_a_usage_error_naming_the_variable(
    variable: str, raw: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        load([], {variable: raw})
    assert exit_.value.code == 2
    assert f"knobs: error: {variable}: " in capsys.readouterr().err


def test_a_flag_that_does_not_parse_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        load(["--fast", "maybe"], {})
    assert exit_.value.code == 2
    assert "--fast" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "raw", "message"),
    [
        ("--ratio", "nan", "expected a finite number, got nan"),
        ("--ratio", "inf", "expected a finite number, got inf"),
        ("--ratio", "-0.5", "expected 0 or more, got -0.5"),
        ("--port", "-1", "expected 0 or more, got -1"),
        ("--interval-s", "0", "expected a number more than 0, got 0.0"),
        ("--listen", "65536", "expected at most 65535, got 65536"),
    ],
)
def test_a_number_out_of_its_fields_range_is_a_usage_error_naming_the_flag_or_the_variable(
    flag: str, raw: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        load([flag, raw], {})
    assert exit_.value.code == 2
    assert f"knobs: error: argument {flag}: {message}" in capsys.readouterr().err
    variable = "X_" + flag[2:].replace("-", "_").upper()
    with pytest.raises(SystemExit) as exit_:
        load([], {variable: raw})
    assert exit_.value.code == 2
    assert f"knobs: error: {variable}: {message}" in capsys.readouterr().err


def test_numbers_in_range_pass_and_a_signed_field_takes_a_negative() -> None:
    knobs = load(["--offset", "-3600", "--interval-s", "0.001", "--listen", "65535", "--ratio", "0"], {})
    assert (knobs.offset, knobs.interval_s, knobs.listen, knobs.ratio) == (-3600.0, 0.001, 65535, 0.0)


def test_a_number_flag_that_does_not_parse_keeps_argparses_message(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        load(["--port", "eighty"], {})
    assert "argument --port: invalid int value: 'eighty'" in capsys.readouterr().err
