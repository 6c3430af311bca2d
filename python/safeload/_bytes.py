"""A tensor's bytes as a tensor: torch alone, no loader. Shared by the
multi-rank exchange (``distributed``) and the conformance harness, which
must not depend on the loader it judges."""
from __future__ import annotations


def byte_view(t):
    """A flat uint8 tensor over exactly the memory of contiguous tensor ``t``,
    on its device, whatever its dtype: writes through it land in ``t``."""
    import torch

    n = t.numel() * t.element_size()
    return torch.empty(0, dtype=torch.uint8, device=t.device).set_(
        t.untyped_storage(), t.storage_offset() * t.element_size(), (n,), (1,))
