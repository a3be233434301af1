# syntax=docker/dockerfile:1
# Reference serving image: `model-serve` with the `serving` extra (torch with CUDA).
#   docker build -f docker/serving.Dockerfile -t ghcr.io/model-locality/serving:0.1.0 .
# Ubuntu 22.04 ships no maintained Python 3.11, so uv installs a standalone CPython 3.11 into
# /opt/python and a virtualenv into /opt/venv; the runtime stage copies only those two.
# The NVIDIA driver comes from the node (NVIDIA container toolkit); the CUDA user-space libraries
# come with torch: PyPI's Linux x86_64 torch wheels are CUDA 12 builds (nvidia-*-cu12 wheels).

# ---- builder: wheel of the project, then a venv with it and its serving extra ----
FROM nvidia/cuda:12.4.1-runtime-ubuntu22.04 AS builder
COPY --from=ghcr.io/astral-sh/uv:0.5.11 /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_NO_CACHE=1
RUN uv python install 3.11 && uv venv --python 3.11 /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY agent ./agent
COPY scheduler_extender ./scheduler_extender
COPY serving ./serving
RUN uv build --wheel --out-dir /wheels . \
    && uv pip install --python /opt/venv/bin/python \
         --find-links /wheels "model-locality[serving]==0.1.0"

# ---- runtime: CUDA runtime base + the interpreter and venv, nothing else ----
FROM nvidia/cuda:12.4.1-runtime-ubuntu22.04
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    HOME=/tmp HF_HOME=/tmp/hf \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
COPY --from=builder /opt/python /opt/python
COPY --from=builder /opt/venv /opt/venv
RUN groupadd --gid 10001 model-serve \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
         --shell /usr/sbin/nologin model-serve
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000
CMD ["model-serve", "--help"]
