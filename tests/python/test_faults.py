"""Fault injection: every read path against failing, short, interrupted and
vanishing reads, and files truncated or replaced while they load.

The loads run in child processes that preload tests/fault/fault_shim.c, which
fails the Nth read call (read, pread, preadv and their aliases) on the test's
files with the chosen fault. What each fault must give:

  EINTR, short read     exactly upstream safetensors' tensors
  EIO                   OSError with errno EIO whose message names the path
  EOF (read returns 0)  OSError whose message names the path
  nothing fired         exactly upstream's tensors

and never a crash, a partial dict, or an fd, thread or memory left behind.
One exception, documented by the loader: a single EOF or short count from an
O_DIRECT read may be finished through the page cache, so an EOF that hit only
O_DIRECT descriptors may also give the exact tensors (a persistent EOF may not).
An EIO is a device's error, not a file system declining O_DIRECT: it stays
EIO on every path, O_DIRECT included.

``SAFELOAD_FAULT_SWEEP=1`` runs the longer sweep: more N, more files, more
threads and rounds.
"""
from __future__ import annotations

import errno
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fault"))
import harness  # noqa: E402

import safeload  # noqa: E402
import safeload.reference  # noqa: E402
from safeload import _C  # noqa: E402

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD and /proc are Linux's")

SWEEP = harness.SWEEP
READ_FNS = ["read", "pread", "preadv"]
KINDS = ["eio", "eintr", "short", "eof"]
NTH = list(range(1, 25 if SWEEP else 7))
MiB = 1 << 20

# Every read path, as a worker case template. Small chunks so a load makes
# many read calls; two threads so faults also land on helper threads.
# Every route of the fast loader as the core enumerates them, a cold load left
# to the policy, the reference loader and the header reader.
PATHS = {
    **{name: {"op": "load", "kwargs": {**options, "chunk_bytes": 65536, "threads": 2,
                                       **({"staging_bytes": MiB} if options["staged"] else {})}}
       for name, options in _C.read_routes() if options is not None},
    "auto-cold": {"op": "load", "kwargs": {"chunk_bytes": 65536, "threads": 2}, "evict": True},
    "reference": {"op": "reference"},
    "read_header": {"op": "read_header"},
}
if SWEEP:
    PATHS["cached-1thread"] = {"op": "load", "kwargs": {"io": "cached", "chunk_bytes": 65536, "threads": 1}}
    PATHS["uncached-4threads"] = {"op": "load", "kwargs": {"io": "uncached", "chunk_bytes": 131072, "threads": 4}}
    PATHS["default"] = {"op": "load", "kwargs": {}}



def supports_o_direct(directory: str) -> bool:
    probe = os.path.join(directory, ".o_direct_probe")
    with open(probe, "wb") as f:
        f.write(b"\0" * 4096)
    try:
        os.close(os.open(probe, os.O_RDONLY | getattr(os, "O_DIRECT", 0)))
        return hasattr(os, "O_DIRECT")
    except OSError:
        return False
    finally:
        os.unlink(probe)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A directory on a file system with O_DIRECT (tmpfs has none), so the
    uncached paths really bypass the page cache; the shim's filter."""
    d = str(tmp_path_factory.mktemp("faults"))
    if not supports_o_direct(d) and os.path.isdir("/var/tmp") and supports_o_direct("/var/tmp"):
        import tempfile

        d = tempfile.mkdtemp(prefix="safeload-faults-", dir="/var/tmp")
    return d


def model_tensors(seed: int) -> dict:
    """A small model-shaped file: odd sizes and offsets, a zero-size tensor,
    one tensor spanning many chunks."""
    g = torch.Generator().manual_seed(seed)
    return {
        "a.odd": torch.randint(0, 256, (3,), dtype=torch.uint8, generator=g),
        "b.big": torch.randn(300_001, generator=g),
        "c.bf16": torch.randn(70_001, generator=g).to(torch.bfloat16),
        "d.i64": torch.randint(-(2**62), 2**62, (2049,), dtype=torch.int64, generator=g),
        "e.empty": torch.empty(0, 7),
        "f.tail": torch.randn(5, 3, generator=g).to(torch.float16),
    }


