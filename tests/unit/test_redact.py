"""redact_uri: what could be a secret in a model URI never reaches a label, log or error."""

from __future__ import annotations

import pytest

from locality.identity import redact_uri

CASES = {
    "plain s3": ("s3://models/team-a/llama", "s3://models/team-a/llama"),
    "plain https, harmless query": ("https://h/m.bin?versionId=3", "https://h/m.bin?versionId=3"),
    "aws presigned": (
        "https://b.s3.amazonaws.com/m.bin?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F20260101"
        "&X-Amz-Date=20260101T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=abc123",
        "https://b.s3.amazonaws.com/m.bin?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=REDACTED"
        "&X-Amz-Date=20260101T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=REDACTED&X-Amz-Signature=REDACTED",
    ),
    "aws session token": (
        "https://h/m?X-Amz-Security-Token=FQoG",
        "https://h/m?X-Amz-Security-Token=REDACTED",
    ),
    "v2 signature": (
        "https://h/m?AWSAccessKeyId=AKIA&Expires=1&Signature=zz",
        "https://h/m?AWSAccessKeyId=REDACTED&Expires=1&Signature=REDACTED",
    ),
    "azure sas": (
        "https://a.blob.core.windows.net/c/m?sv=2022&sp=r&sig=SECRET",
        "https://a.blob.core.windows.net/c/m?sv=2022&sp=r&sig=REDACTED",
    ),
    "gcs signed": (
        "https://storage.googleapis.com/b/m?X-Goog-Signature=ff",
        "https://storage.googleapis.com/b/m?X-Goog-Signature=REDACTED",
    ),
    "token param": ("https://h/m?token=t0k", "https://h/m?token=REDACTED"),
    "api key, any case": ("https://h/m?API_KEY=k", "https://h/m?API_KEY=REDACTED"),
    "user and password": ("https://alice:hunter2@h/m.bin", "https://REDACTED@h/m.bin"),
    "user only": ("http://alice@h/m", "http://REDACTED@h/m"),
    "at sign in path is not userinfo": ("https://h/a@b/m", "https://h/a@b/m"),
    "fragment": ("https://h/m#secret", "https://h/m#REDACTED"),
    "bare flag kept": ("https://h/m?download&sig=x", "https://h/m?download&sig=REDACTED"),
    "garbage": ("::::?sig=1", "::::?sig=REDACTED"),
    "not a string": (None, "None"),
}


@pytest.mark.parametrize(("uri", "expected"), list(CASES.values()), ids=list(CASES))
def test_redact_uri(uri: object, expected: str) -> None:
    assert redact_uri(uri) == expected


@pytest.mark.parametrize("uri", [c[0] for c in CASES.values()], ids=list(CASES))
def test_redact_uri_is_idempotent(uri: object) -> None:
    once = redact_uri(uri)
    assert redact_uri(once) == once
