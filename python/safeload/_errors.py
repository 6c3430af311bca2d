"""Exceptions raised by safeload. The extension module raises these."""
from __future__ import annotations


def _upstream_bases() -> tuple:
    """``safetensors.SafetensorError`` when upstream is installed, so that
    ``except safetensors.SafetensorError`` in code written for upstream also
    catches safeload's errors (``except`` matches on the class hierarchy
    only, so a real base class is the one way). Importing upstream's
    extension costs about a millisecond and imports no framework."""
    try:
        from safetensors import SafetensorError as upstream
    except Exception:  # not installed, or a broken install: safeload works without it
        return ()
    return (upstream,)


class SafetensorError(ValueError, *_upstream_bases()):
    """A file or argument that safeload refuses.

    ``code`` is a stable upper-case name (``"INVALID_OFFSET"``, ...), the same
    for every loader and every version; match on it, not on the message.
    I/O failures are not SafetensorErrors: they raise ``OSError``.

    It is a ``ValueError`` and, when upstream ``safetensors`` is installed,
    also a ``safetensors.SafetensorError``.
    """

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code

    def __reduce__(self):  # keep .code across pickling (worker processes)
        return (type(self), (str(self), self.code))
