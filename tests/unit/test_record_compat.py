"""Records written before revisions and origin checksums still load; new fields round-trip."""

from __future__ import annotations

from dataclasses import replace

from locality.digests import DIGEST_SCHEME
from locality.records import FileRecord, ModelRecord, record_from_json, record_to_json

OLD = {
    "version": 1,
    "digest_scheme": DIGEST_SCHEME,
    "id": "0123456789abcdef",
    "uri": "s3://b/m",
    "label": "model-locality.io/m.01234567",
    "total_bytes": 3,
    "etag": '"e"',
    "fetched_at": 1.0,
    "last_used": 2.0,
    "pins": [],
    "files": [
        {
            "path": "a",
            "size": 3,
            "xxh3_128": "x",
            "chunk_bytes": 1048576,
            "chunk_digests": ["x"],
            "etag": '"e"',
        }
    ],
}


def test_old_record_loads_with_no_origin_checksum_and_no_revision() -> None:
    record = record_from_json(OLD)
    assert record.revision is None
    assert [(f.origin_checksum, f.version) for f in record.files] == [("none", None)]


def test_new_fields_round_trip() -> None:
    base = record_from_json(OLD)
    file = replace(base.files[0], origin_checksum="sha256:ab", version="v1")
    record: ModelRecord = replace(base, files=(file,), revision="r1")
    assert record_from_json(record_to_json(record)) == record
    assert isinstance(record.files[0], FileRecord)
