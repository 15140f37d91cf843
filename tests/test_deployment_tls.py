"""TLS with SuperNode authentication, end to end on loopback: the topology of docker/compose.yml with
docker/compose.tls.yml over it, certificates and node keys made by scripts/gen-certs.sh into a
temporary folder for this run. Two registered nodes complete a round; a third node, whose key was
never registered, is refused."""

import subprocess
from pathlib import Path

import pytest

from tests.compose_processes import ROOT, assert_round_one, deployment_run_config, run_deployment
from tests.flwr_process import BIN, free_port

DOCKER = ROOT / "docker"
GEN_CERTS = ROOT / "scripts" / "gen-certs.sh"


def gen_certs(folder: Path, num_nodes: int) -> Path:
    subprocess.run(["bash", str(GEN_CERTS), str(folder), str(num_nodes)], check=True, capture_output=True)
    return folder


def test_gen_certs_makes_a_ca_a_superlink_certificate_and_ecdsa_node_keys(tmp_path):
    certs = gen_certs(tmp_path / "certs", 2)
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", certs / "ca.crt", certs / "superlink.crt"], capture_output=True, text=True
    )
    assert verify.returncode == 0, verify.stderr
    san = subprocess.run(
        ["openssl", "x509", "-in", certs / "superlink.crt", "-noout", "-ext", "subjectAltName"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names = {s.strip() for s in san.split("\n")[1].split(",")}
    assert {"DNS:localhost", "IP Address:127.0.0.1", "DNS:superlink"} <= names
    for i in (1, 2):
        assert (certs / "nodes" / f"node-{i}.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
        assert (certs / "nodes" / f"node-{i}.key").stat().st_mode & 0o077 == 0, "private keys are 600"
    assert not (certs / "nodes" / "node-3.key").exists()
    before = (certs / "ca.crt").read_bytes()
    gen_certs(certs, 3)
    assert (certs / "ca.crt").read_bytes() == before, "an existing CA is kept"
    assert (certs / "nodes" / "node-3.pub").exists()


@pytest.mark.slow
def test_tls_federation_admits_registered_nodes_only(tmp_path, small_run_config):
    certs = gen_certs(tmp_path / "certs", 3)
    registered: list[subprocess.CompletedProcess] = []

    def register_then_start_intruder(topology, flwr_env, started):
        for i in (1, 2):
            registered.append(
                subprocess.run(
                    [
                        str(BIN / "flwr"),
                        "supernode",
                        "register",
                        str(certs / "nodes" / f"node-{i}.pub"),
                        "f3ocus-docker",
                    ],
                    env=flwr_env,
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
            )
        # A third node: supernode-1's own command, with a key nobody registered and a port of its own.
        command = topology.command("supernode-1")
        key = command.index("--auth-supernode-private-key") + 1
        assert command[key] == str(certs / "nodes" / "node-1.key")
        command[key] = str(certs / "nodes" / "node-3.key")
        command[command.index("--port") + 1] = str(free_port())
        log = topology.work_dir / "logs" / "intruder.log"
        with open(log, "wb") as out:
            started.processes["intruder"] = subprocess.Popen(
                command,
                cwd=topology.work_dir,
                env=flwr_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.logs["intruder"] = log

    config = deployment_run_config(small_run_config)
    result, started = run_deployment(
        tmp_path,
        [DOCKER / "compose.yml", DOCKER / "compose.tls.yml"],
        {"F3OCUS_CERTS": str(certs)},
        config,
        connection_certificates=certs / "ca.crt",
        before_run=register_then_start_intruder,
    )
    for reply in registered:
        assert reply.returncode == 0 and "registered successfully" in reply.stdout, reply.stdout + reply.stderr
    assert_round_one(result, started, config)
    superlink = started.log("superlink")
    assert "Uvicorn running on https://" in superlink, superlink[-2000:]
    # The intruder is refused when it asks to be activated, and gives up by itself.
    assert "No SuperNode found with the given public key" in superlink, superlink[-3000:]
    intruder = started.log("intruder")
    assert "Failed to activate SuperNode" in intruder and "SuperNode ID" not in intruder, intruder[-2000:]
    assert started.processes["intruder"].returncode > 0, "the refused node exits with an error, not by our SIGTERM"
