"""The harness's third generation: the surfaces beside load_file (load(bytes), safe_open and its
methods, get_slice(name)[index], prefetch(plan)) are judged against an independent oracle,
and each way a loader can get them wrong is caught on exactly the cases it breaks.

The testees are mutants: a module offering load_file, load and safe_open that is correct
(it wraps safeload's) but for one planted mistake each. Every check of the surfaces fails on
its mutant and passes on the correct module; the oracle is exercised on its own against torch
indexing of the writer's tensors.
"""
from __future__ import annotations

import concurrent.futures
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import safeload
from safeload.conformance import indexing, surfaces
from safeload.conformance.cases import load_corpus
from safeload.conformance.report import FAILED, PASSED
from safeload.conformance.runner import run

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
PACKAGE_ROOT = Path(safeload.__file__).resolve().parents[1]

BASE = textwrap.dedent('''
    import time
    import torch
    import safeload

    MUTATION = {mutation!r}


    def load_file(path, device):
        return safeload.load_file(path, device)


    def load(data, device):
        out = safeload.load(data, device)
        if MUTATION == "load_drops_a_tensor" and out:
            out.pop(sorted(out)[-1])
        return out


    class Slice:
        def __init__(self, inner, name, handle):
            self.inner, self.name, self.handle = inner, name, handle

        def get_shape(self):
            shape = self.inner.get_shape()
            if MUTATION == "shape_in_torch_units" and self.inner.get_dtype() == "F4":
                shape[-1] //= 2
            return shape

        def get_dtype(self):
            return self.inner.get_dtype()

        def __getitem__(self, index):
            items = index if isinstance(index, tuple) else (index,)
            if MUTATION == "start_past_stop_underflows":
                for i in items:
                    if isinstance(i, slice) and i.start is not None and i.stop is not None and i.start > i.stop >= 0:
                        raise SystemError("Negative size passed to PyByteArray_FromStringAndSize")
            if MUTATION == "none_unsupported" and any(i is None for i in items):
                raise ValueError("expected slice, int, or ellipsis")
            if MUTATION == "f4_in_packed_units" and self.inner.get_dtype() == "F4":
                return self.handle.inner.get_tensor(self.name)[index].clone()
            if MUTATION == "hangs_on_one_index" and self.name == "f32_2d" and index == slice(1, 0):
                time.sleep(3600)
            return self.inner[index]


    class Handle:
        def __init__(self, path, framework, device="cpu"):
            self.inner = safeload.safe_open(path, framework, device)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.inner.close()

        def keys(self):
            return self.inner.offset_keys() if MUTATION == "keys_unsorted" else self.inner.keys()

        def offset_keys(self):
            return self.inner.keys() if MUTATION == "offset_keys_sorted_by_name" else self.inner.offset_keys()

        def metadata(self):
            m = self.inner.metadata()
            return {{}} if MUTATION == "metadata_empty_for_none" and m is None else m

        def get_tensor(self, name):
            t = self.inner.get_tensor(name)
            if MUTATION == "get_tensor_flips_a_byte" and t.numel():
                t.view(-1)[:1].view(torch.uint8)[:1].bitwise_not_()
            return t

        def get_slice(self, name):
            return Slice(self.inner.get_slice(name), name, self)

        def get_tensor_meta(self, name):
            m = self.inner.get_tensor_meta(name)
            if MUTATION == "meta_offsets_absolute":
                m = type(m)(m.dtype, m.shape, (m.data_offsets[0] + 8, m.data_offsets[1] + 8))
            return m

        def prefetch(self, plan=None):
            if MUTATION == "prefetch_rows_from_zero" and plan:
                plan = {{n: None if r is None else slice(0, r.stop - r.start) for n, r in plan.items()}}
            return Loader(self.inner.prefetch(plan))


    class Loader:
        def __init__(self, inner):
            self.inner, self.given = inner, {{}}

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.inner.close()

        def names(self):
            return sorted(self.inner.names()) if MUTATION == "prefetch_names_sorted" else self.inner.names()

        def __len__(self):
            return len(self.inner)

        def take(self, name):
            if MUTATION == "prefetch_takes_twice" and name in self.given:
                return self.given[name]
            self.given[name] = self.inner.take(name)
            return self.given[name]

        def __iter__(self):
            return iter(self.inner)


    def safe_open(path, framework, device="cpu"):
        return Handle(path, framework, device)
''')

