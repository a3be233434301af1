"""Pure serving rules: request validation, response shape, batch policy, output sanity checks."""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from locality import errors

FIELDS = ("input", "model", "encoding_format", "dimensions", "user")
ENCODINGS = ("float", "base64")


class BadParam(errors.Invalid):
    """A 400 that names the request field at fault (OpenAI's ``param``)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class ModelNotFound(errors.NotFound):
    """The request names a model this server does not serve (OpenAI: 404 ``model_not_found``)."""

    param = "model"
    code = "model_not_found"


@dataclass(frozen=True, slots=True)
class Limits:
    """What one request may ask for."""

    model_name: str
    dimension: int
    max_inputs: int
    max_chars: int
    aliases: tuple[str, ...] = ()  # more names than ``model_name`` that requests may use

    @property
    def served(self) -> tuple[str, ...]:
        return (self.model_name, *self.aliases)


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    texts: tuple[str, ...]
    encoding: str = "float"
    model: str | None = None  # the name the request used (answered back as ``model``)


def parse_request(body: Mapping[str, Any], limits: Limits) -> EmbeddingRequest:
    """Validate an OpenAI-style embeddings body (unknown fields were refused by the reader).

    ``model`` may be left out; when given it must name the served model (404 otherwise, as
    OpenAI and vLLM answer), so a client routed to the wrong deployment hears about it.
    """
    model = body.get("model")
    if model is not None and model not in limits.served:
        served = ", ".join(repr(name) for name in limits.served)
        raise ModelNotFound(f"model {model!r} is not served here; served: {served}")
    encoding = body.get("encoding_format", "float")
    if encoding not in ENCODINGS:
        raise BadParam(f"encoding_format must be one of {', '.join(ENCODINGS)}", "encoding_format")
    dims = body.get("dimensions")
    if dims is not None and dims != limits.dimension:
        raise BadParam(f"dimensions: this model answers {limits.dimension} dimensions only", "dimensions")
    if "user" in body and not isinstance(body["user"], str):
        raise BadParam("user must be a string", "user")
    texts = _texts(body.get("input"), limits)
    return EmbeddingRequest(texts=texts, encoding=encoding, model=model if isinstance(model, str) else None)


def _texts(value: Any, limits: Limits) -> tuple[str, ...]:
    if value is None:
        raise BadParam("missing field: input (a string or a list of strings)", "input")
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise BadParam("input must be a string or a non-empty list of strings", "input")
    if len(items) > limits.max_inputs:
        raise BadParam(f"input has {len(items)} items; at most {limits.max_inputs} per request", "input")
    for i, item in enumerate(items):
        if not isinstance(item, str):
            kind = "token arrays are not supported" if isinstance(item, (int, list)) else "not a string"
            raise BadParam(f"input[{i}]: {kind}; send strings", "input")
        if not item.strip():
            raise BadParam(f"input[{i}] is empty", "input")
        if len(item) > limits.max_chars:
            raise BadParam(f"input[{i}] has {len(item)} characters; at most {limits.max_chars}", "input")
    return tuple(items)


def render_response(
    vectors: Sequence[Sequence[float]], tokens: int, encoding: str, model: str
) -> dict[str, Any]:
    """The OpenAI embeddings response; base64 is little-endian float32, as OpenAI encodes it."""
    data = [
        {"object": "embedding", "index": i, "embedding": _encode(vector, encoding)}
        for i, vector in enumerate(vectors)
    ]
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "data": data, "model": model, "usage": usage}


def _encode(vector: Sequence[float], encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return list(vector)


def plan_batch(queued: int, oldest_age: float, max_batch: int, max_wait: float) -> tuple[int, float]:
    """Decide ``(take, wait)`` for the dispatcher.

    Dispatch ``take = min(queued, max_batch)`` inputs now when ``queued >= max_batch`` or the
    oldest input has waited ``oldest_age >= max_wait``; otherwise take nothing and wait
    ``max_wait - oldest_age`` seconds for more company (or until a new input arrives).
    """
    if queued <= 0:
        return 0, max_wait
    if queued >= max_batch or oldest_age >= max_wait:
        return min(queued, max_batch), 0.0
    return 0, max_wait - oldest_age


def retry_after(queued: int, max_batch: int, batch_seconds: float) -> int:
    """Seconds a refused client should wait: ``max(1, ceil(ceil(queued / max_batch) * batch_seconds))``."""
    batches = math.ceil(queued / max_batch)
    return max(1, math.ceil(batches * batch_seconds))


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """``a . b / (|a| |b|)``; 0.0 when either vector is zero or the lengths differ."""
    if len(a) != len(b):
        return 0.0
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm > 0 and math.isfinite(norm) else 0.0


def output_problem(vectors: Sequence[Sequence[float]]) -> str | None:
    """Why a batch of embeddings is unusable (NaN/Inf, zero or ragged vectors), or ``None``."""
    if not vectors:
        return "the model returned no vectors"
    width = len(vectors[0])
    for i, vector in enumerate(vectors):
        if len(vector) != width or width == 0:
            return f"vector {i} has {len(vector)} dimensions, expected {width}"
        if not all(math.isfinite(x) for x in vector):
            return f"vector {i} contains NaN or Inf"
        if not any(vector):
            return f"vector {i} is all zeros"
    return None
