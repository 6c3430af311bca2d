"""``safeload.safe_open``: upstream's ``safetensors.safe_open`` object for
torch, backed by safeload's background loader.

Same names and semantics as upstream (0.8, and 0.9's ``get_tensor_meta``):
a context manager with ``keys()`` (sorted), ``offset_keys()`` (file order),
``metadata()``, ``get_tensor``, ``get_tensors`` (file order), ``get_slice``
(``get_shape()``, ``get_dtype()``, ``[index]``) and ``get_tensor_meta``.
Keys, dtypes, shapes and metadata come from the validated header.

How bytes move:

- ``prefetch=True`` (default): opening starts reading every tensor in the
  background (all destinations allocated first, parallel reads);
  ``get_tensor(name)`` and ``get_slice(name)[...]`` wait for that tensor's
  bytes only, so whatever the caller does between opening and asking (model
  construction, for instance) overlaps with reading. ``close()`` (or leaving
  the ``with`` block) stops the reads not done yet and frees every tensor not
  handed out.
- ``prefetch=False``: nothing is read on open; each tensor is read, in the
  caller's thread, when it is first asked for. A caller that reads a few
  tensors of a large file pays for those tensors only (plus the header).
  A slice reads its whole tensor once, then slices it in memory.

Tensors handed out own their memory (safeload never maps the file). The
first ``get_tensor(name)`` returns the loaded tensor itself; a second
request for the same name reads it again, so two results never alias (as
upstream's ``pread`` backend). A partial slice is a contiguous copy of the
part asked for; the full tensor is kept (until ``close`` or until it is
asked for whole) so further slices of it read nothing.

Indexing a slice accepts exactly what upstream's default backend accepts,
with the same results and errors: upstream indexes a torch tensor viewing
the file, so every index torch accepts (ints, slices with positive steps,
``...``, ``None``, index lists and tensors) works, and everything torch
rejects raises torch's error (``IndexError``, ``ValueError`` for a step
below 1, ``TypeError``). An F4 tensor is indexed in values, as
``get_shape()`` counts them (torch packs two to a byte along the last
dimension); a slice leaving an odd number of values in the last dimension
raises ValueError.

``backend`` (``"mmap"``, ``"pread"`` or None) is accepted for compatibility
and does not change how safeload reads; any other value is
``SafetensorError`` ``INVALID_ARGUMENT`` as upstream rejects it.
"""
from __future__ import annotations

import dataclasses
import os
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from safeload import _loading
from safeload._device import DeviceLike, device_string
from safeload._errors import SafetensorError

__all__ = ["safe_open", "SafeSlice", "TensorMeta"]

TORCH_FRAMEWORKS = ("pt", "torch")
BACKENDS = (None, "mmap", "pread")


@dataclasses.dataclass(frozen=True)
class TensorMeta:
    """A tensor's header entry (upstream 0.9's ``TensorMeta``); no data is
    read to build it."""

    dtype: str
    shape: List[int]
    data_offsets: Tuple[int, int]


def _whole(index: Any, ndim: int) -> bool:
    """Whether ``index`` selects the whole tensor unchanged (``[...]``,
    ``[:]``, ``[()]``, ``[:, ...]``), so the loaded tensor can be handed out
    without a copy."""
    items = index if isinstance(index, tuple) else (index,)
    full_slices = 0
    ellipses = 0
    for item in items:
        if item is Ellipsis:
            ellipses += 1
        elif isinstance(item, slice) and item.start is None and item.stop is None and item.step in (None, 1):
            full_slices += 1
        else:
            return False
    return ellipses <= 1 and full_slices <= ndim