SELECT = ["y_dtype_F32", "y_dtype_F4", "y_metadata_absent", "y_metadata_present", "y_json_order_differs",
          "safe_open:g0_*", "get_slice:*f32_2d*", "get_slice:*f4_2d*", "prefetch:*"]


def mutant(tmp_path: Path, mutation: str) -> str:
    path = tmp_path / f"mutant_{mutation}.py"
    path.write_text(BASE.format(mutation=mutation))
    return str(path)


MUTATIONS = {
    # mutation: (surface whose results must fail, a fragment every failure's detail holds)
    "keys_unsorted": ("safe_open", "[keys]"),
    "offset_keys_sorted_by_name": ("safe_open", "[offset_keys]"),
    "metadata_empty_for_none": ("safe_open", "[metadata]"),
    "get_tensor_flips_a_byte": ("safe_open", "bytes differ"),
    "shape_in_torch_units": ("safe_open", "get_shape()"),
    "meta_offsets_absolute": ("get_tensor_meta", "the header says"),
    "load_drops_a_tensor": ("load", "missing tensors"),
    "start_past_stop_underflows": ("get_slice", "SystemError"),
    "none_unsupported": ("get_slice", "ValueError"),
    "f4_in_packed_units": ("get_slice", ""),
    "prefetch_rows_from_zero": ("prefetch", "rows 1:4"),
    "prefetch_names_sorted": ("prefetch", "names() is"),
    "prefetch_takes_twice": ("prefetch", "a second take()"),
}


@pytest.fixture(scope="module")
def corpus():
    return load_corpus(FIXTURES, [p for p in SELECT if ":" not in p])


@pytest.fixture(scope="module")
def mutant_reports(tmp_path_factory, corpus):
    tmp = tmp_path_factory.mktemp("mutants")
    names = ["correct", *MUTATIONS]
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        futures = {m: pool.submit(run, mutant(tmp, m), cases=corpus, timeout=30, select=SELECT, index_cases=20)
                   for m in names}
        return {m: f.result() for m, f in futures.items()}


def failures(report, surface=None):
    return {r.case.name: r.detail for r in report.results
            if r.outcome == FAILED and (surface is None or r.case.surface == surface)}


def test_the_correct_module_passes_every_surface(mutant_reports):
    report = mutant_reports["correct"]
    assert report.ok, report.render()
    counts = report.surface_counts()
    assert {"load_file", "load", "safe_open", "get_tensor_meta", "get_slice", "prefetch"} <= set(counts)
    assert counts["get_slice"][PASSED] > 100 and counts["prefetch"][PASSED] > 0


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_each_mistake_is_caught_on_its_surface_alone(mutant_reports, mutation):
    surface, fragment = MUTATIONS[mutation]
    report = mutant_reports[mutation]
    found = failures(report)
    assert found, f"{mutation} went unnoticed"
    assert all(name.startswith(surface + ":") for name in found), sorted(found)[:5]
    assert all(fragment in detail for detail in found.values()), list(found.items())[:3]


def test_slice_mistakes_hit_exactly_the_indexes_they_concern(mutant_reports):
    past = failures(mutant_reports["start_past_stop_underflows"], "get_slice")
    assert "get_slice:g0_slices:f32_2d[1:0]" in past and "get_slice:g0_slices:f32_2d[3:2:2]" in past
    assert "get_slice:g0_slices:f32_2d[:,3:0:3]" in past
    assert "get_slice:g0_slices:f32_2d[::2]" not in past and "get_slice:g0_slices:f32_2d[-9:]" not in past
    packed = failures(mutant_reports["f4_in_packed_units"], "get_slice")
    assert packed and all(":f4_" in n for n in packed)
    # An index that leaves the last dimension whole means the same in values and in bytes.
    assert "get_slice:g0_slices:f4_2d[1:0]" not in packed and "get_slice:g0_slices:f4_2d[...,1:3]" in packed


