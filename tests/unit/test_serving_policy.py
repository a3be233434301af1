"""Pure serving rules: request validation, response shape, batch policy, sanity checks."""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

import pytest

from locality import errors
from serving.policy import (
    Limits,
    cosine,
    output_problem,
    parse_request,
    plan_batch,
    render_response,
    retry_after,
)

LIMITS = Limits(model_name="mini", dimension=4, max_inputs=3, max_chars=10)


@pytest.mark.parametrize(
    ("body", "texts", "encoding"),
    [
        pytest.param({"input": "hello"}, ("hello",), "float", id="one string"),
        pytest.param({"input": ["a", "b c"]}, ("a", "b c"), "float", id="list of strings"),
        pytest.param({"input": "x", "model": "mini"}, ("x",), "float", id="matching model"),
        pytest.param({"input": "x", "encoding_format": "base64"}, ("x",), "base64", id="base64"),
        pytest.param({"input": "x", "dimensions": 4, "user": "u1"}, ("x",), "float", id="native dimensions"),
        pytest.param({"input": ["a", "b", "c"]}, ("a", "b", "c"), "float", id="exactly max inputs"),
        pytest.param({"input": "0123456789"}, ("0123456789",), "float", id="exactly max chars"),
    ],
)
def test_parse_request_accepts(body: dict[str, Any], texts: tuple[str, ...], encoding: str) -> None:
    parsed = parse_request(body, LIMITS)
    assert parsed.texts == texts and parsed.encoding == encoding


@pytest.mark.parametrize(
    ("body", "error", "fragment"),
    [
        pytest.param({}, errors.Invalid, "missing field: input", id="missing input"),
        pytest.param({"input": None}, errors.Invalid, "missing field: input", id="null input"),
        pytest.param({"input": []}, errors.Invalid, "non-empty list", id="empty list"),
        pytest.param({"input": 3}, errors.Invalid, "non-empty list", id="number"),
        pytest.param({"input": {"a": "b"}}, errors.Invalid, "non-empty list", id="object"),
        pytest.param({"input": [1, 2]}, errors.Invalid, "token arrays", id="token ids"),
        pytest.param({"input": [[1, 2]]}, errors.Invalid, "token arrays", id="nested token ids"),
        pytest.param({"input": ["a", None]}, errors.Invalid, "input[1]: not a string", id="null item"),
        pytest.param({"input": ["a", " "]}, errors.Invalid, "input[1] is empty", id="blank item"),
        pytest.param({"input": ["a"] * 4}, errors.Invalid, "at most 3", id="too many"),
        pytest.param({"input": "01234567890"}, errors.Invalid, "11 characters", id="too long"),
        pytest.param(
            {"input": "x", "encoding_format": "int8"}, errors.Invalid, "encoding_format", id="encoding"
        ),
        pytest.param({"input": "x", "dimensions": 2}, errors.Invalid, "4 dimensions", id="dimensions"),
        pytest.param({"input": "x", "user": 5}, errors.Invalid, "user", id="user not a string"),
        pytest.param({"input": "x", "model": "gpt"}, errors.NotFound, "served: 'mini'", id="other model"),
    ],
)
def test_parse_request_refuses(body: dict[str, Any], error: type[Exception], fragment: str) -> None:
    with pytest.raises(error, match=None) as info:
        parse_request(body, LIMITS)
    assert fragment in str(info.value)


def test_render_response_shape_and_base64_round_trip() -> None:
    vectors = [[0.5, -0.25, 1.0, 0.0], [1.0, 2.0, 3.0, 4.0]]
    body = render_response(vectors, 7, "float", "mini")
    assert body["object"] == "list" and body["model"] == "mini"
    assert body["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    assert [(d["object"], d["index"], d["embedding"]) for d in body["data"]] == [
        ("embedding", 0, vectors[0]),
        ("embedding", 1, vectors[1]),
    ]
    encoded = render_response(vectors, 7, "base64", "mini")["data"][1]["embedding"]
    assert list(struct.unpack("<4f", base64.b64decode(encoded))) == vectors[1]


@pytest.mark.parametrize(
    ("queued", "age", "expected"),
    [
        pytest.param(0, 0.0, (0, 0.01), id="empty queue waits"),
        pytest.param(1, 0.0, (0, 0.01), id="one fresh input waits for company"),
        pytest.param(3, 0.004, (0, 0.006), id="waits out the rest of max_wait"),
        pytest.param(3, 0.01, (3, 0.0), id="oldest waited max_wait: go"),
        pytest.param(4, 0.0, (4, 0.0), id="full batch goes at once"),
        pytest.param(9, 0.0, (4, 0.0), id="more than a batch takes max_batch"),
        pytest.param(2, 5.0, (2, 0.0), id="long overdue partial batch"),
    ],
)
def test_plan_batch(queued: int, age: float, expected: tuple[int, float]) -> None:
    take, wait = plan_batch(queued, age, max_batch=4, max_wait=0.01)
    assert take == expected[0]
    assert math.isclose(wait, expected[1], abs_tol=1e-12)


def test_plan_batch_with_zero_wait_never_waits_for_company() -> None:
    assert plan_batch(1, 0.0, max_batch=32, max_wait=0.0) == (1, 0.0)


@pytest.mark.parametrize(
    ("queued", "batch_seconds", "expected"),
    [
        pytest.param(0, 0.05, 1, id="at least one second"),
        pytest.param(64, 0.05, 1, id="two quick batches"),
        pytest.param(320, 0.5, 5, id="ten batches of half a second"),
        pytest.param(33, 2.0, 4, id="a partial batch counts as one"),
    ],
)
def test_retry_after(queued: int, batch_seconds: float, expected: int) -> None:
    assert retry_after(queued, 32, batch_seconds) == expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        pytest.param([1.0, 0.0], [2.0, 0.0], 1.0, id="same direction"),
        pytest.param([1.0, 0.0], [0.0, 3.0], 0.0, id="orthogonal"),
        pytest.param([1.0, 1.0], [-1.0, -1.0], -1.0, id="opposite"),
        pytest.param([0.0, 0.0], [1.0, 0.0], 0.0, id="zero vector"),
        pytest.param([1.0], [1.0, 0.0], 0.0, id="different lengths"),
        pytest.param([math.nan, 1.0], [1.0, 1.0], 0.0, id="nan is never healthy"),
    ],
)
def test_cosine(a: list[float], b: list[float], expected: float) -> None:
    assert math.isclose(cosine(a, b), expected, abs_tol=1e-9)


@pytest.mark.parametrize(
    ("vectors", "fragment"),
    [
        pytest.param([[0.1, 0.2], [0.3, -0.4]], None, id="fine"),
        pytest.param([], "no vectors", id="nothing"),
        pytest.param([[0.1, math.nan]], "NaN or Inf", id="nan"),
        pytest.param([[0.1], [math.inf]], "NaN or Inf", id="inf"),
        pytest.param([[0.0, 0.0]], "all zeros", id="zeros"),
        pytest.param([[0.1, 0.2], [0.3]], "1 dimensions", id="ragged"),
        pytest.param([[]], "0 dimensions", id="empty vector"),
    ],
)
def test_output_problem(vectors: list[list[float]], fragment: str | None) -> None:
    problem = output_problem(vectors)
    if fragment is None:
        assert problem is None
    else:
        assert problem is not None and fragment in problem
