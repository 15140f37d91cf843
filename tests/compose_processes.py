"""Docker Compose files as plain processes on loopback, for tests that run without a Docker engine.

The services' ``entrypoint``, ``command``, ``environment``, ``volumes`` and ``secrets`` are read from the Compose
files themselves (overlays merged the way Compose merges them for these keys), so a test of the
processes is a test of the files. Translation: a service name in ``host:port`` becomes 127.0.0.1
with a free port of its own per (service, port); ``--host 0.0.0.0`` becomes 127.0.0.1; ``--port N``
of a service becomes that service's free port for N; a path under a volume's container target
becomes the same path under a host folder (a temporary one for named volumes, the bind source for
bind mounts, the file of a file secret).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.flwr_process import BIN, flower_env, free_port, run_config_arg, wait_for_log, write_connection

#: The repository root: the Flower app that `flwr run` sends.
ROOT = Path(__file__).resolve().parents[1]

_VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${NAME}`` / ``${NAME:-default}`` substitution (the forms the files use)."""
    return _VARIABLE.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)


def load_compose(paths: list[Path]) -> dict:
    """The Compose files merged in order: later files replace a service's keys, except ``volumes``
    (joined, a later entry replacing one with the same container target) and ``environment``
    (merged by name), which is what Compose does for the keys these tests read."""
    merged: dict = {"services": {}, "volumes": {}, "secrets": {}}
    for path in paths:
        document = yaml.safe_load(path.read_text())
        merged["volumes"].update(document.get("volumes") or {})
        merged["secrets"].update(document.get("secrets") or {})
        for name, service in (document.get("services") or {}).items():
            target = merged["services"].setdefault(name, {})
            for key, value in service.items():
                if key == "volumes":
                    kept = {_volume_target(v): v for v in target.get("volumes", [])}
                    kept.update({_volume_target(v): v for v in value})
                    target["volumes"] = list(kept.values())
                elif key == "environment":
                    target["environment"] = {**_environment(target.get("environment")), **_environment(value)}
                else:
                    target[key] = value
    return merged


def _environment(value) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    return dict(item.split("=", 1) for item in value)


def _volume_target(volume) -> str:
    if isinstance(volume, dict):
        return volume["target"]
    return volume.split(":")[1]


@dataclass
class Topology:
    """The processes a set of Compose files describes, translated to loopback."""

    compose: dict
    compose_dir: Path
    work_dir: Path
    env: dict[str, str]
    ports: dict[tuple[str, int], int] = field(default_factory=dict)

    def port(self, service: str, container_port: int) -> int:
        """The loopback port standing for ``service:container_port``."""
        return self.ports.setdefault((service, container_port), free_port())

    def mounts(self, service: str) -> list[tuple[str, Path]]:
        """(container path, host path) of each of the service's volumes and file secrets (mounted at
        ``/run/secrets/<name>`` unless a target says otherwise), longest first."""
        pairs = []
        for volume in self.compose["services"][service].get("volumes", []):
            if isinstance(volume, dict):
                kind, source, target = volume.get("type", "volume"), volume["source"], volume["target"]
            else:
                source, target = volume.split(":")[:2]
                kind = "bind" if source.startswith((".", "/", "$", "~")) else "volume"
            source = interpolate(source, self.env)
            if kind == "bind":
                host = (self.compose_dir / source).resolve()
            else:
                host = self.work_dir / "volumes" / source
                host.mkdir(parents=True, exist_ok=True)
            pairs.append((target, host))
        for secret in self.compose["services"][service].get("secrets", []):
            name, target = (secret["source"], secret.get("target")) if isinstance(secret, dict) else (secret, None)
            target = target if target and target.startswith("/") else f"/run/secrets/{target or name}"
            source = interpolate(self.compose["secrets"][name]["file"], self.env)
            pairs.append((target, (self.compose_dir / source).resolve()))
        return sorted(pairs, key=lambda pair: -len(pair[0]))

    def executors_of(self, service: str) -> list[str]:
        """The services whose ``--runtime-api-address`` is ``service`` (a SuperNode's ClientApp
        executor): the paths of a SuperNode's node config live in their file system."""
        return [
            name
            for name, spec in self.compose["services"].items()
            if any(str(arg).startswith(f"{service}:") for arg in spec.get("command", []))
            and "--runtime-api-address" in spec.get("command", [])
        ]

    def translate(self, service: str, argument: str) -> str:
        """One argument or environment value, as the process on loopback needs it."""
        argument = interpolate(str(argument), self.env)
        mounts = self.mounts(service) + [m for e in self.executors_of(service) for m in self.mounts(e)]
        for target, host in sorted(mounts, key=lambda pair: -len(pair[0])):
            argument = re.sub(rf"(?<![\w/]){re.escape(target)}(?=/|'|\"|$|\s)", str(host), argument)
        services = "|".join(map(re.escape, self.compose["services"]))
        return re.sub(
            rf"\b({services}):(\d+)\b", lambda m: f"127.0.0.1:{self.port(m.group(1), int(m.group(2)))}", argument
        )

    def command(self, service: str) -> list[str]:
        """``entrypoint`` + ``command`` of ``service``, translated; scripts from this interpreter."""
        spec = self.compose["services"][service]
        entrypoint, *args = list(spec["entrypoint"]) + list(spec.get("command", []))
        out = [str(BIN / entrypoint)]
        previous = None
        for arg in args:
            if previous == "--host":
                out.append("127.0.0.1")
            elif previous == "--port":
                out.append(str(self.port(service, int(arg))))
            else:
                out.append(self.translate(service, arg))
            previous = arg
        return out

    def environment(self, service: str) -> dict[str, str]:
        """The service's ``environment``, translated, over this process's own."""
        values = _environment(self.compose["services"][service].get("environment"))
        return {key: self.translate(service, value) for key, value in values.items()}

    def node_config(self, service: str) -> str:
        """The ``--node-config`` string of a SuperNode service, translated."""
        command = self.command(service)
        return command[command.index("--node-config") + 1]


