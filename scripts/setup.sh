#!/usr/bin/env bash
# Create .venv and install model-locality with the given extras (tests pin the CPU torch wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-test,serving}"
py="$(command -v python3.11 || command -v python3)"
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
pip_install() {
  # Some machines list local package mirrors that pip warns about on every package; hide that noise.
  .venv/bin/python -m pip install -q --disable-pip-version-check "$@" 2> >(grep -v 'is ignored: it is neither' >&2)
}
pip_install -U pip
pip_install -c constraints.txt -e ".[${extras}]"
