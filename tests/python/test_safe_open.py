"""safeload.safe_open against upstream safetensors.safe_open: same keys and
their order, metadata, tensors, slice results and error classes, on the
fixture corpus and on Hypothesis-drawn files and indices."""
from __future__ import annotations

import json
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import safeload
from safeload.testing.strategies import valid_files

safetensors = pytest.importorskip("safetensors")
upstream_safe_open = safetensors.safe_open  # captured before any patch() can rebind it

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures")
CASES = json.load(open(os.path.join(ROOT, "manifest.json")))["cases"]
TORCH_DTYPES = [d for d in safeload.DTYPES if not d.startswith("F6")]


def raw(t: torch.Tensor) -> bytes:
    if not t.numel():
        return b""
    flat = torch.empty(t.numel(), dtype=t.dtype).copy_(t.detach().cpu().reshape(-1))  # stride 1
    return flat.view(torch.uint8).numpy().tobytes()


def same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape) and raw(a) == raw(b)


def same_order(ours, theirs, offsets) -> bool:
    """Upstream orders tensors by data offsets; among tensors with equal
    offsets (zero-size ones) its order varies from call to call, so only the
    offsets sequence is compared, plus the names as a set."""
    return set(ours) == set(theirs) and [offsets[n] for n in ours] == [offsets[n] for n in theirs]


def outcome(fn):
    try:
        return ("ok", fn())
    except Exception as e:  # the class is what is compared
        return ("raise", e)


def compare_handles(path, prefetch=True):
    with upstream_safe_open(path, framework="pt") as up, \
            safeload.safe_open(path, framework="pt", prefetch=prefetch) as ours:
        offsets = {t[0]: (t[3], t[4]) for t in safeload.read_header(path)["tensors"]}
        assert ours.keys() == up.keys()  # sorted, exactly
        assert same_order(ours.offset_keys(), up.offset_keys(), offsets)
        assert ours.metadata() == up.metadata()
        for name in up.keys():
            meta = ours.get_tensor_meta(name)
            assert (meta.dtype, meta.shape, meta.data_offsets) == (
                up.get_slice(name).get_dtype(), up.get_slice(name).get_shape(), offsets[name])
            assert ours.get_slice(name).get_dtype() == up.get_slice(name).get_dtype()
            assert ours.get_slice(name).get_shape() == up.get_slice(name).get_shape()
            assert same_tensor(ours.get_tensor(name), up.get_tensor(name)), name
        up_all = up.get_tensors()
    with safeload.safe_open(path, framework="pt", prefetch=prefetch) as ours:
        ours_all = ours.get_tensors()
    assert same_order(list(ours_all), list(up_all), offsets)
    assert all(same_tensor(ours_all[n], up_all[n]) for n in up_all)


# -- the fixture corpus --------------------------------------------------------

ACCEPTED = sorted(k for k, c in CASES.items() if c["expect"] == "accept")
REJECTED = sorted(k for k, c in CASES.items() if c["expect"] == "reject")


@pytest.mark.parametrize("case", ACCEPTED)
def test_corpus_accepted_files_match_upstream(case):
    compare_handles(os.path.join(ROOT, CASES[case]["file"]))


@pytest.mark.parametrize("case", ACCEPTED[:10])
def test_corpus_without_prefetch_matches_upstream(case):
    compare_handles(os.path.join(ROOT, CASES[case]["file"]), prefetch=False)


@pytest.mark.parametrize("case", REJECTED)
def test_corpus_rejected_files_raise_like_upstream(case):
    path = os.path.join(ROOT, CASES[case]["file"])

    def read_all(opener):
        with opener(path, framework="pt") as f:
            return f.get_tensors()

    up, ours = outcome(lambda: read_all(upstream_safe_open)), outcome(lambda: read_all(safeload.safe_open))
    assert up[0] == "raise" and ours[0] == "raise"
    if isinstance(ours[1], safeload.SafetensorError):
        assert ours[1].code == CASES[case]["error"]
        # Code written for upstream catches it.
        assert isinstance(ours[1], safetensors.SafetensorError)
    else:
        assert isinstance(ours[1], OSError) and isinstance(up[1], (OSError, safetensors.SafetensorError))


