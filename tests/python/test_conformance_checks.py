"""The second-generation checks of the conformance harness. For each check a
deliberately broken loader (tests/python/broken_loaders/loaders.py) is caught
by that check and by no other, while upstream passes them all; the same
loaders served through the executable testee protocol are judged the same
way where the protocol allows."""
from __future__ import annotations

import concurrent.futures
import json
import os
import sys
from pathlib import Path

import pytest

from safeload.conformance import cli
from safeload.conformance.cases import ACCEPT, Case, ExpectedTensor, load_corpus
from safeload.conformance.checks import CHECKS
from safeload.conformance.report import FAILED, PASSED, XFAIL, Report, Result
from safeload.conformance.judge import judge_checks
from safeload.conformance.runner import run

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
BROKEN = Path(__file__).resolve().parent / "broken_loaders" / "loaders.py"
SUBSET = ["y_dtype_F32", "y_dtype_BF16", "y_dtype_all_in_one_file", "y_many_tensors", "y_odd_alignment",
          "n_truncated_data", "n_offsets_overlap"]
SEED = 3

# broken loader -> the checks that must catch it (and nothing else may)
CAUGHT_BY = {
    "good": set(),
    "leak_fds": {"leak_fds"},
    "leak_threads": {"leak_threads"},
    "leak_memory": {"leak_memory"},
    "thread_unsafe": {"thread_safety"},
    "process_unsafe": {"process_safety"},
    "chunk_off_by_one": {"bytes"},
    "noncontiguous": {"contiguous"},
    "requires_grad": {"requires_grad"},
    "lazy": {"file_independence"},
    "reversed_order": set(),
    "runtime_errors": set(),
}
UPSTREAM = "safeload.conformance.adapters.safetensors_torch:load_file"
WITH_UPSTREAM = {"good", "reversed_order", "runtime_errors"}
INFO_ONLY = {"reversed_order", "runtime_errors"}


@pytest.fixture(scope="module")
def subset():
    return load_corpus(FIXTURES, SUBSET)


@pytest.fixture(scope="module")
def reports(subset):
    def one(name):
        full = name not in INFO_ONLY  # the information toys need no checks
        return run(f"{BROKEN}:{name}", cases=subset, checks=CHECKS if full else (), generated=full, seed=SEED,
                   timeout=60, upstream=UPSTREAM if name in WITH_UPSTREAM else None)

    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(one, name) for name in CAUGHT_BY}
        return {name: f.result() for name, f in futures.items()}


def caught(report: Report) -> set[str]:
    return {c for r in report.results if r.outcome == FAILED for c in r.check_names()}


@pytest.mark.parametrize("name", sorted(CAUGHT_BY))
def test_each_defect_is_caught_by_its_own_check_only(reports, name):
    report = reports[name]
    assert caught(report) == CAUGHT_BY[name], report.render()
    assert report.ok == (not CAUGHT_BY[name])
    if name not in INFO_ONLY:  # every check ran, on the cpu
        assert {r.case.name for r in report.results if r.case.origin == "check"} == {f"check.{c}" for c in CHECKS}


def test_check_failures_say_what_failed(reports):
    by = {n: {r.case.name: r.detail for r in reports[n].results if r.outcome == FAILED} for n in reports}
    assert "open file descriptors +1.00 per call" in by["leak_fds"]["check.leak_fds"]
    assert "threads +1.00 per call" in by["leak_threads"]["check.leak_threads"]
    assert "resident memory +" in by["leak_memory"]["check.leak_memory"]
    assert "differ from the same call made alone" in by["thread_unsafe"]["check.thread_safety"]
    assert "BlockingIOError" in by["process_unsafe"]["check.process_safety"]
    assert "replaced and unlinked" in by["lazy"]["check.file_independence"]
    (chunk_case,) = by["chunk_off_by_one"]
    assert chunk_case.startswith(f"g{SEED}_chunks_") and "[bytes]" in by["chunk_off_by_one"][chunk_case]
    assert all("[contiguous]" in d and "not contiguous" in d for d in by["noncontiguous"].values())
    assert all("[requires_grad]" in d for d in by["requires_grad"].values())


def test_differences_from_upstream_are_information_not_failures(reports):
    assert reports["good"].info == {}
    order = reports["reversed_order"].info
    assert set(order) == {"key_order"} and {n for n, _ in order["key_order"]} >= {"y_dtype_all_in_one_file"}
    errors = reports["runtime_errors"].info
    assert set(errors) == {"error_class"}
    assert {n for n, _ in errors["error_class"]} == {"n_truncated_data", "n_offsets_overlap"}
    assert "builtins.RuntimeError" in errors["error_class"][0][1]
    assert reports["reversed_order"].ok and reports["runtime_errors"].ok
    assert "differs in 2 cases" in reports["runtime_errors"].render()


