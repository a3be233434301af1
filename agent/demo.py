"""``model-agent demo``: the quick start on one machine (placeholder until the demo issue)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.identity import model_ref


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="run the quick-start demo on this machine")
    p.set_defaults(func=run)


def run(args: Any, environ: Mapping[str, str]) -> int:
    ref = model_ref("s3://models/sentence-transformers/all-MiniLM-L6-v2")
    print(f"model {ref.uri}\n  id    {ref.id}\n  label {ref.label_key}")
    return 0
