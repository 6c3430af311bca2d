"""Loading one checkpoint on many ranks with ``torch.distributed``.

``load_checkpoint(src, device, group=..., mode="replicate")`` gives every rank
of ``group`` the same tensors as ``safeload.load_checkpoint(src, device)``
while each rank reads only a disjoint, byte-balanced share of the data from
storage; the shares are then exchanged with broadcasts on the group's
backend (gloo for CPU tensors, NCCL for CUDA ones). ``mode="shard"`` is for
tensor parallelism: each rank reads only the bytes of the slices it keeps,
with no exchange.

How a replicated load runs, on every rank:

1. Prepare: open the checkpoint (every shard's header read and validated,
   an index checked against them) and check the options.
2. The ranks agree: each sends a small fixed-size status (its error, if
   any, and a digest of what it planned) to all others. If any rank failed,
   every rank raises that rank's error (the lowest failing rank's), naming
   it; if two ranks planned different checkpoints, every rank raises
   ``ValueError``.
3. Read: the loader plans the reads over every shard, a pure function of
   the checkpoint and the options (so every rank computes the same plan),
   cuts them into one contiguous, byte-balanced share per rank (per
   node-local rank with ``per_node=True``), allocates every destination on
   the device and reads this rank's share into it. The ranks agree again.
4. Exchange: for each rank's share in turn (the destination bytes it read,
   as the loader lists them), its bytes are broadcast from that rank, at
   most ``EXCHANGE_BYTES`` per collective: large runs of one tensor straight
   from and into the destinations, small tensors packed into a bounded
   buffer. The ranks agree a last time, and only then is anything returned.

A sharded load asks the same loader for a range of one dimension of each
sharded tensor (and the rest whole): no bytes are read here.

Every collective waits at most ``timeout`` (default: the group's timeout);
past it the rank raises ``TimeoutError``. A rank that fails before a
collective still joins the agreement, so no rank waits for it. After a
timeout or a lost peer the group's state is undefined (as for any
``torch.distributed`` collective that did not complete): end the job.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import socket
import struct
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.distributed as dist

from safeload import _C, _loading
from safeload._bytes import byte_view
from safeload._device import DeviceLike, device_string
from safeload._errors import SafetensorError

__all__ = ["load_checkpoint", "split", "MODES"]

MODES = ("replicate", "shard")

#: The most bytes one collective of the exchange moves (and the size of a
#: pack buffer: at most ``_DEPTH`` of them exist at a time).
EXCHANGE_BYTES = 32 << 20
#: Runs of one tensor at least this long are broadcast in place, without packing.
_IN_PLACE_BYTES = 1 << 20
#: Collectives of the exchange in flight at a time.
_DEPTH = 2
#: Bytes of the status every rank sends at each agreement.
_STATUS_BYTES = 16384

Slice = Tuple[int, Optional[int], Optional[int]]  # (dim, start, stop)
ShardSpec = Union[Slice, Callable[[int, int, List[int]], Slice]]


def split(dim: int) -> Callable[[int, int, List[int]], Tuple[int, int, int]]:
    """A shard spec that cuts dimension ``dim`` into ``world`` contiguous
    parts as ``torch.tensor_split`` does (the first ``size % world`` parts
    one longer): rank ``r`` keeps part ``r``."""
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"dim must be an int, not {type(dim).__name__}")

    def spec(rank: int, world: int, shape: List[int]) -> Tuple[int, int, int]:
        if not -len(shape) <= dim < len(shape):
            raise IndexError(f"dimension {dim} is out of range for a tensor of shape {list(shape)}")
        size = shape[dim]
        base, extra = divmod(size, world)
        start = rank * base + min(rank, extra)
        return dim, start, start + base + (1 if rank < extra else 0)

    spec.__qualname__ = f"split({dim})"
    return spec


def load_checkpoint(src, device: DeviceLike = "cpu", *, group: Optional[dist.ProcessGroup] = None,
                    mode: str = "replicate", per_node: bool = False,
                    shards: Optional[Mapping[str, ShardSpec]] = None,
                    timeout: Union[None, float, datetime.timedelta] = None,
                    report: Optional[dict] = None, **options) -> Dict[str, torch.Tensor]:
    """Loads the checkpoint ``src`` on every rank of ``group`` (default: the
    world), each rank reading a share of it. Call it on every rank of the
    group, with the same ``src`` (as each rank sees it), ``mode``,
    ``per_node``, ``shards`` and options; ``device`` is this rank's own
    (``"cpu"``, or e.g. ``f"cuda:{local_rank}"``).

    ``src`` is what ``safeload.load_checkpoint`` takes: a file, a directory,
    an index or a list of files. ``options`` are its load options; a
    ``chunk_bytes`` given here is the plan's chunk size on every rank
    (by default the loader picks one from the checkpoint's size and the
    number of ranks alone, so that every rank plans the same reads).

    ``mode="replicate"`` (default): every rank ends with every tensor,
    bitwise equal to ``safeload.load_checkpoint(src, device)`` and in its
    order; each rank reads about 1/ranks of the data and receives the rest
    from the other ranks. ``per_node=True``: the ranks of one node (same
    host name) split that node's reads and exchange among themselves, and
    every node reads the whole checkpoint: for storage that caches per node,
    or nodes whose interconnect is slower than their local storage.

    ``mode="shard"``: ``shards`` maps a tensor name to the part this rank
    keeps: ``(dim, start, stop)`` or a callable ``(rank, world, shape) ->
    (dim, start, stop)`` (``split(dim)`` cuts ``dim`` evenly), ``rank`` and
    ``world`` being the group's and ``shape`` the header's (what
    ``get_slice(name).get_shape()`` gives: F4 in values, two to a byte along
    its last dimension, where a shard must then start and stop at even
    values). The result is the tensor indexed with ``start:stop`` along
    ``dim`` (``None`` ends and negative values as in Python), equal to
    ``safe_open(file).get_slice(name)[:, ..., start:stop]`` with ``dim`` full
    slices before it, and reading only those bytes:
    one read for a slice of dimension 0, one per row of the dimensions
    before ``dim`` otherwise. No bytes are exchanged. Tensors not named in
    ``shards`` are loaded whole by every rank (replicated).

    ``timeout`` (seconds or a ``timedelta``; default the group's) bounds
    each wait for the other ranks; past it the rank raises ``TimeoutError``.

    ``report``, a dict, is filled with what this rank did: ``mode``,
    ``rank``, ``ranks``, ``read_ranks`` (the ranks that split this rank's
    reads), ``chunk_bytes``, ``bytes_total`` (the checkpoint's data),
    ``bytes_read`` (read from storage by this rank), ``bytes_sent`` and
    ``bytes_received`` (exchanged), ``seconds_read``, ``seconds_exchange``,
    ``seconds`` (the whole call).

    Errors are collective: a malformed or missing shard, an I/O error or a
    bad argument on any rank makes every rank raise that error (same class,
    same ``code``), the message starting ``rank R of N:``. Nothing is
    returned anywhere unless every rank succeeded.
    """
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("safeload.distributed.load_checkpoint needs torch.distributed: "
                           "call torch.distributed.init_process_group first (torchrun sets up its environment)")
    comm = _Comm(group if group is not None else dist.group.WORLD, device, timeout)
    started = time.perf_counter()
    out: Dict[str, Any] = {"mode": mode, "rank": comm.rank, "ranks": comm.size, "read_ranks": [comm.rank],
                           "chunk_bytes": 0, "bytes_read": 0, "bytes_sent": 0, "bytes_received": 0,
                           "seconds_read": 0.0, "seconds_exchange": 0.0}

    # 1. Prepare, then agree.
    prepared: Optional[_Prepared] = None
    error: Optional[BaseException] = None
    try:
        prepared = _prepare(src, device, mode, per_node, shards, comm, options)
    except BaseException as e:  # shared with every rank below, then raised
        error = e
    infos = comm.agree(error, {"node": _node_name(), "digest": prepared.digest if prepared else ""},
                       "checking the checkpoint")
    digests = [i["digest"] for i in infos]
    if len(set(digests)) > 1:
        other = next(r for r, d in enumerate(digests) if d != digests[0])
        raise ValueError(f"rank {other} of {comm.size} planned a different load than rank 0 (other files, "
                         f"tensors, shapes, chunk_bytes, mode or per_node): every rank must load the same "
                         f"checkpoint with the same options")
    assert prepared is not None
    out["bytes_total"] = prepared.bytes_total

    if mode == "shard":
        result = _load_shards(prepared, comm, out)
    else:
        result = _load_replicated(prepared, comm, infos, per_node, out)
    out["seconds"] = time.perf_counter() - started
    if report is not None:
        report.update(out)
    return result


# --- the group and its agreements -------------------------------------------------


class _Comm:
    """The group, the device its collectives use, and a timeout on every wait."""

    def __init__(self, group, device: DeviceLike, timeout):
        self.group = group
        self.rank = dist.get_rank(group)
        if self.rank < 0:
            raise ValueError("this process is not a member of the group it was asked to load with")
        self.size = dist.get_world_size(group)
        self.backend = str(dist.get_backend(group))
        if isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
            if timeout <= 0:
                raise ValueError(f"timeout must be positive, not {timeout}")
            timeout = datetime.timedelta(seconds=timeout)
        elif timeout is not None and not isinstance(timeout, datetime.timedelta):
            raise TypeError(f"timeout must be seconds or a datetime.timedelta, not {type(timeout).__name__}")
        self.timeout: Optional[datetime.timedelta] = timeout
        # Statuses travel on the CPU where the backend takes CPU tensors
        # (gloo, or "cpu:gloo,cuda:nccl"), else on this rank's CUDA device.
        if "gloo" in self.backend or "mpi" in self.backend:
            self.status_device = torch.device("cpu")
        else:
            dev = torch.device(device_string(device)) if not isinstance(device, torch.device) else device
            index = dev.index if dev.type == "cuda" and dev.index is not None else torch.cuda.current_device()
            self.status_device = torch.device("cuda", index)

    def wait(self, work, what: str) -> None:
        try:
            if self.timeout is None:
                work.wait()
            else:
                work.wait(self.timeout)
        except RuntimeError as e:
            if "timed out" in str(e).lower() or "timeout" in str(e).lower():
                limit = f"{self.timeout.total_seconds():g} s" if self.timeout else "the group's timeout"
                raise TimeoutError(f"rank {self.rank} of {self.size}: no answer from every rank within {limit} "
                                   f"while {what}; the group cannot be used any more") from e
            raise RuntimeError(f"rank {self.rank} of {self.size}: a collective failed while {what}: {e}") from e

    def agree(self, error: Optional[BaseException], info: dict, what: str) -> List[dict]:
        """Every rank's ``info``, once every rank reported; raises on every
        rank the error of the lowest rank that had one."""
        described = _describe(error)
        status = json.dumps({"error": described, "info": info}).encode()
        while len(status) > _STATUS_BYTES - 4 and described:  # a very long message or path: keep its start
            for key in ("message", "strerror", "filename"):
                if described and described[key]:
                    described[key] = described[key][: len(described[key]) // 2] + "..."
            status = json.dumps({"error": described, "info": info}).encode()
        mine = torch.zeros(_STATUS_BYTES, dtype=torch.uint8)
        mine[:4] = torch.tensor(list(struct.pack("<I", len(status))), dtype=torch.uint8)
        mine[4:4 + len(status)] = torch.frombuffer(bytearray(status), dtype=torch.uint8)
        mine = mine.to(self.status_device)
        every = [torch.empty_like(mine) for _ in range(self.size)]
        try:
            self.wait(dist.all_gather(every, mine, group=self.group, async_op=True), what)
        except BaseException as e:
            if error is not None:  # this rank's own failure is the news; the lost agreement follows from it
                raise error from e
            raise
        decoded = []
        for t in every:
            raw = bytes(t.cpu().numpy())
            (n,) = struct.unpack("<I", raw[:4])
            decoded.append(json.loads(raw[4:4 + n].decode()))
        for r, d in enumerate(decoded):
            if d["error"] is not None:
                if r == self.rank and isinstance(error, KeyboardInterrupt):
                    raise error
                raise _rebuild(r, self.size, d["error"]) from error
        return [d["info"] for d in decoded]


def _describe(error: Optional[BaseException]) -> Optional[dict]:
    if error is None:
        return None
    d = {"type": type(error).__name__, "message": str(error), "code": None, "errno": None,
         "strerror": None, "filename": None}
    if isinstance(error, SafetensorError):
        d["type"] = "SafetensorError"
        d["code"] = error.code
    elif isinstance(error, OSError):
        d["errno"] = error.errno
        d["strerror"] = error.strerror
        d["filename"] = os.fsdecode(error.filename) if isinstance(error.filename, (str, bytes)) else None
    elif isinstance(error, KeyError) and error.args:
        d["message"] = str(error.args[0])
    return d


_REBUILT = {c.__name__: c for c in (ValueError, TypeError, KeyError, IndexError, MemoryError, RuntimeError,
                                    NotImplementedError, TimeoutError, OSError)}


def _rebuild(rank: int, size: int, d: dict) -> BaseException:
    """The error rank ``rank`` reported, as the same class, naming the rank."""
    where = f"rank {rank} of {size}"
    if d["type"] == "SafetensorError":
        return SafetensorError(f"{where}: {d['message']}", d["code"])
    if d["errno"] is not None:  # OSError picks the subclass (FileNotFoundError, ...) from errno
        args = (d["errno"], f"{where}: {d['strerror']}") + ((d["filename"],) if d["filename"] is not None else ())
        return OSError(*args)
    if d["type"] == "KeyboardInterrupt":
        return RuntimeError(f"{where} was interrupted (KeyboardInterrupt)")
    cls = _REBUILT.get(d["type"])
    if cls is None:
        return RuntimeError(f"{where}: {d['type']}: {d['message']}")
    return cls(f"{where}: {d['message']}")


def _node_name() -> str:
    """What tells nodes apart for ``per_node``: the host name."""
    return socket.gethostname()


# --- preparing: the same pure decisions on every rank -------------------------------


class _Prepared:
    def __init__(self):
        self.checkpoint: Any = None    # _C.Checkpoint: every shard validated, the index checked
        self.device = "cpu"
        self.options: dict = {}
        self.headers: List[dict] = []
        self.names: List[str] = []
        self.bytes_total = 0
        self.slices: Dict[str, Tuple[int, int, int]] = {}
        self.digest = ""


def _prepare(src, device, mode, per_node, shards, comm: _Comm, options: dict) -> _Prepared:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, not {mode!r}")
    if mode == "replicate" and shards is not None:
        raise ValueError("shards are for mode='shard'")
    if shards is not None and not isinstance(shards, Mapping):
        raise TypeError(f"shards must be a mapping of tensor name to (dim, start, stop) or a callable, "
                        f"not {type(shards).__name__}")
    p = _Prepared()
    p.options = dict(options)
    p.device = device_string(device)
    _C.check_options(p.device, **p.options)
    if p.device != "cpu" and comm.status_device.type == "cpu" and "gloo" not in comm.backend:
        raise ValueError(f"the group's backend {comm.backend!r} cannot exchange tensors on {p.device}")
    if p.device == "cpu" and comm.status_device.type != "cpu":
        raise ValueError(f"the group's backend {comm.backend!r} cannot exchange CPU tensors: use a gloo group "
                         f"for device 'cpu'")
    files, one = _loading._sources(src)
    p.checkpoint = _C.Checkpoint(files, one)
    p.headers = p.checkpoint.headers()
    p.names = p.checkpoint.names()
    p.bytes_total = sum(h["data_length"] for h in p.headers)
    if mode == "shard":
        p.slices = _resolve_slices(p, shards or {}, comm.rank, comm.size)
    digest = hashlib.sha256()
    digest.update(json.dumps([mode, bool(per_node), p.options.get("chunk_bytes"), p.device.split(":")[0],
                              [[list(t) for t in h["tensors"]] for h in p.headers],
                              sorted(p.slices) if mode == "shard" else None]).encode())
    p.digest = digest.hexdigest()
    return p


# --- replicate ---------------------------------------------------------------------


def _load_replicated(p: _Prepared, comm: _Comm, infos: List[dict], per_node: bool,
                     out: dict) -> Dict[str, torch.Tensor]:
    ex_group, members = _exchange_group(comm, infos, per_node)
    me = members.index(comm.rank)
    out["read_ranks"] = members

    # 2. Read this rank's share into destinations allocated first, then agree.
    t0 = time.perf_counter()
    tensors: List[torch.Tensor] = []
    shares: List[list] = []
    error: Optional[BaseException] = None
    try:
        tensors, shares = _read_share(p, me, len(members), out)
    except BaseException as e:
        error = e
    comm.agree(error, {}, "reading the shares")
    out["seconds_read"] = time.perf_counter() - t0

    # 3. Exchange within the reading group, then agree that every rank has everything.
    t0 = time.perf_counter()
    error = None
    try:
        if len(members) > 1:
            _exchange(tensors, shares, ex_group, me, comm, out)
    except BaseException as e:
        error = e
    comm.agree(error, {}, "exchanging the shares")
    out["seconds_exchange"] = time.perf_counter() - t0
    return dict(zip(p.names, tensors))


def _read(p: _Prepared, out: dict, then: Optional[Callable[[Any], Any]] = None, **what):
    """One load of the checkpoint (``what``: ``request=`` or ``share=``, as
    ``_loading.start`` takes them), waited for; its ``(name, tensor)`` pairs
    and ``then(loading)`` (asked before the load is released). Records the
    bytes it read and its chunk size in ``out``."""
    loading = _loading.start(p.checkpoint, p.device, **what, **p.options)
    try:
        pairs = loading.wait_all()
        report = loading.report()
        extra = then(loading) if then is not None else None
    finally:
        loading.release()
    out["bytes_read"] = report["bytes_done"]
    out["chunk_bytes"] = report["chunk_bytes"]
    return pairs, extra


def _read_share(p: _Prepared, part: int, parts: int, out: dict) -> Tuple[List[torch.Tensor], List[list]]:
    """Every tensor allocated, share ``part`` of ``parts`` read into them; and what each
    share reads, as (tensor index, offset, length) runs."""
    pairs, shares = _read(p, out, lambda loading: [loading.share_pieces(k) for k in range(parts)],
                          share=(part, parts))
    return [t for _, t in pairs], shares


_NODE_GROUPS: Dict[tuple, Any] = {}


def _exchange_group(comm: _Comm, infos: List[dict], per_node: bool):
    """The group that splits this rank's reads, and its members as ranks of ``comm``."""
    if not per_node:
        return comm.group, list(range(comm.size))
    mine = infos[comm.rank]["node"]
    members = [r for r, i in enumerate(infos) if i["node"] == mine]
    if len(members) == comm.size or len(members) == 1:
        return comm.group, members
    global_ranks = tuple(dist.get_global_rank(comm.group, r) for r in members)
    key = (id(dist.group.WORLD), global_ranks, comm.backend)
    if key not in _NODE_GROUPS:
        # Only the ranks of this node create its group (the groups of
        # different nodes are disjoint, so their creation cannot deadlock).
        kwargs = {"timeout": comm.timeout} if comm.timeout is not None else {}
        _NODE_GROUPS[key] = (dist.group.WORLD, dist.new_group(list(global_ranks), backend=comm.backend,
                                                              use_local_synchronization=True, **kwargs))
    return _NODE_GROUPS[key][1], members


class _Views:
    """Byte views of the tensors, made when first asked for."""

    def __init__(self, tensors: List[torch.Tensor]):
        self._tensors = tensors
        self._views: Dict[int, torch.Tensor] = {}

    def __getitem__(self, i: int) -> torch.Tensor:
        view = self._views.get(i)
        if view is None:
            view = self._views[i] = byte_view(self._tensors[i])
        return view


def _batches(runs: List[Tuple[int, int, int]]) -> List[List[Tuple[int, int, int]]]:
    """A share's runs of destination bytes as the exchange moves them: cut into batches of at
    most EXCHANGE_BYTES; a batch of one run travels in place, a batch of several is packed."""
    batches: List[List[Tuple[int, int, int]]] = []
    pack: List[Tuple[int, int, int]] = []
    packed = 0
    for tensor, offset, length in runs:
        if length >= _IN_PLACE_BYTES:
            if pack:
                batches.append(pack)
                pack, packed = [], 0
            for o in range(offset, offset + length, EXCHANGE_BYTES):
                batches.append([(tensor, o, min(EXCHANGE_BYTES, offset + length - o))])
            continue
        if packed + length > EXCHANGE_BYTES:
            batches.append(pack)
            pack, packed = [], 0
        pack.append((tensor, offset, length))
        packed += length
    if pack:
        batches.append(pack)
    return batches


def _exchange(tensors: List[torch.Tensor], shares, group, me: int, comm: _Comm, out: dict) -> None:
    views = _Views(tensors)
    device = tensors[0].device if tensors else torch.device("cpu")
    buffers: List[Optional[torch.Tensor]] = [None] * _DEPTH
    pending: List[tuple] = []  # (work, buffer index or None, batch, owner)
    sent = received = 0

    def finish(entry) -> None:
        work, slot, batch, owner = entry
        comm.wait(work, "exchanging the shares")
        if owner != me and slot is not None:
            buf = buffers[slot]
            at = 0
            for tensor, offset, length in batch:
                views[tensor][offset:offset + length].copy_(buf[at:at + length])
                at += length

    slot_turn = 0
    for owner, runs in enumerate(shares):
        for batch in _batches(runs):
            size = sum(n for _, _, n in batch)
            if owner == me:
                sent += size
            else:
                received += size
            if len(pending) == _DEPTH:
                finish(pending.pop(0))
            if len(batch) == 1:
                tensor, offset, length = batch[0]
                work = dist.broadcast(views[tensor][offset:offset + length], group=group, group_src=owner,
                                      async_op=True)
                pending.append((work, None, batch, owner))
                continue
            slot = slot_turn
            slot_turn = (slot_turn + 1) % _DEPTH
            if buffers[slot] is None or buffers[slot].numel() < size:
                buffers[slot] = None
                buffers[slot] = torch.empty(size, dtype=torch.uint8, device=device)
            buf = buffers[slot][:size]
            if owner == me:
                at = 0
                for tensor, offset, length in batch:
                    buf[at:at + length].copy_(views[tensor][offset:offset + length])
                    at += length
            work = dist.broadcast(buf, group=group, group_src=owner, async_op=True)
            pending.append((work, slot, batch, owner))
    while pending:
        finish(pending.pop(0))
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()
    out["bytes_sent"] = sent
    out["bytes_received"] = received


# --- shard -------------------------------------------------------------------------

def _resolve_slices(p: _Prepared, shards: Mapping[str, ShardSpec], rank: int, world: int):
    """name -> (dim, start, stop) in the torch layout's units, from specs in the header's
    shape (what ``get_slice(name).get_shape()`` gives), clamped as Python and torch clamp
    ``start:stop``. F4 holds two values to a byte along its last dimension: a shard of it
    there must start and stop at even values."""
    infos = {t[0]: t for h in p.headers for t in h["tensors"]}
    slices = {}
    for name, spec in shards.items():
        if name not in infos:
            raise KeyError(f"shards names tensor '{name}', which the checkpoint does not hold")
        _, dtype, shape, _, _ = infos[name]
        # The torch sizes the loaders give it (F4 packs two values to a byte), from the C++
        # torch layer, so this module spells no dtype rule; raises for a dtype torch lacks.
        _, tshape = _C.torch_layout(name, dtype, list(shape), "")
        shape = list(shape)
        if callable(spec):
            spec = spec(rank, world, list(shape))
        if not isinstance(spec, (tuple, list)) or len(spec) != 3:
            raise TypeError(f"the shard of '{name}' must be (dim, start, stop), not {spec!r}")
        dim, start, stop = spec
        for what, v in (("dim", dim), ("start", start), ("stop", stop)):
            if (isinstance(v, bool) or not isinstance(v, int)) and not (v is None and what != "dim"):
                raise TypeError(f"the shard of '{name}': {what} must be an int, not {v!r}")
        if not -len(shape) <= dim < len(shape):
            raise IndexError(f"the shard of '{name}': dimension {dim} is out of range for shape {shape}")
        dim %= len(shape)
        s, e, _ = slice(start, stop).indices(shape[dim])  # Python's (and torch's) clamping
        e = max(s, e)
        per_element = shape[dim] // tshape[dim] if tshape[dim] else 1
        if per_element > 1:
            if s % per_element or e % per_element:
                raise ValueError(f"the shard of '{name}' ({dtype}) along dimension {dim} is values {s} to {e}: "
                                 f"{dtype} holds {per_element} values to a byte there, so a shard must start "
                                 f"and stop at a multiple of {per_element}")
            s, e = s // per_element, e // per_element
        slices[name] = (dim, s, e)
    return slices


def _load_shards(p: _Prepared, comm: _Comm, out: dict) -> Dict[str, torch.Tensor]:
    t0 = time.perf_counter()
    result: Dict[str, torch.Tensor] = {}
    error: Optional[BaseException] = None
    try:
        result = _read_shards(p, out)
    except BaseException as e:
        error = e
    comm.agree(error, {}, "reading the slices")
    out["seconds_read"] = time.perf_counter() - t0
    return result


def _read_shards(p: _Prepared, out: dict) -> Dict[str, torch.Tensor]:
    """This rank's slices and every other tensor whole, in one load."""
    pairs, _ = _read(p, out, request={name: p.slices.get(name) for name in p.names})
    return dict(pairs)
