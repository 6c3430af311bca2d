"""Time to a usable model: a sharded transformers checkpoint loaded four ways.

    python -m safeload.bench.models [--rounds 5] [--dir DIR] [--json OUT]

Writes (once) a Llama-style model in bf16 as several shards with an index,
then, in a fresh process per run and interleaved rounds, times:

- ``safeload.load_checkpoint(dir)``: every shard in one load;
- upstream's per-shard loop, ``safetensors.torch.load_file`` on each shard
  (its default mmap backend);
- ``AutoModelForCausalLM.from_pretrained(dir)``, as shipped;
- the same under ``safeload.patch()``.

State-dict loads are timed until every byte has been read once (mapped
tensors pay for their pages); ``from_pretrained`` until the model is built
and its weights are in. Page cache warm (the files read just before) and
cold (evicted with ``posix_fadvise``, checked with ``mincore``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

WAYS = {
    "safeload-checkpoint": "safeload.load_checkpoint(dir)",
    "safetensors-loop": "safetensors load_file per shard (mmap)",
    "transformers": "transformers from_pretrained",
    "transformers-patched": "from_pretrained under safeload.patch()",
}


def write_model(directory: str, hidden: int = 1024, layers: int = 8, vocab: int = 32000) -> str:
    """A Llama-style model in bf16, sharded (about 100 MB a shard), once."""
    if os.path.exists(os.path.join(directory, "model.safetensors.index.json")):
        return directory
    import torch
    import transformers

    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                                      num_hidden_layers=layers, num_attention_heads=hidden // 64,
                                      num_key_value_heads=hidden // 128, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(directory, max_shard_size="100MB")
    return directory


def _run(way: str, directory: str) -> float:
    """In this (fresh) process: load one way, return seconds."""
    import torch

    from safeload.bench.loaders import touch

    shards = sorted(os.path.join(directory, f) for f in os.listdir(directory) if f.endswith(".safetensors"))
    time.sleep(1.0)  # let the host settle after start-up, as the main benchmark does
    t0 = time.perf_counter()
    if way == "safeload-checkpoint":
        import safeload

        touch(safeload.load_checkpoint(directory, progress=False))
    elif way == "safetensors-loop":
        from safetensors.torch import load_file

        out = {}
        for s in shards:
            out.update(load_file(s))
        touch(out)
    else:
        import transformers

        if way == "transformers-patched":
            import safeload

            with safeload.patch():
                model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.bfloat16)
        else:
            model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.bfloat16)
        touch(dict(model.state_dict()))
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m safeload.bench.models", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--dir", default=os.path.join("bench", "out", "llama-sharded"))
    p.add_argument("--condition", choices=["warm", "cold"], action="append")
    p.add_argument("--json")
    p.add_argument("--_run", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._run:
        print(json.dumps({"seconds": _run(*args._run)}))
        return 0

    from safeload.bench import cache

    directory = write_model(args.dir)
    shards = sorted(os.path.join(directory, f) for f in os.listdir(directory) if f.endswith(".safetensors"))
    total = sum(os.path.getsize(s) for s in shards)
    results: dict[str, dict[str, list[float]]] = {}
    for condition in args.condition or ["warm", "cold"]:
        times: dict[str, list[float]] = {w: [] for w in WAYS}
        for _ in range(args.rounds):
            for way in WAYS:
                for s in shards:
                    cache.evict(s) if condition == "cold" else cache.warm(s)
                out = subprocess.run([sys.executable, "-m", "safeload.bench.models", "--_run", way, directory],
                                     capture_output=True, text=True, check=True)
                times[way].append(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])
        results[condition] = times
    print(f"{len(shards)} shards, {total / 2**20:.0f} MiB in all (bf16 Llama-style model); "
          f"{args.rounds} interleaved rounds, a fresh process per run; median s (min-max)")
    for condition, times in results.items():
        print(f"\npage cache {condition}")
        base = statistics.median(times["safeload-checkpoint"])
        for way, label in WAYS.items():
            ts = times[way]
            med = statistics.median(ts)
            print(f"  {label:<42} {med:7.3f} s ({min(ts):.3f}-{max(ts):.3f})  {total / med / 1e9:5.2f} GB/s  "
                  f"{med / base:5.2f}x safeload's time")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"shards": len(shards), "bytes": total, "rounds": args.rounds, "seconds": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
