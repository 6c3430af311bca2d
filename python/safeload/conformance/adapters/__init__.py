"""Adapters: each module exposes ``load_file(path, device) -> dict[str, Tensor]``
for one loader, and where the loader has them ``load(data, device)`` and
``safe_open(path, framework, device=...)``, so ``safeload conform --loader NAME``
(the module ``safeload.conformance.adapters.<name>``) judges every surface it
has. An adapter whose package is not installed raises
:class:`AdapterUnavailable` on import; the harness reports the loader as skipped.

Adapters copy tensors out of a peer's internal buffers only where the peer's
own documentation says its tensors are views that it will reuse; otherwise
they return what the peer returns, so the harness judges the peer itself.
"""
from __future__ import annotations

import importlib

ADAPTERS = {
    "safeload_fast": "safeload fast loader (safeload.load_file, load, safe_open)",
    "safeload_reference": "safeload reference loader (safeload.reference.load_file)",
    "safetensors_torch": "upstream safetensors (safetensors.torch.load_file, load, safe_open)",
    "safetensors_pread": "upstream safetensors' pread backend (load_file and safe_open with backend='pread')",
    "safetensors_prefetch": "upstream safetensors 0.9 safe_open(...).prefetch() (CUDA only)",
    "fastsafetensors": "fastsafetensors (fastsafe_open, no GDS)",
    "runai_model_streamer": "runai-model-streamer (SafetensorsStreamer)",
    "instanttensor": "InstantTensor (instanttensor.safe_open)",
}


class AdapterUnavailable(ImportError):
    """The adapter's package is not installed or cannot run here."""


def require(module: str, package: str):
    """Import ``module`` or raise AdapterUnavailable naming the pip ``package``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise AdapterUnavailable(f"{package} is not installed ({e}); pip install {package}") from e


def spec(name: str) -> str:
    """The loader spec of a shipped adapter: its module, so every surface it has is judged."""
    if name not in ADAPTERS:
        raise KeyError(f"no adapter {name!r}; known: {', '.join(ADAPTERS)}")
    return f"safeload.conformance.adapters.{name}"
