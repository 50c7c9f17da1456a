"""Progress bars on stderr for long calls (``progress=True``)."""

from __future__ import annotations


class _Bounded:
    """A tqdm bar that never passes its total: increments measured in rounded floats (seconds of audio) can add up
    to a little more than the total, which tqdm shows as 101.30000000000001/101.2 with a negative ETA."""

    def __init__(self, bar):
        self.bar = bar

    def update(self, n: float = 1) -> None:
        room = self.bar.total - self.bar.n
        n = min(n, room)
        if n > 0:
            self.bar.update(round(n, 6) if isinstance(n, float) else n)

    def __enter__(self) -> _Bounded:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None and self.bar.total is not None and self.bar.n < self.bar.total:
            self.bar.update(self.bar.total - self.bar.n)  # done: the bar ends full, once
        self.bar.close()


def progress_bar(enabled: bool, total: float, unit: str, desc: str) -> _Bounded:
    """A tqdm bar, used as a context manager; disabled (a no-op with the same methods) unless ``enabled``."""
    from tqdm import tqdm

    return _Bounded(tqdm(total=total, unit=unit, desc=desc, disable=not enabled))
