"""What a case is, what a loader must do with it, and where the corpus lives."""
from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ACCEPT, REJECT, IMPL = "accept", "reject", "implementation-defined"

# How a format dtype appears in torch: the torch dtype attribute name. This is
# the judge's own statement of the mapping, deliberately written independently
# of the loaders it judges (safeload's lives in its C++ torch adapter); dtypes
# absent here (F6_*) have no torch equivalent.
TORCH_DTYPES = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "I16": "int16",
    "U16": "uint16",
    "I32": "int32",
    "U32": "uint32",
    "I64": "int64",
    "U64": "uint64",
    "F16": "float16",
    "BF16": "bfloat16",
    "F32": "float32",
    "F64": "float64",
    "C64": "complex64",
    "F8_E5M2": "float8_e5m2",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E8M0": "float8_e8m0fnu",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F4": "float4_e2m1fn_x2",
}
# torch packs F4 in pairs along the last dimension.
_PACKED_LAST_DIM = {"F4": 2}


@dataclasses.dataclass(frozen=True)
class ExpectedTensor:
    """A tensor a loader must return: format dtype and shape as written in the
    file, and the SHA-256 of its raw bytes."""

    dtype: str
    shape: tuple[int, ...]
    sha256: str
    nbytes: int

    @property
    def torch_dtype(self) -> str | None:
        return TORCH_DTYPES.get(self.dtype)

    @property
    def torch_shape(self) -> tuple[int, ...] | None:
        pack = _PACKED_LAST_DIM.get(self.dtype, 1)
        if pack == 1:
            return self.shape
        if not self.shape or self.shape[-1] % pack:
            return None
        return self.shape[:-1] + (self.shape[-1] // pack,)

    def to_json(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "shape": list(self.shape), "sha256": self.sha256, "nbytes": self.nbytes}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ExpectedTensor":
        return cls(d["dtype"], tuple(d["shape"]), d["sha256"], int(d["nbytes"]))


@dataclasses.dataclass(frozen=True)
class Case:
    """One file and what a loader must do with it.

    ``expect`` is ACCEPT (return exactly ``tensors``), REJECT (raise) or IMPL
    (anything goes; recorded). ``sha256`` is the whole file's digest, used to
    check the private copy is intact before and after loading. For property
    cases whose expectation comes from the reference loader, ``tensors`` holds
    torch-side expectations in ``observed`` form instead (see runner)."""

    name: str
    path: str
    expect: str
    why: str = ""
    sha256: str | None = None
    tensors: dict[str, ExpectedTensor] | None = None
    observed: dict[str, dict[str, Any]] | None = None  # torch-side expectation (dtype, shape, sha256)
    error: str | None = None
    origin: str = "corpus"  # "corpus", "property", "generated" or "check"
    # The surface the case goes through (see safeload.conformance.surfaces), the request the
    # worker gets beyond path and device (None: a load), and a line that reproduces it.
    surface: str = "load_file"
    request: dict[str, Any] | None = None
    reproducer: str = ""

    def dtypes(self) -> set[str]:
        return {t.dtype for t in (self.tensors or {}).values()}


def default_corpus_dir() -> Path | None:
    """The corpus to use when none is given: $SAFELOAD_FIXTURES, the copy
    installed with the package, or the source tree's fixtures/."""
    env = os.environ.get("SAFELOAD_FIXTURES")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve().parent
    candidates += [here.parent / "_fixtures", here.parents[2] / "fixtures"]
    for c in candidates:
        if (c / "manifest.json").is_file():
            return c
    return None


def load_corpus(directory: str | os.PathLike | None = None, patterns: Sequence[str] = ()) -> list[Case]:
    """Cases from a corpus directory holding manifest.json, optionally only
    those whose name matches one of the fnmatch ``patterns``."""
    root = Path(directory) if directory is not None else default_corpus_dir()
    if root is None:
        raise FileNotFoundError("no fixture corpus found; pass --cases DIR or set SAFELOAD_FIXTURES")
    if root.is_file():
        root = root.parent
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    if manifest.get("format") != 1:
        raise ValueError(f"{root / 'manifest.json'}: unsupported manifest format {manifest.get('format')!r}")
    cases = []
    for name, e in manifest["cases"].items():
        if patterns and not any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        tensors = None
        if e.get("tensors") is not None:
            tensors = {k: ExpectedTensor.from_json(v) for k, v in e["tensors"].items()}
        cases.append(
            Case(
                name=name,
                path=str(root / e["file"]),
                expect=e["expect"],
                why=e.get("why", ""),
                sha256=e.get("sha256"),
                tensors=tensors,
                error=e.get("error"),
            )
        )
    return sorted(cases, key=lambda c: c.name)


def select(cases: Iterable[Case], patterns: Sequence[str]) -> list[Case]:
    return [c for c in cases if not patterns or any(fnmatch.fnmatchcase(c.name, p) for p in patterns)]
