"""The load phase's CPU path: weights read before torch is needed, the model assembled over them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from serving import loading, model
from serving.integrity import IntegrityError
from serving.loader import load_state_dict
from tests.fixtures.cached import commit_copy

URI = "s3://models/sentence-transformers/all-MiniLM-L6-v2"
TEXTS = ["A man is playing a guitar on stage.", "Someone performs music with a guitar.", "Rates rose again."]


@pytest.mark.parametrize(
    ("device", "nodes", "want"),
    [
        pytest.param("cpu", (), True, id="cpu asked"),
        pytest.param("cuda", (), False, id="cuda asked"),
        pytest.param("auto", (), True, id="auto, no GPU device node"),
        pytest.param("auto", ("nvidiactl",), False, id="auto, an NVIDIA node"),
    ],
)
def test_host_first(tmp_path: Path, device: str, nodes: tuple[str, ...], want: bool) -> None:
    for node in nodes:
        (tmp_path / node).touch()
    assert loading.host_first(device, (str(tmp_path / "nvidiactl"), str(tmp_path / "kfd"))) is want


@pytest.fixture(scope="module")
def cached(minilm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return commit_copy(minilm, tmp_path_factory.mktemp("cache"), URI, 16 * 2**20)


def test_cpu_load_embeds_like_the_sequential_load(cached: Path) -> None:
    got = loading.load(cached, device="cpu", threads=None, check=True)
    want = model.load(cached, device="cpu")
    assert got.dimension == want.dimension == 384
    assert got.embed(TEXTS) == want.embed(TEXTS)


def test_assembled_model_is_from_pretrained_over_the_same_memory(cached: Path) -> None:
    found = model.parts(cached)
    state = load_state_dict(cached)
    built = model.assemble(found.cls, found.config, state)
    assert built is not None
    params = dict(built.named_parameters())
    assert all(params[k].data_ptr() == t.data_ptr() for k, t in state.items() if k in params)  # no copies
    assert not any(t.is_meta for t in (*built.parameters(), *built.buffers()))
    ref = found.cls.from_pretrained(None, config=found.config, state_dict=state)
    enc = found.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.inference_mode():
        assert torch.equal(built.eval()(**enc).last_hidden_state, ref.eval()(**enc).last_hidden_state)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param("missing", id="a parameter missing: from_pretrained initialises it"),
        pytest.param("renamed", id="prefixed names: from_pretrained maps them"),
    ],
)
def test_checkpoints_assemble_cannot_take_go_to_from_pretrained(cached: Path, change: str) -> None:
    found = model.parts(cached)
    state = load_state_dict(cached)
    if change == "missing":
        del state["pooler.dense.bias"]
    else:
        state = {f"bert.{k}": v for k, v in state.items()}
    assert model.assemble(found.cls, found.config, state) is None


def test_damaged_weights_fail_as_integrity_errors_while_the_side_loads(cached: Path, tmp_path: Path) -> None:
    model_dir = commit_copy(cached, tmp_path / "cache", URI, 16 * 2**20)
    with (model_dir / "model.safetensors").open("r+b") as f:
        f.seek(50_000_000)
        byte = f.read(1)
        f.seek(50_000_000)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(IntegrityError, match=r"model\.safetensors"):
        loading.load(model_dir, device="cpu", threads=None, check=True)


def test_a_changed_config_is_an_integrity_error_not_a_model_error(cached: Path, tmp_path: Path) -> None:
    """The side thread may fail on the changed file first; the record check's error still wins."""
    model_dir = commit_copy(cached, tmp_path / "cache", URI, 16 * 2**20)
    (model_dir / "config.json").write_text(json.dumps({"model_type": "no-such-model"}))
    with pytest.raises(IntegrityError, match=r"config\.json"):
        loading.load(model_dir, device="cpu", threads=None, check=True)


def test_the_read_side_imports_no_torch() -> None:
    """The CLI and the host read import no torch: the read overlaps the import only while so."""
    code = (
        "import sys, serving.cli, serving.loading, serving.hostload;"
        " print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    )
    argv = [sys.executable, "-c", code]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip() == "[]"
