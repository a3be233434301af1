"""CLI verb ``refresh``: re-check a model's origin now; a changed model is fetched as a new
revision and switched to once verified. Through the daemon when one owns the cache (it keeps
serving the current revision meanwhile), else on the cache directly. Prints the directory."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Mapping
from typing import Any

from agent.cli.cache_verbs import _checked, _owned
from agent.cli.local_client import POLL_SECONDS, LocalAgent
from agent.config import add_cache_args
from agent.face.requests import revision_fields
from agent.fetch.cache import Cache, CacheError
from locality import errors
from locality.cli import CliError
from locality.identity import InvalidURI, ModelRef, model_ref

WAIT_SECONDS = 24 * 3600.0


def register(sub: Any) -> None:
    refresh: argparse.ArgumentParser = sub.add_parser(
        "refresh", help="re-check a model's origin; fetch and switch to a new revision (prints its dir)"
    )
    refresh.add_argument("uri", help="model URI")
    refresh.add_argument("--revision", help="fail unless the origin holds this revision")
    refresh.set_defaults(func=run_refresh)
    add_cache_args(refresh)


def run_refresh(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    try:
        ref = model_ref(args.uri)
        revision_fields({"revision": args.revision})
    except (InvalidURI, errors.Invalid) as exc:
        raise CliError(str(exc)) from exc
    with _owned(args, environ, exclusive=True) as cache:
        if isinstance(cache, LocalAgent):
            before, view = _through_daemon(cache, ref, args.revision)
        else:
            before, view = _direct(cache, ref, args.revision)
    after = view.get("revision")
    what = "unchanged" if before == after else f"switched from {before or 'nothing'} to"
    print(f"{ref.uri}: {what} revision {after}", file=sys.stderr)
    print(view["path"])
    return 0


def _direct(cache: Cache, ref: ModelRef, revision: str | None) -> tuple[str | None, dict[str, Any]]:
    current = cache.get(ref.id)
    try:
        if current is None:
            record = asyncio.run(cache.fetch(ref, expect=revision))
        else:
            record = asyncio.run(cache.refresh(ref, expect=revision)) or current
    except CacheError as exc:
        raise CliError(exc.message) from exc
    view = {"revision": record.revision, "path": str(cache.model_path(record.id))}
    return (current.revision if current else None), view


def _through_daemon(
    agent: LocalAgent, ref: ModelRef, revision: str | None
) -> tuple[str | None, dict[str, Any]]:
    status, old = agent.call("GET", f"/v1/models/{ref.id}")
    before = old.get("revision") if status == 200 and isinstance(old, dict) else None
    body: dict[str, Any] = {"uri": ref.uri, "refresh": True}
    if revision is not None:
        body["revision"] = revision
    _checked(agent.call("POST", "/v1/models", body))
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        view = dict(_checked(agent.call("GET", f"/v1/models/{ref.id}")))
        state, refresh = view.get("state"), str(view.get("refresh") or "")
        if state == "failed" or refresh.startswith("failed"):
            raise CliError(str(view.get("error") or refresh.removeprefix("failed: ")))
        if state == "ready" and not refresh:
            return before, view
        time.sleep(POLL_SECONDS)
    raise CliError(f"{ref.uri}: still refreshing after {WAIT_SECONDS:g}s")