def test_a_failure_names_its_file_and_index_and_reproduces(mutant_reports):
    report = mutant_reports["start_past_stop_underflows"]
    r = next(r for r in report.results if r.case.name == "get_slice:g0_slices:f32_2d[1:0]")
    assert "f.get_slice('f32_2d')[1:0]" in r.case.reproducer
    assert "python -m safeload.conformance.generated --seed 0" in r.case.reproducer
    assert r.to_json()["surface"] == "get_slice" and "[1:0]" in r.to_json()["reproducer"]


def test_a_hang_inside_a_batch_of_slices_is_pinned_on_its_index(tmp_path, corpus):
    report = run(mutant(tmp_path, "hangs_on_one_index"), cases=[], timeout=4, select=["get_slice:*f32_2d*"],
                 index_cases=0)
    found = failures(report, "get_slice")
    assert list(found) == ["get_slice:g0_slices:f32_2d[1:0]"], sorted(found)[:5]
    assert "timed out" in found["get_slice:g0_slices:f32_2d[1:0]"]
    assert sum(1 for r in report.results if r.case.surface == "get_slice" and r.outcome == PASSED) > 30


def test_surfaces_a_module_lacks_are_reported_not_run(tmp_path):
    only = tmp_path / "only_load_file.py"
    only.write_text("import safeload\ndef load_file(path, device):\n    return safeload.load_file(path, device)\n")
    report = run(str(only), cases=load_corpus(FIXTURES, ["y_dtype_F32"]), timeout=30)
    assert report.ok
    assert set(report.surface_counts()) == {"load_file"}
    assert {w for w, _ in report.not_run} >= {"surface load", "surface safe_open"}
    # MODULE:FUNC is load_file alone, whatever else the module defines.
    report = run(f"{mutant(tmp_path, 'keys_unsorted')}:load_file", cases=load_corpus(FIXTURES, ["y_dtype_F32"]),
                 timeout=30)
    assert report.ok and set(report.surface_counts()) == {"load_file"}


# --- the oracle on its own --------------------------------------------------------------------


def test_oracle_is_torch_indexing_of_the_writers_tensor():
    t = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    for index in indexing.corner_cases([6, 10]):
        e = surfaces.oracle(t, "F32", index)
        try:
            want = t[index]
        except (IndexError, TypeError, ValueError) as exc:
            assert e.error == f"builtins.{type(exc).__name__}", indexing.text(index)
            continue
        assert e.error is None and e.shape == list(want.shape), indexing.text(index)
        assert e.sha256 == surfaces._digest(want.clone())


def test_oracle_slices_f4_in_values():
    values = torch.arange(24, dtype=torch.uint8).reshape(2, 12) % 16  # F4 [2, 12]: 12 values a row
    packed = (values[:, 0::2] | (values[:, 1::2] << 4)).view(torch.float4_e2m1fn_x2)
    e = surfaces.oracle(packed, "F4", (slice(None), slice(2, 6)))
    want = values[:, 2:6]
    want_packed = (want[:, 0::2] | (want[:, 1::2] << 4))
    assert e.shape == [2, 2] and e.sha256 == surfaces._digest(want_packed)
    assert surfaces.oracle(packed, "F4", (slice(None), slice(1, 4))).error == "builtins.ValueError"  # 3 values
    assert surfaces.oracle(packed, "F4", (0, 0)).error == "builtins.ValueError"  # one value
    whole_rows = surfaces.oracle(packed, "F4", slice(1, 2))
    assert whole_rows.shape == [1, 6] and whole_rows.sha256 == surfaces._digest(packed[1:2].view(torch.uint8))


def test_index_text_and_codec_round_trip():
    for index in indexing.corner_cases([3, 4, 5]) + [i for _, i in indexing.drawn(3, {"t": [3, 4]}, 40)]:
        assert indexing.decode(indexing.encode(index)) == index
    assert indexing.text((slice(None), slice(3, 0, 3))) == "[:,3:0:3]"
    assert indexing.text(()) == "[()]" and indexing.text((0,)) == "[0,]" and indexing.text(None) == "[None]"
    assert indexing.drawn(5, {"t": [3, 4]}, 10) == indexing.drawn(5, {"t": [3, 4]}, 10)


