# syntax=docker/dockerfile:1.7
# model-locality agent + extender image: console scripts `model-agent` and `model-extender`.
#   scripts/build-images.sh agent          (docker buildx or buildah, whichever is installed)
# The manifests run it as uid 10001 with a read-only root filesystem.
#
# Layers, from the least to the most often changed (BuildKit; the pip cache is a cache mount):
#   deps     wheels of the third-party dependencies, from pyproject.toml + constraints.txt only
#            (the complete lock of scripts/lock.sh: every package pinned, so pip does no search);
#   project  the project's own wheel, from the sources (a README or code edit rebuilds only this);
#   runtime  installs the dependency wheels, then the project wheel, each in its own layer.
# Base image: an exact tag (Python patch release + Debian release), the same in every stage;
# append @sha256:<digest> to all three FROM lines to pin the bytes too.

# ---- deps: wheels of every third-party dependency; no source of ours is in this stage ----
FROM python:3.11.11-slim-bookworm AS deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml constraints.txt ./
COPY docker/requirements.py ./docker/
RUN --mount=type=cache,target=/root/.cache/pip \
    python docker/requirements.py > /tmp/requirements.txt \
    && pip wheel --wheel-dir /wheels -c constraints.txt -r /tmp/requirements.txt \
    && cp /tmp/requirements.txt constraints.txt /wheels/

# ---- project: the project wheel alone (--no-deps); rebuilt on every source change, in seconds ----
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

# ---- runtime: installs the wheels, no compiler, no sources, no pip cache ----
FROM python:3.11.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --gid 10001 model-locality \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
         --shell /usr/sbin/nologin model-locality
# The dependency layer: cached as long as the deps stage is (pyproject.toml/constraints.txt unchanged).
RUN --mount=type=bind,from=deps,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels -c /wheels/constraints.txt -r /wheels/requirements.txt
RUN --mount=type=bind,from=project,source=/wheels,target=/wheels \
    pip install --no-index --no-deps /wheels/*.whl
USER 10001:10001
WORKDIR /tmp
EXPOSE 8470 8471
# The manifests set command/args; this default starts an agent.
CMD ["model-agent", "serve"]