def write_model(path: str, seed: int) -> dict:
    """Writes the file with upstream's writer; returns upstream's load of it
    (the oracle), as a digest."""
    import safetensors.torch as upstream

    upstream.save_file(model_tensors(seed), path)
    return harness.digest({k: v.clone() for k, v in upstream.load_file(path).items()})


@pytest.fixture(scope="module")
def files(workdir):
    out = {"dir": workdir}
    out["model"] = os.path.join(workdir, "model.safetensors")
    out["model_expected"] = write_model(out["model"], 1)
    # Same names, dtypes and shapes, other bytes: replacing the file mid-load
    # with it makes any mix of the two files visible.
    out["other"] = os.path.join(workdir, "other.safetensors")
    out["other_expected"] = write_model(out["other"], 2)
    out["header_expected"] = harness.digest(safeload.read_header(out["model"]))
    return out


def expected_for(case_op: str, files: dict) -> dict:
    return files["header_expected"] if case_op == "read_header" else files["model_expected"]


def describe(res: dict) -> str:
    keep = {k: v for k, v in res.items() if k not in ("tensors", "header")}
    return repr(keep)[:3000]


def assert_exact(res: dict, expected: dict) -> None:
    assert res["outcome"] == "ok", describe(res)
    if "header" in expected:
        assert res["header"] == expected["header"]
    else:
        assert res["tensors"] == expected["tensors"], "wrong bytes, dtype or shape (or missing keys)"


def assert_os_error(res: dict, path: str, err: int | None) -> None:
    assert res["outcome"] == "error", describe(res)
    assert "OSError" in res["mro"] and "SafetensorError" not in res["mro"], describe(res)
    if err is not None:
        assert res["errno"] == err, describe(res)
    assert os.fsdecode(path) in res["message"], describe(res)


def check_fault(res: dict, kind: str, expected: dict, path: str, sticky: bool = False) -> None:
    assert res["outcome"] in ("ok", "error"), describe(res)  # not crash, hang, not run
    if res["fired"] == 0:
        assert_exact(res, expected)
    elif kind in ("eintr", "short"):
        assert_exact(res, expected)
    elif kind == "eio":
        assert_os_error(res, path, errno.EIO)
    elif kind == "eof":
        if res["outcome"] == "ok" and not sticky and res["fired_direct"] == res["fired"]:
            assert_exact(res, expected)  # the documented O_DIRECT fallback
        else:
            assert_os_error(res, path, None)
    else:
        raise AssertionError(kind)


def fault_case(path_name: str, path: str, kind: str, nth: int, count: int, filt: str) -> dict:
    case = dict(PATHS[path_name])
    case.update(id=f"{path_name}-{kind}-{nth}-{count}", path=path,
                fault={"kind": kind, "fns": READ_FNS, "nth": nth, "count": count, "filter": filt})
    return case


@pytest.fixture(scope="module")
def matrix(shim, files):
    """Every path x kind x N, single-shot and persistent, in one worker."""
    cases = []
    for name in PATHS:
        for kind in KINDS:
            for nth in NTH:
                cases.append(fault_case(name, files["model"], kind, nth, 1, files["dir"]))
            if kind in ("eio", "eof"):
                for nth in (1, 3, 5):
                    cases.append(fault_case(name, files["model"], kind, nth, -1, files["dir"]))
    return cases, harness.run_cases(shim, cases)


@pytest.mark.parametrize("path_name", list(PATHS))
@pytest.mark.parametrize("kind", KINDS)
def test_fault_on_nth_read_call(matrix, files, path_name, kind):
    cases, results = matrix
    mine = [c for c in cases if c["id"].startswith(f"{path_name}-{kind}-")]
    assert mine
    fired_somewhere = False
    for case in mine:
        res = results[case["id"]]
        sticky = case["fault"]["count"] < 0
        try:
            check_fault(res, kind, expected_for(case["op"], files), files["model"], sticky)
        except AssertionError as e:
            raise AssertionError(f"case {case['id']}: {e}") from None
        fired_somewhere |= res["fired"] > 0
    assert fired_somewhere, "no fault ever fired: the shim sees none of this path's reads"


def test_faults_fire_on_o_direct_reads(matrix, files):
    """The uncached paths really read with O_DIRECT on this file system (else
    the faults above never tested them)."""
    if not supports_o_direct(files["dir"]):
        pytest.skip("no file system with O_DIRECT here")
    _, results = matrix
    assert any(r.get("fired_direct", 0) > 0 for k, r in results.items() if k.startswith(("host-bypass-", "staged-uncached-")))


