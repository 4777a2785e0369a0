"""Where an image pull may connect: the login node reaches internal services a task must not.

A registry the site did not name must resolve to public addresses only. Checking its name once and
letting apptainer resolve it again leaves a gap (DNS rebinding: the second answer may be internal),
so pulls from such registries go through `CheckingProxy`, a CONNECT-only proxy on loopback. Apptainer's
Go HTTP client sends every connection of a pull there when HTTPS_PROXY/HTTP_PROXY say so (measured
with Apptainer 1.4: the registry name is then never resolved by apptainer itself), redirects to
blob stores included; the proxy resolves each name once, checks every address and connects to the
one it checked. Go never proxies `localhost` or loopback literals: `public_address` refuses those
before the pull starts, without DNS.
"""

from __future__ import annotations

import base64
import contextlib
import secrets
import socket
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Self

from hpc_bridge.staging.http import is_allowed_address

Resolver = Callable[[str], list[str]]
_MAX_HEAD = 8192
_HEAD_TIMEOUT = 10.0
_CHUNK = 1 << 16


class Refused(Exception):
    """A destination a pull may not reach; the message names it and why."""


def resolve(host: str) -> list[str]:
    """Every address `host` resolves to (getaddrinfo: /etc/hosts and DNS, as apptainer would)."""
    return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)})


def public_address(host: str, resolver: Resolver = resolve) -> str:
    """The address to connect to for `host`: one answer, and every address in it public."""
    try:
        addresses = resolver(host.strip("[]"))
    except OSError as exc:
        raise Refused(f"cannot resolve {host}: {exc}") from None
    bad = [a for a in addresses if not is_allowed_address(a, [])]
    if bad or not addresses:
        raise Refused(f"{host} resolves to {', '.join(bad) or 'no address'}, not a public address")
    return addresses[0]


class CheckingProxy:
    """A CONNECT proxy on 127.0.0.1 for the length of one pull (a context manager); `environment()`
    points apptainer at it. Other local users can reach the port but not use it: it answers only
    requests carrying its random credential, which is in apptainer's environment alone (readable
    by the pull user and root). `refusals` says what it refused, for the pull's error message."""

    def __init__(self, resolver: Resolver = resolve, connect_timeout: float = 30.0) -> None:
        self._resolver = resolver
        self._connect_timeout = connect_timeout
        self._secret = secrets.token_urlsafe(24)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        self.refusals: list[str] = []
        self._acceptor = threading.Thread(target=self._accept, name="pull-proxy", daemon=True)

    def environment(self) -> dict[str, str]:
        """Proxy variables for apptainer: https and plain http alike (a redirect may switch)."""
        url = f"http://pull:{self._secret}@127.0.0.1:{self._listener.getsockname()[1]}"
        return {name: url for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")}

    def __enter__(self) -> Self:
        self._acceptor.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        with self._lock:
            self._closed = True
            sockets, self._sockets = self._sockets, set()
        for sock in [self._listener, *sockets]:
            _close(sock)
        self._acceptor.join(5)

    def _track(self, sock: socket.socket) -> bool:
        with self._lock:
            if not self._closed:
                self._sockets.add(sock)
        if self._closed:
            _close(sock)
        return not self._closed

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            if self._track(client):
                threading.Thread(target=self._serve, args=(client,), name="pull-proxy-conn", daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            client.settimeout(_HEAD_TIMEOUT)
            head, rest = _read_head(client)
            destination = self._destination(head)
            if isinstance(destination, bytes):
                client.sendall(destination)
                return
            upstream = socket.create_connection(destination, timeout=self._connect_timeout)
            if not self._track(upstream):
                return
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            client.settimeout(None)
            upstream.settimeout(None)
            if rest:
                upstream.sendall(rest)
            threading.Thread(target=_pipe, args=(upstream, client), name="pull-proxy-down", daemon=True).start()
            _pipe(client, upstream)
        except OSError as exc:
            self.refusals.append(f"proxy: {exc}")
            with contextlib.suppress(OSError):
                client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
        finally:
            _close(client)

    def _destination(self, head: bytes) -> tuple[str, int] | bytes:
        """(address, port) to connect to, or the response refusing the request."""
        lines = head.decode("latin-1").split("\r\n")
        method, target, *_ = [*lines[0].split(" "), "", ""]
        credential = "Basic " + base64.b64encode(f"pull:{self._secret}".encode()).decode()
        given = [v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
                 if k.strip().lower() == "proxy-authorization"]
        if given != [credential]:
            return b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n"
        if method != "CONNECT":
            self.refusals.append(f"plain http request through the pull proxy ({target[:200]}): refused")
            return b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n"
        host, _, port = target.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            return b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
        try:
            return public_address(host, self._resolver), int(port)
        except Refused as exc:
            self.refusals.append(f"{target}: {exc}")
            return b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """The request head (up to the blank line) and whatever the client sent after it."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > _MAX_HEAD:
            raise OSError("request head too long")
        chunk = sock.recv(_MAX_HEAD)
        if not chunk:
            raise OSError("connection closed before the request")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    """Copy until `source` ends, then end `sink`'s side: a tunnel's bytes are never looked at."""
    with contextlib.suppress(OSError):  # either peer may close at any moment
        while chunk := source.recv(_CHUNK):
            sink.sendall(chunk)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def _close(sock: socket.socket) -> None:
    """Shut down first: that wakes a thread blocked in recv or accept on it, close alone does not."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