def test_generated_cases_are_seeded_and_cross_every_chunk_boundary(tmp_path):
    from safeload.conformance import generated

    a = generated.chunk_case(11, tmp_path / "a" if (tmp_path / "a").mkdir() is None else None)
    b = generated.chunk_case(11, tmp_path / "b" if (tmp_path / "b").mkdir() is None else None)
    c = generated.chunk_case(12, tmp_path / "c" if (tmp_path / "c").mkdir() is None else None)
    assert a.name == b.name and a.sha256 == b.sha256 and a.tensors == b.tensors
    assert a.sha256 != c.sha256
    size = Path(a.path).stat().st_size
    assert size > 64 << 20 and max(t.nbytes for t in a.tensors.values()) > 10 << 20
    with open(a.path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    data_start = 8 + n
    assert data_start % 2 == 1
    starts = {v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"}
    for chunk in generated.CHUNK_SIZES:
        for m in range(chunk, size, chunk):
            assert m - data_start not in starts and m not in starts


def test_wrong_device_index_is_its_own_check():
    case = Case("y_x", "", ACCEPT, tensors={"t": ExpectedTensor("F32", (2,), "ab" * 32, 8)})
    obs = {"accepted": True, "tensors": {"t": {"dtype": "float32", "shape": [2], "device": "cuda:0",
                                               "sha256": "ab" * 32, "nbytes": 8}}, "checks": {}, "problems": []}
    passed, detail, failed = judge_checks(case, "cuda:1", obs, "", False)
    assert passed is False and failed == {"t": ["device"]} and "wrong device index" in detail
    assert judge_checks(case, "cuda:0", obs, "", False)[0] is True
    assert judge_checks(case, "cuda", obs, "", False)[0] is True


def _result(name, tensors, outcome, failed=None):
    case = Case(name, "", ACCEPT, tensors={n: ExpectedTensor(d, (1,), "00", 1) for n, d in tensors.items()})
    return Result(case=case, device="cpu", outcome=outcome, detail="rejected a valid file: unknown dtype C64",
                  seconds=0, failed_checks=failed or {})


def test_coverage_charges_failures_to_the_dtype_that_failed():
    report = Report(loader="x", devices=["cpu"])
    report.add(_result("y_all", {"a": "F32", "b": "C64", "c": "BF16"}, FAILED, {None: ["accepts_valid"]}))
    report.add(_result("y_c64", {"t": "C64"}, FAILED, {None: ["accepts_valid"]}))
    report.add(_result("y_f32", {"t": "F32"}, PASSED))
    report.add(_result("y_mixed_bytes", {"a": "F16", "b": "I8"}, FAILED, {"b": ["bytes"]}))
    report.add(_result("y_f8", {"t": "F8_E4M3FNUZ"}, XFAIL, {None: ["accepts_valid"]}))
    cov = report.coverage()
    assert cov["C64"]["cpu"].state == "FAIL" and cov["C64"]["cpu"].failed == 2
    assert cov["F32"]["cpu"].state == "ok" and cov["F32"]["cpu"].passed == 2
    assert cov["BF16"]["cpu"].state == "ok"
    assert cov["F16"]["cpu"].state == "ok" and cov["I8"]["cpu"].state == "FAIL"
    assert cov["F8_E4M3FNUZ"]["cpu"].state == "xfail"
    text = report.render_coverage()
    assert "COVERAGE: FAIL (C64, I8); expected failures: F8_E4M3FNUZ" in text
    # Without a single-dtype culprit, a rejected mixed file is charged to all its dtypes.
    lone = Report(loader="x", devices=["cpu"])
    lone.add(_result("y_all", {"a": "F32", "b": "C64"}, FAILED, {None: ["accepts_valid"]}))
    assert {d for d, row in lone.coverage().items() if row["cpu"].state == "FAIL"} == {"F32", "C64"}


def test_coverage_command(capsys):
    args = ["--loader", "safetensors_torch", "--coverage", "--property-cases", "0", "--no-generated",
            "-k", "y_dtype_*", "--index-cases", "10"]
    # Upstream's default backend: every dtype loads by load_file, but load(bytes) of F4 and
    # E8M0 fails (#839), which the surface table charges to those dtypes.
    assert cli.main(args) == 1
    text = capsys.readouterr().out
    assert "COVERAGE: FAIL (F4, F8_E8M0)" in text and "BF16" in text and "F8_E4M3" in text
    listed = ["--expected-failures", str(ROOT / "conformance" / "expected_failures" / "safetensors_torch.txt")]
    assert cli.main(args + listed + ["--json", "-"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["coverage"]["F4"]["cpu"]["state"] == "ok"
    assert data["surface_coverage"]["F4"]["load"]["state"] == "xfail"
    assert data["surface_coverage"]["F4"]["safe_open"]["state"] == "ok"


# -- executable testees ------------------------------------------------------------
def exec_spec(func: str) -> str:
    return f"exec:{sys.executable} -m safeload.conformance.pytestee {BROKEN}:{func}"


@pytest.fixture(scope="module")
def exec_reports(subset):
    runs = {
        "good": dict(checks=CHECKS, generated=True),
        "crashy": dict(timeout=5, expected_failures={"y_dtype_BF16": "aborts"}),
        "leak_fds": dict(checks=["leak_fds", "leak_threads"]),
        "chunk_off_by_one": dict(generated=True),
    }
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {k: pool.submit(run, exec_spec(k), cases=subset, seed=SEED, **{"timeout": 60, **kw})
                   for k, kw in runs.items()}
        return {k: f.result() for k, f in futures.items()}


def test_executable_testee_end_to_end(exec_reports):
    report = exec_reports["good"]
    assert report.ok, report.render()
    names = {r.case.name for r in report.results}
    assert set(SUBSET) <= names and any(n.startswith(f"g{SEED}_chunks") for n in names)
    assert {r.case.name for r in report.results if r.case.origin == "check"} == {
        "check.leak_fds", "check.leak_threads", "check.leak_memory", "check.process_safety"}
    assert {w.split(" [")[0] for w, _ in report.not_run} == {"check.thread_safety", "check.file_independence",
                                                             "surface load", "surface safe_open"}


def test_executable_testee_crash_timeout_and_expected_failures(exec_reports):
    report = exec_reports["crashy"]
    out = {r.case.name: r for r in report.results}
    assert out["y_dtype_BF16"].outcome == XFAIL and "SIGABRT" in out["y_dtype_BF16"].detail
    assert out["n_offsets_overlap"].outcome == FAILED and "timed out" in out["n_offsets_overlap"].detail
    assert out["y_dtype_F32"].outcome == PASSED and out["n_truncated_data"].outcome == PASSED


def test_executable_testee_leaks_and_chunks_are_caught(exec_reports):
    assert caught(exec_reports["leak_fds"]) == {"leak_fds"}
    assert caught(exec_reports["chunk_off_by_one"]) == {"bytes"}


def test_executable_testee_that_breaks_the_protocol(tmp_path, subset):
    bad = tmp_path / "bad_testee.py"
    bad.write_text("import sys, struct, json\n"
                   "def send(m):\n    b = json.dumps(m).encode(); sys.stdout.buffer.write(struct.pack('<I', len(b)) + b); sys.stdout.flush()\n"
                   "def recv():\n    h = sys.stdin.buffer.read(4)\n    return json.loads(sys.stdin.buffer.read(struct.unpack('<I', h)[0])) if h else None\n"
                   "while (m := recv()) is not None:\n"
                   "    if m['op'] == 'hello': send({'ok': True, 'protocol': 1})\n"
                   "    else: sys.stdout.write('loading...\\n'); sys.stdout.flush()\n")
    report = run(f"exec:{sys.executable} {bad}", cases=[c for c in subset if c.name == "y_dtype_F32"], timeout=10)
    (r,) = report.results
    assert r.outcome == FAILED and "protocol error" in r.detail


def test_cpp_testee_end_to_end(subset):
    """The C++ worked example, when it has been built (conformance/testee)."""
    exe = os.environ.get("SAFELOAD_TESTEE") or next(
        (str(p) for p in ROOT.glob("build*/conformance/testee/safeload_conform_testee") if p.is_file()), None)
    if not exe:
        pytest.skip("C++ testee not built (cmake target safeload_conform_testee); set SAFELOAD_TESTEE to its path")
    report = run(f"exec:{exe}", cases=load_corpus(FIXTURES), strict_codes=True, timeout=60)
    assert report.ok, report.render()


@pytest.mark.skipif(os.environ.get("SAFELOAD_CONFORM_LARGE") != "1",
                    reason="writes a 4 GiB file and loads it: make conform-large (needs ~12 GiB free)")
def test_large_tier_catches_32bit_offsets():
    good = run(f"{BROKEN}:good", cases=[], large=True, seed=SEED, timeout=600)
    assert good.ok, good.render()
    bad = run(f"{BROKEN}:offsets_32bit", cases=[], large=True, seed=SEED, timeout=600)
    assert caught(bad) == {"bytes"} and not bad.ok
