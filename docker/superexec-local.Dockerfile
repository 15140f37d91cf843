# A stand-in for Flower's `flwr/superexec:<FLWR_VERSION>-py3.11-...` image, for hosts that cannot
# pull from a registry (scripts/docker-local-images.sh builds it; the tests use it). Same user
# (app, uid 49999, home /app), same paths (Flower in the virtual environment /python/venv, owned by
# app; working folder /app), same environment and entrypoint as Flower's
# src/docker/base/ubuntu/Dockerfile + src/docker/superexec/Dockerfile; Python is Debian 12's 3.11
# instead of a pyenv build, and the base is a local Debian root file system instead of Ubuntu.
#
# Build context: a folder of wheels (docker/wheels/) holding flwr and its dependencies.
# Needs BuildKit (RUN --mount).
ARG ROOTFS_IMAGE=f3ocus-local/debian-python:bookworm-3.11
FROM ${ROOTFS_IMAGE}

ARG FLWR_VERSION=1.42.0
RUN --mount=type=bind,target=/wheels \
    python3.11 -m venv /python/venv \
    && /python/venv/bin/pip install --no-cache-dir --no-index --find-links /wheels "flwr==${FLWR_VERSION}" \
    && useradd --uid 49999 --user-group --home-dir /app --no-create-home --shell /usr/sbin/nologin app \
    && mkdir -p /app \
    && chown -R app:app /app /python/venv

ENV PATH=/python/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONIOENCODING=UTF-8 \
    LANG=C.UTF-8 \
    LC_ALL=C.UTF-8

WORKDIR /app
USER app
ENV HOME=/app
ENTRYPOINT ["flower-superexec"]
