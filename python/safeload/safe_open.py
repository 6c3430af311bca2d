"""``safeload.safe_open``: upstream's ``safetensors.safe_open`` object for
torch, backed by safeload's loader.

Same names and semantics as upstream (0.8, and 0.9's ``get_tensor_meta``
and ``prefetch``): a context manager with ``keys()`` (sorted),
``offset_keys()`` (file order), ``metadata()``, ``get_tensor``,
``get_tensors`` (file order), ``get_slice`` (``get_shape()``,
``get_dtype()``, ``[index]``), ``get_tensor_meta`` and ``prefetch(plan)``.
Keys, dtypes, shapes and metadata come from the header, read and validated
once on open.

What is read, and when:

- Opening reads the header alone.
- ``get_tensor(name)`` reads that tensor's bytes.
- ``get_slice(name)[index]`` reads a range of one dimension holding
  everything the index selects (of the dimensions the index narrows, the
  one cheapest to read: fewest bytes, each separate run of bytes counted as
  a read call more), then applies the index to that part in memory. Rows
  are one read; columns are one read per row.
- Reading ahead: once the caller evidently wants most of the file (it has
  read no part of a tensor, and either listed the keys and asked for at
  least half of the tensors, from its first whole read on: transformers asks
  for a slice of every key, then reads them; or read two whole tensors after
  listing the keys or asking for half of them), every tensor not yet handed
  out is read in the background, all destinations allocated first, in
  parallel, and later requests wait for their own tensor only. The rule is
  ``_C.read_ahead_pays`` (``fast::read_ahead_pays`` in C++);
  ``report()["read_ahead"]`` says whether it happened.
- ``get_tensors()`` and ``prefetch(plan)`` read what they name in one load.
- A file a load already under way holds (``preloading``: ``safeload.patch()``
  starts one when ``from_pretrained`` is called on a cold checkpoint) is not
  read again: a CPU handle with no load options of its own takes its tensors
  from that load, as from a read-ahead (``report()["preloaded"]``).

Tensors handed out own their memory (safeload never maps the file); two
requests for one name never return aliasing tensors (as upstream's
``pread`` backend). A partial slice is a contiguous tensor of the part
asked for.

Indexing a slice accepts exactly what upstream's default backend accepts,
with the same results and errors: upstream indexes a torch tensor viewing
the file, so every index torch accepts (ints, slices with positive steps,
``...``, ``None``, index lists and tensors) works, and everything torch
rejects raises torch's error (``IndexError``, ``ValueError`` for a step
below 1, ``TypeError``), before anything is read. Index lists, tensors and
booleans read the whole tensor. An F4 tensor is indexed in values, as
``get_shape()`` counts them (torch packs two to a byte along the last
dimension); a slice leaving an odd number of values in the last dimension
raises ValueError.

``backend`` (``"mmap"``, ``"pread"`` or None) is accepted for compatibility
and does not change how safeload reads; any other value is
``SafetensorError`` ``INVALID_ARGUMENT`` as upstream rejects it.
"""
from __future__ import annotations

import dataclasses
import operator
import os
import threading
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Set, Tuple

import torch

from safeload import _C, _loading
from safeload._device import DeviceLike, device_string
from safeload._errors import SafetensorError

__all__ = ["safe_open", "SafeSlice", "TensorMeta", "PrefetchLoader"]

TORCH_FRAMEWORKS = ("pt", "torch")


class _SharedLoad:
    """A CPU load several holders share: each ``release()`` gives up one hold, and the load is
    released with the last. ``bytes_done(part)`` is ``part`` bytes' share of the bytes read."""

    def __init__(self, loading: Any, total_bytes: int):
        self._loading = loading
        self._total = max(total_bytes, 1)
        self._holds = 1
        self._lock = threading.Lock()

    def acquire(self) -> "_SharedLoad":
        with self._lock:
            if self._holds == 0:
                raise RuntimeError("the shared load was released")
            self._holds += 1
        return self

    def wait(self, name: str) -> torch.Tensor:
        return self._loading.wait(name)

    def report(self) -> dict:
        return self._loading.report()

    def bytes_done(self, part: int) -> int:
        return self._loading.bytes_done() * part // self._total

    def release(self) -> None:
        with self._lock:
            self._holds -= 1
            last = self._holds == 0
        if last:
            self._loading.release()


