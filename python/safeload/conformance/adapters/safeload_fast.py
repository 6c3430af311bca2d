"""safeload's fast loader."""
from __future__ import annotations

import safeload


def load_file(path, device="cpu"):
    return safeload.load_file(path, device)
