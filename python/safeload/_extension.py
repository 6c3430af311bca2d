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


def torch_mismatch() -> str | None:
    """Why the extension cannot be used with the torch installed, when it was built against
    another release (``_build_info.py``, written by the build); None when they match or
    when there is no record (a build from before the record was kept)."""
    try:
        from safeload._build_info import TORCH_VERSION as built
    except ImportError:
        return None
    import torch

    installed = torch.__version__.split("+")[0]
    if not built or installed == built:
        return None
    return (f"it was built against torch {built} and this is torch {torch.__version__}; an extension "
            f"built for one torch release cannot load into another. Install torch {built}, or rebuild "
            "safeload against this torch")


def load():
    """The extension module, or the stand-in."""
    mismatch = torch_mismatch()
    if mismatch:
        return _Missing(ImportError(mismatch))
    try:
        from safeload import _C
    except ImportError as e:
        return _Missing(e)
    return _C


def available(module) -> bool:
    return not isinstance(module, _Missing)
