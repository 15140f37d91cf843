"""docker/compose.yml brought up for real: the app image built (on a local stand-in for
flwr/superexec, scripts/docker-local-images.sh), the federation started with Compose v2, one round
run with `flwr run` from the host, its outputs read back from the `outputs` volume; then the same
with docker/compose.tls.yml, where a SuperNode with an unregistered key is refused.

Opt-in (marker ``docker``; `make docker-test`, or F3OCUS_DOCKER_TEST=1): it starts `dockerd` if no
engine answers (and stops it by PID after) and builds images. Skips, saying why, where there is no
engine to be had or no Compose v2. Containers reach each other over the project's Compose network;
the host reaches the SuperLink on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.compose_processes import ROOT, deployment_run_config, load_compose
from tests.docker_engine import Unavailable, compose_command, engine
from tests.flwr_process import BIN, flower_env, free_port, run_config_arg, write_connection

pytestmark = [pytest.mark.docker, pytest.mark.slow]

DOCKER = ROOT / "docker"
IMAGE_TAG = "docker-test"
#: The image's user (flwr/superexec's `app`), who must be able to read the private keys it is given.
APP_UID = 49999


@pytest.fixture(scope="module")
def docker_cli(tmp_path_factory):
    if os.environ.get("F3OCUS_DOCKER_TEST") != "1":
        pytest.skip("Docker engine tests are opt-in: make docker-test (or F3OCUS_DOCKER_TEST=1)")
    try:
        with engine(tmp_path_factory.mktemp("dockerd")) as cli:
            yield cli
    except Unavailable as reason:
        pytest.skip(f"no Docker engine: {reason}")


@pytest.fixture(scope="module")
def project(docker_cli, tmp_path_factory):
    """A Compose project on the locally built image, torn down (volumes too) after the module."""
    try:
        compose = compose_command(docker_cli)
    except Unavailable as reason:
        pytest.skip(str(reason))
    started = time.monotonic()
    build = subprocess.run(
        ["bash", str(ROOT / "scripts" / "docker-local-images.sh"), f"f3ocus-flower:{IMAGE_TAG}"],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    print(f"\n[docker] images built in {time.monotonic() - started:.0f} s")
    name = f"f3ocus-test-{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {
        **os.environ,
        "F3OCUS_IMAGE_TAG": IMAGE_TAG,
        "F3OCUS_PORT": str(port),
        "F3OCUS_EXECUTOR_CPUS": "1",
        "F3OCUS_EXECUTOR_MEMORY": "4g",
    }
    state = {
        "compose": compose,
        "name": name,
        "port": port,
        "env": env,
        "docker": docker_cli,
        "home": tmp_path_factory.mktemp("docker-project"),
    }
    try:
        yield state
    finally:
        subprocess.run(
            [*compose, "-p", name, "-f", str(DOCKER / "compose.yml"), "down", "-v", "--remove-orphans"],
            env=env,
            capture_output=True,
            timeout=300,
        )


def _compose(
    project: dict, files: list[str], *args: str, timeout: int = 600, check: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess:
    command = [*project["compose"], "-p", project["name"]]
    for file in files:
        command += ["-f", str(DOCKER / file)]
    reply = subprocess.run(
        [*command, *args], env={**project["env"], **(env or {})}, capture_output=True, text=True, timeout=timeout
    )
    if check:
        assert reply.returncode == 0, f"{' '.join(args)}: {reply.stdout[-3000:]}{reply.stderr[-3000:]}"
    return reply


def _logs(project: dict, files: list[str], service: str = "", env: dict | None = None) -> str:
    return _compose(project, files, "logs", "--no-color", *([service] if service else []), check=False, env=env).stdout


def _run_one_round(
    project: dict, files: list[str], run_name: str, certificates: Path | None = None, env: dict | None = None
) -> list[dict]:
    """`flwr run` from the host against the published port; the run's metrics.jsonl rows, read
    from the `outputs` volume through the ServerApp executor. The executors build the base
    checkpoint into their shared `model-cache` volume on first use (kept between the two tests)."""
    home = project["home"] / run_name
    write_connection(home, "f3ocus-docker", f"127.0.0.1:{project['port']}", certificates)
    config = deployment_run_config(
        {
            "run-name": run_name,
            "output-dir": "outputs",
            "model.cache-dir": "",
            "model.pretrain-steps": 30,
            "train.batch-size": 8,
        }
    )
    started = time.monotonic()
    result = subprocess.run(
        [str(BIN / "flwr"), "run", str(ROOT), "f3ocus-docker", "--stream", "--run-config", run_config_arg(config)],
        env=flower_env(home),
        cwd=home,
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(f"[docker] {run_name}: flwr run took {time.monotonic() - started:.0f} s")
    assert result.returncode == 0, (
        result.stdout[-3000:] + result.stderr[-2000:] + _logs(project, files, env=env)[-6000:]
    )
    copied = project["home"] / f"{run_name}-outputs"
    _compose(project, files, "cp", f"superexec-serverapp:/app/outputs/{run_name}", str(copied), env=env)
    rows = [json.loads(line) for line in (copied / "metrics.jsonl").read_text().splitlines()]
    assert [row["round"] for row in rows] == [0, 1], rows
    assert len(rows[1]["accuracy_per_client"]) == 2 and not rows[1]["failed"], rows[1]
    assert (copied / "adapter").is_dir()
    return rows


def _inspect(project: dict, service: str) -> dict:
    container = f"{project['name']}-{service}-1"
    reply = subprocess.run([project["docker"], "inspect", container], capture_output=True, text=True, check=True)
    return json.loads(reply.stdout)[0]


def _heads(project: dict, service: str) -> list[str]:
    reply = _compose(project, ["compose.yml"], "exec", "-T", service, "find", "/app/state", "-name", "head-round-*")
    return sorted(reply.stdout.split())


def test_compose_federation_runs_a_round_in_containers(project):
    files = ["compose.yml"]
    started = time.monotonic()
    _compose(project, files, "up", "-d", "--no-build", "--wait", "--wait-timeout", "300")
    print(f"[docker] insecure federation up and healthy in {time.monotonic() - started:.0f} s")
    superlink = _inspect(project, "superlink")
    host = superlink["HostConfig"]
    assert host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"] and "no-new-privileges:true" in host["SecurityOpt"]
    assert superlink["Config"]["User"] == "app" and host["RestartPolicy"]["Name"] == "unless-stopped"
    assert host["PortBindings"]["8000/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": str(project["port"])}]
    assert host["Memory"] > 0 and host["NanoCpus"] > 0 and host["LogConfig"]["Config"]["max-file"]
    # The root file system is read-only for the app's user too.
    denied = _compose(project, files, "exec", "-T", "superexec-clientapp-1", "touch", "/app/x", check=False)
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr, denied.stderr

    _run_one_round(project, files, "docker-insecure")

    # Each node's client state is on its own volume: a recreated executor still has its heads.
    heads = {service: _heads(project, service) for service in ("superexec-clientapp-1", "superexec-clientapp-2")}
    assert all(len(found) == 1 and found[0].endswith("head-round-1.npz") for found in heads.values()), heads
    assert heads["superexec-clientapp-1"] != heads["superexec-clientapp-2"]
    before = _inspect(project, "superexec-clientapp-1")["Id"]
    _compose(
        project, files, "up", "-d", "--no-build", "--no-deps", "--force-recreate", "--wait", "superexec-clientapp-1"
    )
    assert _inspect(project, "superexec-clientapp-1")["Id"] != before
    assert _heads(project, "superexec-clientapp-1") == heads["superexec-clientapp-1"]
    # Down, keeping the volumes (the model cache) for the TLS test.
    _compose(project, files, "down")


def test_tls_compose_admits_registered_nodes_only(project, tmp_path):
    files = ["compose.yml", "compose.tls.yml"]
    certs = tmp_path / "certs"
    subprocess.run(["bash", str(ROOT / "scripts" / "gen-certs.sh"), str(certs), "3"], check=True, capture_output=True)
    keys = [certs / "superlink.key", *(certs / "nodes" / f"node-{i}.key" for i in (1, 2, 3))]
    for key in keys:  # what the docs say to do: the private keys the image's user is given, not ca.key
        os.chown(key, APP_UID, APP_UID)
    assert (certs / "ca.key").stat().st_uid == 0 and (certs / "ca.key").stat().st_mode & 0o077 == 0
    env = {"F3OCUS_CERTS": str(certs)}

    _compose(project, files, "up", "-d", "--no-build", "--wait", "--wait-timeout", "300", "superlink", env=env)
    home = project["home"] / "register"
    write_connection(home, "f3ocus-docker", f"127.0.0.1:{project['port']}", certs / "ca.crt")
    for i in (1, 2):
        reply = subprocess.run(
            [str(BIN / "flwr"), "supernode", "register", str(certs / "nodes" / f"node-{i}.pub"), "f3ocus-docker"],
            env=flower_env(home),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert reply.returncode == 0 and "registered successfully" in reply.stdout, reply.stdout + reply.stderr
    _compose(project, files, "up", "-d", "--no-build", "--wait", "--wait-timeout", "300", env=env)

    # An intruder: supernode-1's own command and hardening on the project's network, with a key
    # nobody registered.
    spec = load_compose([DOCKER / f for f in files])["services"]["supernode-1"]
    command = [str(a) for a in spec["command"]]
    command[command.index("--auth-supernode-private-key") + 1] = "/run/secrets/node-3-key"
    intruder = subprocess.run(
        [
            project["docker"],
            "run",
            "--rm",
            "--network",
            f"{project['name']}_default",
            "--read-only",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges:true",
            "--tmpfs",
            "/app/.flwr:uid=49999",
            "-v",
            f"{certs / 'ca.crt'}:/app/certs/ca.crt:ro",
            "-v",
            f"{certs / 'nodes' / 'node-3.key'}:/run/secrets/node-3-key:ro",
            "--entrypoint",
            "flower-supernode",
            f"f3ocus-flower:{IMAGE_TAG}",
            *command,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    said = intruder.stdout + intruder.stderr
    assert intruder.returncode != 0 and "Failed to activate SuperNode" in said, said[-2000:]
    assert "SuperNode ID" not in said, said[-2000:]
    superlink = _logs(project, files, "superlink", env=env)
    assert "Uvicorn running on https://" in superlink, superlink[-2000:]
    assert "No SuperNode found with the given public key" in superlink, superlink[-3000:]

    _run_one_round(project, files, "docker-tls", certificates=certs / "ca.crt", env=env)
    _compose(project, files, "down", env=env)
