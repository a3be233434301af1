"""CLI verbs over the local cache: fetch, ls, verify, rm, gc (placeholder until Node agent I)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    for verb in ("fetch", "ls", "verify", "rm", "gc"):
        p: argparse.ArgumentParser = sub.add_parser(verb, help=f"{verb} (not built yet)")
        p.set_defaults(func=lambda args, environ: 2)
