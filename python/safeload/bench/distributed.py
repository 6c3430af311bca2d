"""``safeload bench --ranks N``: loading one checkpoint on N ranks.

Three strategies, each in its own group of N processes (gloo on the CPU, or
NCCL with one GPU per rank for ``--device cuda``):

- ``split``: ``safeload.distributed.load_checkpoint`` (each rank reads
  about 1/N of the bytes, then the ranks exchange them);
- ``every rank reads all``: each rank calls ``safeload.load_checkpoint``;
- ``tensor parallel``: ``safeload.distributed.load_checkpoint(mode="shard")``
  with Megatron's layout: every matrix cut in N along its output dimension
  (rows), output projections (``o_proj``, ``down_proj``, ``out_proj``,
  ``dense``, ``c_proj``) along their input dimension (columns), vectors
  replicated; each rank reads its own slices and nothing is exchanged.

Per round the ranks start together (after a barrier, with the file evicted
from the page cache for a cold round); the time is from that start to the
last rank's completion. Also measured: the bytes each rank read from
storage, and the group's broadcast bandwidth (a 64 MiB buffer from each
rank in turn), the input to the model in bench/README.md.
"""
from __future__ import annotations

import datetime
import json
import os
import socket
import statistics
import tempfile
import time
from typing import List, Optional

STRATEGIES = ("split", "every rank reads all", "tensor parallel")
#: Matrices that a tensor-parallel layout cuts along their input dimension.
_ROW_PARALLEL = ("o_proj", "down_proj", "out_proj", "dense", "c_proj")


def tensor_parallel_shards(paths: List[str]) -> dict:
    """Megatron's layout for every matrix of the checkpoint: ``{name: split(dim)}``."""
    import safeload
    from safeload.distributed import split

    shards = {}
    for p in paths:
        for name, _dtype, shape, _b, _e in safeload.read_header(p)["tensors"]:
            if len(shape) >= 2:
                shards[name] = split(1 if any(part in name.split(".") for part in _ROW_PARALLEL) else 0)
    return shards
_PROBE_BYTES = 64 << 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, ranks: int, port: int, paths: List[str], strategy: str, device: str,
               conditions: List[str], rounds: int, timeout: float, out_dir: str) -> None:
    import torch
    import torch.distributed as dist

    import safeload
    import safeload.distributed
    from safeload.bench import cache

    cuda = device == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=ranks, timeout=datetime.timedelta(seconds=timeout))
    dev = f"cuda:{rank}" if cuda else "cpu"
    src = paths if len(paths) > 1 else paths[0]
    rows = []
    broadcast_s = None
    shards = tensor_parallel_shards(paths) if strategy == "tensor parallel" else None
    try:
        # The group's broadcast bandwidth, each rank the source in turn.
        buf = torch.empty(_PROBE_BYTES, dtype=torch.uint8, device=dev)
        dist.barrier()
        start = time.perf_counter()
        for src_rank in range(ranks):
            dist.broadcast(buf, src=src_rank)
        if cuda:
            torch.cuda.synchronize()
        broadcast_s = time.perf_counter() - start
        del buf
        for condition in conditions:
            for _ in range(rounds):
                if rank == 0:
                    for p in paths:
                        (cache.evict if condition == "cold" else cache.warm)(p)
                dist.barrier()
                start = time.time()
                report: dict = {}
                if strategy == "split":
                    tensors = safeload.distributed.load_checkpoint(src, dev, report=report)
                    read = report["bytes_read"]
                elif strategy == "tensor parallel":
                    tensors = safeload.distributed.load_checkpoint(src, dev, mode="shard", shards=shards,
                                                                   report=report)
                    read = report["bytes_read"]
                else:
                    tensors = safeload._loading.load(src, dev, report=report)
                    read = report["bytes_done"]
                if cuda:
                    torch.cuda.synchronize()
                end = time.time()
                rows.append({"condition": condition, "start": start, "end": end, "bytes_read": read,
                             "seconds_read": report.get("seconds_read"),
                             "seconds_exchange": report.get("seconds_exchange")})
                del tensors
                dist.barrier()
    finally:
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"rank": rank, "broadcast_seconds": broadcast_s, "rows": rows}, f)
        dist.destroy_process_group()


