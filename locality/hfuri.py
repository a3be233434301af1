"""Hugging Face model URIs: ``hf://ORG/REPO[@REVISION][?include=GLOB,...&exclude=GLOB,...]``.

Pure. The revision (a branch, tag or commit sha) and the globs are part of the normalised URI and
so of the model id: ``hf://org/repo@<sha>`` names immutable content, and different globs select
different files. Globs are ``fnmatch`` patterns on the repo path (``*`` crosses ``/``, as in
``huggingface_hub``'s ``allow_patterns``), deduplicated and sorted, so the order does not matter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
_GLOB = re.compile(r"^[A-Za-z0-9._*?/\[\]!-]{1,200}$")
_KEYS = ("include", "exclude")


@dataclass(frozen=True, slots=True)
class HfModel:
    """What an ``hf://`` URI names: ``org/repo``, the revision asked for, include/exclude globs."""

    repo_id: str
    revision: str | None
    include: tuple[str, ...]
    exclude: tuple[str, ...]


def parse_hf(authority: str, path: str) -> HfModel:
    """The parts of a normalised ``hf://`` URI (``ModelRef.authority`` and ``.path``)."""
    head, _, query = path.partition("?")
    repo, _, revision = head.partition("@")
    globs = {k: tuple(v.split(",")) for k, v in parse_qsl(query)}
    return HfModel(
        f"{authority}/{repo}", revision or None, globs.get("include", ()), globs.get("exclude", ())
    )


def normalize_hf(netloc: str, path: str, query: str) -> tuple[str, str, str, str]:
    """``(normalized, "hf", org, REPO[@REV][?query])``; ``ValueError`` says what is wrong."""
    org = netloc
    if not _NAME.match(org) or ".." in org:
        raise ValueError(f"invalid Hugging Face org {org!r} (hf://ORG/REPO[@REVISION])")
    repo, at, revision = path.strip("/").partition("@")
    if not _NAME.match(repo) or ".." in repo or "/" in repo:
        raise ValueError(f"invalid Hugging Face repo {repo!r} (hf://ORG/REPO[@REVISION])")
    if at and (not _REVISION.match(revision) or ".." in revision or revision.endswith("/")):
        raise ValueError(f"invalid Hugging Face revision {revision!r}")
    rest = f"{repo}@{revision}" if at else repo
    normalized_query = _globs(query)
    if normalized_query:
        rest = f"{rest}?{normalized_query}"
    return f"hf://{org}/{rest}", "hf", org, rest


def _globs(query: str) -> str:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as exc:
        raise ValueError(f"hf:// query cannot be parsed: {exc}") from exc
    found: dict[str, set[str]] = {}
    for key, value in pairs:
        if key not in _KEYS:
            raise ValueError(f"hf:// URIs take only include= and exclude= (got {key!r})")
        for glob in (g.strip() for g in value.split(",")):
            if not _GLOB.match(glob):
                raise ValueError(f"invalid {key} glob {glob!r}")
            found.setdefault(key, set()).add(glob)
    return "&".join(f"{k}={','.join(sorted(found[k]))}" for k in _KEYS if k in found)
