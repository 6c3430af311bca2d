"""The conformance harness: it passes good loaders, reports each kind of
broken loader as failures on exactly the cases it breaks, survives crashes
and hangs, and keeps the corpus intact.

Broken loaders are toys written into a temporary .py file (exercising the
``path/to/file.py:FUNC`` loader form) and run on a small subset of cases with
short timeouts."""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import textwrap
from pathlib import Path

import pytest

from safeload.conformance import cli
from safeload.conformance.adapters import spec
from safeload.conformance.cases import ACCEPT, REJECT, load_corpus
from safeload.conformance.expected import ExpectedFailuresError, parse_expected_failures
from safeload.conformance.pytest_plugin import conformance_tests
from safeload.conformance.report import FAILED, IMPL_DEFINED, PASSED, XFAIL, XPASS
from safeload.conformance.runner import run

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"

SUBSET = ["y_dtype_F32", "y_identical_contents", "y_scalars_0d", "y_no_tensors",
          "n_offsets_overlap", "n_truncated_data", "i_duplicate_name"]
NONEMPTY_Y = {"y_dtype_F32", "y_identical_contents", "y_scalars_0d"}

TOYS = textwrap.dedent('''
    import ctypes, os, time
    import torch
    from safetensors.torch import load_file as _load

    def _bytes(t, n):
        return torch.empty(0, dtype=torch.uint8).set_(
            t.untyped_storage(), t.storage_offset() * t.element_size(), (n,), (1,))

    def good(path, device):
        return _load(path, device=device)

    def corrupt_byte(path, device):
        out = _load(path, device=device)
        for name in sorted(out):
            if out[name].numel():
                _bytes(out[name], 1).bitwise_not_()
                break
        return out

    def drop_tensor(path, device):
        out = _load(path, device=device)
        if out:
            out.pop(sorted(out)[0])
        return out

    def mislabel_dtype(path, device):
        out = _load(path, device=device)
        return {k: (v.view(torch.int32) if v.dtype == torch.float32 and v.dim() else
                    v.to(torch.int32) if v.dtype == torch.float32 else v) for k, v in out.items()}

    def accept_everything(path, device):
        try:
            return _load(path, device=device)
        except Exception:
            return {}

    def crashy(path, device):
        base = os.path.basename(path)
        if base.startswith("y_scalars"):
            os.abort()
        if base.startswith("y_identical"):
            ctypes.string_at(0)  # SIGSEGV
        if base.startswith("n_offsets_overlap"):
            time.sleep(3600)
        return _load(path, device=device)

    def shared_mapping(path, device):
        # Tensors as views of a MAP_SHARED mapping of the file: writes reach the file.
        ref = _load(path)
        mapped = torch.from_file(path, shared=True, size=os.path.getsize(path), dtype=torch.uint8)
        n = int.from_bytes(mapped[:8].numpy().tobytes(), "little")
        import json
        header = json.loads(mapped[8:8 + n].numpy().tobytes())
        out = {}
        for name, t in ref.items():
            b, e = header[name]["data_offsets"]
            out[name] = mapped[8 + n + b: 8 + n + e].view(t.dtype).reshape(t.shape) if t.numel() else t
        return out

    def aliasing(path, device):
        # Returns one tensor object for equal contents (saves memory, breaks ownership).
        out, seen = {}, {}
        for k, v in _load(path, device=device).items():
            key = (v.dtype, tuple(v.shape), v.numpy().tobytes() if v.dtype != torch.bfloat16 else None)
            out[k] = seen.setdefault(key, v)
        return out

    def vandal(path, device):
        with open(path, "r+b") as f:
            f.seek(-1, 2)
            last = f.read(1)
            f.seek(-1, 2)
            f.write(bytes([last[0] ^ 0xFF]))
        return _load(path, device=device)

    def wrong_device(path, device):
        return _load(path, device="meta") if False else {k: v.to("meta") for k, v in _load(path).items()}
''')


