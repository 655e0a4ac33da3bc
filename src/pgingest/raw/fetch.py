"""Fetching a document by URI: ``file://`` under allow-listed roots, ``https://`` (``http://``
only for hosts allow-listed for it) to allow-listed hosts, ``s3://bucket/key`` in allow-listed
buckets (an optional endpoint for S3-compatible stores).

Security, in order of the checks:

* The policy (:class:`FetchPolicy`) is the admin's, built from the worker's environment
  (:meth:`FetchPolicy.from_env`); a URI (written by an application into a table) can only pick
  among what it allows. Nothing in a URI or a table carries credentials: S3 credentials come from
  the worker's environment through boto3's standard chain, HTTP requests carry none.
* A host name is resolved once; every address it resolves to must be public (not loopback,
  private, link-local, shared, multicast or reserved) unless it lies in a network the admin
  allow-listed explicitly; the connection goes to the checked address (no DNS rebinding between
  check and connect) with the name kept for TLS (SNI, certificate) and the Host header.
* Redirects are followed by hand (at most ``max_redirects``), each target checked like the first
  URI: a redirect to a host not allowed makes no connection to it.
* Sizes: the declared size (HEAD / ``head_object`` / ``stat``) is checked before the download, and
  the bytes counted during it (a server that lies or sends no Content-Length is cut at the cap).

Errors are :class:`~pgingest.raw.errors.RawDocumentError`: transient (``server_error``,
``throttled``, ``fetch_timeout``, ``connect_error``; :func:`fetch_with_retry` backs off with full
jitter and honours ``Retry-After``) or permanent (``not_found``, ``forbidden``, ``too_large``,
``not_allowed``, ``bad_uri``, ``http_error``). ``access`` with ``scope="source"`` says the whole
bucket is unreadable (no credentials, invalid key, bucket access denied): the worker pauses the
source instead of dead-lettering each document. A bucket that does not exist is the row's
``not_found`` (a typo in one URI must not pause the source).
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import errno
import hashlib
import http.client
import io
import ipaddress
import os
import random
import re
import socket
import ssl
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import (
    SplitResult,
    quote,
    unquote,
    unquote_to_bytes,
    urljoin,
    urlsplit,
    urlunsplit,
)

from pgingest.raw.errors import RawDocumentError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Sequence[str]]

_CHUNK = 64 * 1024
_USER_AGENT = "pgingest-raw/1"


# A request line cannot carry these (http.client refuses them with a message quoting the whole
# path and query: a presigned URL's signature).
_UNSAFE_URI_CHARS = re.compile(r"[\x00-\x20\x7f]")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
# What WHATWG URL parsing strips from both ends of a URL: C0 controls and space (a CRLF CSV's
# line end, an indented cell). Only those inside the URI are refused.
_URI_TRIM = "".join(map(chr, range(0x21)))


def strip_uri(uri: str) -> str:
    """``uri`` less the C0 control characters and spaces at its ends, as a browser reads it."""
    return uri.strip(_URI_TRIM)


_SCHEME_SLASHES = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def _cut_userinfo(uri: str) -> str:
    """``uri`` less everything between ``scheme://`` (or its start, without one) and the last
    ``@`` before the query or fragment: the userinfo, whatever it holds (an empty or numeric
    password, a ``/`` or an ``@`` in the secret), found without urlsplit, which takes
    ``s3://KEY:/SECRET@bucket`` for a host ``KEY`` with an empty port and a path. A ``file:///``
    URI has no authority: an ``@`` in its path is a file name's."""
    end = len(uri)
    for mark in "?#":
        i = uri.find(mark)
        if i >= 0:
            end = min(end, i)
    at = uri.rfind("@", 0, end)
    if at < 0:
        return uri
    m = _SCHEME_SLASHES.match(uri)
    start = m.end() if m else 0
    if m and uri[start : start + 1] == "/":
        return uri  # "file:///a@b.md": an empty authority, no userinfo
    return uri[:start] + uri[at + 1 :]


def redact_uri(uri: str) -> str:
    """``uri`` fit for an error message or a log: no userinfo (credentials), query (a presigned
    URL's signature) or fragment, control characters escaped, at most 300 characters. Every
    message that names a URI goes through it."""
    uri = _cut_userinfo(uri)
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<invalid URI>"
    suffix = "?<redacted>" if parts.query else ""
    text = urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")) + suffix
    text = _UNSAFE_URI_CHARS.sub(lambda m: f"%{ord(m.group()):02X}", text)
    return text if len(text) <= 300 else text[:297] + "..."


