"""CLI verbs of the running agent: serve, wait (placeholder until Node agent II)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    for verb in ("serve", "wait"):
        p: argparse.ArgumentParser = sub.add_parser(verb, help=f"{verb} (not built yet)")
        p.set_defaults(func=lambda args, environ: 2)
