"""`http(s)://` task inputs, downloaded by the daemon on the login node before the job is submitted.

The login node (and the daemon, running as root) can reach services a user must not: loopback,
cluster-internal networks, cloud metadata at 169.254.169.254. So every hop of a download is held to
an address policy: each address a host resolves to must be globally routable or inside one of the
site's `allowed_networks`, and the connection goes to exactly the address that was checked (no
second DNS lookup a rebinding resolver could answer differently), while Host, SNI and certificate
verification still use the name from the URL. Redirects are followed by hand so each one is checked
again. Size and total time are capped, and the file appears at its destination complete or not at
all.

`check_url` is the cheap, offline half, run when a task is created, so a bad URL is a 400 rather
than a failed task.
"""

from __future__ import annotations

import functools
import io
import ipaddress
import os
import re
import socket
import ssl
import tempfile
import threading
import time
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ReadTimeoutError
from urllib3.response import HTTPResponse
from urllib3.util.ssl_match_hostname import CertificateError

from hpc_bridge import __version__, jsonlimit
from hpc_bridge.config import HttpInputSettings

__all__ = ["MAX_URL_LENGTH", "DownloadError", "check_url", "download", "fetch", "is_allowed_address"]

MAX_URL_LENGTH = 8192
_DEFAULT_PORTS = {"http": 80, "https": 443}
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 1 << 16
# Per-hop cap on distinct addresses tried: all are checked, a few are enough to get past a dead one.
_MAX_ADDRESSES = 8
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
# A last label like this makes getaddrinfo parse the host as an IPv4 number (inet_aton forms).
_NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)")
# Reserved and `%` stay as they are (the URL is already encoded); anything else unsafe is escaped.
_TARGET_SAFE = "!$&'()*+,/:;=?@[]~%"
# RFC 6052's well-known NAT64 prefix: the gateway delivers to the IPv4 address in the low 32 bits.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class DownloadError(Exception):
    """A download that failed or was refused; the message is for the task's owner (system_logs):
    it names the URL, without any credentials, and the reason. `status`: the HTTP status of a
    refusal by the server (a DRS server's 404 is the user's error, a 500 is not)."""

    def __init__(self, message: str, status: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason or message  # without the URL (which may carry a credential)


class _Failure(Exception):
    """The reason alone; `download` prefixes the URL."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


# --- address policy -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _networks(allowed: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    """Parsed once per distinct setting: the policy runs for every address of every hop."""
    parsed = []
    for text in allowed:
        try:
            parsed.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise ValueError(f"storage.http.allowed_networks: {text!r} is not a CIDR network") from None
    return tuple(parsed)


def _inside(ip: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    return any(ip.version == net.version and ip in net for net in networks)


def _is_public(ip: IPAddress) -> bool:
    """`is_global`, plus what it lets through on some Python versions (multicast, reserved) and
    IPv4-compatible IPv6 (::a.b.c.d, deprecated, never a real destination)."""
    if (ip.is_multicast or ip.is_unspecified or ip.is_reserved or ip.is_loopback
            or ip.is_link_local or ip.is_private):
        return False
    if isinstance(ip, ipaddress.IPv6Address) and (ip.is_site_local or int(ip) >> 32 == 0):
        return False
    return ip.is_global


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses a 6to4 or Teredo address leads to: a relay may deliver there."""
    found: list[ipaddress.IPv4Address] = []
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    return found


def _parse_ip(address: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(address.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def is_allowed_address(address: str, allowed_networks: Sequence[str]) -> bool:
    """Whether a download may connect to `address`: a public address, or one inside the site's
    `allowed_networks`. IPv4-mapped and well-known-prefix NAT64 IPv6 addresses are judged as
    the IPv4 address they reach (so IPv6-only sites behind NAT64 work); anything that does not
    parse as an address is refused."""
    ip = _parse_ip(address)
    if ip is None:
        return False
    networks = _networks(tuple(allowed_networks))
    if isinstance(ip, ipaddress.IPv6Address):
        reached = ip.ipv4_mapped or (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None)
        if reached is not None:
            if _inside(ip, networks):
                return True
            ip = reached
    if _inside(ip, networks):
        return True
    embedded = _embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else []
    if embedded:  # 6to4 or Teredo: judged by where a relay delivers (Python versions disagree on the prefixes)
        return all(_inside(v4, networks) or _is_public(v4) for v4 in embedded)
    return _is_public(ip)


# --- URL syntax -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    """One hop's URL, taken apart: `host` is ASCII (IDNA), lower case, without brackets; `ip` is
    set when the URL names an address rather than a host name."""

    url: str
    scheme: str
    host: str
    port: int
    ip: IPAddress | None
    request_target: str

    @property
    def host_header(self) -> str:
        name = f"[{self.host}]" if ":" in self.host else self.host
        return name if self.port == _DEFAULT_PORTS[self.scheme] else f"{name}:{self.port}"

    @property
    def tls_name(self) -> str:
        """The name the certificate must carry (and SNI): certificates never have the root dot."""
        return self.host.rstrip(".")


def _display(url: str, *, query: bool = True) -> str:
    """The URL as shown in messages: never the userinfo; without query when it may hold a
    signature the user never saw (a redirect target)."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2]
        shown = urlunsplit((parts.scheme, netloc, parts.path, parts.query if query else "", ""))
    except ValueError:
        shown = re.sub(r"//[^/?#]*@", "//", url)
    cut = shown[:200]
    return "".join(quote(char) if _bad_char(char) else char for char in cut) + (
        "..." if len(shown) > 200 else "")


def _bad_char(url: str) -> str | None:
    """Whitespace, controls and invisible format characters are refused rather than dropped:
    urlsplit silently strips some of them, so the URL fetched would not be the one shown."""
    for char in url:
        if char == "\\":
            return "a backslash"
        if char.isspace() or unicodedata.category(char).startswith(("C", "Z")):
            return f"the character U+{ord(char):04X}"
    return None


def _parse_host(text: str) -> tuple[str, IPAddress | None]:
    """A URL host as (ASCII name, address if it is one). Numeric IPv4 forms getaddrinfo accepts
    (2130706433, 0x7f.1, 0177.0.0.1, 127.1) count as addresses, so the policy sees them."""
    if text.startswith("["):
        inner = text[1:-1] if text.endswith("]") else ""
        if "%" in inner:
            raise ValueError("IPv6 zone identifiers are not allowed")
        try:
            ip = ipaddress.IPv6Address(inner)
        except ValueError:
            raise ValueError(f"invalid IPv6 address {text!r}") from None
        return str(ip), ip
    if not text:
        raise ValueError("no host")
    try:
        host = text.lower().encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(f"invalid host name {text!r}") from None
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"invalid host name {text!r}")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        try:
            packed = socket.inet_aton(host.rstrip("."))
        except OSError:
            raise ValueError(f"invalid IPv4 address {text!r}") from None
        ip4 = ipaddress.IPv4Address(packed)
        return str(ip4), ip4
    return host, None


def _parse(url: str, settings: HttpInputSettings) -> _Target:
    """Syntax and, for address literals, the address policy; no network. Raises ValueError."""
    if not isinstance(url, str) or not url:
        raise ValueError("empty URL")
    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"URL longer than {MAX_URL_LENGTH} characters")
    bad = _bad_char(url)
    if bad:
        raise ValueError(f"URL contains {bad}")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ValueError(f"malformed URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"scheme {parts.scheme or '(none)'!r} is not http or https")
    netloc = parts.netloc
    if "@" in netloc:
        raise ValueError("credentials in URLs are not accepted (they would be stored and shown)")
    if netloc.startswith("["):
        end = netloc.find("]")
        host_text, rest = (netloc[: end + 1], netloc[end + 1 :]) if end >= 0 else (netloc, "")
    else:
        host_text, colon, port_text = netloc.partition(":")
        rest = colon + port_text
    host, ip = _parse_host(host_text)
    port = _DEFAULT_PORTS[scheme]
    if rest:
        port_text = rest[1:]
        if not rest.startswith(":") or not (port_text.isascii() and port_text.isdigit()
                                            and len(port_text) <= 5 and 0 < int(port_text) < 65536):
            raise ValueError(f"invalid port {rest[1:]!r}" if rest.startswith(":") else "malformed host")
        port = int(port_text)
    if ip is not None and not is_allowed_address(str(ip), settings.allowed_networks):
        raise ValueError(f"address {ip} is not a public address (the site's "
                         "storage.http.allowed_networks does not include it)")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return _Target(url, scheme, host, port, ip, quote(target, safe=_TARGET_SAFE))


def check_url(url: str, settings: HttpInputSettings) -> None:
    """Offline validation when a task is created: scheme, host, port, no credentials, no
    whitespace or control characters, length; an address literal (any form getaddrinfo would
    accept) must pass the address policy now. Host names are only resolved at download time.
    Raises ValueError naming the URL (credentials stripped) and the reason."""
    if not settings.enabled:
        raise ValueError(f"{_display(url)}: http(s) inputs are disabled on this service")
    try:
        _parse(url, settings)
    except ValueError as exc:
        raise ValueError(f"{_display(url)}: {exc}") from None


def _shown_location(current: str, location: str) -> str:
    if _bad_char(location):
        return "(unprintable Location)"
    try:
        return _display(urljoin(current, location), query=False)
    except ValueError:
        return "(malformed Location)"


def _next_hop(current: str, location: str, settings: HttpInputSettings) -> _Target:
    """The target of a redirect, held to the same rules as the first URL; https -> http is
    refused (the TLS guarantees the user asked for would silently end). Raises ValueError."""
    if _bad_char(location):
        raise ValueError(f"Location header contains {_bad_char(location)}")
    new = urljoin(current, location)
    if urlsplit(current).scheme.lower() == "https" and urlsplit(new).scheme.lower() == "http":
        raise ValueError("redirect from https to http refused")
    return _parse(new, settings)


# --- the transfer ---------------------------------------------------------------------------------


class _Watchdog:
    """Cuts the socket in use when the total time is up: socket timeouts apply per operation,
    so a server trickling a byte at a time would otherwise hold a download forever."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.expired = False
        self._conn: HTTPConnection | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(timeout, self._fire)
        self._timer.daemon = True

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0 or self.expired:
            raise _Failure(self.message())
        return left

    def failed(self, exc: BaseException) -> _Failure:
        """The failure to report for a transport error: a socket timeout at the deadline (each
        operation gets only the time left) or a cut socket is the total timeout, not the server."""
        if self.expired or time.monotonic() >= self.deadline - 0.01:
            return _Failure(self.message())
        return _Failure(_describe(exc))

    def message(self) -> str:
        return f"timed out after {self.timeout:g} s (storage.http.timeout)"

    def watch(self, conn: HTTPConnection | None) -> None:
        with self._lock:
            self._conn = conn
            if self.expired and conn is not None:
                _cut(conn)

    def _fire(self) -> None:
        with self._lock:
            self.expired = True
            if self._conn is not None:
                _cut(self._conn)


def _cut(conn: HTTPConnection) -> None:
    """Shut the socket down under a blocked reader; the base-class call leaves an SSLSocket's
    state alone (its own shutdown would pull it from under the reading thread)."""
    sock = conn.sock
    if sock is not None:
        try:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass


def _ca_bundle() -> str | None:
    """CA certificates for https: the system store when there is one (sites add their internal
    CAs there; None makes urllib3 load it), else certifi's."""
    paths = ssl.get_default_verify_paths()
    if (paths.cafile and os.path.isfile(paths.cafile)) or (paths.capath and os.path.isdir(paths.capath)):
        return None
    try:
        import certifi
    except ImportError:
        return None
    return certifi.where()


def _resolve(target: _Target, settings: HttpInputSettings) -> list[str]:
    """The addresses to connect to, every one checked: if any is refused the host is refused, so
    the outcome never depends on which address a resolver lists first."""
    if target.ip is not None:
        return [str(target.ip)]
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM,
                                   proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise _Failure(f"cannot resolve host {target.host!r} ({reason})") from None
    addresses: list[str] = []
    for family, _, _, _, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = str(sockaddr[0]).split("%", 1)[0]
        if not is_allowed_address(address, settings.allowed_networks):
            raise _Failure(f"host {target.host!r} resolves to {address}, which is not a public "
                           "address (the site's storage.http.allowed_networks does not include it)")
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise _Failure(f"host {target.host!r} has no IPv4 or IPv6 address")
    return addresses[:_MAX_ADDRESSES]


def _connection(target: _Target, address: str, timeout: float) -> HTTPConnection:
    """A connection pinned to `address`; for https, SNI and the certificate check use the URL's
    host name (or address), and verification is mandatory."""
    if target.scheme == "http":
        return HTTPConnection(host=address, port=target.port, timeout=timeout)
    return HTTPSConnection(host=address, port=target.port, timeout=timeout,
                           cert_reqs="CERT_REQUIRED", ca_certs=_ca_bundle(),
                           server_hostname=target.tls_name, assert_hostname=target.tls_name)


def _describe(exc: BaseException) -> str:
    """A transport error in words a user can act on (urllib3's own strings name internals)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed ({exc.verify_message or exc.reason or exc})"
    if isinstance(exc, CertificateError):
        return f"TLS certificate verification failed ({exc})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error ({exc.reason or exc})"
    if isinstance(exc, ReadTimeoutError | socket.timeout | TimeoutError):
        return "the server stopped sending (read timed out)"
    if isinstance(exc, urllib3.exceptions.IncompleteRead):
        return "the connection closed before the whole body arrived"
    if isinstance(exc, urllib3.exceptions.ProtocolError | urllib3.exceptions.HTTPError):
        cause = exc.args[-1] if exc.args and isinstance(exc.args[-1], BaseException) else None
        return _describe(cause) if cause is not None else f"HTTP protocol error ({exc})"
    if isinstance(exc, OSError):
        return f"network error ({exc.strerror or exc})"
    return f"HTTP protocol error ({type(exc).__name__}: {exc})"


def _connect_reason(exc: Exception) -> str:
    if isinstance(exc, NewConnectionError):
        cause = exc.__cause__
        return getattr(cause, "strerror", None) or str(cause or exc)
    if isinstance(exc, ConnectTimeoutError | socket.timeout):
        return "timed out"
    return getattr(exc, "strerror", None) or str(exc)


def _connect(target: _Target, addresses: list[str], settings: HttpInputSettings,
             watchdog: _Watchdog) -> HTTPConnection:
    """Connect to the first address that answers; a TLS failure is final (another address of
    the same host would present the same certificate)."""
    errors: list[str] = []
    for address in addresses:
        conn = _connection(target, address, min(settings.connect_timeout, watchdog.remaining()))
        watchdog.watch(conn)
        try:
            conn.connect()
            return conn
        except (TimeoutError, NewConnectionError, ConnectTimeoutError, ConnectionError) as exc:
            conn.close()
            errors.append(f"{address} port {target.port}: {_connect_reason(exc)}")
        except Exception as exc:
            conn.close()
            raise watchdog.failed(exc) from None
    watchdog.remaining()  # a connect cut short by the deadline is a timeout, not a dead host
    raise _Failure("cannot connect to " + "; ".join(errors))


def _open(url: str, settings: HttpInputSettings, watchdog: _Watchdog,
          extra: dict[str, str] | None = None) -> tuple[HTTPConnection, HTTPResponse]:
    """The final 2xx response, after the redirects (each hop checked like the first URL). The
    `extra` headers (a DRS access URL's, a forwarded bearer token) go to the first URL's origin
    only: a redirect elsewhere never carries them."""
    try:
        target = _parse(url, settings)
    except ValueError as exc:
        raise _Failure(str(exc)) from None
    headers = {
        "User-Agent": f"hpc-bridge/{__version__}",
        "Accept": "*/*",
        "Accept-Encoding": "identity",
        "Connection": "close",
    }
    origin = (target.scheme, target.host_header)
    extra = {k: v for k, v in (extra or {}).items() if k.lower() not in _OWN_HEADERS}
    for hop in range(settings.max_redirects + 1):
        addresses = _resolve(target, settings)
        conn = _connect(target, addresses, settings, watchdog)
        sent = {**headers, **extra} if (target.scheme, target.host_header) == origin else headers
        try:
            conn.timeout = watchdog.remaining()
            conn.request("GET", target.request_target, headers={**sent, "Host": target.host_header},
                         preload_content=False, decode_content=False, enforce_content_length=True)
            response = conn.getresponse()
        except _Failure:
            conn.close()
            raise
        except Exception as exc:
            conn.close()
            raise watchdog.failed(exc) from None
        if response.status not in _REDIRECTS:
            if not 200 <= response.status < 300:
                conn.close()
                status = f"{response.status} {response.reason or ''}".strip()
                where = "" if hop == 0 else f" (after redirect to {_display(target.url, query=False)})"
                raise _Failure(f"the server answered HTTP {status}{where}", response.status)
            return conn, response
        location = _header_text(response.headers.get("Location"))
        conn.close()
        if hop == settings.max_redirects:
            break
        if not location:
            raise _Failure(f"HTTP {response.status} redirect without a Location header")
        try:
            target = _next_hop(target.url, location, settings)
        except ValueError as exc:
            raise _Failure(f"redirect to {_shown_location(target.url, location)} refused: {exc}") from None
    raise _Failure(f"too many redirects (more than {settings.max_redirects}, storage.http.max_redirects)")


# Headers only this client sets: a DRS access URL's own headers never replace them.
_OWN_HEADERS = frozenset({"host", "connection", "content-length", "transfer-encoding", "accept-encoding", "te",
                          "upgrade", "proxy-authorization"})


def _header_text(value: str | None) -> str | None:
    """http.client decodes headers as Latin-1; a Location with UTF-8 in it is read as UTF-8."""
    if value is None or value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


def _copy(response: HTTPResponse, out: BinaryIO, settings: HttpInputSettings,
          watchdog: _Watchdog) -> int:
    """Stream the body as sent (never decoded), within the size and time caps."""
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.strip().isdigit() and int(declared) > settings.max_bytes:
        raise _Failure(f"the file is {int(declared)} bytes, more than the limit of "
                       f"{settings.max_bytes} (storage.http.max_bytes)")
    written = 0
    while True:
        watchdog.remaining()
        try:
            chunk = response.read(_CHUNK, decode_content=False)
        except Exception as exc:
            raise watchdog.failed(exc) from None
        if not chunk:
            if watchdog.expired:  # a cut socket reads as end of file
                raise _Failure(watchdog.message())
            return written
        written += len(chunk)
        if written > settings.max_bytes:
            raise _Failure(f"the file is larger than the limit of {settings.max_bytes} bytes "
                           "(storage.http.max_bytes)")
        out.write(chunk)


def _save(response: HTTPResponse, folder: Path, settings: HttpInputSettings,
          watchdog: _Watchdog) -> tuple[str, int]:
    """The body in a new private file in `folder` (created exclusively, mode 0600, fsynced):
    (its path, its size). Nothing is left behind on failure."""
    try:
        fd, temp = tempfile.mkstemp(dir=folder, prefix=".hpc-bridge-download-", suffix=".part")
    except OSError as exc:
        raise _Failure(f"cannot create the file in the work area ({exc.strerror or exc})") from None
    try:
        with os.fdopen(fd, "wb") as out:
            size = _copy(response, out, settings, watchdog)
            out.flush()
            os.fsync(out.fileno())
        return temp, size
    except BaseException as exc:
        _remove(temp)
        if isinstance(exc, OSError):  # disk full, quota, a failing close on NFS
            raise _Failure(f"cannot write the file ({exc.strerror or exc})") from None
        raise


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def download(url: str, dest: Path, settings: HttpInputSettings, headers: dict[str, str] | None = None) -> int:
    """Fetch `url` into `dest` and return the number of bytes written.

    The body goes to a private temporary file next to `dest`, is fsynced and renamed over
    `dest`, so `dest` is either the complete file or untouched. The file keeps mode 0600 and the
    daemon's owner: making it readable to the job is the caller's choice. Raises DownloadError."""
    shown = _display(url)
    if not settings.enabled:
        raise DownloadError(f"cannot download {shown}: http(s) inputs are disabled on this service")
    dest = Path(dest)
    try:
        with _Watchdog(settings.timeout) as watchdog:
            conn, response = _open(url, settings, watchdog, headers)
            try:
                temp, size = _save(response, dest.parent, settings, watchdog)
            finally:
                watchdog.watch(None)
                conn.close()
        try:
            os.replace(temp, dest)
        except OSError as exc:
            _remove(temp)
            raise _Failure(f"cannot move the file into place ({exc.strerror or exc})") from None
        _fsync_dir(dest.parent)
        return size
    except (_Failure, ValueError) as exc:  # ValueError: a malformed allowed_networks entry
        raise DownloadError(f"cannot download {shown}: {exc}", getattr(exc, "status", None), str(exc)) from None


def fetch(url: str, settings: HttpInputSettings, headers: dict[str, str] | None = None) -> bytes:
    """The body of `url` in memory, for documents the service reads itself (a CWL `run:` or
    `$include`) rather than a task input: the same address policy, pinning, redirects, size cap
    and total timeout as `download`. Raises DownloadError."""
    if not settings.enabled:
        raise DownloadError(f"cannot fetch {_display(url)}: http(s) is disabled on this service")
    body = io.BytesIO()
    try:
        with _Watchdog(settings.timeout) as watchdog:
            conn, response = _open(url, settings, watchdog, headers)
            try:
                _copy(response, body, settings, watchdog)
            finally:
                watchdog.watch(None)
                conn.close()
    except (_Failure, ValueError) as exc:  # ValueError: a malformed allowed_networks entry
        raise DownloadError(f"cannot fetch {_display(url)}: {exc}", getattr(exc, "status", None), str(exc)) from None
    return body.getvalue()


def _fsync_dir(path: Path) -> None:
    """Make the rename durable: the job may run on another node right after submission."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fetch_json(url: str, settings: HttpInputSettings, headers: dict[str, str] | None = None) -> Any:
    """A registry's JSON answer (DRS, TRS): `fetch` asking for JSON, parsed with the service's depth
    limit. Raises DownloadError for both (a body that is no JSON has no status)."""
    body = fetch(url, settings, {"Accept": "application/json", **(headers or {})})
    try:
        return jsonlimit.loads(body)
    except ValueError:  # TooDeep is one too
        reason = "the answer is not JSON (or is nested too deep)"
        raise DownloadError(f"cannot fetch {_display(url)}: {reason}", None, reason) from None
