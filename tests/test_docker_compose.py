"""docker/: the Compose files are valid Compose, describe the federation the docs promise, and the
topology of compose.yml, started as plain processes on loopback, completes a round (no Docker
engine is needed: commands, node configs and volumes are read from the files themselves)."""

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.compose_processes import (
    Topology,
    assert_round_one,
    deployment_run_config,
    interpolate,
    load_compose,
    messages_handled,
    run_deployment,
)
from tests.conftest import ROOT

DOCKER = ROOT / "docker"
COMPOSE_FILES = sorted(DOCKER.glob("compose*.yml"))
#: Vendored (see tests/schemas/README.md) so that the test needs nothing outside the repository.
SCHEMA = Path(__file__).parent / "schemas" / "compose-spec.json"


def test_every_compose_file_is_valid_compose():
    assert {p.name for p in COMPOSE_FILES} >= {"compose.yml", "compose.tls.yml", "compose.gpu.yml"}
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    for path in COMPOSE_FILES:
        errors = [
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(yaml.safe_load(path.read_text()))
        ]
        assert not errors, f"{path.name}: {errors}"


def test_schema_check_catches_a_broken_service():
    """The schema check above can fail: a misspelt key and a wrong type are both refused."""
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    compose = yaml.safe_load((DOCKER / "compose.yml").read_text())
    compose["services"]["superlink"]["comand"] = ["--insecure"]
    compose["services"]["supernode-1"]["depends_on"] = 3
    assert len(list(validator.iter_errors(compose))) >= 2


def _supernodes(compose: dict) -> list[str]:
    return [name for name, spec in compose["services"].items() if spec["entrypoint"] == ["flower-supernode"]]


def test_compose_describes_the_federation_of_the_docs():
    compose = load_compose([DOCKER / "compose.yml"])
    topology = Topology(compose, DOCKER, Path("/nonexistent"), env={})
    services = compose["services"]
    assert services["superlink"]["entrypoint"] == ["flower-superlink"]
    assert [interpolate(p, {}) for p in services["superlink"]["ports"]] == ["127.0.0.1:8000:8000"], (
        "the insecure federation publishes its port on the host's loopback only"
    )
    nodes = _supernodes(compose)
    assert len(nodes) == 2
    configs, data_volumes = [], set()
    for node in nodes:
        command = services[node]["command"]
        assert command[command.index("--superlink") + 1] == "superlink:8000"
        assert command[command.index("--isolation") + 1] == "process"
        config = dict(item.split("=", 1) for item in command[command.index("--node-config") + 1].split())
        assert set(config) == {"partition-id", "num-partitions", "data-path", "device", "state-dir"}, node
        configs.append(config)
        [executor] = topology.executors_of(node)
        assert services[executor]["entrypoint"] == ["flower-superexec"]
        data_volumes |= {v.split(":")[0] for v in services[executor]["volumes"] if ":/data" in v}
    assert sorted(int(c["partition-id"]) for c in configs) == [0, 1]
    assert {c["num-partitions"] for c in configs} == {"2"}
    assert len(data_volumes) == 2, "each node needs a data volume of its own"
    serverapp = [
        name
        for name, spec in services.items()
        if spec.get("command", [])[-1:] == ["superlink:8000"] and spec["entrypoint"] == ["flower-superexec"]
    ]
    assert serverapp == ["superexec-serverapp"]


def test_gpu_overlay_reserves_a_gpu_for_each_clientapp_executor_only():
    base = load_compose([DOCKER / "compose.yml"])
    merged = load_compose([DOCKER / "compose.yml", DOCKER / "compose.gpu.yml"])
    executors = {e for node in _supernodes(base) for e in Topology(base, DOCKER, Path("/x"), {}).executors_of(node)}
    reserved = {
        name
        for name, spec in merged["services"].items()
        if any(
            "gpu" in d.get("capabilities", [])
            for d in spec.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        )
    }
    assert reserved == executors
    assert not any("deploy" in spec for spec in base["services"].values()), "GPUs are opt-in"


def _mounted(spec: dict) -> dict[str, str]:
    """Container path -> "volume:<name>", "bind:<source>" or "tmpfs" for one service."""
    out = {}
    for volume in spec.get("volumes", []):
        if isinstance(volume, dict):
            out[volume["target"]] = f"{volume['type']}:{volume['source']}"
        else:
            source, target = volume.split(":")[:2]
            out[target] = f"volume:{source}"
    out.update({entry.split(":")[0]: "tmpfs" for entry in spec.get("tmpfs", [])})
    return out


def _under(path: str, mounts: dict[str, str]) -> str | None:
    """The mount that holds ``path`` in a container, if any."""
    hits = [target for target in mounts if path == target or path.startswith(target.rstrip("/") + "/")]
    return mounts[max(hits, key=len)] if hits else None


