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
_TIMED_OUT = _raw_response("408 Request Timeout", "request headers not received in time", "timeout")


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with a connection limit and header/body deadlines (``configure`` sets them)."""

    max_connections = 512
    header_timeout_s = 10.0
    body_timeout_s = 30.0

    @classmethod
    def configure(cls, max_connections: int, header_timeout_s: float, body_timeout_s: float) -> type[GuardedH11]:
        return type(
            "GuardedH11",
            (cls,),
            dict(max_connections=max_connections, header_timeout_s=header_timeout_s, body_timeout_s=body_timeout_s),
        )

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._deadline: asyncio.TimerHandle | None = None
        self._phase = None
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.write(_REFUSED)
            transport.close()
            return
        self._arm("headers", self.header_timeout_s)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
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

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

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
        if self._phase == "headers" and (self.cycle is None or self.cycle.response_complete):
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