def _describe(exc: BaseException) -> str:
    """An exception of the network stack (socket, ssl, http.client, urllib3, botocore) in a few
    words, never its message text: those quote URLs (http.client's InvalidURL quotes the path
    and the query; botocore's the endpoint URL with the key)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"{type(exc).__name__} ({exc.reason or 'TLS error'})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


def _system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class FetchPolicy:
    """What the worker may fetch, and how. Built by the admin (environment), never from a table.

    ``allowed_hosts``: exact host names (or IP literals); ``".example.com"`` allows its
    subdomains. ``http_hosts``: the hosts also allowed over plain ``http://``.
    ``allowed_networks``: the non-public networks an admin opens explicitly (``127.0.0.1/32`` for
    a test server); public addresses need no entry. ``ca_file``: the CA certificates https trusts
    (default: the system's). ``allowed_buckets``: S3 buckets (``"*"``:
    any bucket the credentials can read). ``s3_endpoint``: an S3-compatible store's URL (trusted:
    it is the admin's)."""

    allowed_roots: tuple[Path, ...] = ()
    allowed_hosts: frozenset[str] = frozenset()
    http_hosts: frozenset[str] = frozenset()
    allowed_networks: tuple[IPNetwork, ...] = ()
    allowed_buckets: frozenset[str] = frozenset()
    s3_endpoint: str | None = None
    s3_region: str | None = None
    max_bytes: int = 100 * 1024 * 1024
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    download_timeout: float = 300.0
    max_redirects: int = 3
    ca_file: str | None = None
    resolver: Resolver = field(default=_system_resolver, repr=False, compare=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> FetchPolicy:
        """``PGINGEST_RAW_ROOTS`` (``:``-separated directories), ``PGINGEST_RAW_HOSTS``,
        ``PGINGEST_RAW_HTTP_HOSTS``, ``PGINGEST_RAW_NETWORKS``, ``PGINGEST_RAW_BUCKETS``
        (comma-separated), ``PGINGEST_RAW_S3_ENDPOINT``, ``PGINGEST_RAW_S3_REGION``,
        ``PGINGEST_RAW_MAX_BYTES``, ``PGINGEST_RAW_CONNECT_TIMEOUT``,
        ``PGINGEST_RAW_READ_TIMEOUT``, ``PGINGEST_RAW_DOWNLOAD_TIMEOUT``, ``PGINGEST_RAW_CA_FILE`` (CA certificates trusted for
        https instead of the system's, for an internal CA). Unset: nothing is allowed."""
        env = os.environ if env is None else env

        def items(name: str) -> list[str]:
            return [v.strip() for v in env.get(name, "").split(",") if v.strip()]

        roots = tuple(Path(p) for p in env.get("PGINGEST_RAW_ROOTS", "").split(":") if p)
        return cls(
            allowed_roots=roots,
            allowed_hosts=frozenset(h.lower() for h in items("PGINGEST_RAW_HOSTS")),
            http_hosts=frozenset(h.lower() for h in items("PGINGEST_RAW_HTTP_HOSTS")),
            allowed_networks=tuple(
                ipaddress.ip_network(n, strict=False) for n in items("PGINGEST_RAW_NETWORKS")
            ),
            allowed_buckets=frozenset(items("PGINGEST_RAW_BUCKETS")),
            s3_endpoint=env.get("PGINGEST_RAW_S3_ENDPOINT") or None,
            s3_region=env.get("PGINGEST_RAW_S3_REGION") or None,
            max_bytes=int(env.get("PGINGEST_RAW_MAX_BYTES", 100 * 1024 * 1024)),
            connect_timeout=float(env.get("PGINGEST_RAW_CONNECT_TIMEOUT", 5.0)),
            read_timeout=float(env.get("PGINGEST_RAW_READ_TIMEOUT", 30.0)),
            download_timeout=float(env.get("PGINGEST_RAW_DOWNLOAD_TIMEOUT", 300.0)),
            ca_file=env.get("PGINGEST_RAW_CA_FILE") or None,
        )

    def host_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        if host in self.allowed_hosts:
            return True
        return any(h.startswith(".") and host.endswith(h) for h in self.allowed_hosts)

    def address_allowed(self, address: str) -> bool:
        ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
        if any(ip in net for net in self.allowed_networks):
            return True
        if isinstance(ip, ipaddress.IPv6Address):
            if any(ip in net for net in _V6_REFUSED):
                return False
            embedded = _embedded_ipv4(ip)
            if embedded is not None:  # reaches that IPv4 address: checked as it
                return self.address_allowed(str(embedded))
        return ip.is_global and not ip.is_multicast


# IPv6 ranges refused whatever follows: site-local (deprecated, routed as private) and the
# local-use NAT64 prefix (RFC 8215: its IPv4 embedding depends on the operator's prefix length).
_V6_REFUSED = (ipaddress.IPv6Network("fec0::/10"), ipaddress.IPv6Network("64:ff9b:1::/48"))
# IPv6 forms with an IPv4 address in their last 32 bits: IPv4-compatible (::a.b.c.d), SIIT
# (::ffff:0:a.b.c.d), NAT64's well-known prefix (64:ff9b::a.b.c.d). IPv4-mapped and 6to4
# (2002::/16) have ipaddress's own accessors.
_V4_IN_LAST_32 = (
    ipaddress.IPv6Network("::/96"),
    ipaddress.IPv6Network("::ffff:0:0:0/96"),
    ipaddress.IPv6Network("64:ff9b::/96"),
)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]  # the client's address (2001::/32 is not global anyway)
    if any(ip in net for net in _V4_IN_LAST_32):
        return ipaddress.IPv4Address(ip.packed[12:])
    return None


@dataclass(frozen=True)
class Fetched:
    """The bytes of a document with what the store says about them."""

    uri: str
    data: bytes
    sha256: str
    content_type: str | None = None
    etag: str | None = None
    last_modified: str | None = None


def _fetched(uri: str, data: bytes, **meta: str | None) -> Fetched:
    return Fetched(uri=uri, data=data, sha256=hashlib.sha256(data).hexdigest(), **meta)


def _too_large(size: int, policy: FetchPolicy, when: str) -> RawDocumentError:
    return RawDocumentError(
        "too_large", f"{when}: {size} bytes over the cap of {policy.max_bytes} bytes"
    )


@dataclass(frozen=True)
class Validators:
    """What was recorded of an object's last fetch (its ETag, its Last-Modified)."""

    etag: str | None = None
    last_modified: str | None = None


def fetch(uri: str, policy: FetchPolicy) -> Fetched:
    """Fetch ``uri`` once under ``policy`` (no retry: see :func:`fetch_with_retry`)."""
    got = _dispatch(uri, policy, None)
    assert got is not None
    return got


def fetch_if_changed(uri: str, policy: FetchPolicy, known: Validators) -> Fetched | None:
    """:func:`fetch`, or ``None`` when the store says the object is unchanged since ``known``:
    S3's ``head_object`` ETag, HTTP's HEAD (ETag, else Last-Modified) or a 304 to the
    conditional GET. No body is downloaded then. ``file://`` is always read (the caller
    compares the sha256, which it does for every store anyway)."""
    return _dispatch(uri, policy, known)


def _dispatch(uri: str, policy: FetchPolicy, known: Validators | None) -> Fetched | None:
    uri = strip_uri(uri)
    if _CONTROL_CHARS.search(uri):
        # urlsplit silently drops tabs and newlines: "a\tb" would name another object, "ab"
        raise RawDocumentError("bad_uri", "a control character in the URI (percent-encode it)")
    scheme = urlsplit(uri).scheme.lower()
    if scheme == "file":
        return _fetch_file(uri, policy)
    if scheme in ("http", "https"):
        return _fetch_http(uri, policy, known)
    if scheme == "s3":
        return _fetch_s3(uri, policy, known=known)
    raise RawDocumentError("not_allowed", f"scheme {scheme!r} (file, https, http, s3 only)")


# --- retries ---------------------------------------------------------------------------------


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), ``None`` if absent/invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def backoff_delay(
    attempt: int,
    retry_after: float | None = None,
    *,
    base: float = 0.5,
    cap: float = 30.0,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based): full jitter on an exponential
    ceiling, never less than the server's ``Retry-After`` (itself capped at ``cap``)."""
    rng = rng or random.Random()
    delay = rng.uniform(0, min(cap, base * 2 ** (attempt - 1)))
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return delay


T = TypeVar("T")


