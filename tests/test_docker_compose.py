"""docker/: the Compose files are valid Compose, describe the federation the docs promise, and the
topology of compose.yml, started as plain processes on loopback, completes a round (no Docker
engine is needed: commands, node configs and volumes are read from the files themselves)."""

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.compose_processes import Topology, assert_round_one, deployment_run_config, load_compose, run_deployment
from tests.conftest import ROOT

DOCKER = ROOT / "docker"
COMPOSE_FILES = sorted(DOCKER.glob("compose*.yml"))
#: Vendored (see tests/schemas/README.md) so that the test needs nothing outside the repository.
SCHEMA = Path(__file__).parent / "schemas" / "compose-spec.json"


def test_every_compose_file_is_valid_compose():
    assert {p.name for p in COMPOSE_FILES} >= {"compose.yml", "compose.tls.yml", "compose.gpu.yml"}
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    for path in COMPOSE_FILES:
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                  for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
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
    assert "8000:8000" in services["superlink"]["ports"]
    nodes = _supernodes(compose)
    assert len(nodes) == 2
    configs, data_volumes = [], set()
    for node in nodes:
        command = services[node]["command"]
        assert command[command.index("--superlink") + 1] == "superlink:8000"
        assert command[command.index("--isolation") + 1] == "process"
        config = dict(item.split("=", 1) for item in command[command.index("--node-config") + 1].split())
        assert set(config) == {"partition-id", "num-partitions", "data-path", "device"}, node
        configs.append(config)
        [executor] = topology.executors_of(node)
        assert services[executor]["entrypoint"] == ["flower-superexec"]
        data_volumes |= {v.split(":")[0] for v in services[executor]["volumes"] if ":/data" in v}
    assert sorted(int(c["partition-id"]) for c in configs) == [0, 1]
    assert {c["num-partitions"] for c in configs} == {"2"}
    assert len(data_volumes) == 2, "each node needs a data volume of its own"
    serverapp = [name for name, spec in services.items()
                 if spec.get("command", [])[-1:] == ["superlink:8000"] and spec["entrypoint"] == ["flower-superexec"]]
    assert serverapp == ["superexec-serverapp"]


def test_gpu_overlay_reserves_a_gpu_for_each_clientapp_executor_only():
    base = load_compose([DOCKER / "compose.yml"])
    merged = load_compose([DOCKER / "compose.yml", DOCKER / "compose.gpu.yml"])
    executors = {e for node in _supernodes(base) for e in Topology(base, DOCKER, Path("/x"), {}).executors_of(node)}
    reserved = {name for name, spec in merged["services"].items()
                if any("gpu" in d.get("capabilities", [])
                       for d in spec.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", []))}
    assert reserved == executors
    assert not any("deploy" in spec for spec in base["services"].values()), "GPUs are opt-in"


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
    assert all(process.poll() is not None for process in started.processes.values())
