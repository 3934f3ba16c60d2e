"""The daemon's control socket: a Unix stream socket (mode 0600), one JSON
request per connection, one JSON answer.

    {"cmd": "list"}                                  tasks, their state and interfaces
    {"cmd": "status", "task": NAME}                  one task in detail
    {"cmd": "stats"}                                 every task's stats line
    {"cmd": "samples"}                               figures and latest SIP for `otus-ebpf top`
    {"cmd": "calls", "query": Q, "sort": S, "limit": N}  `top`'s call list, every task (socket only)
    {"cmd": "call", "task": NAME, "call_id": ID}     one call's messages and media (socket only)
    {"cmd": "create", "config": FILE, "task": NAME}  start (and store) a task defined in FILE
    {"cmd": "create", "definition": {...}, "task": NAME}  ... or given whole, as a file's task
    {"cmd": "delete", "task": NAME}                  stop and remove a task
    {"cmd": "pause"|"resume", "task": NAME}          stop or restart taking packets, nothing detached
    {"cmd": "reload"}                                re-read the daemon's file (as SIGHUP)

Answers are {"ok": true, ...} or {"ok": false, "error": "one line"}: every
request is answered, whatever goes wrong in its handler (the verbs are
otus_ebpf.control.commands', shared with the fleet's Kafka channel). A connection that
sends nothing for ``CONNECTION_TIMEOUT_S`` is closed; at most
``MAX_CONNECTIONS`` are served at once, and the excess is refused (with an
answer saying so) and counted.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import socketserver
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from otus_ebpf.control.commands import error as _error
from otus_ebpf.errors import SetupError

MAX_REQUEST = 64 << 10
CLIENT_TIMEOUT_S = 30.0
CONNECTION_TIMEOUT_S = 10.0  # to send the request line; a handler may take longer to answer
MAX_CONNECTIONS = 16
Answerer = Callable[[dict[str, Any]], dict[str, Any]]  # otus_ebpf.control.commands: the verbs


class _Connection(socketserver.BaseRequestHandler):
    server: ControlServer
    timeout = CONNECTION_TIMEOUT_S  # for the whole request line, however it trickles in

    def handle(self) -> None:
        line = self._request_line()
        if line is None:
            return  # timed out, or the client went away: nobody to answer
        answer = self.server.answer(line)
        with contextlib.suppress(OSError):
            self.request.sendall(json.dumps(answer).encode() + b"\n")

    def _request_line(self) -> bytes | None:
        deadline = time.monotonic() + self.timeout
        data = bytearray()
        while b"\n" not in data and len(data) < MAX_REQUEST:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                self.request.settimeout(remaining)
                chunk = self.request.recv(MAX_REQUEST - len(data))
            except OSError:
                return None
            if not chunk:
                break
            data += chunk
        return bytes(data).partition(b"\n")[0] + (b"\n" if b"\n" in data else b"")


class ControlServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, answer: Answerer) -> None:
        self.path = Path(path)
        self._answer = answer
        self._active = 0
        self._active_lock = threading.Lock()
        self.refused = 0  # connections over MAX_CONNECTIONS
        _claim(self.path)
        old_umask = os.umask(0o177)  # the socket is born 0600: no window where others may connect
        try:
            super().__init__(str(self.path), _Connection)
        except OSError as exc:
            raise SetupError(f"control socket {path}: {exc.strerror}") from None
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        self._thread = threading.Thread(target=self.serve_forever, name="control", daemon=True)
        self._thread.start()

    def answer(self, line: bytes) -> dict[str, Any]:
        """The answer to one request line, whatever happens in its handler."""
        if len(line) >= MAX_REQUEST and not line.endswith(b"\n"):
            return _error(f"request longer than {MAX_REQUEST} bytes")
        try:
            request = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: nested ten thousand deep
            return _error("a request is one line of JSON")
        if not isinstance(request, dict):
            return _error('a request is a JSON object with a "cmd"')
        return self._answer(request)

    def process_request(self, request: Any, client_address: Any) -> None:
        """One thread per connection, at most MAX_CONNECTIONS at once."""
        with self._active_lock:
            busy = self._active >= MAX_CONNECTIONS
            if busy:
                self.refused += 1
            else:
                self._active += 1
        if busy:
            with contextlib.suppress(OSError):
                request.sendall(json.dumps(_error(f"busy: {MAX_CONNECTIONS} connections already")).encode()
                                + b"\n")
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._active_lock:
                self._active -= 1

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _claim(path: Path) -> None:
    """Make room for the socket: refuse if a daemon answers there, clear a stale one."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SetupError(f"control socket {path}: cannot create {path.parent}: {exc.strerror}") from None
    if not path.exists() and not path.is_symlink():
        return
    if not stat.S_ISSOCK(path.lstat().st_mode):
        raise SetupError(f"control socket {path}: exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        if probe.connect_ex(str(path)) == 0:
            raise SetupError(f"control socket {path}: another daemon answers there")
    path.unlink()


def request(path: str, message: dict[str, Any], timeout: float = CLIENT_TIMEOUT_S) -> dict[str, Any]:
    """Send one request to a daemon; SetupError if none answers or it says no."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            raise SetupError(f"no daemon at {path}: {exc.strerror or exc}") from None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(json.dumps(message).encode() + b"\n")  # a busy daemon answers and closes first
        data = bytearray()  # grows in place: a big answer is not copied once a chunk
        try:
            while not data.endswith(b"\n"):
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
        except OSError as exc:
            if not data:
                raise SetupError(f"no answer from the daemon at {path}: {exc.strerror or exc}") from None
    try:
        answer: dict[str, Any] = json.loads(bytes(data))
    except ValueError:
        raise SetupError(f"the daemon at {path} closed the connection without an answer") from None
    if not isinstance(answer, dict):
        raise SetupError(f"the daemon at {path} answered something else than a JSON object")
    if not answer.get("ok"):
        raise SetupError(str(answer.get("error", "the daemon said no")))
    return answer
