"""A Docker engine and Compose v2 for the tests marked ``docker`` (tests/test_docker_engine.py).

The engine: the running one if `docker info` answers, else a `dockerd` this module starts (root
only) and stops by its PID. Compose: `docker compose` (the CLI plugin) or a standalone
`docker-compose` of version 2 (Debian's docker-compose 1.29.2 refuses the top-level `name` of
docker/compose.yml and has no `up --wait`). Each helper raises :class:`Unavailable` with the reason
when something cannot be had, which the tests turn into a skip that says so.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path


class Unavailable(RuntimeError):
    """No Docker engine or no Compose v2 here; the message says why and what would provide it."""


def _docker_cli() -> str:
    cli = shutil.which("docker")
    if cli is None:
        raise Unavailable(
            "no `docker` CLI on PATH (Debian: apt-get install docker.io; or scripts/docker-test-setup.sh)"
        )
    return cli


def _answers(cli: str) -> bool:
    return subprocess.run([cli, "info"], capture_output=True, timeout=60).returncode == 0


@contextlib.contextmanager
def engine(log_dir: Path, start_timeout: float = 90.0) -> Iterator[str]:
    """The docker CLI of a running engine: the one running already, or a `dockerd` started here
    (logging to ``log_dir/dockerd.log``) and stopped by its PID, SIGTERM then SIGKILL, on exit."""
    cli = _docker_cli()
    if _answers(cli):
        yield cli
        return
    dockerd = shutil.which("dockerd") or ("/usr/sbin/dockerd" if Path("/usr/sbin/dockerd").exists() else None)
    if dockerd is None:
        raise Unavailable(
            "no Docker engine answers and there is no `dockerd` to start "
            "(Debian: apt-get install docker.io; or scripts/docker-test-setup.sh)"
        )
    if os.geteuid() != 0:
        raise Unavailable("no Docker engine answers and starting `dockerd` needs root")
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "dockerd.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([dockerd], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + start_timeout
        while not _answers(cli):
            if process.poll() is not None or time.monotonic() > deadline:
                raise Unavailable(
                    f"`dockerd` did not start (exit {process.poll()}): " + log_path.read_text(errors="replace")[-1500:]
                )
            time.sleep(1)
        yield cli
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def compose_command(cli: str) -> list[str]:
    """The Compose v2 command line: ``[docker, compose]`` or ``[docker-compose]``."""
    for command in ([cli, "compose"], [shutil.which("docker-compose") or "docker-compose"]):
        with contextlib.suppress(OSError):
            reply = subprocess.run([*command, "version", "--short"], capture_output=True, text=True, timeout=60)
            if reply.returncode == 0 and reply.stdout.strip().lstrip("v").startswith("2"):
                return command
    raise Unavailable(
        "no Compose v2 (`docker compose` plugin or `docker-compose` 2.x); Debian's docker-compose "
        "1.29.2 cannot read docker/compose.yml (top-level `name`) nor `up --wait`: "
        "scripts/docker-test-setup.sh installs one"
    )
