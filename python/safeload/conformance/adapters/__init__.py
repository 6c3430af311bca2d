"""Adapters: each module exposes ``load_file(path, device) -> dict[str, Tensor]``
for one loader, so ``safeload conform --loader
safeload.conformance.adapters.<name>:load_file`` can judge it. An adapter
whose package is not installed raises :class:`AdapterUnavailable` on import;
the harness reports the loader as skipped.

Adapters copy tensors out of a peer's internal buffers only where the peer's
own documentation says its tensors are views that it will reuse; otherwise
they return what the peer returns, so the harness judges the peer itself.
"""
from __future__ import annotations

import importlib

ADAPTERS = {
    "safeload_fast": "safeload fast loader (safeload.load_file)",
    "safeload_reference": "safeload reference loader (safeload.reference.load_file)",
    "safetensors_torch": "upstream safetensors.torch.load_file",
    "safetensors_pread": "upstream safetensors 0.9 load_file(backend='pread')",
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
    """The ``MODULE:FUNC`` loader spec of a shipped adapter."""
    if name not in ADAPTERS:
        raise KeyError(f"no adapter {name!r}; known: {', '.join(ADAPTERS)}")
    return f"safeload.conformance.adapters.{name}:load_file"
