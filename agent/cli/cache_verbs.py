"""CLI verbs over the local cache: ``fetch``, ``ls``, ``verify``, ``rm`` and ``gc``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from agent.cli.local_client import LocalAgent, error_of
from agent.cli.render import ls_table, usage_line
from agent.config import add_cache_args, settings_from_args
from agent.face.socket import Daemon, open_for_cli
from agent.fetch.cache import Cache, CacheError, Progress
from agent.lifecycle.views import cache_views
from agent.store.lock import Busy
from locality.cli import CliError
from locality.identity import InvalidURI, model_ref


def register(sub: Any) -> None:
    fetch: argparse.ArgumentParser = sub.add_parser(
        "fetch", help="fetch a model into the cache (exit 0 only once committed; prints its directory)"
    )
    fetch.add_argument("uri", help="model URI: s3://bucket/prefix or http(s)://host/file")
    fetch.set_defaults(func=run_fetch)
    ls: argparse.ArgumentParser = sub.add_parser(
        "ls", help="list models: committed, partial (bytes done/total) and quarantined"
    )
    ls.add_argument("--json", action="store_true", help="print the REST objects as a JSON list")
    ls.set_defaults(func=run_ls)
    verify: argparse.ArgumentParser = sub.add_parser(
        "verify", help="re-hash a model; non-zero on any mismatch"
    )
    verify.add_argument("id", metavar="ID", help="model id (or its URI)")
    verify.add_argument("--repair", action="store_true", help="fetch a damaged model again (its pins kept)")
    verify.set_defaults(func=run_verify)
    rm: argparse.ArgumentParser = sub.add_parser("rm", help="remove a model (refuses pinned ones)")
    rm.add_argument("id", metavar="ID", help="model id (or its URI)")
    rm.add_argument("--force", action="store_true", help="remove even when pinned")
    rm.set_defaults(func=run_rm)
    gc: argparse.ArgumentParser = sub.add_parser(
        "gc", help="evict least-recently-used models above the quota"
    )
    gc.set_defaults(func=run_gc)
    for parser in (fetch, ls, verify, rm, gc):
        add_cache_args(parser)


@contextlib.contextmanager
def _owned(
    args: argparse.Namespace, environ: Mapping[str, str], *, exclusive: bool
) -> Iterator[Cache | LocalAgent]:
    """The daemon that owns the cache (when one runs), else the cache under our own lock:
    shared for reading (no recovery, nothing created), exclusive for changing it (recovery first)."""
    settings = settings_from_args(args, environ)
    root = Path(settings.cache_dir)
    if not exclusive and not root.is_dir():  # a mistyped path is not an empty cache
        what = "is not a directory" if root.exists() else "does not exist"
        raise CliError(f"no cache at {root}: it {what} (--cache-dir or MODEL_LOCALITY_CACHE_DIR)")
    try:
        held = open_for_cli(root, exclusive=exclusive)
    except Busy as exc:
        raise CliError(str(exc)) from exc
    except OSError as exc:
        raise CliError(f"cannot use cache directory {root}: {exc.strerror or exc}") from exc
    if isinstance(held, Daemon):
        yield LocalAgent(held.socket)
        return
    try:
        cache = Cache(settings)
        try:
            cache.scan() if exclusive else cache.load()
        except OSError as exc:
            raise CliError(f"cannot use cache directory {root}: {exc.strerror or exc}") from exc
        try:
            yield cache
        except OSError as exc:  # a verb's own disk error (a rename refused, EIO): one line, no trace
            where = f" ({exc.filename})" if exc.filename else ""
            raise CliError(f"{args.verb} failed in {root}: {exc.strerror or exc}{where}") from exc
    finally:
        held.release()


def _checked(answer: tuple[int, Any], model_id: str = "", root: Path | None = None) -> Any:
    status, body = answer
    if status == 404 and model_id:
        raise CliError(f"no model {model_id!r} in {root}")
    if status >= 400:
        raise CliError(error_of(body, status))
    return body


def _model_id(text: str) -> str:
    if "://" not in text:
        return text
    try:
        return model_ref(text).id
    except InvalidURI as exc:
        raise CliError(str(exc)) from exc


def run_fetch(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    try:
        ref = model_ref(args.uri)
    except InvalidURI as exc:
        raise CliError(str(exc)) from exc
    with _owned(args, environ, exclusive=True) as cache:
        bar, progress = _progress_bar(ref.uri)
        try:
            if isinstance(cache, LocalAgent):
                view = cache.fetch(
                    ref.uri, progress and (lambda done, total: progress(Progress(done, total)))
                )
                path = str(view["path"])
            else:
                record = asyncio.run(cache.fetch(ref, progress))
                path = str(cache.model_path(record.id))
        except CacheError as exc:
            raise CliError(exc.message) from exc
        finally:
            if bar is not None:
                bar.close()
    print(path)
    return 0


def _progress_bar(uri: str) -> tuple[Any, Callable[[Progress], None] | None]:
    """A tqdm bar (bytes, rate, ETA) on stderr when it is a terminal; quiet otherwise."""
    if not sys.stderr.isatty():
        return None, None
    from tqdm import tqdm

    bar = tqdm(desc=uri.rsplit("/", 1)[-1], unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr)

    def update(p: Progress) -> None:
        if p.bytes_total is not None and bar.total != p.bytes_total:
            bar.total = p.bytes_total
        bar.update(p.bytes_done - bar.n)

    return bar, update


def run_ls(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    with _owned(args, environ, exclusive=False) as cache:
        views = (
            _checked(cache.call("GET", "/v1/models")) if isinstance(cache, LocalAgent) else cache_views(cache)
        )
    if args.json:
        print(json.dumps(views, indent=1))
        return 0
    if views:
        print(ls_table(views))
    return 0


def run_verify(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    model_id = _model_id(args.id)
    with _owned(args, environ, exclusive=args.repair) as cache:
        if isinstance(cache, LocalAgent):
            query = "?repair=1" if args.repair else ""
            answer = _checked(
                cache.call("GET", f"/v1/models/{model_id}/verify{query}"), model_id, cache.socket.parent
            )
            problems, uri = list(answer["problems"]), str(answer["uri"])
            if problems and args.repair:
                cache.fetch(uri)
        else:
            try:
                problems = cache.verify(model_id)
                if problems and args.repair:
                    record = cache.get(model_id)
                    assert record is not None  # verify just found it
                    uri = record.uri
                    cache.drop(model_id, "; ".join(problems[:3]))
                    asyncio.run(cache.fetch(model_ref(uri)))
            except CacheError as exc:
                raise CliError(exc.message) from exc
    if problems and args.repair:
        print(f"{args.id}: repaired ({len(problems)} mismatch(es) fetched again): " + "; ".join(problems))
        return 0
    if problems:
        raise CliError(f"{len(problems)} mismatch(es): " + "; ".join(problems))
    print(f"{args.id}: ok")
    return 0


def run_rm(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    model_id = _model_id(args.id)
    with _owned(args, environ, exclusive=True) as cache:
        if isinstance(cache, LocalAgent):
            query = "?force=1" if args.force else ""
            _checked(cache.call("DELETE", f"/v1/models/{model_id}{query}"), model_id, cache.socket.parent)
            return 0
        try:
            cache.remove(model_id, force=args.force)
        except CacheError as exc:
            raise CliError(exc.message) from exc
    return 0


def run_gc(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    with _owned(args, environ, exclusive=True) as cache:
        if isinstance(cache, LocalAgent):
            answer = _checked(cache.call("POST", "/v1/gc"))
            evicted, used, quota = list(answer["evicted"]), int(answer["used"]), int(answer["quota"])
        else:
            evicted = cache.gc()
            used, quota = cache.usage()
    for model_id in evicted:
        print(f"evicted {model_id}")
    print(usage_line(len(evicted), used, quota))
    return 0
