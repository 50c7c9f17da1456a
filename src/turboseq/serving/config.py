"""The server's limits and switches (``turboseq serve`` flags)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServerConfig:
    max_batch_size: int = 32
    max_batch_tokens: int = 8192
    batch_wait_ms: float = 5.0
    max_queue: int = 256
    request_timeout_s: float = 60.0
    max_input_tokens: int | None = None  # default: the model's position limit
    max_payload_bytes: int | None = None  # default: the task's (1 MiB for text, 25 MiB for speech)
    batching: bool = True  # False: one request per engine call (for comparison)
