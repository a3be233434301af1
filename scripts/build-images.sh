#!/usr/bin/env bash
# Build the images locally with `docker buildx` or `buildah`, whichever is installed (no make).
#
#   scripts/build-images.sh                       # both images; serving as the CUDA variant
#   scripts/build-images.sh --variant cpu         # serving with CPU-only torch (no GPU, CI)
#   scripts/build-images.sh --tag dev serving     # only the serving image, tagged :dev
#   scripts/build-images.sh --dry-run             # print the build commands, run nothing
#
# Options: --variant cuda|cpu, --tag TAG (default: the version in pyproject.toml),
# --registry PREFIX (default ghcr.io/model-locality, as the manifests name it), --platform
# linux/amd64 (one platform; multi-arch images come from .github/workflows/release.yml),
# --push (push instead of loading into the local image store), --dry-run.
# BUILDER=docker-buildx|buildah overrides the detection.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
die() { echo "build-images.sh: $*" >&2; exit 2; }

variant=cuda
tag="$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n1)"
registry=ghcr.io/model-locality
platform=""
push=0
dry=0
images=()
while [ $# -gt 0 ]; do
  case "$1" in
    --variant) [ $# -ge 2 ] || usage; variant="$2"; shift 2 ;;
    --tag) [ $# -ge 2 ] || usage; tag="$2"; shift 2 ;;
    --registry) [ $# -ge 2 ] || usage; registry="${2%/}"; shift 2 ;;
    --platform) [ $# -ge 2 ] || usage; platform="$2"; shift 2 ;;
    --push) push=1; shift ;;
    --dry-run) dry=1; shift ;;
    -h|--help) usage ;;
    agent|serving) images+=("$1"); shift ;;
    *) die "unknown argument '$1' (images: agent, serving; --help for options)" ;;
  esac
done
case "$variant" in cpu|cuda) ;; *) die "--variant must be cpu or cuda, not '$variant'" ;; esac
[ -n "$tag" ] || die "no --tag and no version in pyproject.toml"
case "$platform" in *,*) die "one --platform at a time (multi-arch: the release workflow)" ;; esac
[ ${#images[@]} -gt 0 ] || images=(agent serving)

builder="${BUILDER:-}"
if [ -z "$builder" ]; then
  if command -v docker >/dev/null 2>&1 && docker buildx version >/dev/null 2>&1; then
    builder=docker-buildx
  elif command -v buildah >/dev/null 2>&1; then
    builder=buildah
  else
    die "neither 'docker buildx' nor 'buildah' is installed"
  fi
fi
case "$builder" in
  docker-buildx) version="$(docker buildx version 2>/dev/null || true)" ;;
  buildah) version="$(buildah --version 2>/dev/null || true)" ;;
  *) die "BUILDER must be docker-buildx or buildah, not '$builder'" ;;
esac
echo "build-images.sh: using ${builder/-/ } (${version:-version unknown})" >&2

# ref IMAGE -> the image reference the manifests use (serving's CPU variant: -cpu suffix).
ref() {
  case "$1" in
    agent) echo "$registry/model-locality:$tag" ;;
    serving) [ "$variant" = cpu ] && echo "$registry/serving:$tag-cpu" || echo "$registry/serving:$tag" ;;
  esac
}

run() {
  printf '+'; printf ' %q' "$@"; printf '\n'
  [ "$dry" = 1 ] || "$@"
}

for image in "${images[@]}"; do
  file="docker/$image.Dockerfile"
  image_ref="$(ref "$image")"
  args=(-f "$file" -t "$image_ref")
  [ "$image" = serving ] && args+=(--build-arg "VARIANT=$variant")
  [ -n "$platform" ] && args+=(--platform "$platform")
  if [ "$builder" = docker-buildx ]; then
    [ "$push" = 1 ] && args+=(--push) || args+=(--load)
    run docker buildx build "${args[@]}" .
  else
    # --layers: keep intermediate layers, so the dependency layer is reused like BuildKit's cache.
    run buildah build --layers "${args[@]}" .
    [ "$push" = 1 ] && run buildah push "$image_ref"
  fi
  if [ "$dry" = 1 ]; then echo "build-images.sh: would build $image_ref" >&2
  else echo "build-images.sh: built $image_ref" >&2; fi
done
