"""safeload.distributed.load_checkpoint on 2 and 4 CPU processes (gloo).

Each world size is one group of processes started with
``torch.multiprocessing`` (spawn) that runs every scenario in turn and
writes what it saw to a JSON file per rank; the assertions about all ranks
together are made here. Oracles: the single-process ``safeload.load_checkpoint``
and upstream ``safetensors`` (``load_file`` per shard, ``safe_open`` slices).
"""
from __future__ import annotations

import datetime
import errno
import gc
import json
import os
import shutil
import socket
import sys
import time
import traceback

import psutil
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import safeload
import safeload.distributed as sd
from safeload.conformance.surfaces import oracle
from safeload.conformance.worker import digest

safetensors = pytest.importorskip("safetensors")
from safetensors import safe_open as upstream_safe_open  # noqa: E402
from safetensors.torch import load_file as upstream_load_file, save_file  # noqa: E402

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is needed")

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures")
CASES = json.load(open(os.path.join(ROOT, "manifest.json")))["cases"]
VALID = sorted(n for n, e in CASES.items()
               if e["expect"] == "accept" or (e["expect"] == "implementation-defined" and e.get("safeload") == "accept"))
TIMEOUT = 20.0       # seconds each collective may wait in a scenario
WALL = 150.0         # seconds a whole group of processes may take before it is killed


# --- what each rank runs ----------------------------------------------------------


def raw(t: torch.Tensor) -> bytes:
    if not t.numel():
        return b""
    flat = torch.empty(t.numel(), dtype=t.dtype).copy_(t.reshape(-1))
    return flat.view(torch.uint8).numpy().tobytes()


def same(a: dict, b: dict, order: bool = True) -> None:
    assert (list(a) == list(b)) if order else (set(a) == set(b)), (list(a), list(b))
    for name in b:
        assert a[name].dtype == b[name].dtype, name
        assert tuple(a[name].shape) == tuple(b[name].shape), name
        assert raw(a[name]) == raw(b[name]), name


def outcome(fn) -> dict:
    start = time.monotonic()
    try:
        fn()
        return {"ok": True, "seconds": time.monotonic() - start}
    except Exception as e:  # what every rank saw is compared by the parent
        return {"ok": False, "type": type(e).__name__, "code": getattr(e, "code", None),
                "errno": getattr(e, "errno", None), "message": str(e), "seconds": time.monotonic() - start}


