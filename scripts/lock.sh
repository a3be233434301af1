#!/usr/bin/env bash
# Regenerate constraints.txt, the complete pin set (see its header), with pip's own resolver.
# Run it after a change of pyproject.toml's dependencies, once .venv holds versions that satisfy it
# (`.venv/bin/pip install -e '.[test,serving]'`): those versions are kept; a new dependency gets
# PyPI's newest that fits. Needs PyPI (https://pypi.org/simple); machine-local pip configuration
# (extra indexes, find-links, global constraints) is ignored so that every pin is one PyPI has.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$py" scripts/lock.py prefer > "$tmp/prefer.txt"
echo "torch==2.13.0" >> "$tmp/prefer.txt"   # the serving extra's tested torch, whatever .venv holds
env $(compgen -e | grep '^PIP_' | sed 's/^/-u /') PIP_CONFIG_FILE=/dev/null \
  "$py" -m pip install --dry-run --ignore-installed --quiet \
  --disable-pip-version-check --index-url https://pypi.org/simple \
  --report "$tmp/report.json" -c "$tmp/prefer.txt" ".[test,serving]"
"$py" scripts/lock.py write "$tmp/report.json" > "$tmp/constraints.txt"
mv "$tmp/constraints.txt" constraints.txt
echo "constraints.txt: $(grep -c '==' constraints.txt) pins" >&2