# Loads under way that files may be taken from: (device, inode, size, mtime ns) of the file
# as its load holds it open -> (the load, the file's tensor names in file order, their bytes).
_preloads_lock = threading.Lock()
_preloads: Dict[Tuple[int, int, int, int], Tuple[_SharedLoad, List[str], int]] = {}


def preloading(checkpoint: Any) -> Callable[[], None]:
    """Starts loading every tensor of ``checkpoint`` (a ``_C.Checkpoint``) onto the CPU in the
    background and offers its files to ``safe_open`` handles and :func:`take_preloaded`, which
    take each file's tensors (once) from this load instead of reading the file again. Returns the
    function that withdraws the offer and gives up this hold: tensors nobody took are freed
    once every handle that took the load's files is closed too."""
    headers = checkpoint.headers()
    sizes = [sum(end - begin for _, _, _, begin, end in h["tensors"]) for h in headers]
    load = _SharedLoad(_loading.start(checkpoint, "cpu"), sum(sizes))
    keys = checkpoint.identities()
    with _preloads_lock:
        for key, header, size in zip(keys, headers, sizes):
            _preloads[tuple(key)] = (load, [t[0] for t in header["tensors"]], size)

    def withdraw() -> None:
        with _preloads_lock:
            for key in keys:
                if _preloads.get(tuple(key), (None,))[0] is load:
                    del _preloads[tuple(key)]
        load.release()
    return withdraw


