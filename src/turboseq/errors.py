"""The errors turboseq raises on bad input, each a ``ValueError`` whose message a user can act on."""

from __future__ import annotations


class ModelLoadError(ValueError):
    """A model directory or file that cannot be loaded; the message names the file and the reason."""


class AudioError(ValueError):
    """Audio that cannot be used; the message names the source and the reason."""


class AudioTooLong(AudioError):
    """Audio longer than a set limit (decoding stops as soon as it passes it)."""


class InputTooLong(ValueError):
    """An input with more tokens than the model (or the server) accepts."""

    def __init__(self, index: int, tokens: int, limit: int, hint: str = "pass truncation=True to cut it"):
        super().__init__(f"input {index} has {tokens} tokens; the model accepts at most {limit} ({hint})")
        self.index, self.tokens, self.limit = index, tokens, limit


class MissingExtra(ImportError):
    """An optional feature whose packages are not installed; the message names the extra that installs them."""


def require_extra(module: str, extra: str, feature: str):
    """``import module``, or ``MissingExtra`` naming ``pip install 'turboseq[extra]'``."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        top, name = module.split(".")[0], err.name or module
        shown = top if name.split(".")[0] == top else name  # ray itself, or a package ray needs
        raise MissingExtra(
            f"{feature} needs `{shown}`, which is not installed: pip install 'turboseq[{extra}]'"
        ) from None