@pytest.fixture(scope="module")
def toys(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("toys") / "toys.py"
    path.write_text(TOYS)
    return path


@pytest.fixture(scope="module")
def subset():
    return load_corpus(FIXTURES, SUBSET)


def outcomes(report):
    return {r.case.name: r.outcome for r in report.results}


def failed(report):
    return {r.case.name: r.detail for r in report.results if r.outcome == FAILED}


def run_toy(toys, func, subset, **kw):
    kw.setdefault("timeout", 20)
    return run(f"{toys}:{func}", cases=subset, **kw)


# Each run starts its own worker processes (importing torch takes seconds), so
# the toy runs are started together, crash-heavy ones first, and shared.
TOY_RUNS = {
    "crashy": dict(timeout=3),
    "good": {},
    "corrupt_byte": {},
    "drop_tensor": {},
    "mislabel_dtype": {},
    "accept_everything": {},
    "shared_mapping": {},
    "vandal": {},
    "aliasing": {},
    "wrong_device": {},
    "corrupt_byte/xfail": dict(expected_failures={"y_dtype_F32": "flips a byte", "n_truncated_data": "listed but passes"}),
}


@pytest.fixture(scope="module")
def reports(toys, subset):
    before = {c.name: hashlib.sha256(Path(c.path).read_bytes()).hexdigest() for c in subset}
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        futures = {key: pool.submit(run_toy, toys, key.split("/")[0], subset, **kw) for key, kw in TOY_RUNS.items()}
        out = {key: f.result() for key, f in futures.items()}
    after = {c.name: hashlib.sha256(Path(c.path).read_bytes()).hexdigest() for c in subset}
    out["corpus-before-after"] = (before, after)
    return out


def test_subset_is_what_the_toys_assume(subset):
    assert sorted(c.name for c in subset) == sorted(SUBSET)


def test_good_loader_passes(reports):
    report = reports["good"]
    assert report.ok
    assert outcomes(report) == {n: (IMPL_DEFINED if n.startswith("i_") else PASSED) for n in SUBSET}


def test_corrupted_byte_is_reported(reports):
    fails = failed(reports["corrupt_byte"])
    assert set(fails) == NONEMPTY_Y
    assert all("bytes differ" in d for d in fails.values())


def test_dropped_tensor_is_reported(reports):
    fails = failed(reports["drop_tensor"])
    assert set(fails) == NONEMPTY_Y
    assert all("missing tensors" in d for d in fails.values())


def test_mislabelled_dtype_is_reported(reports):
    fails = failed(reports["mislabel_dtype"])
    assert set(fails) == NONEMPTY_Y  # each holds an F32 tensor
    assert all("expected float32" in d for d in fails.values())


def test_accepting_malformed_files_is_reported(reports):
    report = reports["accept_everything"]
    fails = failed(report)
    assert set(fails) == {"n_offsets_overlap", "n_truncated_data"}
    assert all("accepted a malformed file" in d for d in fails.values())
    assert not report.ok


def test_crashes_and_hangs_are_failures_not_harness_crashes(reports):
    report = reports["crashy"]
    fails = failed(report)
    assert set(fails) == {"y_scalars_0d", "y_identical_contents", "n_offsets_overlap"}
    assert "SIGABRT" in fails["y_scalars_0d"]
    assert "SIGSEGV" in fails["y_identical_contents"]
    assert "timed out" in fails["n_offsets_overlap"]
    # Every other case still ran, in fresh workers, and passed.
    assert outcomes(report)["y_dtype_F32"] == PASSED and outcomes(report)["n_truncated_data"] == PASSED


def test_shared_file_mapping_is_reported_and_corpus_survives(reports, subset):
    fails = failed(reports["shared_mapping"])
    assert set(fails) == NONEMPTY_Y  # y_scalars_0d: the toy cannot even build its unaligned views
    assert "changed the file on disk" in fails["y_dtype_F32"]
    assert "changed the file on disk" in fails["y_identical_contents"]
    fails = failed(reports["vandal"])
    # It flipped the last byte of its private copy: data byte or header padding.
    assert set(fails) == NONEMPTY_Y | {"y_no_tensors"}
    before, after = reports["corpus-before-after"]
    assert before == after == {c.name: c.sha256 for c in subset}


def test_aliased_tensors_are_reported(reports):
    fails = failed(reports["aliasing"])
    assert set(fails) == {"y_identical_contents"}
    assert "[aliasing]" in fails["y_identical_contents"]


def test_wrong_device_is_reported(reports):
    fails = failed(reports["wrong_device"])
    assert set(fails) == NONEMPTY_Y


def test_expected_failures_only_shrink(reports):
    report = reports["corrupt_byte/xfail"]
    got = outcomes(report)
    assert got["y_dtype_F32"] == XFAIL
    assert got["n_truncated_data"] == XPASS
    assert set(failed(report)) == NONEMPTY_Y - {"y_dtype_F32"}
    assert not report.ok


def test_expected_failure_parsing():
    text = "# header\n\ny_a   # reason one\nn_b#reason two # with hash\n"
    assert parse_expected_failures(text) == {"y_a": "reason one", "n_b": "reason two # with hash"}
    for bad in ("y_a\n", "y_a #\n", "y_a # r\ny_a # again\n", "two words # r\n"):
        with pytest.raises(ExpectedFailuresError):
            parse_expected_failures(bad)


def test_property_cases_are_seeded_and_judged(toys, tmp_path):
    report = run(f"{toys}:accept_everything", cases=[], property_cases=25, seed=7, timeout=20)
    names = [r.case.name for r in report.results]
    assert names and all(n.startswith("h7_") for n in names)
    rejected_by_reference = {r.case.name for r in report.results if r.case.expect == REJECT}
    assert rejected_by_reference, "seed 7 should draw some invalid files"
    assert set(failed(report)) == rejected_by_reference
    valid = [r for r in report.results if r.case.expect == ACCEPT and r.case.tensors is not None]
    assert valid and all(r.outcome == PASSED for r in valid)
    # Same seed, same files; another seed, other files.
    from safeload.conformance import properties

    first = properties.generate(7, 25, tmp_path / "a")
    again = properties.generate(7, 25, tmp_path / "b")
    other = properties.generate(8, 25, tmp_path / "c")
    assert [c.name for c in first] == [c.name for c in again] == names
    assert [Path(c.path).read_bytes() for c in first] == [Path(c.path).read_bytes() for c in again]
    assert [Path(c.path).read_bytes() for c in first] != [Path(c.path).read_bytes() for c in other]


def test_cli_exit_status_and_json(toys, tmp_path, capsys):
    out = tmp_path / "report.json"
    args = ["--loader", f"{toys}:drop_tensor", "--cases", str(FIXTURES), "--property-cases", "0", "--json", str(out),
            "--checks", "none", "--no-generated"]
    for name in SUBSET:
        args += ["-k", name]
    assert cli.main(args) == 1
    text = capsys.readouterr().out
    assert "RESULT: FAILED" in text and "y_dtype_F32 [cpu]: [names] missing tensors" in text
    data = json.loads(out.read_text())
    assert data["ok"] is False and data["summary"]["failed"] == 3 and data["summary"]["passed"] == 3
    # A dropped tensor is charged to its own dtype: y_scalars_0d loses its BOOL, not its F32.
    assert data["matrix"]["F32"]["cpu"] == {"passed": 1, "total": 3}
    assert data["matrix"]["BOOL"]["cpu"] == {"passed": 0, "total": 1}
    assert data["failed_checks"] == {"names": 3}
    assert {r["case"] for r in data["results"] if r["outcome"] == "failed"} == NONEMPTY_Y

    xfail = tmp_path / "xfail.txt"
    xfail.write_text("".join(f"{n}  # drops a tensor\n" for n in sorted(NONEMPTY_Y)))
    assert cli.main(args + ["--expected-failures", str(xfail)]) == 0
    assert "RESULT: OK" in capsys.readouterr().out


def test_missing_peer_package_is_skipped(tmp_path, capsys, monkeypatch):
    missing = tmp_path / "peer.py"
    missing.write_text("from safeload.conformance.adapters import require\n"
                       "_x = require('no_such_package_for_conformance', 'no-such-package')\n"
                       "def load_file(path, device):\n    return {}\n")
    assert cli.main(["--loader", f"{missing}:load_file", "-k", "y_dtype_F32", "--property-cases", "0",
                     "--checks", "none", "--no-generated"]) == 0
    assert "SKIPPED" in capsys.readouterr().out


def test_broken_loader_spec_is_a_usage_error(tmp_path, capsys):
    assert cli.main(["--loader", "no_such_module_xyz:load", "-k", "y_dtype_F32", "--property-cases", "0",
                     "--checks", "none", "--no-generated"]) == 2


def test_pytest_helper_reports_per_case(toys):
    test = conformance_tests(f"{toys}:drop_tensor", cases=str(FIXTURES), select=["y_dtype_F32", "n_truncated_data"],
                             expected_failures=None, timeout=20)
    test("n_truncated_data")
    with pytest.raises(pytest.fail.Exception, match="missing tensors"):
        test("y_dtype_F32")


def _shipped_list(name: str) -> dict[str, str]:
    path = ROOT / "conformance" / "expected_failures" / f"{name}.txt"
    return parse_expected_failures(path.read_text()) if path.exists() else {}


@pytest.fixture(scope="module")
def adapter_reports():
    """The shipped adapters over the whole corpus, through every surface each has (property
    cases are exercised above): safeload fast and reference with exact error codes, upstream's
    default and pread backends with their shipped expected-failure lists."""
    corpus = load_corpus(FIXTURES)
    runs = {
        "safeload_fast": dict(strict_codes=True),
        "safeload_reference": dict(strict_codes=True),
        "safetensors_torch": dict(expected_failures=_shipped_list("safetensors_torch")),
        "safetensors_pread": dict(expected_failures=_shipped_list("safetensors_pread")),
    }
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {n: pool.submit(run, spec(n), cases=corpus, timeout=60, **kw) for n, kw in runs.items()}
        return corpus, {n: f.result() for n, f in futures.items()}


def by_surface(report, surface):
    return [r for r in report.results if r.case.surface == surface]


def test_safeload_and_upstream_adapters_conform(adapter_reports):
    corpus, reports = adapter_reports
    for name, report in reports.items():
        assert report.ok, report.render()
        assert len(by_surface(report, "load_file")) == len(corpus), name


def test_safeload_fast_passes_every_surface_with_hundreds_of_slices(adapter_reports):
    corpus, reports = adapter_reports
    report = reports["safeload_fast"]
    counts = report.surface_counts()
    assert set(counts) == {"load_file", "load", "safe_open", "get_tensor_meta", "get_slice", "prefetch"}, counts
    assert all(c[FAILED] == 0 and c[XFAIL] == 0 for c in counts.values()), counts
    assert len(by_surface(report, "load")) == len(corpus)
    assert len(by_surface(report, "get_slice")) >= 600
    # Every dtype torch has is sliced, F4 in values along its packed last dimension.
    sliced = {t.dtype for r in by_surface(report, "get_slice") for t in r.case.tensors.values()}
    from safeload.conformance.cases import TORCH_DTYPES

    assert sliced == set(TORCH_DTYPES)
    assert len(by_surface(report, "prefetch")) > 0


def test_upstream_default_backend_fails_only_on_its_known_f4_and_e8m0_bugs(adapter_reports):
    _, reports = adapter_reports
    report = reports["safetensors_torch"]
    listed = [r for r in report.results if r.outcome == XFAIL]
    assert listed, "upstream's known bugs are in its expected-failure list"
    for r in listed:
        dtypes = r.case.dtypes()
        assert dtypes & {"F4", "F8_E8M0"}, (r.case.name, r.detail)
        assert r.case.surface in ("get_slice", "load"), r.case.name
        assert ("#783" if r.case.surface == "get_slice" else "#839") in report.expected_failures[r.case.name]


def test_upstream_pread_backend_fails_ordinary_slices_with_reproducers(adapter_reports):
    _, reports = adapter_reports
    report = reports["safetensors_pread"]
    slices = {r.case.name: r for r in by_surface(report, "get_slice") if r.outcome == XFAIL}
    f32 = "get_slice:g0_slices:f32_2d"
    for index in ("[:,3:0:3]", "[1:0]", "[-9:]", "[3:2:2]"):
        assert f32 + index in slices, f32 + index
        assert f"f.get_slice('f32_2d'){index}" in slices[f32 + index].case.reproducer
    assert len(slices) > 100