# --- the harness without safeload's extension ----------------------------------------------------


def test_the_harness_runs_from_a_copy_without_the_extension(tmp_path):
    """A maintainer of another loader, where safeload's C++ cannot be built: the package copied
    without its compiled module, the harness judging upstream's loader on the corpus."""
    copy = tmp_path / "pkg"
    shutil.copytree(PACKAGE_ROOT / "safeload", copy / "safeload",
                    ignore=shutil.ignore_patterns("_C*.so", "__pycache__"))
    env = dict(os.environ, PYTHONPATH=str(copy))
    env.pop("SAFELOAD_FIXTURES", None)
    probe = subprocess.run([sys.executable, "-c", "import safeload, safeload.testing, safeload.conformance;"
                            "import safeload._extension as e; print(e.available(safeload._C))"],
                           capture_output=True, text=True, env=env, cwd=tmp_path)
    assert probe.returncode == 0 and probe.stdout.strip() == "False", probe.stderr
    for argv in (["-m", "safeload", "conform"], ["-m", "safeload.conformance.cli"]):
        proc = subprocess.run([sys.executable, *argv, "--loader", "safetensors_torch", "--cases", str(FIXTURES),
                               "-k", "y_dtype_*", "-k", "n_truncated_data", "--property-cases", "5", "--checks",
                               "none", "--index-cases", "5", "-q"],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
        assert "RESULT:" in proc.stdout, proc.stderr[-3000:]
        assert "corrupted property cases skipped" in proc.stdout + proc.stderr  # the reference is safeload's
    # Commands that need the extension say so plainly.
    proc = subprocess.run([sys.executable, "-m", "safeload", "inspect", str(FIXTURES / "corpus" / "y_dtype_F32.safetensors")],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 2 and "compiled extension" in proc.stderr and "Traceback" not in proc.stderr


# --- a run never hangs --------------------------------------------------------------------------

HANGS = textwrap.dedent('''
    import time
    import safeload

    def load_file(path, device):
        if "y_many_tensors" in path:
            while True:
                time.sleep(1)
        return safeload.load_file(path, device)

    def safe_open(path, framework, device="cpu"):
        if "y_many_tensors" in path:
            while True:
                time.sleep(1)
        return safeload.safe_open(path, framework, device)
''')


def test_a_loader_that_hangs_inside_a_check_ends_in_a_report(tmp_path):
    """The loader sleeps forever on one file; the thread-safety check loads that file from
    several threads: the check fails as a hang within its timeout, through load_file and
    through safe_open, and the run prints its report."""
    path = tmp_path / "hangs.py"
    path.write_text(HANGS)
    proc = subprocess.run([sys.executable, "-m", "safeload", "conform", "--loader", str(path), "--checks",
                           "thread_safety", "-k", "y_many*", "--timeout", "5", "--property-cases", "0",
                           "--no-generated", "--upstream", "none", "-q", "--index-cases", "0"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=str(PACKAGE_ROOT)))
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "RESULT: FAILED" in proc.stdout
    checks = proc.stdout.split("\nchecks:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    for name in ("check.thread_safety", "safe_open:check.thread_safety"):
        line = next(l for l in checks if l.strip().startswith(name + " "))
        assert "] failed: " in line and "timed out after 5 s" in line, line


def test_sigterm_prints_what_was_done(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "safeload", "conform", "--loader", "safeload_fast",
                             "--property-cases", "0", "--checks", "none", "--upstream", "none", "--progress-every",
                             "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env=dict(os.environ, PYTHONPATH=str(PACKAGE_ROOT)))
    # Once a few cases are judged (the progress lines say so), stop it.
    for line in proc.stderr:
        if line.startswith("conform: cases ") and not line.startswith("conform: cases 0/"):
            break
    proc.terminate()
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "INTERRUPTED" in out and "RESULT: INTERRUPTED" in out
    judged = int(out.split("what follows is the ", 1)[1].split()[0])
    assert judged > 0
    # Its workers went with it.
    leftover = subprocess.run(["pgrep", "-f", f"safeload.conformance.worker.*{proc.pid}"], capture_output=True)
    assert leftover.returncode == 1
