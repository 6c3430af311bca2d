"""The physical limits a loader is measured against, taken in the same run as the loaders.

storage  a parallel ``O_DIRECT`` read of the same files: every byte, page-aligned buffers,
         large chunks handed to a pool of threads (``os.preadv`` releases the GIL). It bypasses
         the page cache, so it is what the storage path can deliver whatever the cache holds.
         Which thread count and chunk size a device likes varies (virtual disks especially),
         so each run reads the files once per configuration in ``STORAGE_CONFIGS`` and keeps
         the fastest: a limit should err high, never low.
memory   a parallel memcpy of the same number of bytes between two buffers that are already
         faulted in: the rate at which RAM can be read and written at once, which is what a
         warm load (page cache to destination tensor) cannot beat.
fresh    obtaining and writing the same number of bytes of new memory, the fastest of several
         ways (``FRESH_METHODS``): what the system charges for the pages any loader returning
         tensors that own their memory must obtain. On bare metal this is close to the memcpy
         rate; on a virtual machine whose host reclaims idle guest memory (free page reporting)
         every new page can cost a trip to the host, and then it is the lowest limit of all.
h2d      for a GPU target, a pinned host-to-device copy of the same number of bytes.

Each probe returns the seconds its timed region took; the caller divides by the bytes.
"""
from __future__ import annotations

import errno
import mmap
import os
import queue
import time
from concurrent.futures import ThreadPoolExecutor

_PAGE = mmap.PAGESIZE
DEFAULT_CHUNK = 16 << 20
#: (threads, chunk bytes) tried by each storage-limit run; the fastest counts.
STORAGE_CONFIGS = ((2, 256 << 20), (4, 128 << 20), (8, 64 << 20), (4, 8 << 20))


def default_io_threads() -> int:
    # Blocking reads keep no core busy; a few per core keep the device queue full.
    return max(4, 2 * (os.cpu_count() or 1))


def default_copy_threads() -> int:
    return os.cpu_count() or 1


def odirect_unavailable(path: str | os.PathLike) -> str | None:
    """Why an O_DIRECT read of ``path`` is impossible here, or None if it works."""
    if not hasattr(os, "O_DIRECT"):
        return "O_DIRECT is not available on this platform"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError as e:
        return f"O_DIRECT open failed: {os.strerror(e.errno)} (the file system may not support it)"
    try:
        buf = mmap.mmap(-1, _PAGE)
        try:
            os.preadv(fd, [buf], 0)
        except OSError as e:
            return f"O_DIRECT read failed: {os.strerror(e.errno)}"
        finally:
            buf.close()
    finally:
        os.close(fd)
    return None


def storage_limit(paths: list[str], threads: int | None = None) -> tuple[float, int, dict]:
    """Best of ``odirect_read`` over ``STORAGE_CONFIGS`` (or over the chunk sizes at ``threads``
    threads); return (seconds, bytes, {"THREADSxCHUNK_MiB": seconds}) ."""
    configs = STORAGE_CONFIGS if threads is None else tuple((threads, c) for _, c in STORAGE_CONFIGS)
    tried = {}
    best = None
    for t, chunk in configs:
        seconds, nbytes = odirect_read(paths, t, chunk)
        tried[f"{t}x{chunk >> 20}MiB"] = seconds
        if best is None or seconds < best[0]:
            best = (seconds, nbytes)
    return best[0], best[1], tried


