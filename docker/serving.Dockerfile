# syntax=docker/dockerfile:1.7
# Reference serving image: `model-serve` with the `serving` extra (torch + transformers).
#   scripts/build-images.sh serving              # CUDA variant (default)
#   scripts/build-images.sh --variant cpu serving
#
# One CUDA, not two: a slim Python base plus PyPI's torch wheels. PyPI's Linux x86_64 torch is a
# CUDA 12 build that depends on the nvidia-*-cu12 wheels (cuBLAS, cuDNN, NCCL, ...) and loads
# those from site-packages; a CUDA base image (nvidia/cuda:*-runtime) would add a second, unused
# copy of the same libraries, and an Ubuntu base without Python 3.11 would need a CPython
# downloaded at build time. The NVIDIA driver (libcuda) comes from the node through the NVIDIA
# container toolkit, which NVIDIA_VISIBLE_DEVICES / NVIDIA_DRIVER_CAPABILITIES below ask for.
# On arm64 PyPI's torch wheel may be a CPU build: pass TORCH_INDEX_URL (a CUDA index of
# download.pytorch.org) for GPU nodes of that architecture.
#
# VARIANT=cpu takes torch from PyTorch's CPU index instead (no nvidia-* wheels, roughly a tenth of
# the size): for clusters and CI without GPUs.
#
# Layers as in agent.Dockerfile: dependency wheels from pyproject.toml + constraints.txt, the complete
# lock of scripts/lock.sh (every package pinned, the CUDA torch's nvidia-* wheels too: no search) (a
# source or README edit never reinstalls torch), then the project wheel; pip's cache is a mount.
# Base: python:3.11.11-slim-bookworm, an exact tag, the same in every stage (see agent.Dockerfile).

# ---- deps: torch (of the chosen variant), transformers and the rest, as wheels ----
FROM python:3.11.11-slim-bookworm AS deps
ARG VARIANT=cuda
ARG TORCH_INDEX_URL=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml constraints.txt ./
COPY docker/requirements.py ./docker/
# torch first, alone (--no-deps), from its index (CPU index for VARIANT=cpu, PyPI for cuda unless
# TORCH_INDEX_URL says otherwise); the second step resolves everything else from PyPI and finds
# torch in /wheels (a local version such as 2.13.0+cpu sorts above PyPI's 2.13.0, so it stays).
RUN --mount=type=cache,target=/root/.cache/pip \
    set -eu; \
    case "$VARIANT" in \
      cpu) index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}" ;; \
      cuda) index="${TORCH_INDEX_URL:-https://pypi.org/simple}" ;; \
      *) echo "VARIANT must be cpu or cuda, not $VARIANT" >&2; exit 2 ;; \
    esac; \
    python docker/requirements.py serving > /tmp/requirements.txt; \
    grep '^torch' /tmp/requirements.txt > /tmp/torch.txt; \
    pip wheel --no-deps --wheel-dir /wheels --index-url "$index" -c constraints.txt -r /tmp/torch.txt; \
    pip wheel --wheel-dir /wheels --find-links /wheels -c constraints.txt -r /tmp/requirements.txt; \
    cp /tmp/requirements.txt constraints.txt /wheels/

# ---- project: the project wheel alone ----
FROM python:3.11.11-slim-bookworm AS project
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY locality ./locality
COPY agent ./agent
COPY scheduler_extender ./scheduler_extender
COPY serving ./serving
COPY fleetview ./fleetview
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --no-deps --wheel-dir /wheels .

# ---- runtime: slim Python + the wheels; no build tools, no sources, no pip cache ----
FROM python:3.11.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp HF_HOME=/tmp/hf \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
RUN groupadd --gid 10001 model-serve \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
         --shell /usr/sbin/nologin model-serve
# By requirement, not by glob: pip picks one build of each package from /wheels.
RUN --mount=type=bind,from=deps,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels -c /wheels/constraints.txt -r /wheels/requirements.txt
RUN --mount=type=bind,from=project,source=/wheels,target=/wheels \
    pip install --no-index --no-deps /wheels/*.whl
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000
CMD ["model-serve", "--help"]
