"""safeload.safe_open against upstream safetensors.safe_open: same keys and
their order, metadata, tensors, slice results and error classes, on the
fixture corpus and on Hypothesis-drawn files and indices."""
from __future__ import annotations

import json
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import safeload
from safeload.conformance import surfaces
from safeload.testing.strategies import valid_files
from helpers import raw_bytes

safetensors = pytest.importorskip("safetensors")
upstream_safe_open = safetensors.safe_open  # captured before any patch() can rebind it

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures")
CASES = json.load(open(os.path.join(ROOT, "manifest.json")))["cases"]
TORCH_DTYPES = [d for d in safeload.DTYPES if not d.startswith("F6")]


def same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape) and raw_bytes(a) == raw_bytes(b)


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


def compare_handles(path):
    with upstream_safe_open(path, framework="pt") as up, safeload.safe_open(path, framework="pt") as ours:
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
    with safeload.safe_open(path, framework="pt") as ours:
        ours_all = ours.get_tensors()
    assert same_order(list(ours_all), list(up_all), offsets)
    assert all(same_tensor(ours_all[n], up_all[n]) for n in up_all)


# -- the fixture corpus --------------------------------------------------------

ACCEPTED = sorted(k for k, c in CASES.items() if c["expect"] == "accept")
REJECTED = sorted(k for k, c in CASES.items() if c["expect"] == "reject")


@pytest.mark.parametrize("case", ACCEPTED)
def test_corpus_accepted_files_match_upstream(case):
    compare_handles(os.path.join(ROOT, CASES[case]["file"]))


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
@given(case=valid_files(TORCH_DTYPES, max_tensors=4), data=st.data())
def test_drawn_files_and_slices_match_upstream(case, data):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "drawn.safetensors")
        with open(path, "wb") as f:
            f.write(case.data)
        up_open = outcome(lambda: upstream_safe_open(path, framework="pt"))
        if up_open[0] == "raise":  # e.g. a dtype this torch lacks
            with pytest.raises(type(up_open[1])):
                safeload.safe_open(path, framework="pt").get_tensors()
            return
        up_open[1].__exit__(None, None, None)
        compare_handles(path)
        header = surfaces.read_header(path)
        with upstream_safe_open(path, framework="pt") as up, safeload.safe_open(path, framework="pt") as ours:
            for name in up.keys():
                shape = up.get_slice(name).get_shape()
                f4 = up.get_slice(name).get_dtype() == "F4"
                for _ in range(3):
                    index = data.draw(indices(shape), label=f"index into {name!r} {shape}")
                    if f4:  # upstream cannot slice F4 (#783): the harness's oracle, from the file's bytes
                        want = surfaces.oracle(surfaces.tensor_of(path, header, name), "F4", index)
                        got = outcome(lambda: ours.get_slice(name)[index])
                        if want.error is not None:
                            assert got[0] == "raise" and want.error.endswith(type(got[1]).__name__), (index, got)
                        else:
                            assert got[0] == "ok", (index, got)
                            assert [str(got[1].dtype).removeprefix("torch."), list(got[1].shape),
                                    surfaces.digest(got[1])[0]] == [want.dtype, want.shape, want.sha256], index
                        continue
                    want = outcome(lambda: up.get_slice(name)[index])
                    got = outcome(lambda: ours.get_slice(name)[index])
                    assert got[0] == want[0], (index, got, want)
                    if want[0] == "ok":
                        assert same_tensor(got[1], want[1]), index
                    else:
                        assert type(got[1]) is type(want[1]), (index, got[1], want[1])


@pytest.mark.parametrize("index", [(0, slice(None, None, 2)), (slice(None, None, 3), 0), (None, 0, slice(1, None, 5))])
def test_steps_over_dimensions_of_one_match_upstream(tmp_path, index):
    """A result of one element along a stepped dimension keeps an odd stride there."""
    from safetensors.torch import save_file

    path = str(tmp_path / "one.safetensors")
    save_file({"w": torch.tensor([[-5099]], dtype=torch.int16), "v": torch.arange(3, dtype=torch.int16)[None]},
              path)
    with upstream_safe_open(path, framework="pt") as up, safeload.safe_open(path, framework="pt") as ours:
        for name in ("w", "v"):
            want = outcome(lambda: up.get_slice(name)[index])
            got = outcome(lambda: ours.get_slice(name)[index])
            assert got[0] == want[0], (name, got, want)
            if want[0] == "ok":
                assert same_tensor(got[1], want[1]), name


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


