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
never loads safetensors for torch never imports safeload. The same hook
sees transformers' and diffusers' model modules finish importing (they
import safetensors while they run, before they define ``from_pretrained``)
and has the patch wrap their ``from_pretrained`` then.
"""
from __future__ import annotations

import importlib.machinery
import os
import sys

OFF = ("", "0", "false", "no", "off")
TRIGGER = "safetensors.torch"
#: Modules whose ``from_pretrained`` the patch wraps (safeload.patch._FROM_PRETRAINED).
WATCHED = ("transformers.modeling_utils", "diffusers.models.modeling_utils")


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


def _wrap_from_pretrained() -> None:
    patching = sys.modules.get("safeload.patch")
    if patching is not None and patching.is_patched():
        patching._wrap_classes()


class AfterImport:
    """A meta-path finder for the modules named in ``callbacks`` only: it finds
    each the normal way and calls its callback once the module has run.
    ``owner`` tells whose finder it is."""

    def __init__(self, callbacks, owner: str):
        self.callbacks = dict(callbacks)
        self.owner = owner

    def find_spec(self, fullname, path=None, target=None):
        callback = self.callbacks.get(fullname)
        if callback is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            callback()

        spec.loader.exec_module = exec_module
        return spec


def installed(owner: str) -> bool:
    """Whether ``owner``'s finder is on ``sys.meta_path``."""
    return any(getattr(f, "owner", None) == owner for f in sys.meta_path)


def install() -> None:
    """Patches now if ``safetensors.torch`` is already imported, else when it is."""
    if TRIGGER in sys.modules:
        _activate()
    if not installed(__name__):
        callbacks = {TRIGGER: _activate, **{name: _wrap_from_pretrained for name in WATCHED}}
        sys.meta_path.insert(0, AfterImport(callbacks, __name__))