STABILITY_PATHS = ["host-cached", "host-bypass", "staged-cached", "reference", "read_header"]


@pytest.fixture(scope="module")
def stability(shim, files):
    cases = []
    for name in STABILITY_PATHS:
        for nth in (1, 2, 3, 6):
            case = fault_case(name, files["model"], "eio", nth, -1, files["dir"])
            case.update(repeat=500 if SWEEP else 100, warmup=10)
            cases.append(case)
    return cases, harness.run_cases(shim, cases)


@pytest.mark.parametrize("path_name", STABILITY_PATHS)
def test_hundreds_of_failed_loads_leak_nothing(stability, files, path_name):
    """Hundreds of loads failing with EIO at different points of the read:
    fds and threads back to exactly where they were, RSS growth within a bound
    a leak of one buffer per call would exceed."""
    cases, results = stability
    file_size = os.path.getsize(files["model"])
    for case in cases:
        if not case["id"].startswith(path_name + "-"):
            continue
        res = results[case["id"]]
        assert res["outcome"] in ("ok", "error"), describe(res)
        if res["fired_total"]:  # every load failed, with EIO
            assert all(k != "ok" and k.split(":")[1] == str(errno.EIO) for k in res["outcomes"]), res["outcomes"]
        before, after = res["before"], res["after"]
        assert after["fds"] == before["fds"], (case["id"], before, after)
        assert after["threads"] == before["threads"], (case["id"], before, after)
        # 40 KiB a call at most; one leaked tensor set per call would be 1.4 MiB a call.
        growth = after["rss"] - before["rss"]
        assert growth < 4 * MiB, f"{case['id']}: RSS grew {growth / MiB:.1f} MiB over {case['repeat']} failed loads " \
                                 f"of a {file_size / MiB:.1f} MiB file"


CHANGE_PATHS = ["host-cached", "host-bypass", "auto-cold", "staged-cached", "reference"]
CHANGE_ACTIONS = ["truncate-0", "truncate-half", "truncate-data", "replace", "unlink"]