# -- Hypothesis: drawn files and indices --------------------------------------

@st.composite
def indices(draw, shape):
    """An index as callers write them: ints, slices with steps, ``...``,
    ``None``; sometimes one that torch (and so upstream) rejects."""
    items = []
    for size in shape[: draw(st.integers(0, len(shape)))]:
        kind = draw(st.sampled_from(["int", "slice", "slice", "full"]))
        if kind == "int" and size:
            items.append(draw(st.integers(-size, size - 1)))
        elif kind == "full":
            items.append(slice(None))
        else:
            bound = st.none() | st.integers(-size - 2, size + 2)
            items.append(slice(draw(bound), draw(bound), draw(st.none() | st.integers(1, 3))))
    if draw(st.integers(0, 4)) == 0:
        items.insert(draw(st.integers(0, len(items))), Ellipsis)
    if draw(st.integers(0, 8)) == 0:
        items.insert(draw(st.integers(0, len(items))), None)
    if draw(st.integers(0, 8)) == 0:  # an index torch rejects
        bad = draw(st.sampled_from([slice(None, None, -1), slice(0, 1, 0), 10**6, 1.5, Ellipsis]))
        if bad is Ellipsis:
            items += [Ellipsis, Ellipsis]
        else:
            items.append(bad)
    if draw(st.integers(0, 8)) == 0:
        items += [0] * (len(shape) + 1)  # too many indices
    if len(items) == 1 and draw(st.booleans()):
        return items[0]
    return tuple(items)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=valid_files(TORCH_DTYPES, max_tensors=4), data=st.data(),
       prefetch=st.booleans())
def test_drawn_files_and_slices_match_upstream(case, data, prefetch):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "drawn.safetensors")
        with open(path, "wb") as f:
            f.write(case.data)
        up_open = outcome(lambda: upstream_safe_open(path, framework="pt"))
        if up_open[0] == "raise":  # e.g. a dtype this torch lacks
            with pytest.raises(type(up_open[1])):
                safeload.safe_open(path, framework="pt", prefetch=prefetch).get_tensors()
            return
        up_open[1].__exit__(None, None, None)
        compare_handles(path, prefetch=prefetch)
        with upstream_safe_open(path, framework="pt") as up, \
                safeload.safe_open(path, framework="pt", prefetch=prefetch) as ours:
            for name in up.keys():
                shape = up.get_slice(name).get_shape()
                if up.get_slice(name).get_dtype() == "F4":
                    continue  # torch packs F4 in pairs: indexing it is not elementwise
                for _ in range(3):
                    index = data.draw(indices(shape), label=f"index into {name!r} {shape}")
                    want = outcome(lambda: up.get_slice(name)[index])
                    got = outcome(lambda: ours.get_slice(name)[index])
                    assert got[0] == want[0], (index, got, want)
                    if want[0] == "ok":
                        assert same_tensor(got[1], want[1]), index
                    else:
                        assert type(got[1]) is type(want[1]), (index, got[1], want[1])


# -- behaviour -------------------------------------------------------------------

@pytest.fixture
def small(tmp_path):
    from safetensors.torch import save_file

    tensors = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "b": torch.ones(4, dtype=torch.bfloat16)}
    path = tmp_path / "small.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    return str(path), tensors


