"""The server's limits and switches (``turboseq serve`` flags), checked once when the server starts."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class ServerConfig:
    # batching
    max_batch_size: int = 32  # inputs per engine batch and per request
    max_batch_tokens: int = 8192  # padded input tokens per engine batch
    batch_wait_ms: float = 5.0
    max_queue: int = 256  # waiting requests before 429
    request_timeout_s: float = 60.0
    # speech: a request may take this many more seconds per second of its audio (a 30-minute recording: 30 more
    # minutes on top of request_timeout_s; tiny.en takes ~1/25 of that on 2 cores)
    timeout_per_audio_second: float = 1.0
    batching: bool = True  # False: one request per engine call (for comparison)
    # text generation: requests join the running batch at a step boundary; False: they wait for it to end and
    # batch with each other (request-level batching, for comparison)
    continuous_batching: bool = True
    # what one request may ask for (422 past a limit, naming it)
    max_input_tokens: int | None = None  # default: the model's position limit
    max_payload_bytes: int | None = None  # default: the task's (1 MiB for text, 25 MiB for speech)
    max_beams: int = 16
    max_return_sequences: int = 16
    max_new_tokens: int | None = None  # default: the model's position limit
    max_request_cost: int = 65536  # inputs x max(beams, sequences) x decoder positions
    max_audio_seconds: float = 3600.0  # per audio input (413 past it)
    max_request_audio_seconds: float | None = None  # all of one request's audio (default: max_audio_seconds)
    max_queued_audio_seconds: float = 14400.0  # decoded audio held by all requests at once (503 past it)
    max_stop_sequences: int = 16  # stop strings per request (TGI's --max-stop-sequences)
    max_parameter_items: int = 1024  # list items in a request's parameters (bad_words_ids, stop, suppress_tokens)
    max_parameter_chars: int = 16384  # characters of text in a request's parameters (stop strings, prompts)
    # live transcription (WebSocket streams)
    max_live_streams: int = 16  # open at once; more are refused with an error event
    max_live_seconds: float = 14400.0  # audio of one stream; it ends past it
    live_idle_timeout_s: float = 30.0  # a stream that sends nothing this long is closed
    max_live_frame_bytes: int = 4 << 20  # one WebSocket message (a base64 append of 2 min of 24 kHz PCM16 fits)
    # connections
    max_connections: int = 512  # open connections; more are answered 503 and closed at once
    header_timeout_s: float = 10.0  # from a request's first byte (or the connection's opening) to its last header
    body_timeout_s: float = 30.0  # to receive a request's whole body
    keep_alive_timeout_s: float = 5.0  # an idle keep-alive connection is closed after this
    first_byte_timeout_s: float = 3.0  # a new connection that has sent nothing is closed after this
    max_connections_per_client: int = 128  # open connections from one peer address
    drain_timeout_s: float | None = None  # SIGTERM: requests in flight get this long (default: request timeout + 5)

    def check(self) -> None:
        """Raises ValueError naming the first setting out of range."""
        positive = (
            "max_batch_size",
            "max_batch_tokens",
            "max_queue",
            "max_beams",
            "max_return_sequences",
            "max_request_cost",
            "max_connections",
            "max_stop_sequences",
            "max_parameter_items",
            "max_parameter_chars",
            "max_connections_per_client",
            "max_live_streams",
            "max_live_frame_bytes",
        )
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}")
        for name in ("max_input_tokens", "max_payload_bytes", "max_new_tokens"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}")
        for name in (
            "request_timeout_s",
            "max_audio_seconds",
            "header_timeout_s",
            "body_timeout_s",
            "keep_alive_timeout_s",
            "max_queued_audio_seconds",
            "first_byte_timeout_s",
            "max_live_seconds",
            "live_idle_timeout_s",
        ):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise ValueError(f"`{name}` must be a number > 0, got {value!r}")
        for name in ("max_request_audio_seconds", "drain_timeout_s"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or not 0 < value < float("inf")):
                raise ValueError(f"`{name}` must be a number > 0, got {value!r}")
        value = self.timeout_per_audio_second
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
            raise ValueError(f"`timeout_per_audio_second` must be a number >= 0, got {value!r}")
        if not isinstance(self.batch_wait_ms, (int, float)) or not 0 <= self.batch_wait_ms <= 10_000:
            raise ValueError(f"`batch_wait_ms` must be in [0, 10000], got {self.batch_wait_ms!r}")

    @property
    def request_audio_seconds(self) -> float:
        return self.max_request_audio_seconds or self.max_audio_seconds

    @property
    def drain_seconds(self) -> float:
        return self.drain_timeout_s or self.request_timeout_s + 5.0

    def limits(self) -> dict:
        """Every setting, for /info."""
        return {f.name: getattr(self, f.name) for f in fields(self)}
