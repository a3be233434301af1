#!/usr/bin/env bash
# The README's demo command: install into .venv, then run the quick start on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test,serving
exec .venv/bin/model-agent demo "$@"
