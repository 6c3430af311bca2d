"""safeload's fast loader, through every surface: ``load_file``, ``load`` and ``safe_open``."""
from __future__ import annotations

import safeload
from safeload import _extension
from safeload.conformance.adapters import AdapterUnavailable

if not _extension.available(safeload._C):
    raise AdapterUnavailable("safeload's compiled extension is not built here (make build)")

safe_open = safeload.safe_open


def load_file(path, device="cpu"):
    return safeload.load_file(path, device)


def load(data, device="cpu"):
    return safeload.load(data, device)
