"""Serving settings from flags and environment, and the promise that the app imports without torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from serving.cli import build_parser
from serving.config import ConfigError, Settings, settings_from_args


def settings(argv: list[str], env: dict[str, str] | None = None) -> Settings:
    return settings_from_args(build_parser().parse_args(argv), env or {})


def test_defaults() -> None:
    s = settings(["--model-dir", "/var/lib/model-locality/models/abc"])
    assert (s.host, s.port, s.device, s.model_name) == ("0.0.0.0", 8000, "auto", "abc")
    assert (s.max_batch, s.max_wait, s.max_queue, s.verify) == (32, 0.005, 1024, "stream")
    assert s.agent_url == "http://127.0.0.1:8470" and s.token is None


@pytest.mark.parametrize(
    ("argv", "env", "field", "value"),
    [
        pytest.param(["--model-uri", "s3://b/org/MiniLM"], {}, "model_name", "MiniLM", id="name from uri"),
        pytest.param(["--model-dir", "d"], {"MODEL_SERVE_PORT": "9000"}, "port", 9000, id="port from env"),
        pytest.param(
            ["--model-dir", "d", "--port", "9001"], {"MODEL_SERVE_PORT": "9000"}, "port", 9001, id="flag wins"
        ),
        pytest.param(["--model-dir", "d", "--max-wait-ms", "20"], {}, "max_wait", 0.02, id="wait in ms"),
        pytest.param(["--model-dir", "d", "--max-wait-ms", "0"], {}, "max_wait", 0.0, id="no waiting"),
        pytest.param(["--model-dir", "d", "--device", "CUDA"], {}, "device", "cuda", id="device case"),
        pytest.param(["--model-dir", "d", "--no-verify"], {}, "verify", "off", id="skip verify"),
        pytest.param(["--model-dir", "d", "--verify", "full"], {}, "verify", "full", id="separate verify"),
        pytest.param(["--model-dir", "d"], {"MODEL_SERVE_VERIFY": "FULL"}, "verify", "full", id="verify env"),
        pytest.param([], {"MODEL_SERVE_MODEL_URI": "s3://b/m"}, "model_uri", "s3://b/m", id="uri from env"),
        pytest.param(
            ["--model-uri", "s3://b/m"],
            {"MODEL_SERVE_MODEL_DIR": "d"},
            "model_dir",
            None,
            id="flag beats env",
        ),
        pytest.param(
            ["--model-dir", "d"],
            {"MODEL_LOCALITY_AGENT_URL": "http://agent:8470/"},
            "agent_url",
            "http://agent:8470",
            id="agent url from env",
        ),
    ],
)
def test_settings_sources(argv: list[str], env: dict[str, str], field: str, value: object) -> None:
    assert getattr(settings(argv, env), field) == value


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        pytest.param(["--model-dir", "d", "--max-wait-ms", "20000"], "--max-wait-ms", id="wait too long"),
        pytest.param(["--model-dir", "d", "--max-chars", "0"], "--max-chars", id="no chars"),
        pytest.param(["--model-dir", "d", "--wait-timeout", "0"], "--wait-timeout", id="no wait timeout"),
        pytest.param(["--model-dir", "d", "--threads", "0"], "--threads", id="zero threads"),
        pytest.param(["--model-dir", "d", "--verify", "twice"], "--verify must be one of", id="verify mode"),
        pytest.param(
            ["--model-dir", "d", "--token-file", "/nonexistent/t"], "cannot read token", id="token file"
        ),
    ],
)
def test_bad_settings(argv: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings(argv)
    assert fragment in str(info.value)


def test_empty_token_file(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        settings(["--model-dir", "d", "--token-file", str(token)])


def test_app_and_cli_import_without_torch() -> None:
    """The agent image has no torch: everything but ``serving.model`` must import without it."""
    code = (
        "import sys\n"
        "sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
        "import serving.app, serving.cli, serving.config, serving.startup, serving.integrity\n"
        "try:\n"
        "    import serving.model\n"
        "except ImportError:\n"
        "    print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "ok", result.stderr