@pytest.fixture(scope="module")
def changes(shim, files):
    size = os.path.getsize(files["model"])
    with open(files["model"], "rb") as f:
        data_start = 8 + int.from_bytes(f.read(8), "little")
    cases = []
    for name in CHANGE_PATHS:
        for action in CHANGE_ACTIONS:
            victim = os.path.join(files["dir"], f"victim-{name}-{action}.safetensors")
            spare = os.path.join(files["dir"], f"spare-{name}-{action}.safetensors")
            kind = "truncate" if action.startswith("truncate") else action
            arg = {"truncate-0": 0, "truncate-half": size // 2, "truncate-data": data_start + 100}.get(action, 0)
            for nth in (range(1, 13) if SWEEP else (1, 2, 3, 5)):
                case = dict(PATHS[name])
                case.update(id=f"{name}-{action}-{nth}", path=victim, copy_from=files["model"],
                            fault={"kind": kind, "fns": READ_FNS, "nth": nth, "count": 1, "filter": victim,
                                   "arg": arg, "file": spare if kind == "replace" else ""})
                if kind == "replace":
                    case["replacement"] = [files["other"], spare]
                cases.append(case)
    return cases, harness.run_cases(shim, cases)


@pytest.mark.parametrize("path_name", CHANGE_PATHS)
@pytest.mark.parametrize("action", CHANGE_ACTIONS)
def test_file_changed_during_load(changes, files, path_name, action):
    """The file is truncated, replaced (os.replace of another file with the same
    layout and other bytes) or deleted at the Nth read call. The outcome is the
    old file's exact tensors or a clean OSError / SafetensorError naming the
    path; never a crash, never a mix of the two files, never a partial dict."""
    cases, results = changes
    mine = [c for c in cases if c["id"].startswith(f"{path_name}-{action}-")]
    assert mine
    fired = False
    for case in mine:
        res = results[case["id"]]
        assert res["outcome"] in ("ok", "error"), f"{case['id']}: {describe(res)}"
        fired |= res["fired"] > 0
        if res["outcome"] == "ok":
            assert res["tensors"] == files["model_expected"]["tensors"], \
                f"{case['id']}: the load returned other bytes than the file it opened"
        else:
            assert "OSError" in res["mro"] or "SafetensorError" in res["mro"], f"{case['id']}: {describe(res)}"
            assert os.fsdecode(case["path"]) in res["message"], f"{case['id']}: {describe(res)}"
    assert fired


@pytest.fixture(scope="module")
def open_faults(shim, files):
    cases = []
    for kind in ("eio", "eintr"):
        for name in ("host-cached", "host-bypass", "staged-cached", "reference", "read_header"):
            case = dict(PATHS[name])
            case.update(id=f"{name}-{kind}", path=files["model"],
                        fault={"kind": kind, "fns": ["open"], "nth": 1, "count": 1, "filter": files["model"]})
            cases.append(case)
    return cases, harness.run_cases(shim, cases)


@pytest.mark.parametrize("kind", ["eio", "eintr"])
def test_fault_on_open(open_faults, files, kind):
    """open() failing with EIO is an OSError naming the path; an open
    interrupted by a signal (EINTR) is retried."""
    cases, results = open_faults
    for case in cases:
        if not case["id"].endswith("-" + kind):
            continue
        res = results[case["id"]]
        assert res["fired"] == 1, describe(res)
        if kind == "eintr":
            assert_exact(res, expected_for(case["op"], files))
        else:
            assert_os_error(res, files["model"], errno.EIO)


def test_concurrent_good_and_bad_loads(shim, files, workdir):
    """8 threads (32 in the sweep) load good files through every path beside
    files that fail with EIO, malformed and truncated files, while another
    thread evicts the good file from the page cache: every good load exact,
    every bad one its own clean error, no fd or thread left behind."""
    import safetensors.torch as upstream  # noqa: F401  (the model file's writer)

    bad_io = os.path.join(workdir, "bad-io.safetensors")
    write_model(bad_io, 3)
    malformed = os.path.join(workdir, "malformed.safetensors")
    with open(files["model"], "rb") as f:
        original = f.read()
    with open(malformed, "wb") as f:
        f.write(original[:8] + b"[" + original[9:])  # the header is no longer a JSON object
    truncated = os.path.join(workdir, "truncated.safetensors")
    with open(truncated, "wb") as f:
        f.write(original[: len(original) // 2])
    # Their verdicts, from the reference loader in this process (no faults here).
    verdict = {}
    for label, path in (("malformed", malformed), ("truncated", truncated)):
        with pytest.raises(safeload.SafetensorError) as e:
            safeload.reference.load_file(path)
        verdict[label] = e.value.code
    jobs = []
    for name, tmpl in PATHS.items():
        for label, path in (("good", files["model"]), ("bad-io", bad_io), ("malformed", malformed),
                            ("truncated", truncated)):
            job = {k: v for k, v in tmpl.items() if k != "evict"}
            job.update(id=f"{label}|{name}", path=path)
            jobs.append(job)
    case = {"id": "concurrent", "op": "concurrent", "jobs": jobs, "threads": 32 if SWEEP else 8,
            "rounds": 60 if SWEEP else 12, "evict": [files["model"]],
            "fault": {"kind": "eio", "fns": READ_FNS, "nth": 1, "count": -1, "filter": "bad-io"}}
    res = harness.run_cases(shim, [case])["concurrent"]
    assert res["outcome"] == "done", describe(res)
    assert len(res["results"]) == case["threads"] * case["rounds"]
    for r in res["results"]:
        label, name = r["job"].split("|")
        op = PATHS[name]["op"]
        where = f"{r['job']}: {describe(r)}"
        if label == "good":
            assert r["outcome"] == "ok", where
            if op == "read_header":
                assert r["header"] == files["header_expected"]["header"], where
            else:
                assert r["tensors"] == files["model_expected"]["tensors"], where
        elif label == "bad-io":
            assert r["outcome"] == "error" and "OSError" in r["mro"] and r["errno"] == errno.EIO, where
            assert bad_io in r["message"], where
        else:
            assert r["outcome"] == "error" and "SafetensorError" in r["mro"], where
            assert r["code"] == verdict[label], where
    assert res["after"]["fds"] == res["before"]["fds"]
    assert res["after"]["threads"] == res["before"]["threads"]
