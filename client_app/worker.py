"""Warm clients: one long-lived worker process per SuperNode runs every message of that node.

Why: in a deployment Flower starts a fresh ``flwr-clientapp`` process for every message (it pulls
one message, runs the ClientApp once and exits; ``flwr/supernode/runtime/run_clientapp.py``), so
each message would pay for importing torch and transformers, loading the model and preparing the
data again (seconds each on a CPU), where the simulation pays once per client. The one-message
process instead forwards the message to a worker that keeps all of that in memory between
messages, and returns the worker's reply to Flower as its own.

- The worker is started by the first message of a node (``python -P -m client_app.worker``), in its
  own session, with the app folder Flower installed (the run's FAB) first on ``sys.path``; it
  imports :data:`APP_MODULE` and calls its ``app`` (the real ClientApp) for each message.
- One worker per (app folder, node id, interpreter): a new FAB (changed code) gets a new worker.
- The two talk over a Unix socket in a folder only this user can open (:func:`socket_folder`);
  what travels is the message's metadata and content (as Flower's own object encoding), the
  context (Flower's protobuf), and the reply's content or error.
- The worker exits when the process that started the first ``flwr-clientapp`` (the node's
  SuperExec) is gone, or after ``F3OCUS_WARM_IDLE`` seconds (default 900) without a message.
- ``F3OCUS_WARM=0`` in the node's environment turns this off: each message then runs in its own
  process as Flower intends. A worker that dies mid-message fails that message only (the server
  logs the client as failed); the next message starts a new worker.

This module imports only Flower and the standard library, so a one-message process stays light.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flwr.app import Context, Message, RecordDict
from flwr.app.error import Error
from flwr.common.serde import context_from_proto, context_to_proto
from flwr.proto.message_pb2 import Context as ProtoContext  # pylint: disable=E0611
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

if TYPE_CHECKING:
    from flwr.clientapp import ClientApp

#: The module whose ``app`` the worker runs (the ClientApp with all the work in it).
APP_MODULE = "client_app.app"
#: Environment switch: "0" runs every message in its own process.
ENABLED_ENV = "F3OCUS_WARM"
#: Environment: seconds a worker waits for a message before it exits.
IDLE_ENV = "F3OCUS_WARM_IDLE"
DEFAULT_IDLE = 900.0
#: Seconds a one-message process waits for a new worker to listen.
START_TIMEOUT = 600.0


def is_one_message_process() -> bool:
    """Whether this process is Flower's ``flwr-clientapp`` (one message, then exit) and warm
    workers are not turned off with ``F3OCUS_WARM=0``."""
    return Path(sys.argv[0]).name == "flwr-clientapp" and os.environ.get(ENABLED_ENV, "1") != "0"


def socket_folder() -> Path:
    """``$TMPDIR/f3ocus-warm-<uid>``, created with mode 0700 (a Unix socket path must stay short)."""
    folder = Path(tempfile.gettempdir()) / f"f3ocus-warm-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    if folder.stat().st_uid != os.getuid() or folder.stat().st_mode & 0o077:
        raise PermissionError(f"{folder} must belong to this user with mode 0700; remove it and retry.")
    return folder


def socket_path(app_dir: str, node_id: int) -> Path:
    """The socket of the worker for this app folder, node and interpreter."""
    key = hashlib.sha256(f"{app_dir}\0{node_id}\0{sys.executable}".encode()).hexdigest()[:20]
    return socket_folder() / f"{key}.sock"


# -- framing -------------------------------------------------------------------------------------


def _send(sock: socket.socket, payload: tuple) -> None:
    data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(struct.pack("!Q", len(data)) + data)


def _receive(sock: socket.socket) -> tuple[Any, ...]:
    """The tuple the other side sent with :func:`_send` (a request or an answer)."""
    header = _read_exactly(sock, 8)
    return pickle.loads(_read_exactly(sock, struct.unpack("!Q", header)[0]))


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise ConnectionError("the warm worker closed the connection (it exited; see the node's log).")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def pack_records(records: RecordDict) -> tuple[str, dict[str, bytes]]:
    """A RecordDict as (object id, encoded objects): Flower's own encoding of message content."""
    return records.object_id, {oid: obj.deflate() for oid, obj in get_all_nested_objects(records).items()}


def unpack_records(packed: tuple[str, dict[str, bytes]]) -> RecordDict:
    object_id, contents = packed
    records = inflate_object_from_contents(object_id, contents)
    if not isinstance(records, RecordDict):
        raise TypeError(f"the packed message content is a {type(records).__name__}, not a RecordDict.")
    return records


def pack_context(context: Context) -> bytes:
    return context_to_proto(context).SerializeToString()