def model_slices(rank: int, world: int) -> dict:
    """Shard specs of the model checkpoint: column-parallel weights cut along
    dimension 0, row-parallel ones along dimension 1 (one run per row),
    the embedding with an explicit range; norms are not named (replicated)."""
    shards = {}
    for layer in range(4):
        for w in ("q", "k", "v", "up"):
            shards[f"layers.{layer}.{w}.weight"] = sd.split(0)
        for w in ("o", "down"):
            shards[f"layers.{layer}.{w}.weight"] = sd.split(-1)
    rows = 512 // world
    shards["embed.weight"] = (0, rank * rows, (rank + 1) * rows)
    shards["lm_head.weight"] = lambda r, n, shape: (1, r * shape[1] // n, (r + 1) * shape[1] // n)
    return shards


def slice_of(shape: list, dim: int, start: int, stop: int):
    return (slice(None),) * (dim % len(shape)) + (slice(start, stop),)


class Slicer:
    """``safe_open(path).get_slice(name)[index]``: upstream's, or where
    upstream cannot open the file or slice the dtype (0.8 fails on F4
    slices), safeload's drop-in ``safe_open``, whose slices are torch
    indexing. One handle of each per file."""

    def __init__(self, path: str):
        self.path = path
        self.handles = {}

    def __call__(self, name: str, index) -> torch.Tensor:
        for opener in (upstream_safe_open, safeload.safe_open):
            try:
                if opener not in self.handles:
                    self.handles[opener] = opener(self.path, framework="pt")
                return self.handles[opener].get_slice(name)[index]
            except Exception:
                if opener is safeload.safe_open:
                    raise
        raise AssertionError("unreachable")


def check_corpus() -> None:
    corpus = os.path.join(ROOT, "corpus")
    for name in VALID:
        path = os.path.join(ROOT, CASES[name]["file"])
        want = safeload.load_checkpoint(path)
        got = sd.load_checkpoint(path, timeout=TIMEOUT)
        same(got, want)
        try:
            upstream = upstream_load_file(path)
        except Exception:  # a file upstream refuses (its results are implementation-defined)
            upstream = None
        if upstream is not None:
            same(got, upstream, order=False)
        # Shard mode: every tensor of 1+ dimensions cut along its last one (F4, two
        # values to a byte there, along its first), equal to upstream's slice, or for
        # F4, which upstream cannot slice, the harness's oracle: torch indexing in values.
        header = {t[0]: t for t in safeload.read_header(path)["tensors"]}
        shards = {n: sd.split(0 if t[1] == "F4" else -1) for n, t in header.items() if t[2]}
        parts = sd.load_checkpoint(path, mode="shard", shards=shards, timeout=TIMEOUT)
        assert list(parts) == list(want)
        upstream_slice = Slicer(path)
        for n, part in parts.items():
            if n in shards:
                shape = list(header[n][2])
                dim, start, stop = shards[n](dist.get_rank(), dist.get_world_size(), shape)
                index = slice_of(shape, dim, start, stop)
                if header[n][1] == "F4":
                    e = oracle(want[n], "F4", index)
                    assert (str(part.dtype).removeprefix("torch."), list(part.shape), digest(part)[0]) == (
                        e.dtype, e.shape, e.sha256), n
                    continue
                expected = upstream_slice(n, index)
            else:
                expected = (upstream or want)[n]
            same({n: part}, {n: expected})
    assert os.path.isdir(corpus)


def check_model(model: str, report: dict) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    want = safeload.load_checkpoint(model)
    upstream = {}
    for f in sorted(os.listdir(model)):
        if f.endswith(".safetensors"):
            upstream.update(upstream_load_file(os.path.join(model, f)))
    r: dict = {}
    got = sd.load_checkpoint(model, report=r, timeout=TIMEOUT)
    same(got, want)
    same(got, upstream, order=False)
    report["replicate"] = r

    r = {}
    got = sd.load_checkpoint(model, report=r, timeout=TIMEOUT, chunk_bytes=256 << 10, threads=1)
    same(got, want)
    report["replicate_chunk"] = r

    # Per node: two "nodes" of world/2 ranks each (host names made up).
    real = sd._node_name
    sd._node_name = lambda: f"node{rank * 2 // world}"
    try:
        r = {}
        got = sd.load_checkpoint(model, per_node=True, report=r, timeout=TIMEOUT)
    finally:
        sd._node_name = real
    same(got, want)
    report["per_node"] = r

    shards = model_slices(rank, world)
    r = {}
    got = sd.load_checkpoint(model, mode="shard", shards=shards, report=r, timeout=TIMEOUT)
    assert list(got) == list(want)
    expected_bytes = 0
    index = json.load(open(os.path.join(model, "model.safetensors.index.json")))["weight_map"]
    for n, part in got.items():
        with upstream_safe_open(os.path.join(model, index[n]), framework="pt") as f:
            if n in shards:
                spec = shards[n]
                shape = f.get_slice(n).get_shape()
                dim, start, stop = spec(rank, world, shape) if callable(spec) else spec
                expected = f.get_slice(n)[slice_of(shape, dim, start, stop)]
            else:
                expected = f.get_tensor(n)
        same({n: part}, {n: expected})
        expected_bytes += expected.numel() * expected.element_size()
    report["shard"] = r
    report["shard_expected_bytes"] = expected_bytes


def check_errors(model: str, broken: str, report: dict) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    last = world - 1
    # A shard only the last rank sees truncated (its src is another copy).
    report["truncated"] = outcome(lambda: sd.load_checkpoint(broken if rank == last else model, timeout=TIMEOUT))
    # A missing checkpoint on rank 1.
    missing = os.path.join(model, "missing.safetensors")
    report["missing"] = outcome(lambda: sd.load_checkpoint(
        missing if rank == 1 else os.path.join(model, "model-00001-of-00002.safetensors"), timeout=TIMEOUT))
    # An I/O error while the last rank reads its share (after its reads).
    real = sd._read_share

    def failing(p, *args):
        real(p, *args)
        raise OSError(errno.EIO, os.strerror(errno.EIO), os.fsdecode(p.checkpoint.files()[-1]))

    if rank == last:
        sd._read_share = failing
    try:
        report["read_error"] = outcome(lambda: sd.load_checkpoint(model, timeout=TIMEOUT))
    finally:
        sd._read_share = real
    # A bad shard spec on rank 0 only.
    shards = {"embed.weight": (0, 0, 1) if rank else (7, 0, 1)}
    report["bad_spec"] = outcome(lambda: sd.load_checkpoint(model, mode="shard", shards=shards, timeout=TIMEOUT))
    # Rank 1 loads another (valid) checkpoint.
    other = os.path.join(ROOT, "corpus", "y_dtype_F32.safetensors")
    report["different"] = outcome(lambda: sd.load_checkpoint(other if rank == 1 else model, timeout=TIMEOUT))
    # The group still works after collective errors.
    same(sd.load_checkpoint(model, timeout=TIMEOUT), safeload.load_checkpoint(model))


def resources() -> dict:
    gc.collect()
    proc = psutil.Process()
    # A thread joined just before can stay listed for a moment: count once steady.
    threads, deadline = proc.num_threads(), time.monotonic() + 2
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = proc.num_threads()
        if now == threads:
            break
        threads = now
    return {"fds": len(os.listdir("/proc/self/fd")), "threads": threads, "rss": proc.memory_info().rss}


def worker(rank: int, world: int, port: int, workdir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    torch.set_num_threads(1)
    model, broken = os.path.join(workdir, "model"), os.path.join(workdir, "broken")
    report: dict = {"rank": rank}
    clock = time.monotonic()
    try:
        check_corpus()
        report["seconds_corpus"] = time.monotonic() - clock
        check_model(model, report)
        check_errors(model, broken, report)
        report["seconds_checks"] = time.monotonic() - clock
        # Leaks: the same loads again change no count of fds or threads, and memory hardly grows.
        real = sd._node_name
        sd._node_name = lambda: f"node{rank * 2 // world}"
        try:
            before = resources()
            for _ in range(5):
                sd.load_checkpoint(model, timeout=TIMEOUT)
                sd.load_checkpoint(model, per_node=True, timeout=TIMEOUT)
                sd.load_checkpoint(model, mode="shard", shards=model_slices(rank, world), timeout=TIMEOUT)
                outcome(lambda: sd.load_checkpoint(broken if rank == 0 else model, timeout=TIMEOUT))
            report["leaks"] = {"before": before, "after": resources()}
        finally:
            sd._node_name = real
        # Last, as the group is unusable afterwards: the last rank never
        # calls; every other rank raises TimeoutError within the timeout.
        if rank != world - 1:
            report["timeout"] = outcome(lambda: sd.load_checkpoint(model, timeout=2.0))
    except BaseException:  # reported to the parent, which fails the test with it
        report["error"] = traceback.format_exc()
    finally:
        report["seconds_worker"] = time.monotonic() - clock
        with open(os.path.join(workdir, f"rank{rank}.json.tmp"), "w") as f:
            json.dump(report, f)
        os.replace(os.path.join(workdir, f"rank{rank}.json.tmp"), os.path.join(workdir, f"rank{rank}.json"))
    # Every rank stays alive (the last one silent) until all have reported,
    # so that the others time out rather than see a peer leave.
    reports = [os.path.join(workdir, f"rank{r}.json") for r in range(world)]
    deadline = time.monotonic() + 4 * TIMEOUT
    while not all(map(os.path.exists, reports)) and time.monotonic() < deadline:
        time.sleep(0.1)
    # Abandoned collectives would hold destroy_process_group for the group's timeout.
    os._exit(0)


# --- the parent ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_model(root: str) -> int:
    """A model-shaped checkpoint of two shards and an index (about 6.5 MB),
    written by upstream; returns its data bytes."""
    g = torch.Generator().manual_seed(7)
    tensors = {"embed.weight": torch.randn(512, 256, generator=g).to(torch.bfloat16)}
    for layer in range(4):
        p = f"layers.{layer}."
        for w in ("q", "k", "v", "o"):
            tensors[p + w + ".weight"] = torch.randn(256, 256, generator=g)
        tensors[p + "up.weight"] = torch.randn(512, 256, generator=g).to(torch.bfloat16)
        tensors[p + "down.weight"] = torch.randn(256, 512, generator=g).to(torch.bfloat16)
        tensors[p + "norm.weight"] = torch.randn(256, generator=g)
        tensors[p + "norm2.weight"] = torch.randn(256, generator=g).to(torch.float16)
    tensors["norm.weight"] = torch.randn(256, generator=g)
    tensors["lm_head.weight"] = torch.randn(512, 256, generator=g).to(torch.bfloat16)
    names = list(tensors)
    os.makedirs(root)
    weight_map = {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
        file = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, os.path.join(root, file))
        weight_map.update({n: file for n in part})
    with open(os.path.join(root, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    return sum(t.numel() * t.element_size() for t in tensors.values())


def children() -> set:
    """This process's children, less multiprocessing's resource tracker
    (started with the first spawned process, it serves this process until
    it exits)."""
    out = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if not any("resource_tracker" in a for a in p.cmdline()):
                out.add((p.pid, " ".join(p.cmdline())))
        except psutil.NoSuchProcess:
            pass
    return out


def run_group(world: int, workdir: str) -> list:
    ctx = mp.start_processes(worker, args=(world, free_port(), workdir), nprocs=world, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + WALL
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                raise AssertionError(f"{world} ranks still running after {WALL} s")
    finally:
        for p in ctx.processes:  # only ours, by their own handles
            if p.is_alive():
                p.kill()
                p.join()
    return [json.load(open(os.path.join(workdir, f"rank{r}.json"))) for r in range(world)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    total = write_model(str(root / "model"))
    shutil.copytree(root / "model", root / "broken")
    shard = root / "broken" / "model-00002-of-00002.safetensors"
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) - 1000)
    return root, total


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_load_like_one_process(model_dir, world):
    root, total = model_dir
    workdir = root / f"world{world}"
    shutil.copytree(root / "model", workdir / "model")
    shutil.copytree(root / "broken", workdir / "broken")
    children_before = children()
    reports = run_group(world, str(workdir))
    for r in reports:
        assert "error" not in r, f"rank {r['rank']}:\n{r['error']}"

    # Replicate: every byte read once, by one rank; each rank's share off
    # 1/world by at most one read (chunk_bytes), and with the automatic
    # chunk size by under 5%.
    for key in ("replicate", "replicate_chunk"):
        read = [r[key]["bytes_read"] for r in reports]
        assert sum(read) == total, key
        for n in read:
            assert abs(n - total / world) <= reports[0][key]["chunk_bytes"], (key, read)
            if key == "replicate":
                assert abs(n - total / world) <= 0.05 * total / world, (key, read)
        for r in reports:
            assert r[key]["bytes_read"] + r[key]["bytes_received"] == total
            assert r[key]["bytes_sent"] == r[key]["bytes_read"]
    # Per node: each node of world/2 ranks reads the whole checkpoint, split among its ranks.
    read = [r["per_node"]["bytes_read"] for r in reports]
    half = world // 2
    for node in range(2):
        assert sum(read[node * half:(node + 1) * half]) == total
    for n in read:
        assert abs(n - total / half) <= 0.05 * total / half, read
    for r in reports:
        assert len(r["per_node"]["read_ranks"]) == half
    # Shard: a rank reads exactly the bytes of its own slices and the replicated rest.
    for r in reports:
        assert r["shard"]["bytes_read"] == r["shard_expected_bytes"]
        assert r["shard"]["bytes_received"] == 0
    assert sum(r["shard"]["bytes_read"] for r in reports) < total * 1.05

    # Errors: every rank raised the same error, the failing rank's, within the timeout.
    last = world - 1
    expect = {"truncated": ("SafetensorError", f"rank {last} of {world}:"),
              "missing": ("FileNotFoundError", f"rank 1 of {world}:"),
              "read_error": ("OSError", f"rank {last} of {world}:"),
              "bad_spec": ("IndexError", f"rank 0 of {world}:"),
              "different": ("ValueError", "rank 1 of")}
    for key, (cls, prefix) in expect.items():
        seen = [r[key] for r in reports]
        assert all(not s["ok"] for s in seen), (key, seen)
        assert len({(s["type"], s["code"], s["errno"], s["message"]) for s in seen}) == 1, (key, seen)
        assert seen[0]["type"] == cls, (key, seen[0])
        assert prefix in seen[0]["message"], (key, seen[0])
    assert reports[0]["truncated"]["code"] == "METADATA_INCOMPLETE_BUFFER"
    assert reports[0]["read_error"]["errno"] == errno.EIO
    for r in reports[:-1]:
        assert r["timeout"]["type"] == "TimeoutError", r["timeout"]

    # No leaks: fds and threads unchanged by 20 more loads, memory grew by under 16 MiB.
    for r in reports:
        before, after = r["leaks"]["before"], r["leaks"]["after"]
        assert after["fds"] <= before["fds"], r["leaks"]
        assert after["threads"] == before["threads"], r["leaks"]
        assert after["rss"] - before["rss"] < 16 << 20, r["leaks"]
    # No process left behind.
    assert children() - children_before == set()


def test_example_runs_under_torchrun(model_dir, tmp_path):
    import subprocess

    root, _ = model_dir
    example = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "distributed", "load_checkpoint.py")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", str(free_port()), example, str(root / "model"), "--timeout", "60"],
                         env=env, capture_output=True, text=True, timeout=WALL)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [l for l in run.stdout.splitlines() if l.startswith("rank ")]
    assert len(lines) == 2 and all("equal to safeload.load_checkpoint" in l for l in lines), run.stdout


def test_needs_an_initialised_group():
    if dist.is_initialized():
        pytest.skip("a group is already initialised in this process")
    with pytest.raises(RuntimeError, match="init_process_group"):
        sd.load_checkpoint(os.path.join(ROOT, CASES[VALID[0]]["file"]))


def test_split_matches_tensor_split():
    for size in (0, 1, 5, 8, 13):
        for world in (1, 2, 3, 4):
            t = torch.arange(size)
            parts = torch.tensor_split(t, world)
            for rank in range(world):
                dim, start, stop = sd.split(0)(rank, world, [size])
                assert torch.equal(t[start:stop], parts[rank])
