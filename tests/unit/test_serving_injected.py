"""``model-serve`` with no flags in a pod the admission webhook mutated: MODEL_LOCALITY_MODEL_DIR(S)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serving.cli import build_parser
from serving.config import ConfigError, Settings, settings_from_args

A, B = "s3://models/org/minilm", "s3://models/org/other"
DIRS = json.dumps({A: "/var/lib/model-locality/models/aaaa", B: "/var/lib/model-locality/models/bbbb"})


def settings(argv: list[str], env: dict[str, str]) -> Settings:
    return settings_from_args(build_parser().parse_args(argv), env)


def test_one_model_dir_and_its_name() -> None:
    env = {"MODEL_LOCALITY_MODEL_DIR": "/var/lib/model-locality/models/aaaa", "MODEL_LOCALITY_MODEL_URI": A}
    got = settings([], env)
    assert got.model_dir == Path("/var/lib/model-locality/models/aaaa") and got.model_uri is None
    assert got.model_name == "minilm"


def test_one_entry_of_dirs() -> None:
    got = settings([], {"MODEL_LOCALITY_MODEL_DIRS": json.dumps({A: "/d/a"})})
    assert got.model_dir == Path("/d/a") and got.model_name == "minilm"


def test_several_dirs_need_a_choice() -> None:
    with pytest.raises(ConfigError, match="names 2 models; choose one with --model-uri"):
        settings([], {"MODEL_LOCALITY_MODEL_DIRS": DIRS})


def test_model_uri_picks_its_mounted_dir_without_the_agent() -> None:
    got = settings(["--model-uri", "s3://Models//org/other/"], {"MODEL_LOCALITY_MODEL_DIRS": DIRS})
    assert got.model_dir == Path("/var/lib/model-locality/models/bbbb") and got.model_uri is None


def test_model_uri_not_mounted_asks_the_agent() -> None:
    got = settings(["--model-uri", "s3://models/org/third"], {"MODEL_LOCALITY_MODEL_DIRS": DIRS})
    assert got.model_uri == "s3://models/org/third" and got.model_dir is None


def test_explicit_flag_wins_over_injected() -> None:
    got = settings(["--model-dir", "/mine"], {"MODEL_LOCALITY_MODEL_DIR": "/injected"})
    assert got.model_dir == Path("/mine")


@pytest.mark.parametrize("raw", ["not json", "[1]", '{"s3://a/b": 3}'])
def test_bad_dirs_json(raw: str) -> None:
    with pytest.raises(ConfigError, match="MODEL_LOCALITY_MODEL_DIRS must be a JSON object"):
        settings([], {"MODEL_LOCALITY_MODEL_DIRS": raw})
