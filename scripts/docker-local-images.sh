#!/usr/bin/env bash
# Build the app image of docker/compose.yml without a container registry: a stand-in for
# `flwr/superexec` made from Debian packages and PyPI wheels, then docker/Dockerfile on top of it.
#
#   scripts/docker-local-images.sh [APP_TAG=f3ocus-flower:cpu]
#
# Steps (each skipped when its result already exists, so a second call only rebuilds what changed):
#   1. docker/wheels/: every wheel the images need, fetched with the host's pip (its configuration,
#      e.g. a local CPU torch wheel, applies; the build itself then needs no network);
#   2. f3ocus-local/debian-python:bookworm-3.11: a Debian 12 root file system with Python 3.11
#      (debootstrap from the host's Debian mirror, then `docker import`);
#   3. f3ocus-local/superexec:<FLWR_VERSION>: docker/superexec-local.Dockerfile, the same user (app,
#      uid 49999), paths (/python/venv, /app) and entrypoint as flwr/superexec;
#   4. APP_TAG: docker/Dockerfile with BASE_IMAGE=f3ocus-local/superexec:<FLWR_VERSION> and
#      PIP_NO_INDEX=1 (wheels from docker/wheels/ only).
#
# Needs root (debootstrap), a running Docker engine and BuildKit (`docker buildx`, or a Docker CLI
# older than 23 with DOCKER_BUILDKIT=1; without BuildKit docker/Dockerfile.dockerignore is ignored).
# Environment: PYTHON (the host interpreter whose pip downloads; default .venv/bin/python),
# DEBIAN_MIRROR (default http://deb.debian.org/debian), FLWR_VERSION (default 1.42.0),
# F3OCUS_REBUILD_BASE=1 rebuilds steps 2-3.
set -euo pipefail
cd "$(dirname "$0")/.."

APP_TAG="${1:-f3ocus-flower:cpu}"
FLWR_VERSION="${FLWR_VERSION:-1.42.0}"
PYTHON="${PYTHON:-.venv/bin/python}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
ROOTFS_IMAGE="f3ocus-local/debian-python:bookworm-3.11"
BASE_IMAGE="f3ocus-local/superexec:${FLWR_VERSION}"
WHEELS=docker/wheels

# BuildKit: buildx if the CLI has it, else a pre-23 CLI (whose `docker build` has BuildKit built in).
build() {
  local cli
  for cli in docker /usr/bin/docker; do
    command -v "$cli" >/dev/null || continue
    if "$cli" buildx version >/dev/null 2>&1; then "$cli" buildx build --load "$@"; return; fi
    local major
    major="$("$cli" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1)"
    if [[ "$major" =~ ^[0-9]+$ ]] && (( major < 23 )); then DOCKER_BUILDKIT=1 "$cli" build "$@"; return; fi
  done
  echo "no Docker CLI with BuildKit: install docker-buildx (or use a Docker CLI < 23)" >&2
  return 1
}

# 1. Wheels: the project's dependencies ("flwr" for "flwr[simulation]": the images need no Ray),
# pinned to the versions of the host's environment, plus hatchling to build the project itself.
if [ ! -f "$WHEELS/.complete" ] || [ pyproject.toml -nt "$WHEELS/.complete" ]; then
  requirements="$("$PYTHON" - <<'EOF'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print("\n".join(re.sub(r"^flwr\[simulation\]", "flwr", d) for d in deps + ["hatchling"]))
EOF
)"
  pins="$(mktemp)"
  "$PYTHON" -m pip freeze --exclude-editable | grep -v '^-e ' > "$pins"
  echo "$requirements" | "$PYTHON" -m pip download --quiet --dest "$WHEELS" --only-binary :all: \
    -c "$pins" -r /dev/stdin "flwr==${FLWR_VERSION}"
  rm -f "$pins"
  touch "$WHEELS/.complete"
fi

# 2. A Debian 12 root file system with Python 3.11 (what flwr/superexec's Ubuntu base gives).
if [ -n "${F3OCUS_REBUILD_BASE:-}" ] || ! docker image inspect "$ROOTFS_IMAGE" >/dev/null 2>&1; then
  rootfs="$(mktemp -d /var/tmp/f3ocus-rootfs.XXXXXX)"
  # python3-distutils provides python3.11-distutils, which python3.11-venv needs: debootstrap does
  # not resolve such virtual packages itself.
  if ! debootstrap --variant=minbase --include=python3.11,python3.11-venv,python3-distutils,ca-certificates,libsqlite3-0 \
      bookworm "$rootfs" "$MIRROR" >"$rootfs.log" 2>&1; then
    tail -n 30 "$rootfs.log" "$rootfs/debootstrap/debootstrap.log" >&2 || true
    rm -rf "$rootfs" "$rootfs.log"
    exit 1
  fi
  rm -f "$rootfs.log"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | docker import - "$ROOTFS_IMAGE" >/dev/null
  rm -rf "$rootfs"
fi

# 3. The flwr/superexec stand-in (the wheels folder is its whole build context).
if [ -n "${F3OCUS_REBUILD_BASE:-}" ] || ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  build -f docker/superexec-local.Dockerfile --build-arg ROOTFS_IMAGE="$ROOTFS_IMAGE" \
    --build-arg FLWR_VERSION="$FLWR_VERSION" -t "$BASE_IMAGE" "$WHEELS"
fi

# 4. The app image, from the repository root (docker/Dockerfile.dockerignore keeps the context small).
build -f docker/Dockerfile --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg PIP_NO_INDEX=1 -t "$APP_TAG" .
echo "built $APP_TAG on $BASE_IMAGE"
