"""safeload's reference loader (the oracle the property cases are judged by): ``load_file`` only."""
from __future__ import annotations

import safeload.reference
from safeload import _extension
from safeload.conformance.adapters import AdapterUnavailable

if not _extension.available(safeload._C):
    raise AdapterUnavailable("safeload's compiled extension is not built here (make build)")


def load_file(path, device="cpu"):
    return safeload.reference.load_file(path, device)