def _index_pairs(packed: torch.Tensor, index: Any) -> torch.Tensor:
    """``index`` applied to an F4 tensor in values, the shape ``get_shape()`` gives: torch holds
    F4 as ``float4_e2m1fn_x2``, value ``2k`` in the low four bits of byte ``k`` along the last
    dimension. The values are taken apart, indexed, and put back two to a byte; a selection
    whose last dimension holds an odd number of values (or a single value) has no such form:
    ValueError."""
    raw = packed.view(torch.uint8) if packed.numel() else torch.empty(packed.shape, dtype=torch.uint8,
                                                                         device=packed.device)
    values = torch.stack((raw & 0xF, raw >> 4), dim=-1).flatten(-2)
    part = values[index]
    if part.dim() == 0 or part.shape[-1] % 2:
        what = "a single value" if part.dim() == 0 else f"{part.shape[-1]} values along the last dimension"
        raise ValueError(f"this F4 slice selects {what}; torch's float4_e2m1fn_x2 holds F4 values two to a byte, "
                         "so a slice must leave an even number of them in the last dimension")
    pairs = part.unflatten(-1, (part.shape[-1] // 2, 2))
    return (pairs[..., 0] | (pairs[..., 1] << 4)).view(packed.dtype)


class SafeSlice:
    """``safe_open.get_slice(name)``: dtype and shape from the header; data
    read when indexed."""

    __slots__ = ("_handle", "_name", "_dtype", "_shape")

    def __init__(self, handle: "safe_open", name: str, dtype: str, shape: List[int]):
        self._handle = handle
        self._name = name
        self._dtype = dtype
        self._shape = shape

    def get_shape(self) -> List[int]:
        """The shape as the header writes it (a list, like upstream's)."""
        return list(self._shape)

    def get_dtype(self) -> str:
        """The header's dtype string (``"F32"``, ``"BF16"``, ``"F8_E4M3"``, ...)."""
        return self._dtype

    def __getitem__(self, index: Any) -> torch.Tensor:
        handle = self._handle
        if _whole(index, len(self._shape)):
            part = handle._take(self._name)
        else:
            full = handle._take(self._name, keep=True)
            part = _index_pairs(full, index) if self._dtype == "F4" else full[index]
            if part.numel() and part.untyped_storage().data_ptr() == full.untyped_storage().data_ptr():
                # A view: copy the part so that it does not keep the whole tensor alive.
                part = part.clone(memory_format=torch.contiguous_format)
        handle._count(self._name)
        return part

    def __repr__(self) -> str:
        return f"SafeSlice({self._name!r}, dtype={self._dtype}, shape={self._shape})"


class safe_open:
    """Opens a safetensors file for reading tensors by name; see the module
    docstring. ``options`` are safeload's load options (``threads``,
    ``chunk_bytes``, ``staging_bytes``, ``io``, ...)."""

    def __init__(self, filename: Any, framework: str = "pt", device: DeviceLike = "cpu", *,
                 backend: Optional[str] = None, prefetch: bool = True, **options):
        self._loading: Optional[_loading.Loading] = None
        self._closed = True
        if framework not in TORCH_FRAMEWORKS:
            raise SafetensorError(
                f"framework {framework!r} is not supported by safeload.safe_open, which returns torch "
                f"tensors only (framework 'pt' or 'torch'); use safetensors.safe_open for other frameworks",
                "INVALID_ARGUMENT")
        if backend not in BACKENDS:
            raise SafetensorError(f"backend {backend!r} is invalid (expected one of: 'mmap', 'pread', None)",
                                  "INVALID_ARGUMENT")
        from safeload import read_header  # the package imports this module

        self._path = filename
        self._display = os.fsdecode(filename) if isinstance(filename, (str, bytes, os.PathLike)) else filename
        self._device = device_string(device)
        self._options = options
        header = read_header(filename)
        # read_header lists tensors in data order: upstream's offset_keys order.
        self._entries: Dict[str, Tuple[str, List[int], int, int]] = {
            name: (dtype, list(shape), begin, end) for name, dtype, shape, begin, end in header["tensors"]}
        self._metadata = header["metadata"]
        self._lock = threading.Lock()
        self._name_locks: Dict[str, threading.Lock] = {}
        self._taken: set = set()  # names already waited for on the background load
        self._held: Dict[str, torch.Tensor] = {}  # whole tensors kept for further partial slices
        self._served = 0
        self._again: Optional[_loading.Loading] = None  # reads tensors asked for twice
        #: Called with each tensor handed out (patch() counts them with it).
        self.on_tensor: Optional[Callable[[str], None]] = None
        self._loading = _loading.Loading([filename], self._device, prefetch=prefetch, **options)
        self._closed = False

    # -- upstream's surface -------------------------------------------------

    def __enter__(self) -> "safe_open":
        return self

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        self.close()

    def keys(self) -> List[str]:
        """Tensor names, sorted (upstream's ``keys()`` order)."""
        self._check_open()
        return sorted(self._entries)

    def offset_keys(self) -> List[str]:
        """Tensor names in the order of their data in the file."""
        self._check_open()
        return list(self._entries)

    def metadata(self) -> Optional[Dict[str, str]]:
        """The header's ``__metadata__`` map, or None when it has none."""
        self._check_open()
        return None if self._metadata is None else dict(self._metadata)

    def get_tensor(self, name: str) -> torch.Tensor:
        """The whole tensor, waiting for its bytes only."""
        self._check_open()
        self._check_name(name)
        tensor = self._take(name)
        self._count(name)
        return tensor

    def get_tensors(self) -> Dict[str, torch.Tensor]:
        """Every tensor, in file order."""
        self._check_open()
        out = {}
        for name in self._entries:
            out[name] = self._take(name)
            self._count(name)
        return out

    def get_slice(self, name: str) -> SafeSlice:
        """A :class:`SafeSlice` of the tensor; nothing is read until it is indexed."""
        self._check_open()
        dtype, shape, _, _ = self._check_name(name)
        return SafeSlice(self, name, dtype, shape)

    def get_tensor_meta(self, name: str) -> TensorMeta:
        """The tensor's header entry; reads nothing."""
        self._check_open()
        dtype, shape, begin, end = self._check_name(name)
        return TensorMeta(dtype, list(shape), (begin, end))

    # -- safeload's additions -----------------------------------------------

    def close(self) -> None:
        """Stops the background reads and frees every tensor not handed out.
        Tensors already handed out keep their memory. Safe to call twice."""
        self._closed = True
        loading, self._loading = self._loading, None
        if loading is not None:
            loading.close()
        if hasattr(self, "_held"):
            with self._lock:
                self._held.clear()
                again, self._again = self._again, None
            if again is not None:
                again.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def report(self) -> dict:
        """What the background load did (its ``report()``), plus how many
        tensors this handle handed out."""
        loading = self._loading
        out = dict(loading.report()) if loading is not None else {}
        out["tensors_served"] = self._served
        return out

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<safeload.safe_open {self._display!r} on {getattr(self, '_device', '?')}, {state}>"

    # -- internals -----------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise SafetensorError(f"{self._display}: file is closed", "INVALID_ARGUMENT")

    def _check_name(self, name: str) -> Tuple[str, List[int], int, int]:
        entry = self._entries.get(name)
        if entry is None:
            raise SafetensorError(f"{self._display}: file does not contain tensor {name!r}", "INVALID_ARGUMENT")
        return entry

    def _name_lock(self, name: str) -> threading.Lock:
        with self._lock:
            lock = self._name_locks.get(name)
            if lock is None:
                lock = self._name_locks[name] = threading.Lock()
            return lock

    def _take(self, name: str, keep: bool = False) -> torch.Tensor:
        """The whole tensor ``name``. ``keep``: also hold it for later slices.
        Without ``keep`` the tensor is handed over and no longer held."""
        with self._name_lock(name):
            with self._lock:
                held = self._held.get(name) if keep else self._held.pop(name, None)
            if held is not None:
                tensor = held
            else:
                loading = self._loading
                if loading is not None and name not in self._taken:
                    self._taken.add(name)
                    tensor = loading.wait(name)
                else:  # handed out before, or closed: read it again, alone
                    tensor = self._read_again(name)
                if keep:
                    with self._lock:
                        if not self._closed:
                            self._held[name] = tensor
        return tensor

    def _count(self, name: str) -> None:
        with self._lock:
            self._served += 1
        if self.on_tensor is not None:
            self.on_tensor(name)

    def _read_again(self, name: str) -> torch.Tensor:
        """One tensor read on its own, in this thread (a tensor asked for a
        second time, or after close)."""
        with self._lock:
            again = self._again
            if again is None:
                again = self._again = _loading.Loading([self._path], self._device, prefetch=False,
                                                       **self._options)
        return again.wait(name)
