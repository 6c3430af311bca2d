"""A model-shaped safetensors file for the benchmark, written once and reused.

The tensors have the names and shapes of Qwen3-8B in bf16 (hidden 4096, intermediate 12288,
32 query heads and 8 key/value heads of 128, vocabulary 151936, untied lm_head). The file is
scaled to the requested size by keeping the embeddings, the final norm and lm_head and as many
decoder layers as it takes to reach the size. Below the size of that skeleton plus one layer
(about 2.7 GB), every width is divided by the smallest power of two that fits, so tests can use
files of a few MiB with the same structure.

The bytes are pseudo-random (a fixed seed): loaders do not interpret them, and random data
keeps any layer of the storage stack from compressing or deduplicating it. The prefix and
header come from the test writer (``safeload.testing.writer.build_header``), laid out as
upstream lays a file out.

The Qwen3 layer table (:func:`qwen3_tensors`) is the one the demo uses too.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from safeload.testing.writer import build_header


@dataclasses.dataclass(frozen=True)
class Shapes:
    hidden: int = 4096
    intermediate: int = 12288
    q_heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    vocab: int = 151936

    def divided(self, d: int) -> "Shapes":
        return Shapes(
            hidden=max(1, self.hidden // d),
            intermediate=max(1, self.intermediate // d),
            q_heads=max(1, self.q_heads // d),
            kv_heads=max(1, self.kv_heads // d),
            head_dim=self.head_dim,
            vocab=max(1, self.vocab // d),
        )


QWEN3_8B = Shapes()
QWEN3_8B_LAYERS = 36
_BF16_BYTES = 2


def layer_tensors(s: Shapes, i: int) -> list[tuple[str, list[int]]]:
    p = f"model.layers.{i}."
    q, kv = s.q_heads * s.head_dim, s.kv_heads * s.head_dim
    return [
        (p + "input_layernorm.weight", [s.hidden]),
        (p + "mlp.down_proj.weight", [s.hidden, s.intermediate]),
        (p + "mlp.gate_proj.weight", [s.intermediate, s.hidden]),
        (p + "mlp.up_proj.weight", [s.intermediate, s.hidden]),
        (p + "post_attention_layernorm.weight", [s.hidden]),
        (p + "self_attn.k_norm.weight", [s.head_dim]),
        (p + "self_attn.k_proj.weight", [kv, s.hidden]),
        (p + "self_attn.o_proj.weight", [s.hidden, q]),
        (p + "self_attn.q_norm.weight", [s.head_dim]),
        (p + "self_attn.q_proj.weight", [q, s.hidden]),
        (p + "self_attn.v_proj.weight", [kv, s.hidden]),
    ]


def skeleton_tensors(s: Shapes) -> list[tuple[str, list[int]]]:
    return [
        ("lm_head.weight", [s.vocab, s.hidden]),
        ("model.embed_tokens.weight", [s.vocab, s.hidden]),
        ("model.norm.weight", [s.hidden]),
    ]


def qwen3_tensors(s: Shapes, layers: int) -> list[tuple[str, list[int]]]:
    """Names and shapes of a Qwen3 decoder with ``layers`` layers and widths ``s``:
    the embeddings, final norm and untied lm_head, then each layer's tensors."""
    tensors = skeleton_tensors(s)
    for i in range(layers):
        tensors += layer_tensors(s, i)
    return tensors


def _nbytes(tensors: list[tuple[str, list[int]]]) -> int:
    total = 0
    for _, shape in tensors:
        n = _BF16_BYTES
        for dim in shape:
            n *= dim
        total += n
    return total


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a generated file holds: the shapes, the layer count and the tensor list."""

    shapes: Shapes
    width_divisor: int
    layers: int
    tensors: tuple[tuple[str, tuple[int, ...]], ...]

    @property
    def data_bytes(self) -> int:
        return _nbytes([(n, list(s)) for n, s in self.tensors])


def plan(size: int) -> Plan:
    """The smallest Qwen3-8B-shaped file of at least ``size`` data bytes (at most 36 layers)."""
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    d = 1
    while True:
        s = QWEN3_8B.divided(d)
        fixed = _nbytes(skeleton_tensors(s))
        per_layer = _nbytes(layer_tensors(s, 0))
        if fixed + per_layer <= size or s.hidden == 1:
            break
        d *= 2
    layers = max(1, min(QWEN3_8B_LAYERS, -(-(size - fixed) // per_layer)))
    tensors = sorted(qwen3_tensors(s, layers))
    return Plan(s, d, layers, tuple((n, tuple(shape)) for n, shape in tensors))


def _header(p: Plan) -> bytes:
    """The length prefix and padded header, data laid out in header (name) order, the
    order upstream's writer uses."""
    metadata = {"format": "pt", "shapes_of": "Qwen3-8B", "layers": str(p.layers),
                "width_divisor": str(p.width_divisor)}
    return build_header([(name, "BF16", shape) for name, shape in p.tensors], metadata).data


def file_name(size: int) -> str:
    if size % (1 << 30) == 0:
        label = f"{size >> 30}GiB"
    elif size % (1 << 20) == 0:
        label = f"{size >> 20}MiB"
    else:
        label = f"{size}B"
    return f"qwen3-8b-shapes-bf16-{label}.safetensors"


def ensure_file(size: int, directory: str | os.PathLike, *, progress=None) -> Path:
    """Return the path of the generated file for ``size``, writing it first if it is missing.

    An existing file is reused when its length is the one the plan gives; anything else is
    rewritten. The file is written under a temporary name, fsynced (so that eviction can drop
    its pages: dirty pages are not dropped) and renamed into place.
    """
    p = plan(size)
    header = _header(p)
    expected = len(header) + p.data_bytes
    directory = Path(directory)
    path = directory / file_name(size)
    if path.exists() and path.stat().st_size == expected:
        return path
    directory.mkdir(parents=True, exist_ok=True)
    import numpy as np  # the bench extra; the table above is used without it

    tmp = path.with_name(path.name + ".partial")
    rng = np.random.default_rng(0x5AFE)
    chunk = 64 << 20
    written = 0
    with open(tmp, "wb") as f:
        f.write(header)
        remaining = p.data_bytes
        while remaining:
            n = min(chunk, remaining)
            f.write(rng.bytes(n))
            remaining -= n
            written += n
            if progress is not None:
                progress(written, p.data_bytes)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path
