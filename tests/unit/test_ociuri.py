"""oci:// URIs: normalisation, identity (tag/digest/path= are part of it), refusals, policy prefixes."""

from __future__ import annotations

import pytest

from locality.access_policy import normalize_prefix, prefix_matches
from locality.identity import InvalidURI, model_ref
from locality.ociuri import parse_oci

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("uri", "normalized"),
    [
        pytest.param("oci://reg.corp/models/llama:v1", "oci://reg.corp/models/llama:v1", id="tag"),
        pytest.param("oci://reg.corp/models/llama", "oci://reg.corp/models/llama:latest", id="no-tag"),
        pytest.param("OCI://Reg.Corp:5000/m/l:V1", "oci://reg.corp:5000/m/l:V1", id="host-lower-tag-kept"),
        pytest.param(f"oci://reg/m/l@{D}", f"oci://reg/m/l@{D}", id="digest"),
        pytest.param(f"oci://reg/m/l:v1@{D}", f"oci://reg/m/l@{D}", id="tag-and-digest"),
        pytest.param("oci://reg/m/l:v1/", "oci://reg/m/l:v1", id="trailing-slash"),
        pytest.param("oci://127.0.0.1:5000/a/b:1.0", "oci://127.0.0.1:5000/a/b:1.0", id="ip-port"),
        pytest.param("oci://[::1]:5000/a:x", "oci://[::1]:5000/a:x", id="ipv6"),
        pytest.param("oci://docker.io/ubuntu", "oci://docker.io/library/ubuntu:latest", id="hub-library"),
        pytest.param("oci://index.docker.io/org/m:1", "oci://docker.io/org/m:1", id="hub-alias"),
        pytest.param("oci://reg/a__b/c-d.e:t", "oci://reg/a__b/c-d.e:t", id="separators"),
        pytest.param("oci://reg/m:t?path=/models/", "oci://reg/m:t", id="default-path-dropped"),
        pytest.param("oci://reg/m:t?path=/opt//llm/", "oci://reg/m:t?path=opt/llm", id="path"),
        pytest.param("oci://reg/m:t?path=/", "oci://reg/m:t?path=/", id="path-root"),
    ],
)
def test_normalized(uri: str, normalized: str) -> None:
    ref = model_ref(uri)
    assert (ref.uri, ref.scheme) == (normalized, "oci")
    assert model_ref(normalized).uri == normalized
    assert model_ref(normalized).id == ref.id


@pytest.mark.parametrize(
    ("uri", "registry", "repository", "reference", "image_dir"),
    [
        pytest.param("oci://r:5000/a/b:t", "r:5000", "a/b", "t", "models", id="tag"),
        pytest.param(f"oci://r/a@{D}", "r", "a", D, "models", id="digest"),
        pytest.param("oci://r/a?path=/", "r", "a", "latest", "", id="root"),
        pytest.param("oci://r/a:t?path=x/y", "r", "a", "t", "x/y", id="dir"),
    ],
)
def test_parsed(uri: str, registry: str, repository: str, reference: str, image_dir: str) -> None:
    ref = model_ref(uri)
    got = parse_oci(ref.authority, ref.path)
    assert (got.registry, got.repository, got.reference, got.image_dir) == (
        registry,
        repository,
        reference,
        image_dir,
    )


def test_identity_and_slug() -> None:
    ids = {model_ref(u).id for u in ("oci://r/a:1", "oci://r/a:2", f"oci://r/a@{D}", "oci://r/a:1?path=/")}
    assert len(ids) == 4
    assert model_ref(f"oci://r/models/llama-3@{D}").slug == "llama-3"
    assert model_ref("oci://r/models/llama:v1").label_key.startswith("model-locality.io/llama.")
    assert parse_oci("r", f"a@{D}").display == f"r/a@{D}"


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        pytest.param("oci://reg", "invalid repository", id="no-repository"),
        pytest.param("oci://reg/Models/x", "invalid repository", id="upper-case-repo"),
        pytest.param("oci://reg/a/../b", "invalid repository", id="dotdot"),
        pytest.param("oci://reg/a//b", "invalid repository", id="empty-component"),
        pytest.param("oci://reg/-a", "invalid repository", id="leading-dash"),
        pytest.param("oci://user:pw@reg/a", "credentials in the URI", id="credentials"),
        pytest.param("oci://re_g/a", "invalid registry", id="bad-host"),
        pytest.param("oci://reg:0/a", "invalid registry port", id="port-zero"),
        pytest.param("oci:///a", "invalid registry", id="empty-host"),
        pytest.param("oci://reg/a:-x", "invalid tag", id="bad-tag"),
        pytest.param("oci://reg/a:" + "t" * 129, "invalid tag", id="long-tag"),
        pytest.param("oci://reg/a@sha256:abc", "only sha256", id="short-digest"),
        pytest.param("oci://reg/a@sha512:" + "a" * 128, "only sha256", id="sha512"),
        pytest.param("oci://reg/a@sha256:" + "AB" * 32, "only sha256", id="upper-digest"),
        pytest.param("oci://reg/a?tag=x", "only one path=", id="unknown-param"),
        pytest.param("oci://reg/a?path=a&path=b", "only one path=", id="two-paths"),
        pytest.param("oci://reg/a?path=/models/../etc", "invalid path= segment", id="path-dotdot"),
        pytest.param("oci://reg/a?path=a%20b", "invalid path= segment", id="path-space"),
        pytest.param("oci://reg/a#frag", "fragment", id="fragment"),
        pytest.param("oci://reg/" + "a/" * 130 + "b", "longer than 255", id="long-name"),
    ],
)
def test_refused(uri: str, why: str) -> None:
    with pytest.raises(InvalidURI, match=why):
        model_ref(uri)


@pytest.mark.parametrize(
    ("prefix", "uri", "covered"),
    [
        pytest.param("oci://harbor.corp/models/", "oci://harbor.corp/models/llama:v1", True, id="folder"),
        pytest.param("oci://Harbor.Corp/models", "oci://harbor.corp/models/a/b@" + D, True, id="case"),
        pytest.param("oci://harbor.corp/models/llama", "oci://harbor.corp/models/llama:v1", True, id="repo"),
        pytest.param("oci://harbor.corp/models/llama", f"oci://harbor.corp/models/llama@{D}", True, id="dig"),
        pytest.param("oci://harbor.corp/models/llama", "oci://harbor.corp/models/llama2:v1", False, id="sib"),
        pytest.param("oci://harbor.corp/models/", "oci://harbor.corp/other/llama:v1", False, id="other"),
        pytest.param("oci://harbor.corp/m/l:v1", "oci://harbor.corp/m/l:v1?path=x", True, id="path-q"),
        pytest.param("oci://harbor.corp/m/l:v", "oci://harbor.corp/m/l:v1", False, id="tag-prefix"),
        pytest.param("oci://harbor.corp", "oci://harbor.corp:5000/m:v1", False, id="host-not-port"),
        pytest.param("oci://", "oci://harbor.corp/m:v1", True, id="scheme"),
        pytest.param("s3://models/llama", "s3://models/llama:v1", False, id="s3-unchanged"),
    ],
)
def test_policy_prefix(prefix: str, uri: str, covered: bool) -> None:
    assert prefix_matches(normalize_prefix(prefix), model_ref(uri).uri) is covered
