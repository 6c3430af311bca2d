"""Load one checkpoint on every rank, each rank reading a share of it.

    torchrun --nproc-per-node 2 examples/distributed/load_checkpoint.py CHECKPOINT [--shard] [--per-node]

CHECKPOINT is a .safetensors file, a directory of shards or an index. On
CPU the ranks exchange their shares over gloo; with one GPU per rank
(``--device cuda``) over NCCL. Each rank prints what it read and checks its
result against the single-process loader.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist

import safeload
import safeload.distributed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--shard", action="store_true",
                        help="tensor parallel: every tensor of 2 or more dimensions split along dimension 0")
    parser.add_argument("--per-node", action="store_true", help="the ranks of each node split that node's reads")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the other ranks")
    args = parser.parse_args()

    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if args.device == "cuda":
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    else:
        device = "cpu"
    dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        shards = None
        if args.shard:
            headers = [safeload.read_header(f) for f in safeload._loading.checkpoint_files(args.checkpoint)]
            shards = {name: safeload.distributed.split(0)
                      for h in headers for name, _, shape, _, _ in h["tensors"] if len(shape) >= 2}
        report: dict = {}
        tensors = safeload.distributed.load_checkpoint(
            args.checkpoint, device, mode="shard" if args.shard else "replicate", shards=shards,
            per_node=args.per_node, timeout=args.timeout, report=report)

        # Check against the single-process loader (it reads everything again).
        whole = safeload.load_checkpoint(args.checkpoint, device)
        for name, t in tensors.items():
            want = whole[name]
            if shards and name in shards:
                dim, start, stop = shards[name](rank, world, list(want.shape))
                want = want.narrow(dim, start, stop - start)
            assert t.dtype == want.dtype and t.shape == want.shape, name
            if t.numel():  # bit patterns, so that NaNs compare
                assert torch.equal(t.reshape(-1).view(torch.uint8), want.reshape(-1).view(torch.uint8)), name
        # One write per line: the ranks share stdout, and with PYTHONUNBUFFERED a
        # print of text and newline is two writes another rank can come between.
        sys.stdout.write(f"rank {rank}/{world}: {len(tensors)} tensors on {device}, read {report['bytes_read']:,} "
                         f"of {report['bytes_total']:,} bytes, exchanged {report['bytes_received']:,} in "
                         f"{report['seconds']:.2f} s; equal to safeload.load_checkpoint\n")
        sys.stdout.flush()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