def file_identity(path: Any) -> Optional[Tuple[int, int, int, int]]:
    """(device, inode, size, modification time in ns) of the file at ``path``, as a
    ``_C.Checkpoint``'s ``identities()`` gives them; None where it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except (OSError, TypeError, ValueError):
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def offered(path: Any) -> bool:
    """Whether a preload offers the file at ``path`` (not yet taken)."""
    if not _preloads:
        return False
    key = file_identity(path)
    with _preloads_lock:
        return key in _preloads


def _preloaded(checkpoint: Any) -> Optional[Tuple[_SharedLoad, List[str], int]]:
    """The preload holding the one file of ``checkpoint``, with a hold taken for the caller.
    Each file is taken once: a second taker reads the file (its tensors must not alias the
    first's)."""
    if not _preloads:
        return None
    keys = checkpoint.identities()
    with _preloads_lock:
        entry = _preloads.pop(tuple(keys[0]), None) if len(keys) == 1 else None
        if entry is not None:
            entry[0].acquire()
    return entry


def take_preloaded(checkpoint: Any) -> Optional[Dict[str, torch.Tensor]]:
    """Every tensor of ``checkpoint``'s one file, in file order, from the preload holding it
    (waiting for them), or None where none does. ``load_file`` under ``patch()`` uses it."""
    entry = _preloaded(checkpoint)
    if entry is None:
        return None
    load, names, _ = entry
    try:
        return {name: load.wait(name) for name in names}
    finally:
        load.release()


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
    as it is."""
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


def _as_int(item: Any) -> Optional[int]:
    """An index item torch takes as one integer (int, numpy integer, 0-d integer tensor), else None."""
    if isinstance(item, bool):
        return None
    if isinstance(item, torch.Tensor) and (item.dim() != 0 or item.is_floating_point() or item.is_complex()
                                           or item.dtype == torch.bool):
        return None
    try:
        return operator.index(item)
    except TypeError:
        return None


def _narrowing(index: Any, shape: List[int]) -> Optional[List[Tuple[int, int, int, int, Optional[int]]]]:
    """For an index of ints, slices, ``...`` and ``None`` (already validated against ``shape`` by
    torch), each dimension it narrows as ``(position in the index, dim, lo, hi, step)``: the
    values it selects there are ``range(lo, hi, step)`` (step None: the int ``lo``). None for any
    other index (lists, tensors, booleans), which is applied to the whole tensor."""
    items = index if isinstance(index, tuple) else (index,)
    consuming = sum(1 for item in items if item is not None and item is not Ellipsis)
    out = []
    dim = 0
    for pos, item in enumerate(items):
        if item is None:
            continue
        if item is Ellipsis:
            dim += len(shape) - consuming
            continue
        if isinstance(item, slice):
            start, stop, step = item.indices(shape[dim])
            count = len(range(start, stop, step))
            out.append((pos, dim, start, start + step * (count - 1) + 1, step) if count else (pos, dim, 0, 0, 1))
        else:
            i = _as_int(item)
            if i is None:
                return None
            i %= shape[dim]
            out.append((pos, dim, i, i + 1, None))
        dim += 1
    return out


def _shifted(index: Any, pos: int, lo: int, hi: int, step: Optional[int], base: int) -> tuple:
    """``index`` with its item at ``pos`` (selecting ``range(lo, hi, step)``, or the int ``lo``)
    rewritten for a part of the tensor starting at ``base`` along that dimension."""
    items = list(index) if isinstance(index, tuple) else [index]
    items[pos] = lo - base if step is None else slice(lo - base, hi - base, step)
    return tuple(items)


class SafeSlice:
    """``safe_open.get_slice(name)``: dtype and shape from the header; data
    read when indexed, only the part the index needs."""

    __slots__ = ("_handle", "_checkpoint", "_name", "_dtype", "_shape")

    def __init__(self, handle: "safe_open", name: str, dtype: str, shape: List[int]):
        self._handle = handle
        # Its own reference: a slice keeps working after the handle is closed, as upstream's.
        self._checkpoint = handle._checkpoint
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
            part = handle._read(self._name, None, self._checkpoint)
        else:
            part = handle._read_part(self._name, self._dtype, self._shape, index, self._checkpoint)
        handle._count(self._name)
        return part

    def __repr__(self) -> str:
        return f"SafeSlice({self._name!r}, dtype={self._dtype}, shape={self._shape})"


class safe_open:
    """Opens a safetensors file for reading tensors by name; see the module
    docstring. ``options`` are safeload's load options (``threads``,
    ``chunk_bytes``, ``staging_bytes``, ``io``, ...)."""

    def __init__(self, filename: Any, framework: str = "pt", device: DeviceLike = "cpu", *,
                 backend: Optional[str] = None, **options):
        self._closed = True
        if framework not in TORCH_FRAMEWORKS:
            raise SafetensorError(
                f"framework {framework!r} is not supported by safeload.safe_open, which returns torch "
                f"tensors only (framework 'pt' or 'torch'); use safetensors.safe_open for other frameworks",
                "INVALID_ARGUMENT")
        self._display = os.fsdecode(filename) if isinstance(filename, (str, bytes, os.PathLike)) else filename
        self._device = device_string(device)
        self._options = dict(options, backend=backend)
        _C.check_options(self._device, **self._options)
        files, _ = _loading._sources([filename])
        self._checkpoint = _C.Checkpoint(files, b"")
        header = self._checkpoint.headers()[0]
        # Headers list tensors in data order: upstream's offset_keys order.
        self._entries: Dict[str, Tuple[str, List[int], int, int]] = {
            name: (dtype, list(shape), begin, end) for name, dtype, shape, begin, end in header["tensors"]}
        self._metadata = header["metadata"]
        self._lock = threading.Lock()
        # What the caller did, for the read-ahead rule.
        self._asked: Set[str] = set()
        self._whole_reads = 0
        self._partial_reads = 0
        self._listed_keys = False
        self._claimed: Set[str] = set()      # names read, or being read, on their own
        self._ahead: Optional[Any] = None     # the read-ahead load (_C.Loading or _SharedLoad)
        self._ahead_left: Set[str] = set()    # its tensors not handed out yet
        self._ahead_part: Optional[int] = None  # of a preload: this file's bytes
        if self._device == "cpu" and set(self._options) == {"backend"}:
            preload = _preloaded(self._checkpoint)
            if preload is not None:
                self._ahead, names, self._ahead_part = preload
                self._ahead_left = set(names)
        self._bytes_read = 0
        self._reads = 0
        self._served = 0
        #: Called with each tensor handed out (patch() counts them with it).
        self.on_tensor: Optional[Callable[[str], None]] = None
        self._closed = False

    # -- upstream's surface -------------------------------------------------

    def __enter__(self) -> "safe_open":
        return self

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        self.close()

    def keys(self) -> List[str]:
        """Tensor names, sorted (upstream's ``keys()`` order)."""
        self._check_open()
        self._listed_keys = True
        return sorted(self._entries)

    def offset_keys(self) -> List[str]:
        """Tensor names in the order of their data in the file."""
        self._check_open()
        self._listed_keys = True
        return list(self._entries)

    def metadata(self) -> Optional[Dict[str, str]]:
        """The header's ``__metadata__`` map, or None when it has none."""
        self._check_open()
        return None if self._metadata is None else dict(self._metadata)

    def get_tensor(self, name: str) -> torch.Tensor:
        """The whole tensor; reads its bytes (or waits for them, when read ahead)."""
        self._check_open()
        self._check_name(name)
        tensor = self._read(name, None)
        self._count(name)
        return tensor

    def get_tensors(self) -> Dict[str, torch.Tensor]:
        """Every tensor, in file order, read in one load."""
        self._check_open()
        self._read_ahead(explicit=True)
        out = {}
        for name in self._entries:
            out[name] = self._read(name, None)
            self._count(name)
        return out

    def get_slice(self, name: str) -> SafeSlice:
        """A :class:`SafeSlice` of the tensor; nothing is read until it is indexed."""
        self._check_open()
        dtype, shape, _, _ = self._check_name(name)
        with self._lock:
            self._asked.add(name)
        return SafeSlice(self, name, dtype, shape)

    def get_tensor_meta(self, name: str) -> TensorMeta:
        """The tensor's header entry; reads nothing."""
        self._check_open()
        dtype, shape, begin, end = self._check_name(name)
        return TensorMeta(dtype, list(shape), (begin, end))

    def prefetch(self, plan: Optional[Mapping[str, Optional[slice]]] = None, *,
                 device: Optional[DeviceLike] = None, threads: Optional[int] = None) -> "PrefetchLoader":
        """safetensors 0.9's ``prefetch``: starts loading the tensors ``plan``
        names (``{name: None}`` whole, ``{name: slice(start, stop)}`` rows of
        its first dimension, step 1, within its rows: a slice out of range is
        an IndexError rather than clamped; ``None``: every tensor whole) in the
        background, on ``device`` (default: the handle's; any device safeload
        loads to), and returns a :class:`PrefetchLoader` handing each out
        once. ``threads``: reader threads (default: safeload's choice). The
        handle is unchanged; several loaders may run from one handle."""
        self._check_open()
        request: Dict[str, Optional[Tuple[int, int, int]]] = {}
        if plan is None:
            request = {name: None for name in self._entries}
        elif not isinstance(plan, Mapping):
            raise TypeError(f"plan must be a dict of tensor name to None or a slice, not {type(plan).__name__}")
        else:
            for name, rows in plan.items():
                request[name] = self._plan_rows(name, rows)
        options = dict(self._options)
        if threads is not None:
            options["threads"] = threads
        target = self._device if device is None else device_string(device)
        names = [n for n in self._entries if n in request]
        loading = _loading.start(self._checkpoint, target, request=request, **options)
        return PrefetchLoader(loading, names, self._display, on_tensor=self._count)

    # -- safeload's additions -----------------------------------------------

    def close(self) -> None:
        """Stops the background reads and frees every tensor not handed out.
        Tensors already handed out keep their memory. Safe to call twice."""
        self._closed = True
        lock = getattr(self, "_lock", None)
        if lock is None:
            return
        with lock:
            ahead, self._ahead = self._ahead, None
            self._ahead_left = set()
        if ahead is not None:
            self._bytes_read += self._ahead_bytes(ahead)
            ahead.release()
        self._checkpoint = None

    @property
    def closed(self) -> bool:
        return self._closed

    def report(self) -> dict:
        """What this handle did: ``tensors_served``, ``reads`` (loads of one
        tensor or part), ``read_ahead`` (whether the rest of the file was read
        in the background, and ``read_ahead_report``, that load's report),
        ``bytes_read``."""
        with self._lock:
            ahead = self._ahead
            out = {"tensors_served": self._served, "reads": self._reads, "read_ahead": ahead is not None,
                   "bytes_read": self._bytes_read}
        out["preloaded"] = self._ahead_part is not None
        if ahead is not None:
            out["read_ahead_report"] = ahead.report()
            out["bytes_read"] += self._ahead_bytes(ahead)
        return out

    def _ahead_bytes(self, ahead: Any) -> int:
        return ahead.bytes_done() if self._ahead_part is None else ahead.bytes_done(self._ahead_part)

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

    def _count(self, name: str) -> None:
        with self._lock:
            self._served += 1
        if self.on_tensor is not None:
            self.on_tensor(name)

    def _plan_rows(self, name: str, rows: Any) -> Optional[Tuple[int, int, int]]:
        """A prefetch plan's entry as a request: None, or rows ``(0, start, stop)`` in torch's sizes."""
        dtype, shape, _, _ = self._check_name(name)
        if rows is None:
            return None
        if not isinstance(rows, slice):
            raise TypeError(f"the plan for {name!r} must be None or a slice of rows, not {type(rows).__name__}")
        if rows.step not in (None, 1):
            raise ValueError(f"the plan for {name!r} slices with step {rows.step}; prefetch reads runs of rows, "
                             f"step 1")
        if not shape:
            raise ValueError(f"the plan for {name!r} slices a 0-d tensor, which has no rows")
        n = shape[0]
        bounds = []
        for what, v, default in (("start", rows.start, 0), ("stop", rows.stop, n)):
            if v is None:
                bounds.append(default)
                continue
            i = _as_int(v)
            if i is None:
                raise TypeError(f"the plan for {name!r}: slice {what} must be an int or None, not {v!r}")
            bounds.append(i + n if i < 0 else i)
        start, stop = bounds
        if not 0 <= start <= stop <= n:
            raise IndexError(f"the plan for {name!r} asks for rows {rows.start}:{rows.stop} of {n}; prefetch reads "
                             f"rows that exist (start <= stop, within -{n}..{n})")
        if dtype == "F4" and len(shape) == 1:  # rows are values here, two to a byte
            if start % 2 or stop % 2:
                raise ValueError(f"the plan for {name!r} (F4) is values {start} to {stop} of its one dimension; "
                                 f"F4 holds two values to a byte there, so rows must start and stop at even values")
            start, stop = start // 2, stop // 2
        return (0, start, stop)

    def _read(self, name: str, part: Optional[Tuple[int, int, int]], checkpoint: Any = None) -> torch.Tensor:
        """Tensor ``name`` whole (``part`` None) or the range ``part`` = (dim, start, stop) of it
        in torch's sizes: from the read-ahead when it holds the tensor, else read on its own
        (from ``checkpoint``, a slice's, after the handle was closed)."""
        with self._lock:
            self._asked.add(name)
            if part is None:
                self._whole_reads += 1
            else:
                self._partial_reads += 1
            ahead = self._ahead if name in self._ahead_left else None
            if ahead is not None:
                self._ahead_left.discard(name)
            else:
                self._claimed.add(name)
        if ahead is not None:
            whole = ahead.wait(name)
            if part is None:
                return whole
            dim, start, stop = part
            return whole.narrow(dim, start, stop - start)
        self._read_ahead()
        source = checkpoint if checkpoint is not None else self._checkpoint
        loading = _loading.start(source, self._device, request={name: part}, **self._options)
        try:
            tensor = loading.wait(name)
        finally:
            loading.release()
            with self._lock:
                self._reads += 1
                self._bytes_read += loading.bytes_done()
            del loading
        return tensor

    def _read_part(self, name: str, dtype: str, shape: List[int], index: Any, checkpoint: Any) -> torch.Tensor:
        """``get_slice(name)[index]``: validated as torch validates it, then the cheapest range
        of one dimension that holds the selection is read and indexed."""
        f4 = dtype == "F4"
        # F4 is indexed in values, validated on bytes of the header's shape; the torch layout
        # of F4 (which may refuse it) is asked only where a range is to be read.
        torch_dtype, tshape = (torch.uint8, None) if f4 else _C.torch_layout(name, dtype, list(shape), self._display)
        # torch's own errors, from the shape alone, before anything is read.
        torch.empty(shape, dtype=torch_dtype, device="meta")[index]
        narrowing = _narrowing(index, shape)
        chosen = None
        if narrowing:
            if tshape is None:
                _, tshape = _C.torch_layout(name, dtype, list(shape), self._display)
            _, _, begin, end = self._entries[name]
            candidates = []
            for _, dim, lo, hi, _ in narrowing:
                if f4 and dim == len(shape) - 1:  # whole pairs of values
                    lo, hi = lo // 2, (hi + 1) // 2
                candidates.append((dim, lo, hi))
            k = _C.cheapest_range(list(tshape), end - begin, candidates)
            if k is not None and candidates[k][2] - candidates[k][1] < tshape[candidates[k][0]]:
                chosen = k
        if chosen is None:
            part, index_in_part = self._read(name, None, checkpoint), index
        else:
            dim, first, stop = candidates[chosen]
            part = self._read(name, (dim, first, stop), checkpoint)
            pos, _, lo, hi, step = narrowing[chosen]
            base = 2 * first if f4 and dim == len(shape) - 1 else first
            index_in_part = _shifted(index, pos, lo, hi, step, base)
        out = _index_pairs(part, index_in_part) if f4 else part[index_in_part]
        if out.numel() and out.untyped_storage().nbytes() > out.nbytes:
            # A view of more than it shows: copy, so it does not keep the rest alive.
            out = out.clone(memory_format=torch.contiguous_format)
        return out

    def _read_ahead(self, explicit: bool = False) -> None:
        """Starts reading every tensor not yet handed out in the background, once, when
        ``read_ahead_pays`` says so (or ``explicit``)."""
        with self._lock:
            if self._ahead is not None or self._closed:
                return
            if not _C.read_ahead_pays(len(self._entries), len(self._asked), self._whole_reads,
                                      self._partial_reads, self._listed_keys, explicit):
                return
            rest = [n for n in self._entries if n not in self._claimed]
            if not rest:
                return
            self._ahead = _loading.start(self._checkpoint, self._device, request={n: None for n in rest},
                                         **self._options)
            self._ahead_left = set(rest)


class PrefetchLoader:
    """What ``safe_open.prefetch(plan)`` returns: the planned tensors loading
    in the background, each handed out once, by :meth:`take` or by
    iterating. ``close()`` (or leaving the ``with`` block) stops the reads
    and frees every tensor not taken; tensors already taken keep their
    memory."""

    def __init__(self, loading: Any, names: List[str], display: str,
                 on_tensor: Optional[Callable[[str], None]] = None):
        self._loading = loading
        self._names = names
        self._planned = frozenset(names)
        self._display = display
        self._on_tensor = on_tensor
        self._taken: Set[str] = set()
        self._lock = threading.Lock()
        self._closed = False

    def names(self) -> List[str]:
        """The planned tensor names, in file order."""
        return list(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def take(self, name: str) -> torch.Tensor:
        """The tensor ``name`` (its planned rows), waiting for its bytes only.
        Each tensor is handed out once: a second ``take`` (or one after
        iteration gave it), a name not planned, or a ``take`` after
        ``close()`` raises."""
        with self._lock:
            self._check_takeable(name)
            self._taken.add(name)
            loading = self._loading
        return self._hand_out(name, lambda: loading.wait(name))

    def __iter__(self) -> Iterator[Tuple[str, torch.Tensor]]:
        """``(name, tensor)`` pairs as their bytes land (readiness order);
        tensors already taken are skipped."""
        while True:
            with self._lock:
                if self._closed:
                    raise ValueError(f"{self._display}: the prefetch loader was closed")
                if len(self._taken) == len(self._names):
                    return
                loading = self._loading
            nxt = self._hand_out(None, loading.wait_next)
            if nxt is None:
                return
            name, tensor = nxt
            with self._lock:
                if name in self._taken:
                    continue
                self._taken.add(name)
            if self._on_tensor is not None:
                self._on_tensor(name)
            yield name, tensor

    def report(self) -> dict:
        """What its load did so far (``load_file``'s report); empty once closed."""
        loading = self._loading
        return dict(loading.report()) if loading is not None else {}

    def close(self) -> None:
        """Stops the reads and frees every tensor not taken. Idempotent."""
        with self._lock:
            self._closed = True
            loading, self._loading = self._loading, None
        if loading is not None:
            loading.release()

    def __enter__(self) -> "PrefetchLoader":
        return self

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._names) - len(self._taken)} of {len(self._names)} left"
        return f"<safeload.PrefetchLoader {self._display!r}, {state}>"

    def _check_takeable(self, name: str) -> None:
        if name not in self._planned:
            raise KeyError(f"{self._display}: tensor {name!r} is not in this prefetch plan")
        if name in self._taken:
            raise ValueError(f"{self._display}: tensor {name!r} was taken already; a prefetch loader hands each "
                             f"tensor out once")
        if self._closed:
            raise ValueError(f"{self._display}: the prefetch loader was closed before tensor {name!r} was taken; "
                             f"its memory was freed")

    def _hand_out(self, name: Optional[str], wait: Callable[[], Any]) -> Any:
        """Runs ``wait``; a load stopped by ``close()`` meanwhile is reported as that."""
        try:
            out = wait()
        except SafetensorError as e:
            if e.code == "CANCELLED" and self._closed:
                what = f"tensor {name!r}" if name is not None else "the next tensor"
                raise ValueError(f"{self._display}: the prefetch loader was closed while waiting for {what}") \
                    from None
            raise
        if name is not None and self._on_tensor is not None:
            self._on_tensor(name)
        return out
