"""Table tests of model identity: normalisation, id, slug, label key, safe relative paths."""

from __future__ import annotations

import re

import pytest
import xxhash

from locality.identity import (
    InvalidURI,
    UnsafePath,
    is_model_label,
    model_ref,
    safe_relpath,
    slugify,
)

LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")

NORMALISED = {
    "s3 prefix": ("s3://models/org/llama", "s3://models/org/llama"),
    "scheme and bucket lower-cased": ("S3://MODELS/Org/Llama", "s3://models/Org/Llama"),
    "trailing slash dropped": ("s3://models/org/llama/", "s3://models/org/llama"),
    "double slashes collapsed": ("s3://models//org///llama", "s3://models/org/llama"),
    "whole bucket": ("s3://models/", "s3://models"),
    "surrounding blanks": ("  s3://models/a  ", "s3://models/a"),
    "http host lower-cased": ("HTTP://Example.COM/w/model.bin", "http://example.com/w/model.bin"),
    "default port dropped": ("https://example.com:443/a.bin", "https://example.com/a.bin"),
    "other port kept": ("http://127.0.0.1:8080/a.bin", "http://127.0.0.1:8080/a.bin"),
    "query kept": ("https://h.example/a.bin?x=1", "https://h.example/a.bin?x=1"),
    "unicode key kept": ("s3://models/ünï/cödé", "s3://models/ünï/cödé"),
}


@pytest.mark.parametrize(("raw", "expected"), list(NORMALISED.values()), ids=list(NORMALISED))
def test_normalisation(raw: str, expected: str) -> None:
    ref = model_ref(raw)
    assert ref.uri == expected
    assert ref.id == xxhash.xxh3_64(expected.encode()).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{16}", ref.id)


def test_equivalent_spellings_share_one_id() -> None:
    ids = {model_ref(u).id for u in ("s3://Models/a/b", "s3://models/a/b/", "s3://models//a/b")}
    assert len(ids) == 1
    assert model_ref("s3://models/a/b").id != model_ref("s3://models/a/B").id


REJECTED = {
    "empty": "",
    "blank": "   ",
    "no scheme": "models/llama",
    "ftp": "ftp://host/x",
    "file": "file:///etc/passwd",
    "dot segment": "s3://models/a/./b",
    "dotdot segment": "s3://models/a/../b",
    "leading dotdot": "s3://models/../other",
    "NUL": "s3://models/a\x00b",
    "newline": "s3://models/a\nb",
    "backslash": "s3://models/a\\b",
    "bad bucket": "s3://a_b/x",
    "short bucket": "s3://ab/x",
    "s3 query": "s3://models/a?versionId=1",
    "fragment": "https://h.example/a#frag",
    "credentials": "https://user:pw@h.example/a",
    "http root": "https://h.example/",
    "no host": "http:///a",
    "bad port": "http://h.example:99999/a",
    "too long": "s3://models/" + "a" * 3000,
    "not a string": 42,
}


@pytest.mark.parametrize("raw", list(REJECTED.values()), ids=list(REJECTED))
def test_rejected_uris(raw: str) -> None:
    with pytest.raises(InvalidURI):
        model_ref(raw)


SLUGS = {
    "plain": ("all-MiniLM-L6-v2", "all-minilm-l6-v2"),
    "dots become dashes": ("Llama-3.1-8B", "llama-3-1-8b"),
    "underscores": ("my_model", "my-model"),
    "edges stripped": ("--x--", "x"),
    "nothing left": ("___", "model"),
    "unicode folded": ("Ünïcödé", "unicode"),
    "only non-latin": ("模型", "model"),
    "trimmed to 40": ("a" * 100, "a" * 40),
    "trim leaves no trailing dash": ("a" * 39 + "-b", "a" * 39),
}


@pytest.mark.parametrize(("segment", "slug"), list(SLUGS.values()), ids=list(SLUGS))
def test_slug(segment: str, slug: str) -> None:
    assert slugify(segment) == slug


@pytest.mark.parametrize(
    "uri",
    [
        "s3://models/sentence-transformers/all-MiniLM-L6-v2",
        "s3://models/" + "x" * 200,
        "https://h.example/weights/model.safetensors?sig=abc",
        "s3://models",
        "s3://models/模型",
    ],
)
def test_label_key_is_a_valid_kubernetes_label(uri: str) -> None:
    ref = model_ref(uri)
    prefix, name = ref.label_key.split("/")
    assert prefix == "model-locality.io"
    assert len(name) <= 63 and LABEL_NAME.match(name)
    assert name.endswith("." + ref.id[:8])
    assert is_model_label(ref.label_key)


def test_label_key_example() -> None:
    ref = model_ref("s3://models/sentence-transformers/all-MiniLM-L6-v2")
    assert ref.slug == "all-minilm-l6-v2"
    assert ref.label_key == f"model-locality.io/all-minilm-l6-v2.{ref.id[:8]}"
    assert ref.authority == "models" and ref.path == "sentence-transformers/all-MiniLM-L6-v2"


def test_models_annotation_is_not_a_model_label() -> None:
    assert not is_model_label("model-locality.io/models")
    assert not is_model_label("kubernetes.io/hostname")


SAFE = ["config.json", "1_Pooling/config.json", "a/b/c.safetensors", "ünï.bin", "dir with space/f"]
UNSAFE = {
    "empty": "",
    "absolute": "/etc/passwd",
    "dotdot": "../x",
    "inner dotdot": "a/../../x",
    "dot": "./x",
    "empty segment": "a//b",
    "trailing slash": "a/",
    "NUL": "a\x00b",
    "control": "a\x1bb",
    "backslash": "a\\..\\b",
    "segment too long": "a" * 256,
    "path too long": "/".join(["a" * 200] * 6),
}


@pytest.mark.parametrize("key", SAFE)
def test_safe_relpaths(key: str) -> None:
    assert safe_relpath(key) == key


@pytest.mark.parametrize("key", list(UNSAFE.values()), ids=list(UNSAFE))
def test_unsafe_relpaths(key: str) -> None:
    with pytest.raises(UnsafePath):
        safe_relpath(key)
