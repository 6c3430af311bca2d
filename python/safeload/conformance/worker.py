"""The worker process: imports the loader once, then loads one case at a time
and reports what it observed. It judges nothing (the parent does); it only
measures, so a loader that crashes or hangs takes down this process and never
the harness.

Protocol: one JSON object per line on two private pipes (file descriptors
given on the command line, so a loader printing to stdout cannot corrupt it).
The worker first sends ``{"ready": true}`` or ``{"ready": false, "error": ...}``;
then for each request ``{"path", "device", "ownership"}`` it sends an
observation (see :func:`observe`).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

Loader = Callable[[str, str], Mapping[str, Any]]


def resolve_loader(spec: str) -> Loader:
    """``MODULE:FUNC`` where MODULE is a dotted module name or a path to a
    ``.py`` file; FUNC may be dotted (``Class.method``)."""
    module_part, sep, func_part = spec.rpartition(":")
    if not sep or not module_part or not func_part:
        raise ValueError(f"loader {spec!r} must be MODULE:FUNC (MODULE may be a path to a .py file)")
    if module_part.endswith(".py") or os.sep in module_part:
        path = os.path.abspath(module_part)
        name = "_conform_loader_" + hashlib.sha256(path.encode()).hexdigest()[:12]
        mspec = importlib.util.spec_from_file_location(name, path)
        if mspec is None or mspec.loader is None:
            raise ImportError(f"cannot import {path}")
        module = importlib.util.module_from_spec(mspec)
        sys.modules[name] = module
        mspec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_part)
    obj: Any = module
    for part in func_part.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{spec} is not callable")
    return obj


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _byte_view(t):
    """A uint8 tensor over exactly the memory of contiguous tensor ``t``, on
    its device: writes through it land in ``t``."""
    import torch

    n = t.numel() * t.element_size()
    return torch.empty(0, dtype=torch.uint8, device=t.device).set_(
        t.untyped_storage(), t.storage_offset() * t.element_size(), (n,), (1,)
    )


def _raw_bytes(t) -> bytes:
    if t.numel() == 0:
        return b""
    if not t.is_contiguous():
        t = t.contiguous()
    return _byte_view(t).cpu().numpy().tobytes()


def _ownership(tensors: Mapping[str, Any], path: str, file_sha: str) -> list[str]:
    """Writes a distinct pseudo-random pattern into every non-empty tensor,
    then checks each still holds its own pattern (no two share memory, writes
    stick) and that the file on disk did not change."""
    import torch

    problems: list[str] = []
    patterns: dict[str, Any] = {}
    views: dict[str, Any] = {}
    for i, (name, t) in enumerate(tensors.items()):
        if t.numel() == 0:
            continue
        if not t.is_contiguous():
            problems.append(f"{name!r}: not contiguous, memory ownership not checked")
            continue
        try:
            view = _byte_view(t)
            g = torch.Generator().manual_seed(0x5AFE + i)
            pattern = torch.randint(0, 256, (view.numel(),), dtype=torch.uint8, generator=g)
            view.copy_(pattern.to(view.device))
        except Exception as e:  # read-only or exotic storage
            problems.append(f"{name!r}: writing into the tensor failed: {type(e).__name__}: {e}")
            continue
        views[name], patterns[name] = view, pattern
    for name, view in views.items():
        if not torch.equal(view.cpu(), patterns[name]):
            problems.append(
                f"{name!r}: after writing into every tensor its bytes are not what was written into it "
                "(memory shared with another returned tensor, or writes do not stick)"
            )
    if _file_sha256(path) != file_sha:
        problems.append("writing into the returned tensors changed the file on disk (shared mapping)")
    return problems


def observe(load: Loader, path: str, device: str, ownership: bool, file_sha: str | None) -> dict[str, Any]:
    """Run the loader on one file and describe what happened."""
    obs: dict[str, Any] = {}
    t0 = time.perf_counter()
    try:
        result = load(path, device)
    except BaseException as e:  # a loader may raise anything, SystemExit included
        obs.update(
            accepted=False,
            error_type=f"{type(e).__module__}.{type(e).__qualname__}",
            error_code=getattr(e, "code", None) if isinstance(getattr(e, "code", None), str) else None,
            error=str(e)[:500],
            seconds=time.perf_counter() - t0,
        )
        return obs
    obs["seconds"] = time.perf_counter() - t0
    obs["accepted"] = True
    problems: list[str] = []
    tensors: dict[str, Any] = {}
    if not isinstance(result, Mapping):
        problems.append(f"returned a {type(result).__name__}, not a mapping")
        result = {}
    import torch

    described: dict[str, Any] = {}
    for name, t in result.items():
        if not isinstance(t, torch.Tensor):
            problems.append(f"{name!r}: value is a {type(t).__name__}, not a torch.Tensor")
            continue
        try:
            raw = _raw_bytes(t)
            described[str(name)] = {
                "dtype": str(t.dtype).removeprefix("torch."),
                "shape": list(t.shape),
                "device": str(t.device),
                "sha256": hashlib.sha256(raw).hexdigest(),
                "nbytes": len(raw),
            }
            tensors[name] = t
        except Exception as e:
            problems.append(f"{name!r}: cannot read the tensor's bytes: {type(e).__name__}: {e}")
    if ownership and file_sha is not None:
        problems += _ownership(tensors, path, file_sha)
    obs["tensors"] = described
    obs["problems"] = problems
    return obs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--loader", required=True)
    parser.add_argument("--in-fd", type=int, required=True)
    parser.add_argument("--out-fd", type=int, required=True)
    args = parser.parse_args(argv)
    rx = os.fdopen(args.in_fd, "r", encoding="utf-8")
    tx = os.fdopen(args.out_fd, "w", encoding="utf-8")

    def send(msg: dict[str, Any]) -> None:
        tx.write(json.dumps(msg) + "\n")
        tx.flush()

    try:
        import torch  # noqa: F401  (fail early, and before the clock starts on any case)

        load = resolve_loader(args.loader)
    except BaseException as e:
        send({"ready": False, "error": f"{type(e).__name__}: {e}", "unavailable": _is_unavailable(e),
              "traceback": traceback.format_exc()[-4000:]})
        return 1
    send({"ready": True})
    for line in rx:
        req = json.loads(line)
        send(observe(load, req["path"], req["device"], req.get("ownership", True), req.get("sha256")))
    return 0


def _is_unavailable(e: BaseException) -> bool:
    from safeload.conformance.adapters import AdapterUnavailable

    return isinstance(e, AdapterUnavailable)


if __name__ == "__main__":
    sys.exit(main())