def run(paths: List[str], ranks: int, *, device: str = "cpu", conditions=("cold", "warm"), rounds: int = 3,
        timeout: float = 900.0) -> dict:
    """Both strategies on ``ranks`` processes; a JSON-able document."""
    import torch.multiprocessing as mp

    total = 0
    import safeload
    from safeload.bench import report

    for p in paths:
        total += safeload.read_header(p)["data_length"]
    doc = {"ranks": ranks, "device": device, "paths": [report.shown_path(p) for p in paths], "bytes_total": total, "results": []}
    for strategy in STRATEGIES:
        with tempfile.TemporaryDirectory(prefix="safeload-bench-ranks-") as out_dir:
            mp.start_processes(_rank_main, args=(ranks, _free_port(), paths, strategy, device, list(conditions),
                                                 rounds, timeout, out_dir),
                               nprocs=ranks, join=True, start_method="spawn")
            per_rank = [json.load(open(os.path.join(out_dir, f"rank{r}.json"))) for r in range(ranks)]
        for condition in conditions:
            times, reads, read_s, exchange_s = [], [[] for _ in range(ranks)], [], []
            for i in range(rounds):
                rows = [[x for x in pr["rows"] if x["condition"] == condition][i] for pr in per_rank]
                times.append(max(x["end"] for x in rows) - min(x["start"] for x in rows))
                for r, x in enumerate(rows):
                    reads[r].append(x["bytes_read"])
                if rows[0]["seconds_read"] is not None:
                    read_s.append(max(x["seconds_read"] for x in rows))
                    exchange_s.append(max(x["seconds_exchange"] for x in rows))
            doc["results"].append({
                "strategy": strategy, "condition": condition, "seconds": times,
                "median_seconds": statistics.median(times),
                "bytes_read_per_rank": [statistics.median(r) for r in reads],
                "median_read_seconds": statistics.median(read_s) if read_s else None,
                "median_exchange_seconds": statistics.median(exchange_s) if exchange_s else None,
                "broadcast_gbps": _PROBE_BYTES * ranks / max(pr["broadcast_seconds"] for pr in per_rank) / 1e9,
            })
    return doc


def table(doc: dict) -> str:
    total = doc["bytes_total"]
    lines = [f"{doc['ranks']} ranks on {doc['device']}, checkpoint of {total / (1 << 20):,.0f} MiB "
             f"({len(doc['paths'])} file(s)); broadcast in the group: "
             f"{doc['results'][0]['broadcast_gbps']:.2f} GB/s",
             f"{'strategy':22} {'cache':5} {'time to last rank':>18} {'read per rank (MiB)':>22} "
             f"{'of total':>9} {'read / exchange (s)':>20}"]
    for r in doc["results"]:
        per = r["bytes_read_per_rank"]
        phases = (f"{r['median_read_seconds']:.2f} / {r['median_exchange_seconds']:.2f}"
                  if r["median_read_seconds"] is not None else "")
        lines.append(f"{r['strategy']:22} {r['condition']:5} {r['median_seconds']:>16.2f} s "
                     f"{max(per) / (1 << 20):>22,.1f} {max(per) / total:>8.1%} {phases:>20}")
    return "\n".join(lines)


def main(paths: List[str], ranks: int, *, device: str, conditions, rounds: int, timeout: float,
         json_out: Optional[str]) -> int:
    doc = run(paths, ranks, device=device, conditions=conditions, rounds=rounds, timeout=timeout)
    print(table(doc))
    if json_out:
        with open(json_out, "w") as f:
            json.dump(doc, f, indent=1)
        print(f"\nJSON: {json_out}")
    return 0