@pytest.mark.parametrize("halves_first", [False, True])
def test_concurrent_materialisation(tmp_path, halves_first):
    """transformers materialises get_slice(...)[...] from a thread pool: whole tensors (then
    the rest is read ahead while the pool asks), or parts first (then each read alone)."""
    from safetensors.torch import save_file

    tensors = {f"t{i}": torch.randn(64, 33) for i in range(32)}
    path = str(tmp_path / "many.safetensors")
    save_file(tensors, path)
    with safeload.safe_open(path, "pt") as f:
        slices = {k: f.get_slice(k) for k in f.keys()}
        with ThreadPoolExecutor(4) as pool:
            if halves_first:
                halves = dict(zip(slices, pool.map(lambda s: s[::2, 1:], slices.values())))
            got = dict(zip(slices, pool.map(lambda s: s[...], slices.values())))
            if not halves_first:
                halves = dict(zip(slices, pool.map(lambda s: s[::2, 1:], slices.values())))
        assert f.report()["read_ahead"] is not halves_first
    assert all(same_tensor(got[k], tensors[k]) for k in tensors)
    assert all(same_tensor(halves[k], tensors[k][::2, 1:].contiguous()) for k in tensors)


def _rchar() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar"))


IO = pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux /proc/self/io")


@IO
def test_reading_one_tensor_reads_only_it(tmp_path):
    from safetensors.torch import save_file

    tensors = {"small": torch.arange(16, dtype=torch.int32), "big": torch.zeros(16 << 20, dtype=torch.uint8)}
    path = str(tmp_path / "one-of-two.safetensors")
    save_file(tensors, path)
    before = _rchar()
    with safeload.safe_open(path, "pt") as f:
        assert same_tensor(f.get_tensor("small"), tensors["small"])
    lazy = _rchar() - before
    assert lazy < 1 << 20, f"reading one 64-byte tensor read {lazy} bytes"
    before = _rchar()
    with safeload.safe_open(path, "pt") as f:
        f.get_tensor("big")
    assert _rchar() - before >= 16 << 20  # the oracle: a full read is visible to this counter


