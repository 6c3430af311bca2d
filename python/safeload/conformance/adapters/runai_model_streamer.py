"""runai-model-streamer's SafetensorsStreamer.

The streamer yields tensors backed by its reusable buffer, so each one is
cloned (and moved to the device) as it arrives.
"""
from __future__ import annotations

from safeload.conformance.adapters import require

_runai = require("runai_model_streamer", "runai-model-streamer")


def load_file(path, device="cpu"):
    out = {}
    with _runai.SafetensorsStreamer() as streamer:
        streamer.stream_file(str(path))
        for name, tensor in streamer.get_tensors():
            out[name] = tensor.to(device, copy=True)
    return out
