"""Running Flower's own processes in tests: a Flower home of the test's own, free ports, and
stopping every process that was started (the SuperLink that `flwr run` starts lives on otherwise).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


#: The folder of this interpreter's console scripts (`flwr`, `flower-superlink`, ...).
BIN = Path(sys.executable).parent


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment for `flwr` commands: own home, own local-SuperLink ports, no dependency sync, and
    this interpreter's scripts first on PATH (so `flwr` starts the SuperLink of this environment)."""
    env = dict(os.environ)
    env.update(
        {
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            "FLWR_HOME": str(flwr_home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
            "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def processes_mentioning(text: str) -> list[int]:
    """PIDs of processes whose command line contains ``text`` (e.g. a test's Flower home)."""
    result = subprocess.run(["pgrep", "-f", text], capture_output=True, text=True)
    return [int(pid) for pid in result.stdout.split() if int(pid) != os.getpid()]


def stop(pids: list[int], timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL what is still alive after ``timeout`` seconds."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def toml_value(value) -> str:
    """``value`` as a TOML literal, for ``--run-config`` and ``--node-config`` strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def run_config_arg(config: dict) -> str:
    """A ``--run-config`` string setting every key of ``config``."""
    return " ".join(f"{key}={toml_value(value)}" for key, value in config.items())


def write_connection(flwr_home: Path, name: str, address: str, root_certificates: Path | None = None) -> None:
    """A Flower home whose default (and only) SuperLink connection is ``name`` at ``address``:
    insecure, or TLS verified against ``root_certificates``."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    security = f"root-certificates = {json.dumps(str(root_certificates))}" if root_certificates else "insecure = true"
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\naddress = "{address}"\n{security}\n'
    )


def wait_for_log(path: Path, text: str, timeout: float, process: subprocess.Popen | None = None) -> bool:
    """Whether ``text`` appears in the file at ``path`` within ``timeout`` seconds (False early if
    ``process`` exits first without writing it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return True
        if process is not None and process.poll() is not None:
            return path.exists() and text in path.read_text(errors="replace")
        time.sleep(0.5)
    return False
