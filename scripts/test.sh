#!/usr/bin/env bash
# The README's test command: install into .venv, then run the whole suite (ruff and mypy included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test,serving
# The real control plane (kube-apiserver, kube-scheduler, etcd) for tests/fixtures/realkube.py, when the
# project's kit is beside the checkout. Then its tests must run: a skip of one fails the run.
# (install.sh apt-gets Debian's etcd-server itself when etcd is missing.)
if [ -d ../shared/k8s ]; then
  kit="$(bash ../shared/k8s/install.sh)"  # a failed install stops here (set -e), unlike a bare eval "$(...)"
  eval "$kit"
  export MODEL_LOCALITY_REQUIRE_KUBE=1
fi
# Debian's docker-registry (CNCF distribution) for the oci:// tests (tests/fixtures/registry.py).
if ! command -v docker-registry >/dev/null 2>&1; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry; } >&2 \
    || { echo "test.sh: could not install docker-registry (Debian package)" >&2; exit 1; }
fi
# promtool (Debian's prometheus package) for tests/integration/test_monitoring.py: `promtool check/test rules`.
if ! command -v promtool >/dev/null 2>&1; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; } >&2 \
    || { echo "test.sh: could not install promtool (Debian package prometheus)" >&2; exit 1; }
fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
