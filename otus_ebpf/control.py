"""The daemon's control socket: a Unix stream socket (mode 0600), one JSON
request per connection, one JSON answer.

    {"cmd": "list"}                                  tasks, their state and interfaces
    {"cmd": "status", "task": NAME}                  one task in detail
    {"cmd": "stats"}                                 every task's stats line
    {"cmd": "samples"}                               figures and latest SIP for `otus-ebpf top`
    {"cmd": "create", "config": FILE, "task": NAME}  start a task defined in FILE
    {"cmd": "delete", "task": NAME}                  stop and remove a task
    {"cmd": "pause"|"resume", "task": NAME}          stop or restart taking packets, nothing detached
    {"cmd": "reload"}                                re-read the daemon's file (as SIGHUP)

Answers are {"ok": true, ...} or {"ok": false, "error": "one line"}.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import socketserver
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from otus_ebpf.errors import SetupError

MAX_REQUEST = 64 << 10
CLIENT_TIMEOUT_S = 30.0
Handler = Callable[[dict[str, Any]], dict[str, Any]]


class _Connection(socketserver.StreamRequestHandler):
    server: ControlServer

    def handle(self) -> None:
        line = self.rfile.readline(MAX_REQUEST)
        try:
            request = json.loads(line)
            if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
                raise ValueError("a request is a JSON object with a \"cmd\"")
            answer = self.server.dispatch(request)
        except (ValueError, SetupError, KeyError) as exc:
            answer = {"ok": False, "error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
        self.wfile.write(json.dumps(answer).encode() + b"\n")


class ControlServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, handlers: dict[str, Handler]) -> None:
        self.path = Path(path)
        self._handlers = handlers
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

    def dispatch(self, request: dict[str, Any]) -> dict[str, Any]:
        handler = self._handlers.get(request["cmd"])
        if handler is None:
            known = ", ".join(sorted(self._handlers))
            raise ValueError(f"unknown command {request['cmd']!r} (known: {known})")
        return {"ok": True, **handler(request)}

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
            sock.sendall(json.dumps(message).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
        except OSError as exc:
            raise SetupError(f"no daemon at {path}: {exc.strerror or exc}") from None
    answer: dict[str, Any] = json.loads(data)
    if not answer.get("ok"):
        raise SetupError(str(answer.get("error", "the daemon said no")))
    return answer
