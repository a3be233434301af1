"""``locality.settings``: one declaration per setting yields its flag, variable, default and help."""

from __future__ import annotations

import argparse
import logging

import pytest

from locality.settings import ConfigError, Setting, Values, add_settings, parse_size

PORT = Setting("--port", "listen port", "SVC_PORT", 8000, int, ("OLD_PORT",))
SIZE = Setting("--max-body", "largest body", "SVC_MAX_BODY", 2**20, parse_size, shown="1Mi")
NAME: Setting[str | None] = Setting("--name", "a name", None)
POD: Setting[str | None] = Setting(None, "set by the downward API", "POD_NAME")
WAIT = Setting("--wait", "seconds", None, 300.0, float)


def values(argv: list[str], environ: dict[str, str]) -> Values:
    parser = argparse.ArgumentParser()
    add_settings(parser, (PORT, SIZE, NAME, POD, WAIT))
    return Values(parser.parse_args(argv), environ)


@pytest.mark.parametrize(
    ("setting", "text"),
    [
        pytest.param(PORT, "listen port (env SVC_PORT, default 8000)", id="env and default"),
        pytest.param(SIZE, "largest body (env SVC_MAX_BODY, default 1Mi)", id="default as shown"),
        pytest.param(NAME, "a name", id="neither"),
        pytest.param(WAIT, "seconds (default 300)", id="whole float"),
    ],
)
def test_help_comes_from_the_declaration(setting: Setting[object], text: str) -> None:
    assert setting.help_text() == text


@pytest.mark.parametrize(
    ("argv", "environ", "setting", "want"),
    [
        pytest.param([], {}, PORT, 8000, id="default"),
        pytest.param([], {"SVC_PORT": "9000"}, PORT, 9000, id="variable"),
        pytest.param(["--port", "9100"], {"SVC_PORT": "9000"}, PORT, 9100, id="flag wins"),
        pytest.param([], {"SVC_PORT": ""}, PORT, 8000, id="empty variable is unset"),
        pytest.param([], {"SVC_MAX_BODY": "2Mi"}, SIZE, 2 * 2**20, id="parsed"),
        pytest.param([], {"POD_NAME": "p-1"}, POD, "p-1", id="env only"),
        pytest.param([], {}, NAME, None, id="no default"),
    ],
)
def test_flag_then_variable_then_default(
    argv: list[str], environ: dict[str, str], setting: Setting[object], want: object
) -> None:
    assert values(argv, environ).get(setting) == want


def test_a_deprecated_name_works_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "locality.settings")
    got = values([], {"OLD_PORT": "9001"})
    assert (got.get(PORT), got.get(PORT)) == (9001, 9001)
    assert [r.getMessage() for r in caplog.records] == ["OLD_PORT is deprecated; use SVC_PORT"]


@pytest.mark.parametrize(
    ("argv", "environ", "setting", "message"),
    [
        pytest.param(["--port", "x"], {}, PORT, "--port='x' is not an integer", id="bad flag"),
        pytest.param([], {"SVC_PORT": "x"}, PORT, "SVC_PORT='x' is not an integer", id="bad variable"),
        pytest.param(["--wait", "soon"], {}, WAIT, "--wait='soon' is not a number", id="bad float"),
        pytest.param([], {"SVC_MAX_BODY": "lots"}, SIZE, "not a size: 'lots'", id="parser's own error"),
    ],
)
def test_a_bad_value_names_where_it_came_from(
    argv: list[str], environ: dict[str, str], setting: Setting[object], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        values(argv, environ).get(setting)
    assert message in str(info.value)


def test_env_only_settings_add_no_flag() -> None:
    parser = argparse.ArgumentParser()
    add_settings(parser, (POD,))
    assert [a.dest for a in parser._actions] == ["help"]