@IO
@pytest.mark.parametrize("dtype", ["F32", "BF16", "F8_E4M3", "I64", "F4"])
def test_a_slice_reads_about_its_own_bytes(tmp_path, dtype):
    """A quarter of the rows reads a quarter of the tensor (one run); a quarter of the columns
    a quarter too (a run per row, each long); one row its row. Checked against the bytes the
    kernel counted and the writer's input."""
    from safetensors.torch import save_file

    rows, cols = 64, 1 << 16
    tdtype, tshape = safeload._C.torch_layout("w", dtype, [rows, cols], "")
    weight = torch.randint(0, 256, (rows, tshape[1] * torch.empty(0, dtype=tdtype).element_size()),
                           dtype=torch.uint8).view(tdtype)
    path = str(tmp_path / "w.safetensors")
    save_file({"w": weight, "pad": torch.zeros(1 << 20, dtype=torch.uint8)}, path)
    nbytes = weight.nbytes
    pairs = 2 if dtype == "F4" else 1  # F4 is indexed in values, two to an element of torch's
    with safeload.safe_open(path, "pt") as f:
        for index, want, most in [((slice(16, 32),), weight[16:32], 0.26),
                                  ((slice(None), slice(cols // 4, cols // 2)),
                                   weight[:, cols // 4 // pairs:cols // 2 // pairs], 0.26),
                                  ((7, slice(None)), weight[7], 1 / rows + 0.01)]:
            before = _rchar()
            part = f.get_slice("w")[index]
            read = _rchar() - before
            assert same_tensor(part, want.contiguous()), index
            assert read <= most * nbytes, f"{index}: {read} bytes read of {nbytes}"
        assert f.report()["read_ahead"] is False


@IO
def test_read_ahead_starts_for_a_caller_reading_every_key_and_not_for_one_tensor(tmp_path):
    from safetensors.torch import save_file

    tensors = {f"t{i:02d}": torch.full((1 << 18,), i, dtype=torch.float32) for i in range(16)}
    path = str(tmp_path / "sixteen.safetensors")
    save_file(tensors, path)
    total = sum(t.nbytes for t in tensors.values())
    with safeload.safe_open(path, "pt") as f:
        before = _rchar()
        f.get_tensor("t03")
        assert f.report()["read_ahead"] is False
        assert _rchar() - before < 2 * tensors["t03"].nbytes
    with safeload.safe_open(path, "pt") as f:
        before = _rchar()
        got = {k: f.get_tensor(k) for k in f.keys()}
        report = f.report()
        read = _rchar() - before
    assert report["read_ahead"] is True and report["tensors_served"] == 16
    assert all(same_tensor(got[k], tensors[k]) for k in tensors)
    assert read < 1.02 * total + (1 << 16), f"every byte once: {read} of {total}"


def test_get_tensors_reads_the_file_in_one_load(small):
    path, tensors = small
    with safeload.safe_open(path, "pt") as f:
        got = f.get_tensors()
        report = f.report()
    assert report["read_ahead"] is True and report["reads"] == 0
    assert list(got) == ["w", "b"] and all(same_tensor(got[k], tensors[k]) for k in tensors)


def test_report_counts_what_was_served(small):
    path, tensors = small
    with safeload.safe_open(path, "pt") as f:
        f.get_tensor("w")
        f.get_slice("b")[:2]
        report = f.report()
    assert report["tensors_served"] == 2 and report["reads"] == 2 and report["read_ahead"] is False
    assert report["bytes_read"] == tensors["w"].nbytes + 2 * 2


def test_a_handle_takes_its_file_from_a_preload_of_that_file_only(tmp_path):
    """A CPU handle without load options, on a file a preload holds open, takes its tensors
    from that load; a handle with options of its own, or on a file replaced since the preload
    opened it, reads its file."""
    from safetensors.torch import save_file

    from safeload import _C
    from safeload.safe_open import _preloads, preloading

    first = {"a": torch.arange(24, dtype=torch.float32).reshape(4, 6), "b": torch.ones(5, dtype=torch.bfloat16)}
    second = {"c": torch.arange(7, dtype=torch.int64)}
    one, two = str(tmp_path / "m-1.safetensors"), str(tmp_path / "m-2.safetensors")
    save_file(first, one)
    save_file(second, two)
    withdraw = preloading(_C.Checkpoint([one.encode(), two.encode()], b""))
    try:
        with safeload.safe_open(two, "pt", threads=1) as f:
            assert not f.report()["preloaded"]
            assert same_tensor(f.get_tensor("c"), second["c"])
        with safeload.safe_open(one, "pt", backend="mmap") as f:
            assert f.report()["preloaded"]
            assert same_tensor(f.get_slice("a")[1:3], first["a"][1:3])
            taken = f.get_tensor("b")
            assert same_tensor(taken, first["b"])
        with safeload.safe_open(one, "pt") as f:  # taken once: read again, no aliasing
            assert not f.report()["preloaded"]
            again = f.get_tensor("b")
            assert same_tensor(again, first["b"]) and again.data_ptr() != taken.data_ptr()
        os.remove(two)
        replaced = {"c": torch.full((7,), 9, dtype=torch.int64)}
        save_file(replaced, two)
        with safeload.safe_open(two, "pt") as f:
            assert not f.report()["preloaded"]
            assert same_tensor(f.get_tensor("c"), replaced["c"])
        withdraw_again = preloading(_C.Checkpoint([one.encode()], b""))
        held = safeload.safe_open(one, "pt")
        assert held.report()["preloaded"]
        withdraw_again()
    finally:
        withdraw()
    assert not _preloads
    # A handle that took the load keeps its tensors after the offer is withdrawn.
    assert same_tensor(held.get_tensor("a"), first["a"])
    held.close()
