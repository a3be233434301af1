"""``model-extender`` flags, environment fallbacks and validation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from locality.settings import ConfigError
from scheduler_extender.cli import build_parser, main
from scheduler_extender.config import DEFAULT_PORT, normalize_prefix, settings_from_args


def settings(argv: list[str], environ: dict[str, str] | None = None) -> object:
    args = build_parser().parse_args(["serve", *argv])
    return settings_from_args(args, environ or {})


def test_defaults_are_standalone_on_8471() -> None:
    s = settings([])
    assert (s.host, s.port, s.url_prefix, s.token, s.kubeconfig) == ("0.0.0.0", DEFAULT_PORT, "", None, None)  # type: ignore[attr-defined]
    assert s.standalone  # type: ignore[attr-defined]


def test_flags_win_over_environment(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("abc\n")
    env = {
        "MODEL_LOCALITY_PORT": "9000",
        "MODEL_LOCALITY_TOKEN_FILE": str(token),
        "KUBECONFIG": "/env/kubeconfig",
        "MODEL_LOCALITY_URL_PREFIX": "env/",
    }
    s = settings(["--port", "9100", "--url-prefix", "/scheduler/", "--max-body-bytes", "2Mi"], env)
    assert s.port == 9100 and s.url_prefix == "/scheduler"  # type: ignore[attr-defined]
    assert s.token == "abc" and s.kubeconfig == "/env/kubeconfig"  # type: ignore[attr-defined]
    assert s.max_body_bytes == 2 * 2**20 and not s.standalone  # type: ignore[attr-defined]
    assert settings([], env).url_prefix == "/env"  # type: ignore[attr-defined]


def test_in_cluster_is_not_standalone() -> None:
    assert not settings([], {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}).standalone  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "0"], "invalid port"),
        (["--url-prefix", "/a b"], "invalid URL prefix"),
        (["--max-body-bytes", "12"], "max body size"),
        (["--max-body-bytes", "lots"], "not a size"),
        (["--token-file", "/nonexistent/token"], "cannot read token file"),
    ],
    ids=["port zero", "prefix with space", "body cap too small", "body cap not a size", "missing token file"],
)
def test_bad_settings_are_config_errors(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings(argv)


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        ([], {"MODEL_LOCALITY_WEBHOOK_PORT": "soon"}, "MODEL_LOCALITY_WEBHOOK_PORT='soon' is not an integer"),
        (["--webhook-port", "8473"], {}, None),
        (["--webhook-port", "70000"], {}, "ports must be between"),
        (["--webhook-port", "8473", "--injection-mode", "magic"], {}, "--injection-mode must be one of"),
    ],
    ids=["port from env not a number", "port only", "port out of range", "unknown mode"],
)
def test_webhook_settings(argv: list[str], environ: dict[str, str], message: str | None) -> None:
    if message is None:
        hook = settings(argv, environ).webhook  # type: ignore[attr-defined]
        assert (hook.port, hook.install.agent_port, hook.install.mode) == (8473, 8470, "scheduler")
        return
    with pytest.raises(ConfigError, match=re.escape(message)):
        settings(argv, environ)


def test_main_reports_config_errors_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--port", "70000"], {}) == 2
    assert "model-extender serve: invalid port 70000" in capsys.readouterr().err


def test_main_reports_unusable_kubeconfig(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "kubeconfig"
    bad.write_text("not: [a kubeconfig")
    assert main(["serve", "--kubeconfig", str(bad)], {}) == 2
    assert "kubeconfig" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("raw", "expected"), [("", ""), ("/", ""), ("scheduler", "/scheduler"), ("/a/b/", "/a/b")]
)
def test_normalize_prefix(raw: str, expected: str) -> None:
    assert normalize_prefix(raw) == expected


def test_parser_lists_the_contract_flags() -> None:
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    flags = {opt for action in serve._actions for opt in action.option_strings}
    assert {"--host", "--port", "--token-file", "--kubeconfig", "--url-prefix", "--max-body-bytes"} <= flags


def test_prefixed_names_win_and_old_ones_still_work(caplog: pytest.LogCaptureFixture) -> None:
    new = {"MODEL_LOCALITY_EXTENDER_URL_PREFIX": "new/", "MODEL_LOCALITY_EXTENDER_MAX_BODY_BYTES": "3Mi"}
    old = {"MODEL_LOCALITY_URL_PREFIX": "old/", "MODEL_LOCALITY_MAX_BODY_BYTES": "1Mi"}
    s = settings([], {**old, **new})
    assert (s.url_prefix, s.max_body_bytes) == ("/new", 3 * 2**20)  # type: ignore[attr-defined]
    with caplog.at_level("WARNING"):
        s = settings([], old)
    assert (s.url_prefix, s.max_body_bytes) == ("/old", 2**20)  # type: ignore[attr-defined]
    assert "MODEL_LOCALITY_URL_PREFIX is deprecated; use MODEL_LOCALITY_EXTENDER_URL_PREFIX" in caplog.text
