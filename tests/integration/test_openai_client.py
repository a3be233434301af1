"""The official ``openai`` client against ``model-serve`` with MiniLM: embeddings work, errors show.

Also the served model's name as a user meets it: named after the model (not its cache id),
``--served-model-name`` aliases, and a 404 that lists the served names.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.naming import default_name, parse_names
from tests.fixtures.polling import eventually_sync
from tests.fixtures.ports import free_port
from tests.integration.test_serving_cli import URI, cache_model, serve

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def served(minilm: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``model-serve`` on a node-cache copy of MiniLM, with one alias; yields its base URL."""
    tmp = tmp_path_factory.mktemp("openai")
    model_dir = cache_model(minilm, tmp / "cache")
    port = free_port()
    proc = serve(
        ["--model-dir", str(model_dir), "--served-model-name", "all-MiniLM-L6-v2,minilm", "--device", "cpu"],
        port,
        tmp / "stderr.log",
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            assert proc.poll() is None, f"model-serve exited: {(tmp / 'stderr.log').read_text()[-2000:]}"
            try:
                with urllib.request.urlopen(f"{base}/readyz", timeout=2):
                    return True
            except OSError:
                return False

        what = lambda: f"model-serve ready\n{(tmp / 'stderr.log').read_text()[-2000:]}"  # noqa: E731
        eventually_sync(ready, 120, what, interval=0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=30)


def test_embeddings_through_the_openai_client(served: str) -> None:
    with client(served) as c:
        result = c.embeddings.create(model="minilm", input=["a cat sat on the mat", "dogs bark"])
    assert [len(d.embedding) for d in result.data] == [384, 384]
    assert result.model == "minilm" and result.usage.prompt_tokens > 0


def test_the_openai_client_shows_our_error_messages(served: str) -> None:
    with client(served) as c:
        with pytest.raises(openai.NotFoundError) as missing:
            c.embeddings.create(model="text-embedding-3-small", input="x")
        with pytest.raises(openai.BadRequestError) as empty:
            c.embeddings.create(model="minilm", input=["ok", " "])
    assert missing.value.code == "model_not_found" and missing.value.param == "model"
    assert "served: 'all-MiniLM-L6-v2', 'minilm'" in str(missing.value)
    assert empty.value.param == "input" and empty.value.type == "invalid_request_error"
    assert "input[1] is empty" in str(empty.value)


def test_models_lists_every_served_name_and_probes_keep_our_shape(served: str) -> None:
    with client(served) as c:
        assert [m.id for m in c.models.list()] == ["all-MiniLM-L6-v2", "minilm"]
    with urllib.request.urlopen(f"{served}/healthz", timeout=10) as resp:
        assert json.loads(resp.read()) == {"status": "ok"}


def test_a_cache_directory_is_named_after_its_model(minilm: Path, tmp_path: Path) -> None:
    model_dir = cache_model(minilm, tmp_path / "cache")
    assert model_dir.name != "all-MiniLM-L6-v2"  # the cache names directories by id
    assert default_name(str(model_dir), None) == URI.rsplit("/", 1)[-1]
    assert default_name(str(minilm), None) == "MiniLM-L6-H384-uncased"  # config.json _name_or_path
    assert default_name(str(tmp_path), None) == tmp_path.name
    assert default_name(None, "https://host/org/model.bin?sig=x") == "model.bin"
    assert parse_names(" a, b,,a ") == ("a", "b")
