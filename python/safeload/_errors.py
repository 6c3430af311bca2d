"""Exceptions raised by safeload. The extension module raises these."""
from __future__ import annotations


class SafetensorError(ValueError):
    """A file or argument that safeload refuses.

    ``code`` is a stable upper-case name (``"INVALID_OFFSET"``, ...), the same
    for every loader and every version; match on it, not on the message.
    I/O failures are not SafetensorErrors: they raise ``OSError``.
    """

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code

    def __reduce__(self):  # keep .code across pickling (worker processes)
        return (type(self), (str(self), self.code))
