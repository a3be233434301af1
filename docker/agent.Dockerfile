# syntax=docker/dockerfile:1
# model-locality agent + extender image: console scripts `model-agent` and `model-extender`.
#   docker build -f docker/agent.Dockerfile -t ghcr.io/model-locality/model-locality:0.1.0 .
# The manifests run it as uid 10001 with a read-only root filesystem.

# ---- builder: the project wheel plus wheels of every dependency ----
FROM python:3.11.11-slim-bookworm AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY agent ./agent
COPY scheduler_extender ./scheduler_extender
COPY serving ./serving
RUN pip wheel --wheel-dir /wheels .

# ---- runtime: installs the wheels, no compiler, no sources ----
FROM python:3.11.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels model-locality==0.1.0 \
    && groupadd --gid 10001 model-locality \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
         --shell /usr/sbin/nologin model-locality
USER 10001:10001
WORKDIR /tmp
EXPOSE 8470 8471
# The manifests set command/args; this default starts an agent.
CMD ["model-agent", "serve"]
