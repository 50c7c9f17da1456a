"""``turboseq serve`` in a child process on a free loopback port: for the load test and the server tests."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """Starts the server and waits until ``/health`` answers 200 (warmed up). ``stop()`` sends SIGTERM (the
    server drains) and returns its exit code. Usable as a context manager.

    ``capture=True`` collects the server's output (shown if it fails to start); otherwise it goes to ours.
    ``model_flag=False`` leaves ``--model`` out (``--models-dir`` in ``args``)."""

    def __init__(
        self,
        model_dir: str | Path,
        *args: str,
        capture: bool = True,
        start_timeout_s: float = 180,
        model_flag: bool = True,
    ):
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable,
            "-m",
            "turboseq.cli",
            "serve",
            *(["--model", str(model_dir)] if model_flag else []),
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            *args,
        ]
        out = subprocess.PIPE if capture else None
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if capture else None)
        deadline = time.time() + start_timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                output = self.proc.stdout.read().decode(errors="replace") if capture else ""
                raise RuntimeError(f"server exited with {self.proc.returncode} before it was ready\n{output}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not become healthy in {start_timeout_s:.0f} s")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout_s: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
