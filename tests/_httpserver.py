"""A real HTTP server on 127.0.0.1 whose behaviour each test scripts, one step per request.

Each request is answered by the next step of the script (the last step repeats), and every
request's path and headers are recorded so a test can assert what the client asked for.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Request:
    path: str
    headers: dict[str, str]


@dataclass
class Reply:
    """How to answer one request.

    status: the HTTP status; ranges: honour `Range: bytes=N-` with 206; cut_after: close the
    connection after this many body bytes (Content-Length still announces the whole body);
    stall: seconds to wait before sending anything (or, with stall_after, after that many bytes).
    """

    status: int = 200
    ranges: bool = True
    cut_after: int | None = None
    stall: float = 0.0
    stall_after: int | None = None
    trickle: float = 0.0  # after trickle_after bytes, one byte every `trickle` seconds
    trickle_after: int = 0


@dataclass
class ScriptedServer:
    body: bytes = b""
    script: list[Reply] = field(default_factory=lambda: [Reply()])
    requests: list[Request] = field(default_factory=list)
    url: str = ""
    release: threading.Event = field(default_factory=threading.Event)

    def reply_for(self, index: int) -> Reply:
        return self.script[min(index, len(self.script) - 1)]


def _handler_for(state: ScriptedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            index = len(state.requests)
            state.requests.append(Request(self.path, dict(self.headers.items())))
            reply = state.reply_for(index)
            if reply.stall and reply.stall_after is None and state.release.wait(reply.stall):
                self.close_connection = True
                return
            if reply.status != 200:
                self._send(reply.status, b"scripted failure\n")
                return
            body, status, start = state.body, 200, 0
            wanted = self.headers.get("Range")
            if wanted and reply.ranges:
                start = int(wanted.removeprefix("bytes=").split("-")[0])
                if start >= len(state.body):
                    self._send(416, b"", {"Content-Range": f"bytes */{len(state.body)}"})
                    return
                body, status = state.body[start:], 206
            headers = {"Accept-Ranges": "bytes"} if reply.ranges else {}
            if status == 206:
                headers["Content-Range"] = f"bytes {start}-{len(state.body) - 1}/{len(state.body)}"
            self._send(status, body, headers, reply)

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None,
                  reply: Reply | None = None) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Type", "application/x-xz")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if reply is not None and reply.stall and reply.stall_after is not None:
                self.wfile.write(body[: reply.stall_after])
                self.wfile.flush()
                if state.release.wait(reply.stall):
                    self.close_connection = True
                    return
                body = body[reply.stall_after :]
            if reply is not None and reply.trickle:
                self.wfile.write(body[: reply.trickle_after])
                self.wfile.flush()
                for byte in body[reply.trickle_after:]:
                    if state.release.wait(reply.trickle):
                        break
                    try:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                    except OSError:
                        break
                self.close_connection = True
                return
            if reply is not None and reply.cut_after is not None:
                self.wfile.write(body[: reply.cut_after])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request, client_address) -> None:
        # A client dropping its idle keep-alive connection is normal, not worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def scripted_servers() -> Iterator[Callable[..., ScriptedServer]]:
    """Body of a fixture: yields `start(body, [Reply(...), ...])`; stops every server it started."""
    servers: list[tuple[_Server, ScriptedServer]] = []

    def start(body: bytes, script: list[Reply] | None = None) -> ScriptedServer:
        state = ScriptedServer(body=body, script=script or [Reply()])
        server = _Server(("127.0.0.1", 0), _handler_for(state))
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        state.url = f"http://127.0.0.1:{server.server_address[1]}"
        servers.append((server, state))
        return state

    yield start
    for server, state in servers:
        state.release.set()  # wake stalled handlers so their threads end now, not after the stall
        server.shutdown()
        server.server_close()
