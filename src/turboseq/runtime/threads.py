"""How many torch threads a process should use: as told, or, inside a Ray actor or task, as many as the CPUs
Ray assigned to it. Ray sets OMP_NUM_THREADS only when it is unset, and a fractional CPU share gives one thread."""

from __future__ import annotations

import sys


def worker_threads(num_threads: int | None = None) -> int | None:
    """``num_threads`` if given (checked); the CPUs Ray assigned to this actor or task (at least 1); else None:
    leave torch's default."""
    if num_threads is not None:
        if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
            raise ValueError(f"`num_threads` must be an integer >= 1, got {num_threads!r}")
        return num_threads
    ray = sys.modules.get("ray")  # a Ray worker has imported ray already; elsewhere it need not be installed
    if ray is None or not getattr(ray, "is_initialized", lambda: False)():
        return None
    try:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # the driver, or a Ray without the call: no assignment to follow
        return None
    return max(1, int(cpus)) if cpus else None


def set_worker_threads(num_threads: int | None = None) -> int:
    """Apply ``worker_threads``; returns the threads torch now uses."""
    import torch

    threads = worker_threads(num_threads)
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()
