"""Origin checksums: header parsing, file checksums against known values, the revision string."""

from __future__ import annotations

import base64
import hashlib
import zlib
from pathlib import Path

import pytest

from agent.fetch.sources.s3 import s3_checksum
from agent.store import checksums
from agent.store.files import RemoteFile, revision_of, short

HELLO_SHA256 = hashlib.sha256(b"hello").hexdigest()
B64 = base64.b64encode(hashlib.sha256(b"hello").digest()).decode()


@pytest.mark.parametrize(
    ("repr_digest", "digest", "want"),
    [
        pytest.param(f"sha-256=:{B64}:", None, f"sha256:{HELLO_SHA256}", id="repr-digest"),
        pytest.param(None, f"SHA-256={B64}", f"sha256:{HELLO_SHA256}", id="digest"),
        pytest.param(f"md5=:AAAA:, sha-256=:{B64}:", None, f"sha256:{HELLO_SHA256}", id="md5-skipped"),
        pytest.param("md5=:XUFAKrxLKna5cZ2REBfFkg==:", None, None, id="md5-only"),
        pytest.param("sha-256=:not base64!:", None, None, id="garbage"),
        pytest.param(None, None, None, id="absent"),
    ],
)
def test_http_digest_headers(repr_digest: str | None, digest: str | None, want: str | None) -> None:
    assert checksums.from_http_headers(repr_digest, digest) == want


@pytest.mark.parametrize(
    ("head", "want"),
    [
        pytest.param({"ChecksumSHA256": B64}, f"sha256:{HELLO_SHA256}", id="sha256"),
        pytest.param({"ChecksumCRC64NVME": "M3eFcAZSQlc="}, "crc64nvme:3377857006524257", id="crc64nvme"),
        pytest.param({"ChecksumCRC32C": "mnG7TA=="}, "crc32c:9a71bb4c", id="crc32c"),
        pytest.param({"ChecksumCRC32": "NhCmhg=="}, f"crc32:{zlib.crc32(b'hello'):08x}", id="crc32"),
        pytest.param({"ChecksumCRC32": "NhCmhg==-3"}, None, id="composite-multipart"),
        pytest.param({"ChecksumCRC32": "NhCmhg==", "ChecksumType": "COMPOSITE"}, None, id="composite-type"),
        pytest.param({"ChecksumCRC32": "NhCmhg==", "ETag": '"ab-2"'}, None, id="multipart-untyped"),
        pytest.param(
            {"ChecksumCRC32": "NhCmhg==", "ETag": '"ab-2"', "ChecksumType": "FULL_OBJECT"},
            f"crc32:{zlib.crc32(b'hello'):08x}",
            id="multipart-full-object",
        ),
        pytest.param({}, None, id="none"),
    ],
)
def test_s3_checksum_from_head(head: dict[str, str], want: str | None) -> None:
    assert s3_checksum(head) == want


@pytest.mark.parametrize(
    "algorithm", ["sha256", "sha1", "sha512", "git-sha1", "crc32", "crc32c", "crc64nvme"]
)
def test_file_checksum_matches_the_origins_encoding(algorithm: str, tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"hello")
    known = {
        "sha256": HELLO_SHA256,
        "sha1": hashlib.sha1(b"hello").hexdigest(),
        "sha512": hashlib.sha512(b"hello").hexdigest(),
        "git-sha1": "b6fc4c620b67d95f953a5c1c1230aaab5db5a1b0",  # `git hash-object` of "hello"
        "crc32": f"{zlib.crc32(b'hello'):08x}",
        "crc32c": "9a71bb4c",
        "crc64nvme": "3377857006524257",
    }
    assert checksums.file_checksum(path, algorithm, 5) == f"{algorithm}:{known[algorithm]}"


def test_mismatches_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "good").write_bytes(b"hello")
    (tmp_path / "bad").write_bytes(b"hellp")
    want = f"sha256:{HELLO_SHA256}"
    files = [("good", 5, want), ("bad", 5, want), ("unchecked", 5, None)]
    (problem,) = checksums.mismatches(files, lambda rel: tmp_path / rel)
    assert problem.startswith("bad: origin checksum mismatch") and want in problem


def test_recorded_says_none_without_a_usable_checksum() -> None:
    assert checksums.recorded(None) == "none"
    assert checksums.recorded("md5:abcd") == "none"
    assert checksums.recorded("SHA256:AB") == "sha256:ab"


def _f(path: str, etag: str | None, version: str | None = None) -> RemoteFile:
    return RemoteFile(path=path, size=1, etag=etag, key=path, version=version)


def test_revision_names_content() -> None:
    one = [_f("a", '"1"'), _f("b", '"2"')]
    assert revision_of(one) == revision_of(list(reversed(one)))
    assert revision_of(one) != revision_of([_f("a", '"1"'), _f("b", '"3"')])
    # An S3 re-upload of the same bytes: new VersionIds, same ETags, same revision.
    assert revision_of([_f("a", '"1"', "v1")]) == revision_of([_f("a", '"1"', "v2")])
    # Without an ETag, the Last-Modified date pins it.
    assert revision_of([_f("a", None, "Mon, 01 Jan")]) != revision_of([_f("a", None, "Tue, 02 Jan")])


def test_revision_of_a_hub_model_is_its_commit() -> None:
    sha = "0123456789abcdef0123456789abcdef01234567"
    assert revision_of([_f("a", "x", sha), _f("b", "y", sha)]) == sha
    assert short(sha) == "01234567"
