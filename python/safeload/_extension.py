"""safeload's compiled extension (``safeload._C``), or a stand-in saying why it is missing.

The conformance harness (``safeload conform``, :mod:`safeload.conformance`,
:mod:`safeload.testing`) must run where the extension cannot be built: on a machine with a
torch built from source, for instance, where a maintainer tests another loader. So a missing
extension is not an import error of the package: the stand-in raises
:class:`ExtensionMissing` (an ImportError) naming the cause when anything of it is used.
"""
from __future__ import annotations


class ExtensionMissing(ImportError):
    """safeload's compiled extension is not available in this installation."""


class _Missing:
    def __init__(self, error: BaseException):
        self._error = error

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise ExtensionMissing(
            f"safeload's compiled extension (safeload._C) is not available: {self._error}. Build it with "
            "'make build', or install the package with 'pip install --no-build-isolation .'. The conformance "
            "harness ('safeload conform', safeload.conformance, safeload.testing) runs without it.")

    def __bool__(self) -> bool:
        return False


def load():
    """The extension module, or the stand-in."""
    try:
        from safeload import _C
    except ImportError as e:
        return _Missing(e)
    return _C


def available(module) -> bool:
    return not isinstance(module, _Missing)
