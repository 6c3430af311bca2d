"""safeload's reference loader (the oracle the property cases are judged by)."""
from __future__ import annotations

import safeload.reference


def load_file(path, device="cpu"):
    return safeload.reference.load_file(path, device)
