#!/usr/bin/env bash
# Cold start on a CUDA machine: raw cold read, pinned host->device copy floor, the one-pass loader
# (pinned double-buffered copies, digests checked) and safetensors load_file to cuda, side by side.
# Needs a CUDA build of torch in .venv (constraints.txt pins the CPU wheel for CI). Run from the
# repository root:  bash bench/gpu_coldstart.sh [GIB ...]   (default: 2 4; MiniLM always)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "torch sees no CUDA device")'
"$PY" -m pytest -q -p no:cacheprovider tests/integration/test_serving_loader.py -k cuda
if [ $# -eq 0 ]; then set -- 2 4; fi
exec "$PY" bench/coldstart.py --device cuda --repeats 3 --loaders "$@"
