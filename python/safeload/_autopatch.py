"""The no-code route to ``safeload.patch()``: ``SAFELOAD_PATCH=1``.

The package installs ``safeload-autopatch.pth`` into site-packages. Python
runs its one line at every interpreter start; the line reads the variable
and, only when it is set to something other than ``""``, ``0``, ``false``,
``no`` or ``off``, loads this file (by path: importing the ``safeload``
package would import torch) and calls :func:`install`. Unset, it costs one
environment lookup.

:func:`install` imports nothing heavy either: it adds an import hook that
waits for ``safetensors.torch`` to be imported (by transformers, diffusers,
accelerate, or the user) and then calls ``safeload.patch()``. A process that
never loads safetensors for torch never imports safeload.
"""
from __future__ import annotations

import importlib.machinery
import os
import sys

OFF = ("", "0", "false", "no", "off")
TRIGGER = "safetensors.torch"


def enabled(environ=None) -> bool:
    """Whether ``SAFELOAD_PATCH`` asks for the patch."""
    value = (os.environ if environ is None else environ).get("SAFELOAD_PATCH", "")
    return value.strip().lower() not in OFF


def _activate() -> None:
    try:
        import safeload

        safeload.patch()
    except Exception as e:  # never break the program that imported safetensors
        print(f"safeload: SAFELOAD_PATCH is set but safeload.patch() failed: {type(e).__name__}: {e}",
              file=sys.stderr)


class _Hook:
    """A meta-path finder that only watches for ``safetensors.torch``: it
    finds the module the normal way and patches once it has run."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != TRIGGER:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module
        hook = self

        def exec_module(module):
            run(module)
            hook.remove()
            _activate()

        spec.loader.exec_module = exec_module
        return spec

    def remove(self) -> None:
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass


def install() -> None:
    """Patches now if ``safetensors.torch`` is already imported, else when it is."""
    if TRIGGER in sys.modules:
        _activate()
        return
    if not any(isinstance(f, _Hook) for f in sys.meta_path):
        sys.meta_path.insert(0, _Hook())
