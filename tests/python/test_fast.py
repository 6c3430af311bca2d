"""The fast loader against the reference loader, byte for byte."""
from __future__ import annotations

import contextlib
import os
import struct
import tempfile
import threading

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import safeload
import safeload.reference
from safeload.bench import cache
from safeload.testing import strategies as sts

from helpers import MALFORMED, assert_same, raw_bytes, write_raw

TORCH_FORMATS = [d for d in safeload.DTYPES if not d.startswith("F6")]
FAST_VARIANTS = {
    "default": {},
    "small-chunks": {"chunk_bytes": 64 << 10, "threads": 3},  # the smallest allowed
    "staged": {"staged": True, "chunk_bytes": (64 << 10) + 7, "staging_bytes": 1 << 20},
    "staged-default": {"staged": True},
    "one-thread": {"threads": 1},
    # Page-cache bypass (O_DIRECT) through aligned bounce slots, with chunks
    # that leave reads unaligned on both ends.
    "uncached": {"io": "uncached", "chunk_bytes": (64 << 10) + 5000},
    "uncached-staged": {"io": "uncached", "staged": True, "chunk_bytes": (64 << 10) + 12289, "threads": 2},
    "cached": {"io": "cached"},
    "no-prefault": {"prefault": False},
    "uncached-no-prefault": {"io": "uncached", "prefault": False, "chunk_bytes": (64 << 10) + 5000},
}


def load_variants(path, device="cpu"):
    return {name: safeload.load_file(path, device, **kw) for name, kw in FAST_VARIANTS.items()}