def test_every_service_is_hardened():
    """What a security review of docker/ asked for, on every service of the merged files."""
    for files in (["compose.yml"], ["compose.yml", "compose.tls.yml"], ["compose.yml", "compose.gpu.yml"]):
        compose = load_compose([DOCKER / f for f in files])
        for name, spec in compose["services"].items():
            where = f"{'+'.join(files)}: {name}"
            assert spec["cap_drop"] == ["ALL"] and "cap_add" not in spec, where
            assert "no-new-privileges:true" in spec["security_opt"], where
            assert spec["read_only"] is True and spec["init"] is True, where
            assert not spec.get("privileged") and spec.get("user") in (None, "app", "49999"), where
            assert {"/tmp", "/app/.flwr"} <= {t.split(":")[0] for t in spec["tmpfs"]}, where
            assert all("uid=49999" in t for t in spec["tmpfs"]), f"{where}: tmpfs must belong to the image's user"
            assert interpolate(str(spec["mem_limit"]), {}) and float(interpolate(str(spec["cpus"]), {})) > 0, where
            assert 0 < int(spec["pids_limit"]) <= 4096, where
            assert spec["logging"]["driver"] == "json-file", where
            assert {"max-size", "max-file"} <= set(spec["logging"]["options"]), f"{where}: logs must rotate"
            assert spec["restart"] in ("unless-stopped", "always"), f"{where}: on-failure:N gives up after N"
            assert spec["healthcheck"]["test"][0] == "CMD" and spec["healthcheck"]["retries"] > 0, where
            for dependency, condition in spec.get("depends_on", {}).items():
                assert condition == {"condition": "service_healthy"}, f"{where} -> {dependency}"
                assert "healthcheck" in compose["services"][dependency], dependency


def test_services_wait_for_what_they_connect_to():
    compose = load_compose([DOCKER / "compose.yml"])
    services = compose["services"]
    for name, spec in services.items():
        command = [str(a) for a in spec.get("command", [])]
        targets = {
            command[i + 1].split(":")[0]
            for i, a in enumerate(command[:-1])
            if a in ("--superlink", "--runtime-api-address")
        }
        assert set(spec.get("depends_on", {})) == targets, name


def test_every_path_a_service_writes_is_a_named_volume_or_tmpfs():
    """The root file system is read-only: the SuperLink's database, each node's client state, the
    outputs and the caches must sit on mounts; the state that must survive a recreated container
    (database, client state, outputs, model cache) on named volumes, one state volume per node."""
    compose = load_compose([DOCKER / "compose.yml"])
    services = compose["services"]
    topology = Topology(compose, DOCKER, Path("/x"), env={})
    superlink = services["superlink"]["command"]
    database = superlink[superlink.index("--database") + 1]
    assert _under(database, _mounted(services["superlink"])) == "volume:superlink-state"
    state_volumes = []
    for node in _supernodes(compose):
        command = services[node]["command"]
        config = dict(item.split("=", 1) for item in command[command.index("--node-config") + 1].split())
        [executor] = topology.executors_of(node)
        mounts = _mounted(services[executor])
        state_volumes.append(_under(config["state-dir"].strip("'"), mounts))
        assert _under(config["data-path"].strip("'"), mounts).startswith("volume:"), node
    assert all(v and v.startswith("volume:") for v in state_volumes) and len(set(state_volumes)) == 2, state_volumes
    assert {v.split(":", 1)[1] for v in state_volumes} <= set(compose["volumes"])
    assert _under("/app/outputs/run", _mounted(services["superexec-serverapp"])) == "volume:outputs"
    for name, spec in services.items():
        mounts = _mounted(spec)
        for key, value in spec.get("environment", {}).items():
            if key in ("F3OCUS_CACHE", "HF_HOME", "MPLCONFIGDIR", "TMPDIR"):
                assert _under(value, mounts), f"{name}: {key}={value} is not on a writable mount"


def test_tls_private_keys_are_secrets_of_their_own_service_and_the_ca_key_is_never_mounted():
    compose = load_compose([DOCKER / "compose.yml", DOCKER / "compose.tls.yml"])
    key_flags = ("--ssl-keyfile", "--auth-supernode-private-key")
    given = {}
    for name, spec in compose["services"].items():
        command = [str(a) for a in spec.get("command", [])]
        keys = [command[i + 1] for i, a in enumerate(command[:-1]) if a in key_flags]
        secrets = set(spec.get("secrets", []))
        assert {f"/run/secrets/{s}" for s in secrets} == set(keys), f"{name}: keys {keys}, secrets {secrets}"
        given.update({s: name for s in secrets})
        for volume in spec.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            assert not source.endswith(".key"), f"{name}: a private key mounted as a volume: {source}"
            if isinstance(volume, dict) and volume["type"] == "bind":
                assert volume["read_only"] is True, f"{name}: {source}"
    assert given == {"superlink-key": "superlink", "node-1-key": "supernode-1", "node-2-key": "supernode-2"}
    for path in COMPOSE_FILES:
        assert "ca.key" not in "".join(
            line for line in path.read_text().splitlines(True) if not line.lstrip().startswith("#")
        ), path.name


