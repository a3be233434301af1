"""CLI verbs over the local cache: ``fetch``, ``ls``, ``verify``, ``rm`` and ``gc``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Mapping
from typing import Any

from agent.cache import Cache, CacheError, Progress
from agent.config import add_cache_args, settings_from_args
from agent.views import record_view
from locality.cli import CliError
from locality.identity import InvalidURI, model_ref


def register(sub: Any) -> None:
    fetch: argparse.ArgumentParser = sub.add_parser(
        "fetch", help="fetch a model into the cache (exit 0 only once committed; prints its directory)"
    )
    fetch.add_argument("uri", help="model URI: s3://bucket/prefix or http(s)://host/file")
    fetch.set_defaults(func=run_fetch)
    ls: argparse.ArgumentParser = sub.add_parser("ls", help="list committed models")
    ls.add_argument("--json", action="store_true", help="print the REST objects as a JSON list")
    ls.set_defaults(func=run_ls)
    verify: argparse.ArgumentParser = sub.add_parser(
        "verify", help="re-hash a model; non-zero on any mismatch"
    )
    verify.add_argument("id", metavar="ID", help="model id (or its URI)")
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


def _cache(args: argparse.Namespace, environ: Mapping[str, str]) -> Cache:
    cache = Cache(settings_from_args(args, environ))
    try:
        cache.scan()
    except OSError as exc:
        raise CliError(f"cannot use cache directory {cache.root}: {exc.strerror or exc}") from exc
    return cache


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
    cache = _cache(args, environ)
    bar, progress = _progress_bar(ref.uri)
    try:
        record = asyncio.run(cache.fetch(ref, progress))
    except CacheError as exc:
        raise CliError(exc.message) from exc
    finally:
        if bar is not None:
            bar.close()
    print(cache.model_path(record.id))
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
    cache = _cache(args, environ)
    records = cache.records()
    if args.json:
        print(json.dumps([record_view(r, cache.model_path(r.id)) for r in records], indent=1))
        return 0
    for r in records:
        pins = ",".join(sorted(r.pins)) or "-"
        print(f"{r.id}  {r.total_bytes:>14}  {pins:<24}  {r.uri}")
    return 0


def run_verify(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    cache = _cache(args, environ)
    try:
        problems = cache.verify(_model_id(args.id))
    except CacheError as exc:
        raise CliError(exc.message) from exc
    if problems:
        raise CliError(f"{len(problems)} mismatch(es): " + "; ".join(problems))
    print(f"{args.id}: ok")
    return 0


def run_rm(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    cache = _cache(args, environ)
    try:
        cache.remove(_model_id(args.id), force=args.force)
    except CacheError as exc:
        raise CliError(exc.message) from exc
    return 0


def run_gc(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    cache = _cache(args, environ)
    evicted = cache.gc()
    for model_id in evicted:
        print(f"evicted {model_id}")
    used, quota = cache.usage()
    print(f"{len(evicted)} evicted; {used} of {quota} bytes in use")
    return 0
