"""Progress bars on stderr for long calls (``progress=True``)."""

from __future__ import annotations


def progress_bar(enabled: bool, total: float, unit: str, desc: str):
    """A tqdm bar, used as a context manager; disabled (a no-op with the same methods) unless ``enabled``."""
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, disable=not enabled)
