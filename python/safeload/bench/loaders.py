"""One adapter per loader: how to call it and, when it cannot run, why.

Every adapter returns ``dict[str, torch.Tensor]`` with every tensor of every file on the target
device. What counts as loaded is decided afterwards, identically for all, by ``touch``: every
byte of every tensor is read once, so a lazy or memory-mapped loader pays for the pages it has
not read yet inside the timed region, as an eager one already has.

A peer that is not installed is reported as such, never dropped from the results.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
from typing import Callable

import torch

Tensors = dict[str, torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Loader:
    key: str
    label: str
    module: str  # the import that must succeed for the loader to exist
    install_hint: str
    _unavailable: Callable[[str], str | None]
    _load: Callable[[list[str], str, int | None], Tensors]
    #: The environment this loader runs in, when its package cannot share this one (another
    #: version of a package installed here): the runner starts its workers with the
    #: interpreter given for it (``safeload bench --python ENV=PYTHON``).
    env: str | None = None
    #: (distribution, version prefix) the loader needs, checked where it runs.
    needs: tuple[str, str] | None = None

    def unavailable(self, device: str) -> str | None:
        """None if this loader can run on ``device``; otherwise the reason it cannot.

        A reason starting with ``not installed`` means the package is absent.
        """
        try:
            missing = importlib.util.find_spec(self.module.split(".")[0]) is None
        except (ImportError, ValueError):  # already imported without a spec: present
            missing = False
        if missing:
            return f"not installed ({self.install_hint})"
        try:
            importlib.import_module(self.module)
        except Exception as e:  # an installed but broken package is reported, not raised
            return f"not available: import {self.module} failed: {type(e).__name__}: {e}"
        if self.needs:
            from importlib import metadata

            dist, prefix = self.needs
            found = metadata.version(dist)
            if found != prefix and not found.startswith(prefix + "."):
                return f"not available: needs {dist} {prefix}, found {found}"
        return self._unavailable(device)

    def load(self, paths: list[str], device: str, threads: int | None = None) -> Tensors:
        return self._load(paths, device, threads)


def _merge(paths: list[str], one: Callable[[str], Tensors]) -> Tensors:
    out: Tensors = {}
    for p in paths:
        out.update(one(p))
    return out


def _device_type(device: str) -> str:
    return torch.device(device).type


# safeload --------------------------------------------------------------------------------


def _safeload_unavailable(attr: str) -> Callable[[str], str | None]:
    def check(device: str) -> str | None:
        import safeload

        obj = safeload
        for part in attr.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                return (f"not available: safeload.{attr} is missing "
                        "(the extension module is not built: run 'make build')")
        return None

    return check


def _safeload_fast(paths: list[str], device: str, threads: int | None) -> Tensors:
    import safeload

    return _merge(paths, lambda p: safeload.load_file(p, device=device, threads=threads))


def _safeload_fast_no_prefault(paths: list[str], device: str, threads: int | None) -> Tensors:
    import safeload

    # Every destination page faults in where a read first writes it: what the default's
    # prefaulting saves (or costs) on this machine.
    return _merge(paths, lambda p: safeload.load_file(p, device=device, threads=threads, prefault=False))


def _safeload_checkpoint(paths: list[str], device: str, threads: int | None) -> Tensors:
    import safeload

    # Every file in one load: one plan, one executor, one staging ring.
    return safeload.load_checkpoint(list(paths), device, threads=threads, progress=False)


def _safeload_prefetch(paths: list[str], device: str, threads: int | None) -> Tensors:
    import safeload

    # safetensors 0.9's declared read, every tensor of each file, taken in file order.
    def one(path: str) -> Tensors:
        with safeload.safe_open(path, framework="pt", device=device) as f, f.prefetch(threads=threads) as loader:
            return {name: loader.take(name) for name in loader.names()}

    return _merge(paths, one)


def _safeload_reference(paths: list[str], device: str, threads: int | None) -> Tensors:
    import safeload.reference

    return _merge(paths, lambda p: safeload.reference.load_file(p, device=device))


# A mapped mode, measured before deciding whether to build it -------------------------------

_MADV_POPULATE_READ = 22  # Linux 5.14


def _mapped_unavailable(device: str) -> str | None:
    import mmap

    if device != "cpu":
        return f"not available: a mapping is host memory, not {device}"
    if not hasattr(mmap, "MAP_PRIVATE"):
        return "not available: needs mmap with MAP_PRIVATE"
    return None


def _mapped_one(path: str) -> Tensors:
    """Each file mapped private and copy-on-write (writes to a tensor never reach the file),
    every page populated from the page cache by one thread per core before returning, so the
    load is done when it returns; tensors are views of the mapping."""
    import ctypes
    import json
    import mmap
    import os
    from concurrent.futures import ThreadPoolExecutor

    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        mapping = mmap.mmap(f.fileno(), size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    anchor = ctypes.c_char.from_buffer(mapping)
    try:
        addr, step = ctypes.addressof(anchor), 64 << 20
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # ctypes calls run without the GIL
            failed = [r for r in pool.map(lambda o: libc.madvise(addr + o, min(step, size - o), _MADV_POPULATE_READ),
                                          range(0, size, step)) if r]
        if failed:
            raise OSError(ctypes.get_errno(), "MADV_POPULATE_READ failed")
    finally:
        del anchor
    from safeload import _C

    n = int.from_bytes(mapping[:8], "little")
    header = json.loads(mapping[8:8 + n])
    data = torch.frombuffer(mapping, dtype=torch.uint8)
    out: Tensors = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        dtype, sizes = _C.torch_layout(name, t["dtype"], t["shape"], path)  # as the loaders map it
        start, end = t["data_offsets"]
        out[name] = data[8 + n + start: 8 + n + end].view(dtype).view(sizes)
    return out


def _mapped(paths: list[str], device: str, threads: int | None) -> Tensors:
    return _merge(paths, _mapped_one)


# safetensors ----------------------------------------------------------------------------


def _st_pread_unavailable(device: str) -> str | None:
    from safetensors.torch import load_file

    if "backend" not in inspect.signature(load_file).parameters:
        import safetensors

        return (f"not available: safetensors {safetensors.__version__} load_file has no "
                "backend option (added in later versions)")
    return None


def _st_mmap(paths: list[str], device: str, threads: int | None) -> Tensors:
    from safetensors.torch import load_file

    return _merge(paths, lambda p: load_file(p, device=device))


def _st_pread(paths: list[str], device: str, threads: int | None) -> Tensors:
    from safetensors.torch import load_file

    return _merge(paths, lambda p: load_file(p, device=device, backend="pread"))


def _st_prefetch_unavailable(device: str) -> str | None:
    from safetensors import safe_open

    if not hasattr(safe_open, "prefetch"):
        return "not available: this safetensors has no safe_open.prefetch (0.9 adds it)"
    if _device_type(device) != "cuda":
        return f"not available: safetensors' prefetch loads to CUDA devices only, not {device}"
    return None


def _st_prefetch(paths: list[str], device: str, threads: int | None) -> Tensors:
    from safetensors import safe_open

    def one(path: str) -> Tensors:
        with safe_open(path, framework="pt", device=device) as f, f.prefetch() as loader:
            return {name: loader.take(name) for name in loader.names()}

    return _merge(paths, one)


# fastsafetensors ------------------------------------------------------------------------


def _fst_unavailable(device: str) -> str | None:
    if _device_type(device) not in ("cpu", "cuda"):
        return f"not available: fastsafetensors supports cpu and cuda, not {device}"
    return None


def _fst_load(paths: list[str], device: str, threads: int | None) -> Tensors:
    from fastsafetensors import fastsafe_open

    # nogds: GPUDirect Storage needs a cuFile setup most machines lack; its buffered path is
    # the one a default install uses.
    with fastsafe_open(paths, framework="pt", device=device, nogds=True) as f:
        return {k: f.get_tensor(k) for k in f.keys()}


# runai-model-streamer -------------------------------------------------------------------


def _runai_unavailable(device: str) -> str | None:
    if _device_type(device) not in ("cpu", "cuda"):
        return f"not available: runai-model-streamer supports cpu and cuda, not {device}"
    return None


def _runai_load(paths: list[str], device: str, threads: int | None) -> Tensors:
    from runai_model_streamer import SafetensorsStreamer

    with SafetensorsStreamer() as s:
        s.stream_files(paths, device=device)
        return dict(s.get_tensors())


# InstantTensor --------------------------------------------------------------------------


def _it_unavailable(device: str) -> str | None:
    if _device_type(device) != "cuda":
        return f"not available: InstantTensor loads to CUDA devices only, not {device}"
    return None


def _it_load(paths: list[str], device: str, threads: int | None) -> Tensors:
    from instanttensor import safe_open

    with safe_open(paths, framework="pt", device=device) as f:
        return dict(f.tensors())


LOADERS: tuple[Loader, ...] = (
    Loader("safeload-fast", "safeload fast", "safeload", "part of this project",
           _safeload_unavailable("load_file"), _safeload_fast),
    Loader("safeload-fast-no-prefault", "safeload fast, prefault=False", "safeload", "part of this project",
           _safeload_unavailable("load_file"), _safeload_fast_no_prefault),
    Loader("safeload-checkpoint", "safeload load_checkpoint", "safeload", "part of this project",
           _safeload_unavailable("load_checkpoint"), _safeload_checkpoint),
    Loader("safeload-prefetch", "safeload safe_open prefetch", "safeload", "part of this project",
           _safeload_unavailable("safe_open"), _safeload_prefetch),
    Loader("safeload-reference", "safeload reference", "safeload", "part of this project",
           _safeload_unavailable("reference.load_file"), _safeload_reference),
    Loader("mapped-prototype", "mapped, populated (prototype)", "safeload", "part of this project",
           _mapped_unavailable, _mapped),
    Loader("safetensors", "safetensors load_file (mmap)", "safetensors.torch", "pip install safetensors",
           lambda device: None, _st_mmap),
    Loader("safetensors-pread", "safetensors load_file (pread)", "safetensors.torch",
           "pip install safetensors", _st_pread_unavailable, _st_pread),
    Loader("safetensors-0.9", "safetensors 0.9 load_file (mmap)", "safetensors.torch",
           "pip install safetensors==0.9.*", lambda device: None, _st_mmap, env="st09",
           needs=("safetensors", "0.9")),
    Loader("safetensors-0.9-pread", "safetensors 0.9 load_file (pread)", "safetensors.torch",
           "pip install safetensors==0.9.*", _st_pread_unavailable, _st_pread, env="st09",
           needs=("safetensors", "0.9")),
    Loader("safetensors-0.9-prefetch", "safetensors 0.9 safe_open prefetch", "safetensors",
           "pip install safetensors==0.9.*", _st_prefetch_unavailable, _st_prefetch, env="st09",
           needs=("safetensors", "0.9")),
    Loader("fastsafetensors", "fastsafetensors", "fastsafetensors", "pip install fastsafetensors",
           _fst_unavailable, _fst_load),
    Loader("runai-model-streamer", "runai-model-streamer", "runai_model_streamer",
           "pip install runai-model-streamer", _runai_unavailable, _runai_load),
    Loader("instanttensor", "InstantTensor", "instanttensor", "pip install instanttensor",
           _it_unavailable, _it_load),
)

BY_KEY = {loader.key: loader for loader in LOADERS}


def touch(tensors: Tensors) -> int:
    """Read every byte of every tensor once; return a checksum of them all.

    The checksum (``file_checksum`` computes the same from the file) adds up, modulo 2**64, each
    tensor's bytes as little-endian 64-bit words counted from the tensor's first byte, plus the
    single bytes of a tail shorter than a word. Equal bytes give equal checksums whatever the
    loader, so the runner also uses it to catch a loader that returned wrong bytes.
    """
    partial = []
    for t in tensors.values():
        if t.numel() == 0:
            continue
        raw = t.detach().reshape(-1)
        if not raw.is_contiguous():
            raw = raw.contiguous()
        raw = raw.view(torch.uint8)
        words = raw.numel() // 8 * 8
        if words:
            body = raw[:words]
            if body.data_ptr() % 8:
                body = body.clone()  # a misaligned tensor: copied so words start at its first byte
            partial.append(body.view(torch.int64).sum())
        if words < raw.numel():
            partial.append(raw[words:].sum(dtype=torch.int64))
    if not partial:
        return 0
    # One reduction on the tensors' device, so a GPU target synchronizes once.
    return int(torch.stack(partial).sum()) % (1 << 64)


def file_checksum(paths: list[str]) -> int:
    """``touch``'s checksum computed from the files themselves, independently of every loader."""
    return sum(_file_checksum(p) for p in paths) % (1 << 64)


def _file_checksum(path: str) -> int:
    # The mapping dies with this frame, so no page of the file stays mapped afterwards (a mapped
    # page cannot be evicted for a cold run).
    import json

    import numpy as np

    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    data = np.memmap(path, dtype=np.uint8, mode="r")
    start = 8 + n
    total = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        raw = data[start + b:start + e]
        words = (e - b) // 8 * 8
        if words:
            body = raw[:words] if (start + b) % 8 == 0 else raw[:words].copy()
            total += int(body.view(np.uint64).sum(dtype=np.uint64))
        if words < e - b:
            total += int(raw[words:].sum(dtype=np.uint64))
    return total