def test_errors_match_upstream_classes(small):
    path, _ = small
    with safeload.safe_open(path, framework="pt") as f:
        with pytest.raises(safetensors.SafetensorError) as e:
            f.get_tensor("missing")
        assert e.value.code == "INVALID_ARGUMENT"
        with pytest.raises(safetensors.SafetensorError):
            f.get_slice("missing")
    for call in (f.keys, f.metadata, lambda: f.get_tensor("w")):  # closed, as upstream
        with pytest.raises(safetensors.SafetensorError):
            call()
    for framework in ("numpy", "tf", "nonsense"):
        with pytest.raises(safetensors.SafetensorError) as e:
            safeload.safe_open(path, framework=framework)
        assert e.value.code == "INVALID_ARGUMENT"
    with pytest.raises(safetensors.SafetensorError):
        safeload.safe_open(path, framework="pt", backend="nonsense")
    with pytest.raises(FileNotFoundError):
        safeload.safe_open(path + ".missing", framework="pt")


@pytest.mark.parametrize("backend", [None, "mmap", "pread"])
def test_backend_is_accepted_and_changes_nothing(small, backend):
    path, tensors = small
    with safeload.safe_open(path, "pt", backend=backend) as f:
        assert all(same_tensor(f.get_tensor(k), v) for k, v in tensors.items())


def test_results_never_alias(small):
    path, tensors = small
    with safeload.safe_open(path, "pt") as f:
        first = f.get_tensor("w")
        first.add_(100)
        assert same_tensor(f.get_tensor("w"), tensors["w"])  # read again, not the same memory
        assert same_tensor(f.get_slice("w")[...], tensors["w"])
        part = f.get_slice("w")[1]
        assert part.untyped_storage().nbytes() == 4 * 4  # a copy of the row, not a view of the whole
        part.zero_()
        assert same_tensor(f.get_slice("w")[1:], tensors["w"][1:])


def test_slice_objects_work_after_close(small):
    path, tensors = small
    with safeload.safe_open(path, "pt") as f:
        sl = f.get_slice("w")
    assert same_tensor(sl[...], tensors["w"])
    assert same_tensor(sl[:, 1], tensors["w"][:, 1].contiguous())


@pytest.mark.parametrize("prefetch", [True, False])
def test_concurrent_materialisation(tmp_path, prefetch):
    """transformers materialises get_slice(...)[...] from a thread pool."""
    from safetensors.torch import save_file

    tensors = {f"t{i}": torch.randn(64, 33) for i in range(32)}
    path = str(tmp_path / "many.safetensors")
    save_file(tensors, path)
    with safeload.safe_open(path, "pt", prefetch=prefetch) as f:
        slices = {k: f.get_slice(k) for k in f.keys()}
        with ThreadPoolExecutor(4) as pool:
            got = dict(zip(slices, pool.map(lambda s: s[...], slices.values())))
            halves = dict(zip(slices, pool.map(lambda s: s[::2, 1:], slices.values())))
    assert all(same_tensor(got[k], tensors[k]) for k in tensors)
    assert all(same_tensor(halves[k], tensors[k][::2, 1:].contiguous()) for k in tensors)


def _rchar() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar"))


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux /proc/self/io")
def test_reading_one_tensor_without_prefetch_reads_only_it(tmp_path):
    from safetensors.torch import save_file

    tensors = {"small": torch.arange(16, dtype=torch.int32), "big": torch.zeros(16 << 20, dtype=torch.uint8)}
    path = str(tmp_path / "one-of-two.safetensors")
    save_file(tensors, path)
    before = _rchar()
    with safeload.safe_open(path, "pt", prefetch=False) as f:
        assert same_tensor(f.get_tensor("small"), tensors["small"])
    lazy = _rchar() - before
    assert lazy < 1 << 20, f"reading one 64-byte tensor read {lazy} bytes"
    before = _rchar()
    with safeload.safe_open(path, "pt", prefetch=True) as f:
        f.get_tensor("big")
    assert _rchar() - before >= 16 << 20  # the oracle: a full read is visible to this counter


def test_report_counts_what_was_served(small):
    path, _ = small
    with safeload.safe_open(path, "pt") as f:
        f.get_tensor("w")
        f.get_slice("b")[:2]
        report = f.report()
    assert report["tensors_served"] == 2
    assert report.get("bytes_total", 0) > 0