def unpack_context(data: bytes) -> Context:
    proto = ProtoContext()
    proto.ParseFromString(data)
    return context_from_proto(proto)


# -- the one-message process ---------------------------------------------------------------------


def forward(message: Message, context: Context, app_dir: str) -> Message:
    """Have the node's warm worker (started if none is listening) handle ``message``; update
    ``context`` in place with the worker's and return the reply as a reply to ``message``.

    Raises
    ------
    RuntimeError
        If the handler raised in the worker (its type, message and traceback), or the worker
        could not start or died during the message.
    """
    path = socket_path(app_dir, context.node_id)
    with _connect(path, app_dir) as sock:
        _send(sock, (pickle.dumps(message.metadata), pack_records(message.content), pack_context(context)))
        answer = _receive(sock)
    if answer[0] == "raised":
        raise RuntimeError(f"{answer[1]} in the warm worker: {answer[2]}\n{answer[3]}")
    _, reply, error, state_context = answer
    context.state = unpack_context(state_context).state
    if error is not None:
        return Message(Error(code=error[0], reason=error[1]), reply_to=message)
    return Message(unpack_records(reply), reply_to=message)


@contextlib.contextmanager
def _connect(path: Path, app_dir: str) -> Iterator[socket.socket]:
    sock = _try_connect(path)
    if sock is None:
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            sock = _try_connect(path) or _start_worker(path, app_dir)
    try:
        yield sock
    finally:
        sock.close()


def _try_connect(path: Path) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        return None
    return sock


def _start_worker(path: Path, app_dir: str) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (app_dir, env.get("PYTHONPATH", "")) if p)
    # -P: the working directory is not put first on sys.path, so the app folder's client_app is the one run.
    worker = subprocess.Popen(
        [
            sys.executable,
            "-P",
            "-m",
            "client_app.worker",
            "--socket",
            str(path),
            "--app-dir",
            app_dir,
            "--watch-pid",
            str(os.getppid()),
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        sock = _try_connect(path)
        if sock is not None:
            return sock
        if worker.poll() is not None:
            raise RuntimeError(
                f"the warm worker exited with code {worker.returncode} while starting; see the "
                f"node's log (or set {ENABLED_ENV}=0 to run each message in its own process)."
            )
        time.sleep(0.05)
    worker.kill()
    raise RuntimeError(f"the warm worker did not listen within {START_TIMEOUT:.0f} s.")


# -- the worker ----------------------------------------------------------------------------------


def handle(app: ClientApp, request: tuple) -> tuple:
    """Run one forwarded message through ``app`` (a ClientApp); the answer :func:`forward` reads."""
    metadata, content, context_bytes = request
    context = unpack_context(context_bytes)
    # Flower rebuilds a received message this way; the public overloads of Message leave it out.
    message = Message(content=unpack_records(content), metadata=pickle.loads(metadata))  # type: ignore[call-overload]
    try:
        reply = app(message, context)
    except Exception as error:  # noqa: BLE001 - the one-message process re-raises it for Flower
        return ("raised", type(error).__name__, str(error), traceback.format_exc())
    if reply.has_error():
        return ("reply", None, (reply.error.code, reply.error.reason), pack_context(context))
    return ("reply", pack_records(reply.content), None, pack_context(context))


def serve(path: Path, app_dir: str, watch_pid: int, idle: float) -> None:
    """Listen on ``path`` and handle one message at a time until ``watch_pid`` is gone or nothing
    came for ``idle`` seconds."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # leave through `finally`: remove the socket
    sys.path.insert(0, app_dir)
    app = importlib.import_module(APP_MODULE).app
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    os.chmod(path, 0o600)
    server.listen(8)
    server.settimeout(1.0)
    last = time.monotonic()
    print(f"f3ocus warm worker {os.getpid()} serving {path} (app {app_dir})", flush=True)
    try:
        while time.monotonic() - last < idle and _alive(watch_pid):
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(None)
                with contextlib.suppress(ConnectionError):
                    request = _receive(conn)
                    started = time.perf_counter()
                    answer = handle(app, request)
                    _send(conn, answer)
                    print(
                        f"f3ocus warm worker {os.getpid()}: {pickle.loads(request[0]).message_type} "
                        f"{'failed' if answer[0] == 'raised' else 'handled'} in "
                        f"{time.perf_counter() - started:.2f} s",
                        flush=True,
                    )
            last = time.monotonic()
    finally:
        server.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description="The warm worker of one SuperNode (started by its ClientApp).")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--app-dir", required=True)
    parser.add_argument("--watch-pid", type=int, required=True)
    args = parser.parse_args()
    serve(Path(args.socket), args.app_dir, args.watch_pid, float(os.environ.get(IDLE_ENV, DEFAULT_IDLE)))


if __name__ == "__main__":
    main()