def odirect_read(paths: list[str], threads: int | None = None, chunk: int = DEFAULT_CHUNK) -> tuple[float, int]:
    """Read every byte of ``paths`` with O_DIRECT in parallel; return (seconds, bytes read).

    Lengths are rounded up to the page size: a read that runs past the end of a file returns
    short, so the unaligned tail is read without a second, buffered code path.
    """
    threads = threads or default_io_threads()
    chunk = max(_PAGE, chunk // _PAGE * _PAGE)
    fds = [os.open(p, os.O_RDONLY | os.O_DIRECT) for p in paths]
    buffers: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
    try:
        jobs = []
        for fd, p in zip(fds, paths):
            size = os.path.getsize(p)
            for off in range(0, size, chunk):
                jobs.append((fd, off, min(chunk, size - off)))
        for _ in range(threads):
            buf = mmap.mmap(-1, chunk)  # anonymous maps are page aligned
            # Huge pages where allowed: some virtual disks take O_DIRECT reads into 4 KiB
            # pages several times slower (one descriptor per page), and a limit errs high.
            if hasattr(mmap, "MADV_HUGEPAGE"):
                buf.madvise(mmap.MADV_HUGEPAGE)
            buf.write(b"\1" * chunk)  # fault it in before the clock starts
            buffers.put(buf)

        def read(job) -> int:
            fd, off, n = job
            buf = buffers.get()
            view = memoryview(buf)[: -(-n // _PAGE) * _PAGE]
            try:
                done = 0
                while done < n:
                    try:
                        got = os.preadv(fd, [view[done:]], off + done)
                    except InterruptedError:
                        continue
                    if got == 0:
                        raise OSError(errno.EIO, f"unexpected end of file at byte {off + done}")
                    done += got
                return min(done, n)
            finally:
                view.release()
                buffers.put(buf)

        with ThreadPoolExecutor(threads) as pool:
            t0 = time.perf_counter()
            total = sum(pool.map(read, jobs))
            seconds = time.perf_counter() - t0
        return seconds, total
    finally:
        for fd in fds:
            os.close(fd)


def memcpy(nbytes: int, threads: int | None = None) -> float:
    """Copy ``nbytes`` between two faulted-in buffers with ``threads`` threads; return seconds."""
    import torch

    threads = threads or default_copy_threads()
    torch.set_num_threads(1)  # the parallelism is ours, one slice per thread
    src = torch.empty(nbytes, dtype=torch.uint8)
    dst = torch.empty(nbytes, dtype=torch.uint8)
    step = -(-nbytes // threads)
    slices = [(i, min(i + step, nbytes)) for i in range(0, nbytes, step)]
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda s: (src[s[0]:s[1]].fill_(1), dst[s[0]:s[1]].fill_(0)), slices))
        t0 = time.perf_counter()
        list(pool.map(lambda s: dst[s[0]:s[1]].copy_(src[s[0]:s[1]]), slices))
        seconds = time.perf_counter() - t0
    if int(dst[-1]) != 1:
        raise AssertionError("memcpy probe did not copy")
    return seconds


#: (name, threads (None: one per core), huge pages, populate) of each new-memory probe.
FRESH_METHODS = (
    ("memset x1", 1, False, False),
    ("memset", None, False, False),
    ("memset, huge pages", None, True, False),
    ("populate", None, False, True),
)
#: The every-core first write alone: the probe taken in a process state, and the way a worker
#: puts itself in the "just freed" state.
EVERY_CORE = ("memset",)
_MADV_POPULATE_WRITE = 23  # Linux 5.14


def fresh_memory(nbytes: int, threads: int | None = None, settle: float = 0.0,
                 rotate: int = 0, methods: tuple[str, ...] | None = None) -> tuple[float, dict]:
    """Obtain and write ``nbytes`` of new memory once per method of ``FRESH_METHODS`` (those
    named in ``methods``, when given); return (the fastest method's seconds, {"method xT": seconds}).

    Each method maps anonymous memory, writes every page in ``threads`` slices at once (one per
    core; "x1": one slice, to show whether new memory scales with threads here) and unmaps it:
    ``memset`` with small pages, ``memset`` with huge pages advised, or ``MADV_POPULATE_WRITE``
    (the kernel populates the pages in bulk, without a fault per page; skipped where the kernel
    lacks it). Memory just freed is handed out again cheaply on some virtual machines, so the
    methods are ``settle`` seconds apart, as runs are, and start ``rotate`` places into the
    list (the benchmark passes the round), so that no method always follows the others' frees.
    The fastest counts: a limit errs high.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    threads = threads or default_copy_threads()
    tried: dict = {}
    chosen = [m for m in FRESH_METHODS if methods is None or m[0] in methods]
    shift = rotate % len(chosen)
    for i, (name, n_threads, huge, populate) in enumerate(chosen[shift:] + chosen[:shift]):
        if i and settle:
            time.sleep(settle)
        t = n_threads or threads
        buf = mmap.mmap(-1, nbytes)
        view = ctypes.c_char.from_buffer(buf)
        try:
            if hasattr(mmap, "MADV_HUGEPAGE") and huge:
                buf.madvise(mmap.MADV_HUGEPAGE)
            elif hasattr(mmap, "MADV_NOHUGEPAGE"):
                buf.madvise(mmap.MADV_NOHUGEPAGE)
            addr = ctypes.addressof(view)
            step = -(-nbytes // t)
            step = -(-step // _PAGE) * _PAGE  # page-aligned slices, as madvise needs
            slices = [(j, min(step, nbytes - j)) for j in range(0, nbytes, step)]
            if populate:
                if libc.madvise(addr, _PAGE, _MADV_POPULATE_WRITE) != 0:
                    continue  # this kernel cannot populate
                write = lambda sl: libc.madvise(addr + sl[0], sl[1], _MADV_POPULATE_WRITE)  # noqa: E731
            else:
                write = lambda sl: ctypes.memset(addr + sl[0], 1, sl[1])  # noqa: E731
            with ThreadPoolExecutor(t) as pool:  # ctypes calls run without the GIL
                t0 = time.perf_counter()
                results = list(pool.map(write, slices))
                seconds = time.perf_counter() - t0
            if populate and any(results):
                raise OSError(ctypes.get_errno(), "MADV_POPULATE_WRITE failed")
            if not populate and buf[nbytes - 1] != 1:
                raise AssertionError("fresh-memory probe did not write")
            tried[f"{name} x{t}" if n_threads is None else name] = seconds
        finally:
            del view
            buf.close()
    return min(tried.values()), tried


def h2d_unavailable(device: str) -> str | None:
    import torch

    if not device.startswith("cuda"):
        return f"not applicable to device {device}"
    if not torch.cuda.is_available():
        return "CUDA is not available"
    return None


def h2d(nbytes: int, device: str, block: int = 256 << 20) -> float:
    """Copy ``nbytes`` from pinned host memory to ``device`` in blocks; return seconds."""
    import torch

    block = min(block, nbytes)
    host = torch.empty(block, dtype=torch.uint8).pin_memory()
    host.fill_(1)
    dev = torch.empty(block, dtype=torch.uint8, device=device)
    dev.copy_(host, non_blocking=True)
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    done = 0
    while done < nbytes:
        n = min(block, nbytes - done)
        dev[:n].copy_(host[:n], non_blocking=True)
        done += n
    torch.cuda.synchronize(device)
    return time.perf_counter() - t0
