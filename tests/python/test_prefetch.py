"""safe_open(...).prefetch(plan): safetensors 0.9's declared partial read, on every device
safeload loads to. Checked against the writer's input: the planned tensors and rows, each
handed out once, in file order by names(), in readiness order by iteration; and hostile use."""
from __future__ import annotations

import ctypes
import os
import threading
import time

import pytest
import torch
from safetensors.torch import save_file

import safeload

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture
def written(tmp_path):
    tensors = {
        "embed": torch.randn(40, 16),
        "norm": torch.ones(16, dtype=torch.bfloat16),
        "empty": torch.zeros(0, 3),
        "scalar": torch.tensor(7, dtype=torch.int64),
        "proj": torch.arange(6 * 5, dtype=torch.int32).reshape(6, 5),
        "q": torch.randint(0, 256, (4, 8), dtype=torch.uint8).view(torch.float8_e4m3fn),
    }
    path = str(tmp_path / "model.safetensors")
    save_file(tensors, path)
    return path, tensors


def raw(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and raw(a) == raw(b)


@pytest.mark.parametrize("device", DEVICES)
def test_the_plan_is_what_is_handed_out(written, device):
    path, tensors = written
    plan = {"proj": slice(1, 4), "norm": None, "empty": None, "scalar": None, "embed": slice(-10, None)}
    with safeload.safe_open(path, "pt", device=device) as f, f.prefetch(plan) as loader:
        file_order = [n for n in f.offset_keys() if n in plan]
        assert loader.names() == file_order and len(loader) == len(plan)
        assert same(loader.take("proj"), tensors["proj"][1:4])
        rest = dict(loader)
        assert sorted(rest) == sorted(set(plan) - {"proj"}), "iteration skips what was taken"
        for name, t in rest.items():
            assert t.device.type == device
            want = tensors[name] if plan[name] is None else tensors[name][plan[name]]
            assert same(t, want), name
        assert list(loader) == [], "each tensor once"


def test_no_plan_is_every_tensor_whole_and_iteration_is_in_readiness_order(written):
    path, tensors = written
    with safeload.safe_open(path, "pt") as f:
        loader = f.prefetch(threads=1)
        order = [name for name, _ in loader]
        loader.close()
    assert sorted(order) == sorted(tensors)
    # Tensors of no bytes are ready first; with one reader the rest land in file order.
    with safeload.safe_open(path, "pt") as f:
        with_bytes = [n for n in f.offset_keys() if tensors[n].nbytes]
    assert order == ["empty"] + with_bytes


def test_a_device_of_its_own_and_the_handle_unchanged(written):
    path, tensors = written
    with safeload.safe_open(path, "pt") as f:
        first, second = f.prefetch({"embed": None}, device="cpu"), f.prefetch({"embed": slice(0, 2)})
        assert same(second.take("embed"), tensors["embed"][:2])
        assert same(first.take("embed"), tensors["embed"])
        assert same(f.get_slice("embed")[3:5], tensors["embed"][3:5])  # the handle still works
        first.close()
        second.close()


def test_taking_twice_or_unplanned_or_after_close_raises(written):
    path, tensors = written
    with safeload.safe_open(path, "pt") as f:
        loader = f.prefetch({"proj": None, "norm": None})
        loader.take("proj")
        with pytest.raises(ValueError, match="taken already"):
            loader.take("proj")
        with pytest.raises(KeyError, match="not in this prefetch plan"):
            loader.take("embed")
        loader.close()
        loader.close()  # idempotent
        with pytest.raises(ValueError, match="closed before tensor 'norm' was taken"):
            loader.take("norm")
        with pytest.raises(ValueError, match="closed"):
            next(iter(loader))


@pytest.mark.parametrize("plan, error, match", [
    ({"proj": slice(0, 4, 2)}, ValueError, "step 2"),
    ({"proj": slice(0, 7)}, IndexError, "rows 0:7 of 6"),
    ({"proj": slice(4, 2)}, IndexError, "rows 4:2"),
    ({"proj": slice(-7, None)}, IndexError, "rows -7:None"),
    ({"scalar": slice(0, 1)}, ValueError, "0-d"),
    ({"proj": slice(0, "2")}, TypeError, "stop must be an int"),
    ({"proj": 3}, TypeError, "None or a slice"),
    (["proj"], TypeError, "plan must be a dict"),
])
def test_a_plan_that_does_not_fit_is_refused_before_reading(written, plan, error, match):
    path, _ = written
    with safeload.safe_open(path, "pt") as f:
        with pytest.raises(error, match=match):
            f.prefetch(plan)
        with pytest.raises(safeload.SafetensorError, match="does not contain tensor 'ghost'"):
            f.prefetch({"ghost": None})


def test_closing_during_a_take_in_another_thread(tmp_path, shim_env):
    """A take waiting on slow reads ends with a clear error when another thread closes the
    loader; nothing of the load is left."""
    path = str(tmp_path / "slow.safetensors")
    save_file({f"w{i}": torch.zeros(1 << 18) for i in range(8)}, path)
    code = f"""
import threading, time, safeload
f = safeload.safe_open({path!r}, "pt", io="cached", chunk_bytes=1 << 20, threads=1)
loader = f.prefetch()
result = []
def take():
    try:
        loader.take("w7")
        result.append("took")
    except Exception as e:
        result.append(type(e).__name__ + ": " + str(e))
t = threading.Thread(target=take)
t.start()
while loader.report()["bytes_done"] == 0:
    time.sleep(0.001)
loader.close()
t.join()
print(result[0])
"""
    out = shim_env(code, fault=f"kind=delay,fn=pread+preadv+read,nth=1,count=-1,filter={path},arg=100000")
    assert "ValueError" in out and "closed while waiting for tensor 'w7'" in out, out


def test_an_error_while_reading_reaches_the_taker_and_nothing_is_handed_out(tmp_path, shim_env):
    path = str(tmp_path / "bad.safetensors")
    save_file({f"w{i}": torch.zeros(1 << 18) for i in range(4)}, path)
    code = f"""
import safeload
with safeload.safe_open({path!r}, "pt", io="cached", chunk_bytes=1 << 20, threads=1) as f:
    with f.prefetch() as loader:
        try:
            print("took", [n for n, _ in loader])
        except OSError as e:
            print("OSError", e.errno)
"""
    out = shim_env(code, fault=f"kind=eio,fn=pread+preadv,nth=4,count=1,filter={path}")
    assert out.strip() == "OSError 5", out


def _rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_untaken_tensors_are_freed_at_close(tmp_path):
    path = str(tmp_path / "big.safetensors")
    save_file({"a": torch.ones(1 << 22), "b": torch.ones(1 << 22)}, path)  # 2 x 16 MiB
    with safeload.safe_open(path, "pt") as f:
        loader = f.prefetch()
        a = loader.take("a")
        while loader.report()["bytes_done"] < loader.report()["bytes_total"]:
            time.sleep(0.001)
        before = _rss()
        loader.close()
        # The untaken 16 MiB go with the load (handed back to the system: the allocator may
        # keep freed blocks until asked to trim); the taken tensor keeps its memory.
        ctypes.CDLL(None).malloc_trim(0)
        assert before - _rss() >= 12 << 20, (before, _rss())
        assert a.sum().item() == 1 << 22


def test_concurrent_takes(written):
    path, tensors = written
    with safeload.safe_open(path, "pt") as f, f.prefetch() as loader:
        got = {}

        def take(name):
            got[name] = loader.take(name)

        threads = [threading.Thread(target=take, args=(n,)) for n in loader.names()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert all(same(got[n], tensors[n]) for n in tensors)


@pytest.fixture
def shim_env(shim):
    """Runs Python code in a child with the fault-injection shim; returns its stdout."""
    import subprocess
    import sys

    import harness  # tests/fault, put on the path by the shim fixture

    def run(code: str, fault: str) -> str:
        env = harness.child_env(shim, {"SAFELOAD_FAULT": fault})
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                              stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    return run