def retrying(
    call: Callable[[], T],
    *,
    attempts: int = 4,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> T:
    """``call()``, retrying transient :class:`RawDocumentError`s up to ``attempts`` times in all
    (backoff with jitter, ``Retry-After`` honoured); permanent ones (and the last transient one)
    are raised with their class."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except RawDocumentError as exc:
            if exc.permanent or attempt == attempts:
                raise
            sleep(backoff_delay(attempt, exc.retry_after, rng=rng))
    raise AssertionError("unreachable")


def fetch_with_retry(
    uri: str,
    policy: FetchPolicy,
    *,
    attempts: int = 4,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> Fetched:
    """:func:`fetch` under :func:`retrying`."""
    return retrying(lambda: fetch(uri, policy), attempts=attempts, sleep=sleep, rng=rng)


# --- file:// ---------------------------------------------------------------------------------


def _local_path(parts: SplitResult) -> str:
    """The local path a split ``file://`` URI names: its percent-encoded bytes decoded as the
    file system does (``Path.as_uri`` encodes a name that is not UTF-8 as its bytes, ``%E9``;
    ``unquote`` made it U+FFFD, another name)."""
    return os.fsdecode(unquote_to_bytes(parts.path))


def _fetch_file(uri: str, policy: FetchPolicy) -> Fetched:
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
        raise RawDocumentError("bad_uri", "file:// URIs name a local path only")
    raw_path = _local_path(parts)
    if not raw_path.startswith("/") or "\x00" in raw_path:
        raise RawDocumentError("bad_uri", "file:// needs an absolute path")
    # realpath follows every symbolic link: a link inside a root that points outside is refused
    path = Path(os.path.realpath(raw_path))
    roots = [Path(os.path.realpath(r)) for r in policy.allowed_roots]
    if not any(path == r or r in path.parents for r in roots):
        raise RawDocumentError("not_allowed", f"{redact_uri(uri)} is outside the allowed roots")
    # O_NONBLOCK: opening a FIFO for reading blocks until a writer comes (for ever, holding a
    # fetch thread); a non-blocking open returns at once and fstat refuses what is not a file.
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise RawDocumentError("not_found", redact_uri(uri)) from None
    except PermissionError:
        raise RawDocumentError("forbidden", redact_uri(uri)) from None
    except OSError as exc:
        raise RawDocumentError("not_found", f"{redact_uri(uri)}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not _opened_under(fh.fileno(), st, path, roots):
            # a directory of the path swapped for a link out of the root between the check and
            # the open (O_NOFOLLOW guards the last component only)
            raise RawDocumentError("not_allowed", f"{redact_uri(uri)} is outside the allowed roots")
        if not stat.S_ISREG(st.st_mode):
            # a directory, a FIFO, a socket, a device: no document (permanent, as a URI
            # outside the roots is)
            raise RawDocumentError("not_allowed", f"{redact_uri(uri)} is not a regular file")
        os.set_blocking(fh.fileno(), True)
        if st.st_size > policy.max_bytes:
            raise _too_large(st.st_size, policy, "file size")
        data = _read_capped(fh.read, policy)
    mtime = email.utils.formatdate(st.st_mtime, usegmt=True)
    return _fetched(uri, data, last_modified=mtime, etag=file_etag(st))


def _opened_under(fd: int, st: os.stat_result, checked: Path, roots: list[Path]) -> bool:
    """Whether the file opened as ``fd`` lies under a root: the path the kernel gives for the
    descriptor (``/proc/self/fd``); without ``/proc``, the file the checked path names now must
    be the one opened (same device and inode)."""
    try:
        opened = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        try:
            now = os.stat(checked, follow_symlinks=False)
        except OSError:
            return False
        return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)
    if opened.endswith(" (deleted)") and not os.path.exists(opened):
        opened = opened[: -len(" (deleted)")]  # removed since the open: where it was
    real = Path(opened)
    return any(real == r or r in real.parents for r in roots)


def file_etag(st: os.stat_result) -> str:
    """A local file's validator, as an ETag: its modification time in nanoseconds and its size
    (as a web server's ETag of a static file). Last-Modified has whole seconds: a file rewritten
    within the second of its last fetch, at the same size, would look unchanged to ``source
    sync``. The file system's own timestamp granularity still applies (a few ms on ext4, xfs and
    tmpfs; 1 s on HFS+, 2 s on FAT). Taken before the file is read, so a write during the read
    makes it differ next time."""
    return f'"{st.st_mtime_ns:x}-{st.st_size:x}"'


def _read_capped(
    read: Callable[[int], bytes], policy: FetchPolicy, deadline: float | None = None
) -> bytes:
    """Read to the end, cut at ``max_bytes`` and at ``download_timeout`` seconds in all (a server
    trickling a byte per ``read_timeout`` would otherwise hold the worker for ever); ``deadline``
    (``time.monotonic()``): the fetch's, when it started before the body."""
    if deadline is None:
        deadline = time.monotonic() + policy.download_timeout
    buf = bytearray()
    while True:
        chunk = read(_CHUNK)
        if not chunk:
            return bytes(buf)
        buf += chunk
        if len(buf) > policy.max_bytes:
            raise _too_large(len(buf), policy, "during the download")
        if time.monotonic() > deadline:
            raise RawDocumentError(
                "fetch_timeout", f"download over {policy.download_timeout:g} s ({len(buf)} bytes)"
            )


# --- http(s):// ------------------------------------------------------------------------------


def _over_deadline(policy: FetchPolicy) -> RawDocumentError:
    return RawDocumentError(
        "fetch_timeout", f"over the download timeout of {policy.download_timeout:g} s"
    )


class _DeadlineReader(io.RawIOBase):
    """A response's socket read under the fetch's one deadline: each read waits at most the
    read timeout and never past the deadline (a server sending its status line and headers a
    byte at a time is cut like one trickling its body)."""

    def __init__(self, sock: socket.socket, deadline: float, policy: FetchPolicy) -> None:
        super().__init__()
        self._sock, self._deadline, self._policy = sock, deadline, policy
        # the socket's own reader, which keeps it open while the response reads it (http.client
        # closes the connection before the body of a response that ends it has been read)
        self._raw = sock.makefile("rb", buffering=0)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._raw.close()
        super().close()

    def readinto(self, buffer: Any) -> int | None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise _over_deadline(self._policy)
        self._sock.settimeout(min(self._policy.read_timeout, left))
        try:
            return self._raw.readinto(buffer)
        except TimeoutError:
            if time.monotonic() >= self._deadline:
                raise _over_deadline(self._policy) from None
            raise


class _DeadlineSocket:
    """What http.client.HTTPResponse reads its socket through (``makefile``)."""

    def __init__(self, sock: socket.socket, deadline: float, policy: FetchPolicy) -> None:
        self._reader = _DeadlineReader(sock, deadline, policy)

    def makefile(self, mode: str, *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(self._reader)


class _DeadlineMixin:
    """Connects to a checked address, every step (connect, TLS, request, status line,
    headers, body) within the fetch's deadline."""

    host: str
    port: int
    timeout: float | None
    sock: Any

    def _setup(self, address: str, policy: FetchPolicy, deadline: float) -> None:
        self._address, self._policy, self._deadline = address, policy, deadline

        def response(sock: socket.socket, *args: Any, **kwargs: Any) -> http.client.HTTPResponse:
            shim: Any = _DeadlineSocket(sock, deadline, policy)
            return http.client.HTTPResponse(shim, *args, **kwargs)

        self.response_class: Any = response

    def _left(self, limit: float) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise _over_deadline(self._policy)
        return min(limit, left)

    def _open(self) -> socket.socket:
        return socket.create_connection(
            (self._address, self.port), timeout=self._left(self._policy.connect_timeout)
        )


class _PinnedHTTPConnection(_DeadlineMixin, http.client.HTTPConnection):
    """Connects to a checked address; the host name stays in the Host header."""

    def __init__(
        self, host: str, port: int, address: str, policy: FetchPolicy, deadline: float
    ) -> None:
        super().__init__(host, port, timeout=policy.connect_timeout)
        self._setup(address, policy, deadline)

    def connect(self) -> None:
        self.sock = self._open()
        self.sock.settimeout(self._left(self._policy.read_timeout))


class _PinnedHTTPSConnection(_DeadlineMixin, http.client.HTTPSConnection):
    """TLS to a checked address, verified against the host name (SNI and certificate)."""

    def __init__(
        self, host: str, port: int, address: str, policy: FetchPolicy, deadline: float
    ) -> None:
        self._ctx = ssl.create_default_context(cafile=policy.ca_file)
        super().__init__(host, port, timeout=policy.connect_timeout, context=self._ctx)
        self._setup(address, policy, deadline)

    def connect(self) -> None:
        sock = self._open()  # the handshake runs under the connect timeout
        self.sock = self._ctx.wrap_socket(sock, server_hostname=self.host)
        self.sock.settimeout(self._left(self._policy.read_timeout))


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str
    port: int
    path: str
    address: str


# getaddrinfo has no timeout of its own and cannot be cancelled: each look-up runs on a daemon
# thread of its own, waited for connect_timeout. Concurrent look-ups of one name share one
# thread (a name whose server never answers holds one thread, not the pool); at most
# _DNS_MAX_PENDING look-ups run at once (the threads a run of hung names can hold).
_DNS_MAX_PENDING = 32


@dataclass
class _Lookup:
    done: threading.Event = field(default_factory=threading.Event)
    addresses: list[str] | None = None
    error: BaseException | None = None


_dns_lock = threading.Lock()
_dns_pending: dict[tuple[Resolver, str, int], _Lookup] = {}


def _run_lookup(key: tuple[Resolver, str, int], lookup: _Lookup) -> None:
    resolver, host, port = key
    try:
        lookup.addresses = list(resolver(host, port))
    except BaseException as exc:  # handed to the callers waiting for it
        lookup.error = exc
    finally:
        with _dns_lock:
            if _dns_pending.get(key) is lookup:
                del _dns_pending[key]
        lookup.done.set()


def _resolve(policy: FetchPolicy, host: str, port: int, deadline: float | None = None) -> list[str]:
    """The addresses of ``host``, waited for at most ``connect_timeout`` and never past the
    fetch's ``deadline``. A failure is a fresh :class:`RawDocumentError` in each waiting thread
    (one exception instance raised in several threads has its traceback rewritten by each)."""
    wait = policy.connect_timeout
    if deadline is not None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _over_deadline(policy)
        wait = min(wait, left)
    key = (policy.resolver, host, port)
    with _dns_lock:
        lookup = _dns_pending.get(key)
        if lookup is None:
            if len(_dns_pending) >= _DNS_MAX_PENDING:
                raise RawDocumentError(
                    "fetch_timeout",
                    f"resolving {host!r}: {_DNS_MAX_PENDING} look-ups of other names pending",
                )
            lookup = _dns_pending[key] = _Lookup()
            threading.Thread(
                target=_run_lookup, args=(key, lookup), name="raw-dns", daemon=True
            ).start()
    if not lookup.done.wait(wait):
        if wait < policy.connect_timeout:
            raise _over_deadline(policy)
        raise RawDocumentError(
            "fetch_timeout", f"resolving {host!r} took over {policy.connect_timeout:g} s"
        )
    error = lookup.error
    if isinstance(error, OSError):
        raise RawDocumentError(
            "connect_error", f"cannot resolve {host!r}: {_describe(error)}"
        ) from None
    if isinstance(error, UnicodeError):  # the idna codec: a label over 63 characters, say
        raise RawDocumentError(
            "bad_uri", f"cannot resolve {host!r}: not a valid host name"
        ) from None
    if isinstance(error, RawDocumentError):
        raise RawDocumentError(
            error.error_class,
            error.detail,
            permanent=error.permanent,
            retry_after=error.retry_after,
            scope=error.scope,
        ) from None
    if error is not None:
        raise RawDocumentError(
            "connect_error", f"cannot resolve {host!r}: {type(error).__name__}"
        ) from None
    assert lookup.addresses is not None
    return list(lookup.addresses)


def check_http_uri(uri: str, policy: FetchPolicy, deadline: float | None = None) -> _Target:
    """The checked target of an http(s) URI: scheme and host allowed, the name resolved once
    (waited for never past ``deadline``, the fetch's) and every address allowed. Raises
    ``not_allowed`` / ``bad_uri`` before any connection."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    try:
        host = (parts.hostname or "").lower()
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise RawDocumentError("bad_uri", "invalid port") from None
    if not host:
        raise RawDocumentError("bad_uri", "no host")
    if parts.username or parts.password:
        raise RawDocumentError("not_allowed", "credentials in a URI are refused")
    # before any look-up (urlsplit drops tabs and newlines); the fragment is never sent
    if _UNSAFE_URI_CHARS.search(uri.partition("#")[0]):
        raise _unsafe_uri()
    if not policy.host_allowed(host):
        raise RawDocumentError("not_allowed", f"host {host!r} is not allow-listed")
    if scheme == "http" and host not in policy.http_hosts:
        raise RawDocumentError("not_allowed", f"plain http to {host!r} is not allow-listed")
    if scheme not in ("http", "https"):
        raise RawDocumentError("not_allowed", f"scheme {scheme!r}")
    addresses = _resolve(policy, host, port, deadline)
    if not addresses:
        raise RawDocumentError("connect_error", f"{host!r} resolves to nothing")
    refused = [a for a in addresses if not policy.address_allowed(a)]
    if refused:
        raise RawDocumentError(
            "not_allowed", f"{host!r} resolves to a non-public address ({refused[0]})"
        )
    return _Target(scheme, host, port, _request_target(parts.path, parts.query), addresses[0])


def _unsafe_uri() -> RawDocumentError:
    return RawDocumentError(
        "bad_uri", "a space or control character in the URI (percent-encode it: %20)"
    )


def _request_target(path: str, query: str) -> str:
    """The request target of a path and query. A space or control character is refused
    (permanent ``bad_uri``): a URI cannot hold one, and encoding it would guess at what the
    application meant (a ``+``? a ``%20``? a stray tab?) and fetch an object it may not have
    named; the application percent-encodes it. A non-ASCII character is percent-encoded as
    UTF-8 (an IRI's one mapping to a URI, RFC 3987, as browsers do)."""
    if _UNSAFE_URI_CHARS.search(path) or _UNSAFE_URI_CHARS.search(query):
        raise _unsafe_uri()
    target = path or "/"
    if query:
        target += "?" + query
    if not target.isascii():
        target = quote(target, safe="".join(chr(c) for c in range(0x21, 0x7F)))
    return target


def _http_error(status: int, reason: str, retry_after: str | None) -> RawDocumentError:
    if status == 429 or status == 503:
        cls = "throttled" if status == 429 else "server_error"
        return RawDocumentError(
            cls, f"HTTP {status} {reason}", retry_after=parse_retry_after(retry_after)
        )
    if status >= 500 or status == 408:
        return RawDocumentError(
            "server_error", f"HTTP {status} {reason}", retry_after=parse_retry_after(retry_after)
        )
    if status in (401, 403):
        return RawDocumentError("forbidden", f"HTTP {status} {reason}")
    if status in (404, 410):
        return RawDocumentError("not_found", f"HTTP {status} {reason}")
    return RawDocumentError("http_error", f"HTTP {status} {reason}")


def _request(
    target: _Target,
    method: str,
    policy: FetchPolicy,
    deadline: float,
    extra: Mapping[str, str] | None = None,
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    cls = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
    conn = cls(target.host, target.port, target.address, policy, deadline)
    try:
        conn.request(
            method,
            target.path,
            headers={"User-Agent": _USER_AGENT, "Accept-Encoding": "identity", **(extra or {})},
        )
        return conn, conn.getresponse()
    except BaseException:
        conn.close()
        raise


def _fetch_http(uri: str, policy: FetchPolicy, known: Validators | None = None) -> Fetched | None:
    # One deadline over every request of the fetch (redirects, HEAD, GET: connect, headers,
    # body); a read waits at most read_timeout within it.
    deadline = time.monotonic() + policy.download_timeout
    current = uri
    for _hop in range(policy.max_redirects + 1):
        target = check_http_uri(current, policy, deadline)
        try:
            result = _fetch_http_once(current, target, policy, deadline, known)
        except RawDocumentError:
            raise
        except TimeoutError:
            raise RawDocumentError("fetch_timeout", f"{target.host}: timed out") from None
        except ssl.SSLError as exc:
            raise RawDocumentError(
                "connect_error", f"TLS with {target.host}: {_describe(exc)}"
            ) from None
        except http.client.InvalidURL as exc:
            raise RawDocumentError("bad_uri", f"{target.host}: {_describe(exc)}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise RawDocumentError("connect_error", f"{target.host}: {_describe(exc)}") from None
        except (ValueError, UnicodeError) as exc:
            # what http.client cannot send (a non-ASCII header, say): never retried
            raise RawDocumentError("bad_uri", f"{target.host}: {_describe(exc)}") from None
        if not isinstance(result, str):
            return result
        current = urljoin(current, result)
    raise RawDocumentError("http_error", f"more than {policy.max_redirects} redirects")


def _unchanged(known: Validators | None, etag: str | None, last_modified: str | None) -> bool:
    if known is None:
        return False
    if known.etag and etag:
        return known.etag == etag and not etag.startswith("W/")
    return bool(known.last_modified and last_modified and known.last_modified == last_modified)


def _fetch_http_once(
    uri: str,
    target: _Target,
    policy: FetchPolicy,
    deadline: float,
    known: Validators | None = None,
) -> Fetched | str | None:
    """The document, the Location of a redirect (to be checked by the caller), or ``None``: not
    modified since ``known``."""
    # HEAD first: a declared size over the cap costs no download. A server without HEAD
    # (405/501) or without a Content-Length is checked during the GET.
    conn, resp = _request(target, "HEAD", policy, deadline)
    try:
        resp.read()
        if resp.status < 300:
            declared = resp.getheader("Content-Length")
            if declared and declared.isdigit() and int(declared) > policy.max_bytes:
                raise _too_large(int(declared), policy, "Content-Length")
            if _unchanged(known, resp.getheader("ETag"), resp.getheader("Last-Modified")):
                return None
    finally:
        conn.close()
    conditional = {}
    if known is not None and known.etag:
        conditional["If-None-Match"] = known.etag
    if known is not None and known.last_modified:
        conditional["If-Modified-Since"] = known.last_modified
    conn, resp = _request(target, "GET", policy, deadline, conditional)
    try:
        if resp.status == 304 and known is not None:
            return None
        if resp.status in (301, 302, 303, 307, 308):
            location = resp.getheader("Location")
            if not location:
                raise RawDocumentError("http_error", f"HTTP {resp.status} without Location")
            return location
        if resp.status != 200:
            raise _http_error(resp.status, resp.reason, resp.getheader("Retry-After"))
        declared = resp.getheader("Content-Length")
        if declared and declared.isdigit() and int(declared) > policy.max_bytes:
            raise _too_large(int(declared), policy, "Content-Length")
        data = _read_capped(resp.read1, policy, deadline)  # read1: whatever has arrived
        if declared and declared.isdigit() and len(data) != int(declared):
            raise RawDocumentError("connect_error", f"short body: {len(data)} of {declared} bytes")
        return _fetched(
            uri,
            data,
            content_type=resp.getheader("Content-Type"),
            etag=resp.getheader("ETag"),
            last_modified=resp.getheader("Last-Modified"),
        )
    finally:
        conn.close()


# --- s3:// -----------------------------------------------------------------------------------

# Error codes that say the credentials cannot read the bucket: pause the source. (Not
# NoSuchBucket: a bucket named in one row's URI that does not exist is that row's typo, its
# not_found; pausing the source for it paused every other row, again at each resume.)
_S3_SOURCE_CODES = frozenset(
    {
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "AccountProblem",
        "AuthorizationHeaderMalformed",
    }
)
_S3_THROTTLE_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests"}
)
# 4xx codes that say "try again" (a 400 or 409 is otherwise the request's fault, for good)
_S3_TIMEOUT_CODES = frozenset({"RequestTimeout", "RequestTimeoutException"})
_S3_RETRY_CODES = frozenset({"OperationAborted", "PriorRequestNotComplete"})
_S3_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "404", "NotFound"})
_S3_FORBIDDEN_CODES = frozenset({"AccessDenied", "403", "Forbidden"})


# What boto3 accepts as a bucket name (legacy names included); never '@' or ':' (credentials).
_BUCKET_NAME = re.compile(r"[A-Za-z0-9._-]{1,255}")


def _s3_bucket(parts: SplitResult) -> str:
    """The bucket of a split ``s3://`` URI. A netloc that is no bucket name is refused without
    being echoed: ``s3://KEY:SECRET@bucket/k`` carries credentials (none go in a URI: they come
    from the worker's environment)."""
    if not _BUCKET_NAME.fullmatch(parts.netloc):
        raise RawDocumentError(
            "bad_uri",
            "s3 URIs are s3://bucket/key and the bucket name has characters a bucket name cannot"
            " have (credentials never go in a URI)",
        )
    return parts.netloc


def parse_s3_uri(uri: str) -> tuple[str, str]:
    parts = urlsplit(uri)
    bucket, key = _s3_bucket(parts), _s3_key(parts)
    if not key or parts.query or parts.fragment:
        raise RawDocumentError("bad_uri", "s3 URIs are s3://bucket/key")
    return bucket, key


def classify_s3_error(exc: Exception, bucket: str) -> RawDocumentError:
    """A botocore exception as a :class:`RawDocumentError` (``scope="source"`` for a bucket-wide
    one). An object-level ``AccessDenied`` is told apart by the caller (see ``_fetch_s3``)."""
    from botocore import exceptions as bex

    if isinstance(exc, bex.NoCredentialsError | bex.PartialCredentialsError):
        return RawDocumentError(
            "access", "no S3 credentials in the worker's environment", scope="source"
        )
    if isinstance(exc, bex.ParamValidationError):
        # a bucket or key boto3 refuses (its message quotes them): the URI's fault, for good
        return RawDocumentError("bad_uri", "an S3 bucket or key that boto3 refuses")
    if isinstance(exc, bex.ConnectTimeoutError | bex.ReadTimeoutError):
        return RawDocumentError("fetch_timeout", f"s3://{bucket}: {_describe(exc)}")
    if isinstance(exc, bex.EndpointConnectionError | bex.ConnectionClosedError):
        return RawDocumentError("connect_error", f"s3://{bucket}: {_describe(exc)}")
    if isinstance(exc, bex.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        meta = exc.response.get("ResponseMetadata", {})
        status = int(meta.get("HTTPStatusCode", 0) or 0)
        headers = meta.get("HTTPHeaders", {}) or {}
        retry_after = parse_retry_after(headers.get("retry-after"))
        if code in _S3_SOURCE_CODES:
            return RawDocumentError("access", f"bucket {bucket!r}: {code}", scope="source")
        if code in _S3_THROTTLE_CODES or status == 429:
            return RawDocumentError("throttled", f"{code or status}", retry_after=retry_after)
        if code in _S3_TIMEOUT_CODES:
            return RawDocumentError("fetch_timeout", f"{code} (HTTP {status})")
        if code in _S3_RETRY_CODES:
            return RawDocumentError(
                "server_error", f"{code} (HTTP {status})", retry_after=retry_after
            )
        if status >= 500 or code in ("InternalError", "ServiceUnavailable", "503", "500"):
            return RawDocumentError("server_error", f"{code or status}", retry_after=retry_after)
        if code in _S3_NOT_FOUND_CODES or status == 404:
            return RawDocumentError("not_found", code or "404")
        if code in _S3_FORBIDDEN_CODES or status == 403:
            return RawDocumentError("forbidden", code or "403")
        return RawDocumentError("http_error", f"{code} (HTTP {status})")
    if isinstance(exc, bex.BotoCoreError):
        return RawDocumentError("connect_error", f"s3://{bucket}: {_describe(exc)}")
    raise exc


def s3_client(policy: FetchPolicy) -> Any:
    """A boto3 S3 client: credentials from the standard chain only (environment, profile,
    instance role), timeouts from the policy, no retries of its own (:func:`fetch_with_retry`
    has the policy)."""
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=policy.connect_timeout,
        read_timeout=policy.read_timeout,
        retries={"total_max_attempts": 1, "mode": "standard"},  # one try: ours retry
        s3={"addressing_style": "path"} if policy.s3_endpoint else None,
    )
    return boto3.session.Session().client(
        "s3", endpoint_url=policy.s3_endpoint, region_name=policy.s3_region, config=config
    )


def _check_bucket(bucket: str, policy: FetchPolicy) -> None:
    if "*" not in policy.allowed_buckets and bucket not in policy.allowed_buckets:
        raise RawDocumentError("not_allowed", f"bucket {bucket!r} is not allow-listed")


class _S3Watchdog:
    """The fetch's one deadline over an S3 client of its own (head, get, the body): botocore's
    read timeout bounds each read, not the response, and an endpoint trickling its headers a
    byte per second held a fetch thread for ever. Past the deadline, a thread shuts down the
    sockets of the client's connections (again every 0.2 s until the fetch ends: one connected
    meanwhile), which ends the blocked read; :attr:`fired` tells the caller why. The sockets
    are found through botocore's ``URLLib3Session`` (its connection manager's pools, whose
    connections are noted as they are taken); a botocore without them gets no watchdog (each
    read still bounded by the read timeout)."""

    def __init__(self, client: Any, deadline: float) -> None:
        self.fired = False
        self._deadline = deadline
        self._conns: list[Any] = []
        self._done = threading.Event()
        self._hook(client)
        self._thread = threading.Thread(target=self._watch, name="raw-s3-deadline", daemon=True)

    def _hook(self, client: Any) -> None:
        session: Any = getattr(getattr(client, "_endpoint", None), "http_session", None)
        get_manager = getattr(session, "_get_connection_manager", None)
        if session is None or get_manager is None:
            return
        conns = self._conns

        def watched_pool(pool: Any) -> Any:
            get_conn = getattr(pool, "_get_conn", None)
            if get_conn is not None and not getattr(pool, "_pgingest_watched", False):

                def take(*args: Any, **kw: Any) -> Any:
                    conn = get_conn(*args, **kw)
                    conns.append(conn)
                    return conn

                pool._get_conn = take
                pool._pgingest_watched = True
            return pool

        def manager(*args: Any, **kw: Any) -> Any:
            mgr = get_manager(*args, **kw)
            if not getattr(mgr, "_pgingest_watched", False):
                from_url = mgr.connection_from_url
                mgr.connection_from_url = lambda *a, **k: watched_pool(from_url(*a, **k))
                mgr._pgingest_watched = True
            return mgr

        session._get_connection_manager = manager

    def _watch(self) -> None:
        if self._done.wait(max(0.0, self._deadline - time.monotonic())):
            return
        self.fired = True
        while True:
            for conn in list(self._conns):
                sock = getattr(conn, "sock", None)
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
            if self._done.wait(0.2):
                return

    def __enter__(self) -> _S3Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()


def _fetch_s3(
    uri: str, policy: FetchPolicy, client: Any = None, known: Validators | None = None
) -> Fetched | None:
    bucket, key = parse_s3_uri(uri)
    _check_bucket(bucket, policy)
    deadline = time.monotonic() + policy.download_timeout
    if client is not None:  # the caller's: not ours to shut down
        return _fetch_s3_with(uri, policy, client, known, bucket, key, deadline, None)
    client = s3_client(policy)
    with _S3Watchdog(client, deadline) as watchdog:
        return _fetch_s3_with(uri, policy, client, known, bucket, key, deadline, watchdog)


def _fetch_s3_with(
    uri: str,
    policy: FetchPolicy,
    client: Any,
    known: Validators | None,
    bucket: str,
    key: str,
    deadline: float,
    watchdog: _S3Watchdog | None,
) -> Fetched | None:
    try:
        got = _fetch_s3_once(uri, policy, client, known, bucket, key, deadline)
    except Exception:
        if watchdog is not None and watchdog.fired:
            raise _over_deadline(policy) from None
        raise
    if watchdog is not None and watchdog.fired:
        # A socket shut down mid-headers reads as their end (http.client takes EOF for the
        # blank line): a "response" cut by the watchdog is not the object.
        raise _over_deadline(policy)
    return got


def _fetch_s3_once(
    uri: str,
    policy: FetchPolicy,
    client: Any,
    known: Validators | None,
    bucket: str,
    key: str,
    deadline: float,
) -> Fetched | None:
    try:
        try:
            head = client.head_object(Bucket=bucket, Key=key)
            size = int(head.get("ContentLength", 0))
            if size > policy.max_bytes:
                raise _too_large(size, policy, "head_object")
            if known is not None and known.etag and head.get("ETag") == known.etag:
                return None
            obj = client.get_object(Bucket=bucket, Key=key)
        except Exception as exc:
            if isinstance(exc, RawDocumentError):
                raise
            err = classify_s3_error(exc, bucket)
            if err.error_class in ("forbidden", "not_found") and _bucket_unreadable(client, bucket):
                raise RawDocumentError(
                    "access", f"bucket {bucket!r} is not readable ({err.detail})", scope="source"
                ) from None
            raise err from None
        body = obj["Body"]
        try:
            data = _read_capped(body.read, policy, deadline)
        finally:
            body.close()
    except RawDocumentError:
        raise
    except Exception as exc:
        raise classify_s3_error(exc, bucket) from None
    return _fetched(
        uri,
        data,
        content_type=obj.get("ContentType"),
        etag=obj.get("ETag"),
        last_modified=(
            email.utils.format_datetime(obj["LastModified"].astimezone(datetime.UTC), usegmt=True)
            if obj.get("LastModified")
            else None
        ),
    )


def _bucket_unreadable(client: Any, bucket: str) -> bool:
    """After a 403/404 on an object: do the credentials fail on the bucket itself (access
    denied to it, credentials refused)? Then the source pauses instead of failing document by
    document. A bucket that does not exist is not: the object's not_found stands."""
    try:
        client.head_bucket(Bucket=bucket)
    except Exception as exc:
        try:
            err = classify_s3_error(exc, bucket)
        except Exception:
            return False
        return err.error_class in ("forbidden", "access")
    return False


# --- listing, for `source sync` ----------------------------------------------------------------


@dataclass(frozen=True)
class ObjectInfo:
    """One object under a prefix: enough to tell new, changed and vanished objects apart."""

    uri: str
    size: int
    etag: str | None = None
    last_modified: str | None = None


def list_objects(
    prefix_uri: str, policy: FetchPolicy, unlisted: list[str] | None = None
) -> Iterator[ObjectInfo]:
    """The objects under ``s3://bucket/prefix`` or a ``file:///dir`` under an allowed root,
    under the same policy as :func:`fetch` (bucket and root allow-lists). Symbolic links are
    not followed out of the root. An unlistable bucket raises ``access`` (``scope="source"``).

    A directory below ``file:///dir`` that cannot be listed (a root-owned ``lost+found``), or a
    file whose ``lstat`` fails, raises; with ``unlisted`` given, its URI (the listing's form)
    is appended there instead and the walk goes on: what lies under it was not seen, and
    ``source sync`` must not take it for deleted. The directory itself unlistable raises."""
    parts = urlsplit(prefix_uri)
    scheme = parts.scheme.lower()
    if scheme == "s3":
        yield from _list_s3(prefix_uri, policy)
    elif scheme == "file":
        yield from _list_files(prefix_uri, policy, unlisted)
    else:
        raise RawDocumentError("bad_uri", f"cannot list {scheme!r} URIs (s3 and file only)")


def canonical_uri(uri: str, real_dirs: dict[str, str] | None = None) -> str:
    """``uri`` in the form :func:`list_objects` gives its objects: ``file:///path`` without
    ``localhost``, its directory's real path (symbolic links resolved, as the listing's prefix
    is: a row written through ``/link/docs/a.md`` is the listing's ``/real/docs/a.md``; the
    directory of a vanished file usually still exists; one that does not is kept as written),
    percent-encoded as :meth:`pathlib.Path.as_uri` does; ``s3://bucket/key``
    with the key quoted as the listing does (both less the spaces and C0 control characters at
    their ends, as :func:`fetch` reads them). A URI of another form comes back as it is."""
    uri = strip_uri(uri)
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    scheme = parts.scheme.lower()
    if parts.query or parts.fragment:
        return uri
    if scheme == "file" and parts.netloc in ("", "localhost"):
        path = _local_path(parts)
        if not path.startswith("/") or "\x00" in path:
            return uri
        parent, name = os.path.split(path)
        real = real_dirs.get(parent) if real_dirs is not None else None
        if real is None:
            real = os.path.realpath(parent) if os.path.isdir(parent) else parent
            if real_dirs is not None:  # the caller's cache: a sync's rows share directories
                real_dirs[parent] = real
        return Path(real, name).as_uri()
    if scheme == "s3" and _BUCKET_NAME.fullmatch(parts.netloc):
        return f"s3://{parts.netloc}/{quote(_s3_key(parts))}"
    return uri


def canonical_prefix(prefix_uri: str) -> str:
    """The prefix of ``source sync`` in the listing's own URI form, to tell which recorded URIs
    it covers (:func:`under_prefix`): a directory is its real path (symbolic links resolved,
    ``localhost`` dropped, percent-encoded as the listing does) and ends with ``/``, so that it
    covers the files below it and never a sibling sharing its name's start (``docs2/`` is not
    under ``docs``); an S3 prefix is a string prefix of the quoted keys (as S3 lists it)."""
    parts = urlsplit(prefix_uri)
    if parts.scheme.lower() == "file" and parts.netloc in ("", "localhost"):
        path = os.path.realpath(_local_path(parts))
        uri = Path(path).as_uri()
        if os.path.isdir(path) and not uri.endswith("/"):
            uri += "/"
        return uri
    if parts.scheme.lower() == "s3":
        return f"s3://{_s3_bucket(parts)}/{quote(_s3_key(parts))}"
    return prefix_uri


def under_prefix(uri: str, prefix: str) -> bool:
    """Whether the canonical ``uri`` lies under a :func:`canonical_prefix`: below a directory
    (by path segment), the file itself, or (S3) a key starting with the prefix."""
    if prefix.startswith("file:") and not prefix.endswith("/"):
        return uri == prefix or uri.startswith(prefix + "/")
    return uri.startswith(prefix)


def _s3_key(parts: SplitResult) -> str:
    """The key of a split ``s3://bucket/key``: the path less its one leading ``/`` (a key may
    start with ``/`` itself: the listing gives ``s3://bucket//k`` for the key ``/k``)."""
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    return unquote(path)


def _list_s3(prefix_uri: str, policy: FetchPolicy, client: Any = None) -> Iterator[ObjectInfo]:
    parts = urlsplit(prefix_uri)
    bucket, prefix = _s3_bucket(parts), _s3_key(parts)
    if parts.query or parts.fragment:
        raise RawDocumentError("bad_uri", "s3 prefixes are s3://bucket/prefix")
    _check_bucket(bucket, policy)
    client = client or s3_client(policy)
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if key.endswith("/"):
                    continue  # a "folder" marker
                modified = obj.get("LastModified")
                yield ObjectInfo(
                    uri=f"s3://{bucket}/{quote(key)}",
                    size=int(obj.get("Size", 0)),
                    etag=obj.get("ETag"),
                    last_modified=(
                        email.utils.format_datetime(modified.astimezone(datetime.UTC), usegmt=True)
                        if modified
                        else None
                    ),
                )
    except RawDocumentError:
        raise
    except Exception as exc:
        err = classify_s3_error(exc, bucket)
        if err.error_class == "forbidden":
            raise RawDocumentError(
                "access", f"bucket {bucket!r} cannot be listed ({err.detail})", scope="source"
            ) from None
        if err.error_class == "not_found":
            raise RawDocumentError("not_found", f"no bucket {bucket!r} ({err.detail})") from None
        raise err from None


def _list_files(
    prefix_uri: str, policy: FetchPolicy, unlisted: list[str] | None = None
) -> Iterator[ObjectInfo]:
    parts = urlsplit(prefix_uri)
    if parts.netloc not in ("", "localhost"):
        raise RawDocumentError("bad_uri", "file:// URIs name a local path only")
    top = Path(os.path.realpath(_local_path(parts)))
    roots = [Path(os.path.realpath(r)) for r in policy.allowed_roots]
    root = next((r for r in roots if top == r or r in top.parents), None)
    if root is None:
        raise RawDocumentError(
            "not_allowed", f"{redact_uri(prefix_uri)} is outside the allowed roots"
        )
    if not top.is_dir():
        raise RawDocumentError("not_found", f"{redact_uri(prefix_uri)} is not a directory")
    try:
        yield from _walk_files(top, unlisted)
    except OSError as exc:
        # A subtree not listed is not a subtree deleted: source sync must stop, not delete
        # the rows of every file it could not see.
        where = redact_uri(Path(exc.filename or top).as_uri())
        raise RawDocumentError(
            "forbidden" if isinstance(exc, PermissionError) else "server_error",
            f"cannot list {where}: {exc.strerror or type(exc).__name__}",
        ) from None


def _walk_files(top: Path, unlisted: list[str] | None = None) -> Iterator[ObjectInfo]:
    """The regular files under ``top``; an unreadable directory or a failed ``lstat`` raises
    (``OSError``), or with ``unlisted`` given is appended there (``top`` itself raises): only a
    file or directory removed during the walk is skipped."""

    def walk_error(exc: OSError) -> None:
        if exc.errno == errno.ENOENT:  # a directory removed while listing is not an error
            return
        if unlisted is None or exc.filename is None or Path(exc.filename) == top:
            raise exc
        unlisted.append(Path(exc.filename).as_uri())

    for dirpath, dirnames, filenames in os.walk(top, onerror=walk_error, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue  # vanished while listing
            except OSError:
                if unlisted is None:
                    raise
                unlisted.append(path.as_uri())
                continue
            if stat.S_ISLNK(st.st_mode):
                continue  # a link may point out of the root: fetch() would refuse it
            if not stat.S_ISREG(st.st_mode):
                continue
            yield ObjectInfo(
                uri=path.as_uri(),
                size=st.st_size,
                etag=file_etag(st),
                last_modified=email.utils.formatdate(st.st_mtime, usegmt=True),
            )
