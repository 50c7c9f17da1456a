"""Connection hygiene below HTTP: a bound on open connections, and deadlines for slow or idle clients.

uvicorn (with h11) keeps a connection open as long as bytes trickle in, and one that never sends anything
stays open until the client leaves: enough of them exhaust the process's file descriptors. ``GuardedH11``
closes a connection that has not delivered a request's headers within ``header_timeout_s`` of its opening
(or of the request's first byte), one whose body has not arrived within ``body_timeout_s`` (the app answers
408 first when it is reading), and answers 503 to connections beyond ``max_connections`` without reading
them. Idle keep-alive connections are uvicorn's own ``timeout_keep_alive``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


def _raw_response(status: str, message: str, kind: str) -> bytes:
    """A whole HTTP response with a JSON error body, written straight to the socket, then the connection closes."""
    body = json.dumps({"error": message, "error_type": kind}).encode()
    head = f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {len(body)}"
    return head.encode() + b"\r\n\r\n" + body


_REFUSED = _raw_response("503 Service Unavailable", "too many open connections", "unavailable")
_REFUSED_CLIENT = _raw_response("503 Service Unavailable", "too many open connections from this address", "unavailable")
_TIMED_OUT = _raw_response("408 Request Timeout", "request headers not received in time", "timeout")


def _header_block_error(data: bytes) -> str | None:
    """Why the request head at the start of ``data`` is refused (None: fine, or not complete yet). h11 reads
    bare-LF line endings and obsolete line folding; a proxy in front may read them otherwise (RFC 9112
    section 2.2 and 5.2), so a request that uses them is refused rather than guessed at."""
    data = data.lstrip(b"\r\n")  # RFC 9112: empty lines before a request line are ignored
    end = data.find(b"\n\r\n")
    bare_end = data.find(b"\n\n")
    if end < 0 and bare_end < 0:
        return None
    head = data[: min(e for e in (end, bare_end) if e >= 0) + 1]
    if head.count(b"\n") != head.count(b"\r\n") or bare_end >= 0 and (end < 0 or bare_end < end):
        return "malformed request head: lines must end with CRLF"
    if any(line[:1] in (b" ", b"\t") for line in head.split(b"\r\n")[1:]):
        return "malformed request head: obsolete line folding"
    return None


def _framing_error(event: h11.Request) -> str | None:
    names = [name.lower() for name, _ in event.headers]
    if b"transfer-encoding" in names and b"content-length" in names:
        return "a request with both Transfer-Encoding and Content-Length is refused (RFC 9112 section 6.3)"
    return None


class _Refused(Exception):
    """A request head, framing or chunk that is answered with ``status`` and a closed connection."""

    def __init__(self, message: str, status: str = "400 Bad Request", kind: str = "invalid_http"):
        super().__init__(message)
        self.response = _raw_response(status, message, kind)


def _chunk_size(data: bytes) -> int | None:
    """The size a chunk-size line at the start of ``data`` declares (after the previous chunk's CRLF)."""
    data = data.removeprefix(b"\r\n")
    digits = len(data) - len(data.lstrip(b"0123456789abcdefABCDEF"))
    if not digits or digits == len(data):  # no size, or the line is not complete yet
        return None
    return int(data[:digits], 16)


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with a connection limit and header/body deadlines (``configure`` sets them)."""

    max_connections = 512
    header_timeout_s = 10.0
    body_timeout_s = 30.0
    first_byte_timeout_s = 3.0
    max_per_client = 128
    max_body_bytes = 1 << 20  # a chunk declared larger than this is refused before its bytes arrive
    per_client: dict = {}  # peer address -> open connections (one dict per configured class)

    @classmethod
    def configure(
        cls,
        max_connections: int,
        header_timeout_s: float,
        body_timeout_s: float,
        first_byte_timeout_s: float = 3.0,
        max_per_client: int = 128,
        max_body_bytes: int = 1 << 20,
    ) -> type[GuardedH11]:
        return type(
            "GuardedH11",
            (cls,),
            dict(
                max_connections=max_connections,
                header_timeout_s=header_timeout_s,
                body_timeout_s=body_timeout_s,
                first_byte_timeout_s=first_byte_timeout_s,
                max_per_client=max_per_client,
                max_body_bytes=max_body_bytes,
                per_client={},
            ),
        )

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._deadline: asyncio.TimerHandle | None = None
        self._phase = None
        self._peer = None
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.write(_REFUSED)
            transport.close()
            return
        peer = self.client[0] if self.client else None
        if peer is not None:
            count = self.per_client.get(peer, 0) + 1
            self.per_client[peer], self._peer = count, peer
            if count > self.max_per_client:
                transport.write(_REFUSED_CLIENT)
                transport.close()
                return
        next_event = self.conn.next_event
        chunk_boundary = False  # a chunked body's next bytes start a chunk (its size line)

        def checked_next_event():  # every request head, and every chunk size, is checked before h11 reads it
            nonlocal chunk_boundary
            state = self.conn.their_state
            if state is h11.IDLE:
                why = _header_block_error(self.conn.trailing_data[0])
                if why is not None:
                    raise _Refused(why)
            elif state is h11.SEND_BODY and chunk_boundary:
                size = _chunk_size(self.conn.trailing_data[0])
                if size is not None and size > self.max_body_bytes:
                    raise _Refused(
                        f"request body chunk of {size} bytes is over the limit of {self.max_body_bytes}",
                        "413 Content Too Large",
                        "payload_too_large",
                    )
            event = next_event()
            if isinstance(event, h11.Request):
                why = _framing_error(event)
                if why is not None:
                    raise _Refused(why)
                chunk_boundary = any(
                    name.lower() == b"transfer-encoding" and b"chunked" in value.lower()
                    for name, value in event.headers
                )
            elif isinstance(event, h11.Data):
                chunk_boundary = bool(event.chunk_end)
            elif event is not h11.NEED_DATA and event is not h11.PAUSED:
                chunk_boundary = False
            return event

        self.conn.next_event = checked_next_event
        self._arm("first byte", self.first_byte_timeout_s)

    def handle_events(self) -> None:
        try:
            super().handle_events()
        except _Refused as err:
            if not self.transport.is_closing():
                cycle = self.cycle  # the request being read, or the one before it on this connection
                if cycle is None or cycle.response_complete or not cycle.response_started:
                    self.transport.write(err.response)
                self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._phase == "first byte":
            self._arm("headers", self.header_timeout_s)
        super().data_received(data)
        if getattr(self, "_upgraded", False):  # the socket is the WebSocket protocol's now
            return
        state = self.conn.their_state
        if state is h11.IDLE and self._phase != "headers":  # the first bytes of a (next) request
            self._arm("headers", self.header_timeout_s)
        elif state is h11.SEND_BODY and self._phase != "body":
            self._arm("body", self.body_timeout_s + 5)  # the app's own body deadline answers 408 first
        elif state not in (h11.IDLE, h11.SEND_BODY):
            self._disarm()  # the request is in: the app's request timeout governs from here

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._disarm()  # idle now: uvicorn's keep-alive timeout applies

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        """The socket goes to uvicorn's WebSocket protocol: no HTTP deadline applies any more (the route has its
        own idle timeout), and the peer's count is given back when that protocol loses the connection."""
        self._disarm()
        self._upgraded = True
        super().handle_websocket_upgrade(event)
        protocol = self.transport.get_protocol()
        lost = protocol.connection_lost

        def connection_lost(exc: Exception | None) -> None:
            self._release_peer()
            lost(exc)

        protocol.connection_lost = connection_lost

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._release_peer()
        super().connection_lost(exc)

    def _release_peer(self) -> None:
        if self._peer is not None:
            left = self.per_client.get(self._peer, 1) - 1
            if left > 0:
                self.per_client[self._peer] = left
            else:
                self.per_client.pop(self._peer, None)
            self._peer = None

    def _arm(self, phase: str, seconds: float) -> None:
        self._disarm()
        self._phase = phase
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()
        self._deadline, self._phase = None, None

    def _expired(self) -> None:
        if self.transport.is_closing():
            return
        if self._phase in ("headers", "first byte") and (self.cycle is None or self.cycle.response_complete):
            self.transport.write(_TIMED_OUT)
        self.transport.close()


class RateLimitedErrors(logging.Filter):
    """Lets one record per ``seconds`` through for messages that repeat in a storm (accept() failing on a full
    descriptor table logs a traceback per attempt); the rest are counted and reported with the next one."""

    def __init__(self, seconds: float = 10.0, markers=("accept", "Too many open files")):
        super().__init__()
        self.seconds, self.markers = seconds, markers
        self.last = 0.0
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not any(m in message for m in self.markers) and not (
            record.exc_info and isinstance(record.exc_info[1], OSError)
        ):
            return True
        now = time.monotonic()
        if now - self.last < self.seconds:
            self.dropped += 1
            return False
        if self.dropped:
            record.msg = f"{record.msg} ({self.dropped} similar messages suppressed)"
            self.dropped = 0
        record.exc_info = None  # one line, not a traceback each time
        self.last = now
        return True


def raise_open_file_limit() -> int:
    """Raise this process's soft limit on open files to the hard limit; returns the new soft limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft
