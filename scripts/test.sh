#!/usr/bin/env bash
# The README's test command: install into .venv, then run the whole suite (ruff and mypy included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test,serving
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