@dataclass
class Started:
    """Processes started from a topology, stopped in reverse order of starting."""

    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def log(self, service: str) -> str:
        return self.logs[service].read_text(errors="replace")

    def stop_all(self) -> None:
        """SIGTERM then SIGKILL, every other service together, then the SuperLink (so nodes can
        deregister), then anything left in each process's own session (the ServerApp/ClientApp a
        SuperExec started). Waiting on the Popen objects reaps each one as it exits (polling its
        pid would wait out the whole timeout on an exited, unreaped child)."""
        others = [process for name, process in self.processes.items() if name != "superlink"]
        for group in (others, [process for name, process in self.processes.items() if name == "superlink"]):
            for process in group:
                process.terminate()
            deadline = time.monotonic() + 15
            for process in group:
                try:
                    process.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=30)
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 9)


def start(topology: Topology, services: list[str], base_env: dict[str, str], started: Started) -> None:
    """Start ``services`` in order, each in its own session, working folder and Flower home (as
    each container has its own), logging to ``work_dir/logs/<service>.log``."""
    logs = topology.work_dir / "logs"
    logs.mkdir(exist_ok=True)
    for service in services:
        cwd = topology.work_dir / "cwd" / service
        cwd.mkdir(parents=True, exist_ok=True)
        env = {**base_env, "FLWR_HOME": str(cwd / ".flwr"), **topology.environment(service)}
        started.logs[service] = logs / f"{service}.log"
        with open(started.logs[service], "wb") as log:
            started.processes[service] = subprocess.Popen(
                topology.command(service),
                cwd=cwd,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )


def run_deployment(
    tmp_path: Path,
    compose_files: list[Path],
    env: dict[str, str],
    run_config: dict,
    connection_certificates: Path | None = None,
    before_run=None,
    timeout: int = 600,
):
    """Start every service of the merged files on loopback (SuperLink first), optionally call
    ``before_run(topology, flwr_env, started)``, then `flwr run` against it; stops everything.
    Returns (completed `flwr run`, started processes)."""
    topology = Topology(load_compose(compose_files), compose_files[0].parent, tmp_path, env)
    services = list(topology.compose["services"])
    home = tmp_path / "flwr-cli"
    link = topology.command("superlink")
    write_connection(home, "f3ocus-docker", f"127.0.0.1:{link[link.index('--port') + 1]}", connection_certificates)
    flwr_env = flower_env(home)
    started = Started()
    try:
        start(topology, ["superlink"], flwr_env, started)
        assert wait_for_log(
            started.logs["superlink"], "Starting the SuperLink Fleet HTTP API", 60, started.processes["superlink"]
        ), started.log("superlink")
        if before_run is not None:
            before_run(topology, flwr_env, started)
        start(topology, [s for s in services if s != "superlink"], flwr_env, started)
        result = subprocess.run(
            [
                str(BIN / "flwr"),
                "run",
                str(ROOT),
                "f3ocus-docker",
                "--stream",
                "--run-config",
                run_config_arg(run_config),
            ],
            env=flwr_env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return result, started
    finally:
        started.stop_all()


def deployment_run_config(small_run_config: dict) -> dict:
    """One round on a few examples per client: each message of a deployment starts a process."""
    config = {
        key: small_run_config[key]
        for key in ("run-name", "output-dir", "model.cache-dir", "model.pretrain-steps", "train.batch-size")
    }
    config.update(
        {
            "num-server-rounds": 1,
            "data.max-train-per-client": 32,
            "data.max-test-per-client": 16,
            "train.local-epochs": 1,
        }
    )
    return config


_HANDLED = re.compile(r"f3ocus warm worker \d+: (\w+) (?:handled|failed) in")


def messages_handled(started: Started) -> dict[str, list[str]]:
    """Per service whose log shows a warm ClientApp worker (:mod:`client_app.worker`), the message
    types it handled, in order: what each node was sent."""
    handled = {name: _HANDLED.findall(started.log(name)) for name in started.logs}
    return {name: kinds for name, kinds in handled.items() if kinds}


def assert_round_one(result, started: Started, config: dict) -> None:
    """`flwr run` succeeded and the run's metrics.jsonl has round 1 with both clients, none failed."""
    logs = "\n".join(f"--- {name}\n{started.log(name)[-3000:]}" for name in started.logs)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:] + logs
    metrics = Path(config["output-dir"]) / config["run-name"] / "metrics.jsonl"
    assert metrics.exists(), result.stdout[-3000:] + logs
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [row["round"] for row in rows] == [0, 1]
    assert len(rows[1]["accuracy_per_client"]) == 2 and not rows[1]["failed"]
