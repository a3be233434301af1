"""Decoding JSON request bodies (pure): bad JSON and deep nesting are ``Invalid``, never a 500."""

from __future__ import annotations

import json
from typing import Any

from locality import errors


def decode_json(raw: bytes) -> Any:
    """Decode JSON or raise ``Invalid``; deep nesting (``RecursionError``) is bad input too."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise errors.Invalid(f"body is not valid JSON: {str(exc)[:200]}") from None
