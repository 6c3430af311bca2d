"""Every surface on a CUDA device: the staged target behind load_file, load_checkpoint
across shards, safe_open, load(bytes), patch() and safeload.distributed over NCCL.

Each test skips, saying why, where no CUDA device is present; the device check
(``make device-check``) runs this file on a GPU machine. The oracle is upstream's
CPU load of the same file (or the writer's tensors), compared byte for byte.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import safetensors.torch as upstream

import safeload
from helpers import assert_same

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

MiB = 1 << 20


def cpu(tensors: dict) -> dict:
    return {k: v.cpu() for k, v in tensors.items()}


def on_cuda(tensors: dict) -> bool:
    return all(t.device.type == "cuda" for t in tensors.values())


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """Tensors of several dtypes and sizes (one spanning many chunks), written by upstream."""
    g = torch.Generator().manual_seed(7)
    tensors = {
        "big": torch.randn(3 * MiB + 5, generator=g),
        "bf16": torch.randn(1000, 257, generator=g).to(torch.bfloat16),
        "i8": torch.randint(-128, 127, (4097,), dtype=torch.int8, generator=g),
        "f8": torch.randn(64, 64, generator=g).to(torch.float8_e4m3fn),
        "empty": torch.empty(0, 3),
        "scalar": torch.tensor(3.5),
    }
    path = str(tmp_path_factory.mktemp("cuda") / "model.safetensors")
    upstream.save_file(tensors, path)
    return path, upstream.load_file(path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, model):
    """The same tensors as three shards with an index."""
    import json

    _, tensors = model
    root = tmp_path_factory.mktemp("cuda-shards")
    names = list(tensors)
    groups = [names[:2], names[2:4], names[4:]]
    weight_map = {}
    for i, group in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-00003.safetensors"
        upstream.save_file({k: tensors[k] for k in group}, str(root / fname))
        weight_map.update({k: fname for k in group})
    (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return str(root), tensors


@pytest.mark.parametrize("options", [{}, {"io": "uncached"}, {"staging_bytes": MiB, "chunk_bytes": 256 << 10},
                                     {"threads": 1}], ids=["default", "uncached", "small-ring", "one-thread"])
def test_cuda_load_file_through_the_staging_ring(model, options):
    path, want = model
    report: dict = {}
    got = safeload.load_file(path, "cuda", report=report, **options)
    assert on_cuda(got)
    assert report["route"] == "staged", report
    assert_same(cpu(got), want)


def test_cuda_load_file_on_the_current_device_index(model):
    path, want = model
    index = torch.cuda.current_device()
    got = safeload.load_file(path, f"cuda:{index}")
    assert {t.device for t in got.values()} == {torch.device("cuda", index)}
    assert_same(cpu(got), want)


def test_cuda_load_checkpoint_across_shards_bounds_host_memory(checkpoint):
    import psutil

    root, want = checkpoint
    before = psutil.Process().memory_info().rss
    got = safeload.load_checkpoint(root, "cuda", staging_bytes=4 * MiB, progress=False)
    grew = psutil.Process().memory_info().rss - before
    assert on_cuda(got)
    assert_same(cpu(got), want)
    assert list(got) == [k for k in want], "file order, shard by shard"
    # The staging ring (4 MiB) and the read plan, not a host copy of the checkpoint.
    assert grew < 64 * MiB, f"host memory grew by {grew / MiB:.1f} MiB loading to cuda"


def test_cuda_safe_open_get_tensor_and_slices(model):
    path, want = model
    with safeload.safe_open(path, framework="pt", device="cuda") as f:
        assert f.keys() == sorted(want)
        whole = f.get_tensor("bf16")
        rows = f.get_slice("bf16")[10:20]
        cols = f.get_slice("bf16")[:, 3:250:7]
        assert whole.device.type == rows.device.type == cols.device.type == "cuda"
        assert torch.equal(whole.cpu(), want["bf16"])
        assert torch.equal(rows.cpu(), want["bf16"][10:20])
        assert torch.equal(cols.cpu(), want["bf16"][:, 3:250:7])
        assert torch.equal(f.get_tensor("scalar").cpu(), want["scalar"])


def test_cuda_load_bytes(model):
    path, want = model
    with open(path, "rb") as fh:
        data = fh.read()
    got = safeload.load(data, device="cuda")
    assert on_cuda(got)
    assert_same(cpu(got), want)


def test_cuda_patch_serves_upstream_load_file(model):
    path, want = model
    with safeload.patch() as p:
        got = upstream.load_file(path, device="cuda")
    assert p.calls.get("load_file") == 1, p.calls
    assert on_cuda(got)
    assert_same(cpu(got), want)


def test_cuda_malformed_file_frees_device_memory(tmp_path):
    path = tmp_path / "truncated.safetensors"
    upstream.save_file({"a": torch.zeros(4 * MiB)}, str(path))
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 1)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    with pytest.raises(safeload.SafetensorError):
        safeload.load_file(path, "cuda")
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before


DISTRIBUTED_CHILD = r"""
import os, sys, torch, torch.distributed as dist
import safeload, safeload.distributed
root = sys.argv[1]
dist.init_process_group("nccl", rank=0, world_size=1)
try:
    whole = safeload.load_checkpoint(root, "cuda")
    got = safeload.distributed.load_checkpoint(root, "cuda", timeout=120)
    assert list(got) == list(whole)
    for k in whole:
        assert got[k].device.type == "cuda" and torch.equal(got[k].cpu().reshape(-1).view(torch.uint8), whole[k].cpu().reshape(-1).view(torch.uint8)), k
    part = safeload.distributed.load_checkpoint(root, "cuda", mode="shard", shards={"bf16": safeload.distributed.split(1)})
    assert torch.equal(part["bf16"].cpu(), whole["bf16"].cpu())
    print("NCCL OK")
finally:
    dist.destroy_process_group()
"""


def test_cuda_distributed_over_nccl_on_one_rank(checkpoint, tmp_path):
    """NCCL needs a GPU per rank: on one GPU, a group of one rank runs every
    collective of the replicated load and the shard mode end to end."""
    if not torch.distributed.is_nccl_available():
        pytest.skip("this torch has no NCCL")
    root, _ = checkpoint
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29500 + os.getpid() % 1000),
               PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.run([sys.executable, "-c", DISTRIBUTED_CHILD, root], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0 and "NCCL OK" in proc.stdout, proc.stderr[-3000:]
