"""Print the project's third-party requirements from pyproject.toml, one per line.

The images install these in a layer of their own, from pyproject.toml and constraints.txt alone,
before any source is copied: editing code or README.md then rebuilds only the small project wheel.

    python docker/requirements.py            # [project.dependencies]
    python docker/requirements.py serving    # ... plus the `serving` extra
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    """`dependencies` followed by each named extra; an unknown extra is an error."""
    project = tomllib.loads(pyproject.read_text())["project"]
    out = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise SystemExit(f"requirements.py: no extra {extra!r} in {pyproject}")
        out.extend(optional[extra])
    return out


if __name__ == "__main__":
    here = Path(sys.argv[0]).resolve().parent
    for line in requirements(here.parent / "pyproject.toml", sys.argv[1:]):
        print(line)