@contextlib.contextmanager
def case_file(case):
    """The drawn file's bytes in a temporary file."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "f.safetensors")
        with open(path, "wb") as f:
            f.write(case.data)
        yield path


def outcome(fn, path):
    try:
        return ("ok", fn(path))
    except safeload.SafetensorError as e:
        return ("error", e.code)


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(case=sts.valid_files(dtypes=TORCH_FORMATS))
def test_fast_equals_reference_on_generated_files(case):
    with case_file(case) as path:
        kind, ref = outcome(safeload.reference.load_file, path)
        if kind == "error":
            # Only torch's packing of F4 may refuse a valid file.
            assert ref == "UNSUPPORTED_DTYPE"
            for kw in FAST_VARIANTS.values():
                assert outcome(lambda p: safeload.load_file(p, **kw), path) == ("error", ref)
            return
        for spec in case.tensors:  # the reference returns what was written
            assert raw_bytes(ref[spec.name]) == spec.data
        for name, got in load_variants(path).items():
            assert_same(got, ref)


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(case=sts.corrupted_files(dtypes=TORCH_FORMATS))
def test_fast_and_reference_give_the_same_verdict(case):
    with case_file(case) as path:
        ref = outcome(safeload.reference.load_file, path)
        for kw in FAST_VARIANTS.values():
            got = outcome(lambda p: safeload.load_file(p, **kw), path)
            assert got[0] == ref[0]
            if ref[0] == "error":
                assert got[1] == ref[1]
            else:
                assert_same(got[1], ref[1])


def test_thousands_of_tiny_tensors(tmp_path):
    tensors = {f"layer.{i}.bias": torch.full((i % 5,), i, dtype=torch.int16) for i in range(5000)}
    path = tmp_path / "tiny.safetensors"
    import safetensors.torch as upstream

    upstream.save_file(tensors, str(path))
    ref = safeload.reference.load_file(path)
    assert_same(ref, tensors)
    for got in load_variants(path).values():
        assert_same(got, ref)


def test_outputs_are_aligned_whatever_the_file_offsets(tmp_path):
    # 1-byte tensor first: every following tensor sits at an odd file offset.
    header = (b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
              b'"b":{"dtype":"F64","shape":[3],"data_offsets":[1,25]},'
              b'"c":{"dtype":"I32","shape":[2],"data_offsets":[25,33]}}')
    data = bytes(range(33))
    path = write_raw(tmp_path / "odd.safetensors", header, data)
    assert (8 + len(header) + 1) % 8 != 0
    for got in load_variants(path).values():
        assert raw_bytes(got["b"]) == data[1:25]
        for t in got.values():
            assert t.data_ptr() % 64 == 0


def test_tensor_larger_than_2gib_is_split_and_exact(tmp_path):
    # Over 2 GiB: past the largest single read Linux performs, so the chunked
    # reads and the read loops both matter. Contents: a pattern that differs
    # in every 4 KiB page so misplaced chunks show.
    n = (2 << 30) + 4099
    path = tmp_path / "big.safetensors"
    header = ('{"big":{"dtype":"U8","shape":[%d],"data_offsets":[0,%d]}}' % (n, n)).encode()
    block = 64 << 20  # a multiple of 4096, so each block is the first one shifted by a constant
    j = np.arange(block, dtype=np.int64)
    base = ((j * 31 + j // 4096) % 251).astype(np.uint16)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        for start in range(0, n, block):
            shift = (start * 31 + start // 4096) % 251
            f.write(((base[: min(block, n - start)] + shift) % 251).astype(np.uint8).tobytes())
    ref = safeload.reference.load_file(path)["big"]
    assert ref.numel() == n
    # Spot-check the oracle against the writer's formula at page boundaries.
    for i in (0, 4095, 4096, n // 2, (2 << 30) - 1, 2 << 30, n - 1):
        assert int(ref[i]) == (i * 31 + i // 4096) % 251
    fast = safeload.load_file(path)["big"]
    assert torch.equal(fast, ref)
    del fast
    staged = safeload.load_file(path, staged=True, staging_bytes=32 << 20)["big"]
    assert torch.equal(staged, ref)
    del staged
    uncached = safeload.load_file(path, io="uncached")["big"]
    assert torch.equal(uncached, ref)


def _supports_o_direct(path: str) -> bool:
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_DIRECT))
        return True
    except OSError:  # EINVAL: the file system has no O_DIRECT (tmpfs)
        return False


def test_cold_file_loads_through_the_uncached_path(tmp_path_factory):
    """A file evicted from the page cache is read with O_DIRECT by default (io="auto"),
    tensors at offsets no block boundary matches included; bytes equal upstream's. The
    load report says which path ran: the evicted file's reads bypass the page cache,
    the same file once cached is copied from it."""
    import safetensors.torch as upstream

    if not hasattr(os, "posix_fadvise") or not hasattr(os, "O_DIRECT"):
        pytest.skip("needs posix_fadvise and O_DIRECT")
    gen = torch.Generator().manual_seed(7)
    tensors = {
        "odd": torch.randint(0, 255, (3,), dtype=torch.uint8, generator=gen),
        "big": torch.randn(1_000_003, generator=gen),
        "mid": torch.randn(4097, dtype=torch.float64, generator=gen),
        "bf": torch.randn(300_001, generator=gen).to(torch.bfloat16),
    }
    from helpers import evictable_dir

    path = os.path.join(evictable_dir(tmp_path_factory, "cold"), "cold.safetensors")
    upstream.save_file(tensors, path)
    if not _supports_o_direct(path):
        pytest.skip("the file system of the temporary directory has no O_DIRECT")
    # Upstream's tensors map the file; copies let the mapping go, so eviction works.
    expected = {k: v.clone() for k, v in upstream.load_file(path).items()}
    data_bytes = sum(t.numel() * t.element_size() for t in expected.values())

    def evict():
        cache.evict(path)

    def check(got):
        assert set(got) == set(expected)
        for name, t in expected.items():
            assert got[name].dtype == t.dtype, name
            assert torch.equal(got[name].view(torch.uint8), t.view(torch.uint8)), name
            assert got[name].data_ptr() % 64 == 0, name

    for threads, chunk in ((None, None), (3, 65536), (2, 65537)):
        evict()
        report = {}
        got = safeload.load_file(path, threads=threads, chunk_bytes=chunk, report=report)
        check(got)
        assert report["route"] == "host" and report["io"] == "auto", report
        assert report["bytes_total"] == report["bytes_done"] == data_bytes, report
        # Eviction is advice: a page may stay, so most bytes, not all, must bypass.
        assert report["bypass"] and report["ops_uncached"] > 0, report
        assert report["bytes_uncached"] > data_bytes // 2, report
        if threads is not None:
            assert report["threads"] == threads and report["chunk_bytes"] == chunk, report

    evict()
    report = {}
    check(safeload.load_file(path, prefault=False, report=report))
    assert report["prefault"] is False and report["bypass"], report

    # The same file, cached: nothing bypasses the page cache.
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass
    report = {}
    check(safeload.load_file(path, report=report))
    assert report["ops_uncached"] == 0 and report["bytes_uncached"] == 0, report
    assert report["prefault"] is False, report  # only reads that bypass the page cache prefault


def test_concurrent_calls_from_threads(tmp_path):
    import safetensors.torch as upstream

    tensors = {f"w{i}": torch.randn(64, 33) for i in range(40)}
    path = tmp_path / "c.safetensors"
    upstream.save_file(tensors, str(path))
    results, errors = [], []

    def work():
        try:
            for _ in range(5):
                results.append(safeload.load_file(path, threads=3))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 30
    for r in results:
        assert_same(r, tensors)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_errors_leak_no_file_descriptors(tmp_path):
    header, data = MALFORMED["METADATA_INCOMPLETE_BUFFER"]
    bad = write_raw(tmp_path / "bad.safetensors", header, data)
    f6 = write_raw(tmp_path / "f6.safetensors", *MALFORMED["UNSUPPORTED_DTYPE"])
    before = open_fds()
    for _ in range(200):
        for path in (bad, f6):
            for kw in ({}, {"staged": True}):
                with pytest.raises(safeload.SafetensorError):
                    safeload.load_file(path, **kw)
    assert open_fds() == before


def test_invalid_options_are_rejected(tmp_path):
    path = write_raw(tmp_path / "a.safetensors", b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"x")
    for kw in ({"threads": -1}, {"threads": 257}, {"chunk_bytes": -1}, {"chunk_bytes": 4096},
               {"staged": True, "staging_bytes": 100}, {"io": "sometimes"}):
        with pytest.raises(safeload.SafetensorError) as e:
            safeload.load_file(path, **kw)
        assert e.value.code == "INVALID_ARGUMENT"


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
def test_cuda_matches_reference_through_the_staging_ring(tmp_path):
    import safetensors.torch as upstream

    g = torch.Generator().manual_seed(0)
    tensors = {f"t{i}": torch.randint(0, 256, (i * 997 + 1,), generator=g, dtype=torch.uint8) for i in range(50)}
    tensors["big"] = torch.randint(0, 256, (48 << 20,), generator=g, dtype=torch.uint8)
    tensors["bf16"] = torch.randn(333, 77, generator=g).to(torch.bfloat16)
    tensors["empty"] = torch.empty(0, 3)
    path = tmp_path / "cuda.safetensors"
    upstream.save_file(tensors, str(path))
    ref = safeload.reference.load_file(path)
    for kw in ({}, {"staging_bytes": 1 << 20, "chunk_bytes": 65536}, {"threads": 1, "staging_bytes": 1 << 20}):
        got = safeload.load_file(path, "cuda", **kw)
        assert all(t.device.type == "cuda" for t in got.values())
        assert_same({k: v.cpu() for k, v in got.items()}, ref)
    assert_same({k: v.cpu() for k, v in safeload.reference.load_file(path, "cuda").items()}, ref)