def test_gpu_overlay_gives_each_node_a_gpu_of_its_own_by_default():
    merged = load_compose([DOCKER / "compose.yml", DOCKER / "compose.gpu.yml"])
    ids = [
        interpolate(d["device_ids"][0], {})
        for spec in merged["services"].values()
        for d in spec.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    ]
    assert len(ids) == 2 and len(set(ids)) == 2, ids


def test_dockerfile_base_is_pinnable_needs_buildkit_and_keeps_secrets_out_of_the_context():
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=flwr/superexec:${FLWR_VERSION}-py${PYTHON_VERSION}-" in dockerfile
    assert "\nFROM ${BASE_IMAGE}\n" in dockerfile and "@sha256:" in dockerfile, "pin by digest, documented"
    assert "BuildKit" in dockerfile
    for files in (["compose.yml"], ["compose.yml", "compose.gpu.yml"]):
        for name, spec in load_compose([DOCKER / f for f in files])["services"].items():
            if "build" in spec:
                assert "${F3OCUS_BASE_IMAGE:-flwr/superexec:" in spec["build"]["args"]["BASE_IMAGE"], name
    patterns = [
        line.strip()
        for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "**", "everything is excluded unless named"
    assert not any(
        p.startswith("!") and ("certs" in p or ".venv" in p or p.startswith("!docker/**")) for p in patterns
    ), patterns


def test_translation_to_loopback():
    compose = load_compose([DOCKER / "compose.yml"])
    topology = Topology(compose, DOCKER, Path("/work-dir"), env={})
    superlink = topology.command("superlink")
    link_port = superlink[superlink.index("--port") + 1]
    assert superlink[superlink.index("--host") + 1] == "127.0.0.1"
    assert superlink[superlink.index("--database") + 1] == "/work-dir/volumes/superlink-state/state.db"
    node = topology.command("supernode-2")
    assert node[node.index("--superlink") + 1] == f"127.0.0.1:{link_port}"
    executor = topology.command("superexec-clientapp-2")
    assert executor[executor.index("--runtime-api-address") + 1] == f"127.0.0.1:{node[node.index('--port') + 1]}"
    assert "data-path='/work-dir/volumes/node-2-data'" in topology.node_config("supernode-2")
    assert topology.command("supernode-1")[node.index("--port") + 1] != node[node.index("--port") + 1]


@pytest.mark.slow
def test_compose_topology_runs_a_round_as_processes(tmp_path, small_run_config):
    config = deployment_run_config(small_run_config)
    result, started = run_deployment(tmp_path, [DOCKER / "compose.yml"], {}, config)
    assert_round_one(result, started, config)
    # Two exchanges per node per round: round 0's evaluate (which scores for round 1), then round
    # 1's train and evaluate (the last, which scores nothing). No query.
    assert messages_handled(started) == {f"superexec-clientapp-{n}": ["evaluate", "train", "evaluate"] for n in (1, 2)}
    assert all(process.poll() is not None for process in started.processes.values())


def test_docker_tests_say_why_they_cannot_run(monkeypatch, tmp_path):
    """tests/test_docker_engine.py skips with these reasons: no CLI, no engine and no dockerd, not root."""
    from tests import docker_engine

    monkeypatch.setattr(docker_engine.shutil, "which", lambda name: None)
    with pytest.raises(docker_engine.Unavailable, match="no `docker` CLI"), docker_engine.engine(tmp_path):
        pass
    monkeypatch.setattr(docker_engine.shutil, "which", lambda name: "/bin/false" if name == "docker" else None)
    monkeypatch.setattr(docker_engine, "Path", lambda p: tmp_path / "absent")
    with pytest.raises(docker_engine.Unavailable, match="no `dockerd` to start"), docker_engine.engine(tmp_path):
        pass
    monkeypatch.setattr(docker_engine.shutil, "which", lambda name: "/bin/false")
    monkeypatch.setattr(docker_engine.os, "geteuid", lambda: 1000)
    with pytest.raises(docker_engine.Unavailable, match="needs root"), docker_engine.engine(tmp_path):
        pass
    with pytest.raises(docker_engine.Unavailable, match="no Compose v2"):
        docker_engine.compose_command("/bin/false")
