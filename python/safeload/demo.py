"""``safeload demo``: the main job, end to end on a small model-shaped file.

Writes a file with the layer shapes of a (scaled-down) Qwen3 decoder in
bf16, prints its header, loads it with the reference and the fast loader,
and checks every tensor byte for byte against upstream ``safetensors`` and
against what was written. Then writes the same tensors as a sharded
checkpoint and loads it in one call, loads a small transformers model
through ``safeload.patch()``, runs the conformance suite on both loaders (the fast one
through every surface: load_file, load, safe_open, get_slice) and
a short benchmark.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

import safeload
from safeload import inspect as inspect_cmd
from safeload.bench.model import Shapes, qwen3_tensors
from safeload.conformance.worker import digest


def qwen3_like_state_dict(layers: int = 2, hidden: int = 256, intermediate: int = 768,
                          heads: int = 4, kv_heads: int = 2, head_dim: int = 64,
                          vocab: int = 4096, seed: int = 0) -> dict[str, torch.Tensor]:
    """Qwen3 decoder layer shapes (the benchmark's table, smaller sizes), bf16."""
    g = torch.Generator().manual_seed(seed)
    shapes = Shapes(hidden, intermediate, heads, kv_heads, head_dim, vocab)
    return {name: torch.randn(*shape, generator=g, dtype=torch.float32).to(torch.bfloat16)
            for name, shape in qwen3_tensors(shapes, layers)}


def verify(name: str, loaded: dict, expected: dict) -> None:
    """Raises AssertionError naming the first difference."""
    assert set(loaded) == set(expected), f"{name}: tensor names differ: {sorted(set(loaded) ^ set(expected))[:5]}"
    for key, want in expected.items():
        got = loaded[key]
        assert got.dtype == want.dtype, f"{name}: {key}: dtype {got.dtype} != {want.dtype}"
        assert tuple(got.shape) == tuple(want.shape), f"{name}: {key}: shape {tuple(got.shape)} != {tuple(want.shape)}"
        assert digest(got) == digest(want), f"{name}: {key}: bytes differ"


def _step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="safeload demo", description=__doc__)
    parser.add_argument("--out", default=os.path.join("build", "demo"), help="where to write the demo files")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=1024,
                        help="hidden size; the default gives a file of about 160 MiB, large enough "
                             "for the benchmark to measure loading rather than starting up")
    parser.add_argument("--skip-conform", action="store_true")
    parser.add_argument("--skip-bench", action="store_true")
    args = parser.parse_args(argv)

    import safetensors.torch as upstream

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "qwen3-like-bf16.safetensors")
    written = qwen3_like_state_dict(layers=args.layers, hidden=args.hidden, intermediate=3 * args.hidden,
                                    heads=args.hidden // 64, kv_heads=max(1, args.hidden // 128), vocab=16384)
    upstream.save_file(written, path, metadata={"format": "pt", "source": "safeload demo"})
    _step(f"wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB) with safetensors.torch.save_file")

    _step("safeload inspect")
    inspect_cmd.main([path])

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) + \
              (["mps"] if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else [])
    _step(f"load and verify against upstream safetensors and the written tensors (devices: {', '.join(devices)})")
    reference_upstream = upstream.load_file(path)
    verify("upstream safetensors vs written", reference_upstream, written)
    for device in devices:
        for name, load in (("safeload.reference.load_file", safeload.reference.load_file),
                           ("safeload.load_file", safeload.load_file)):
            t0 = time.perf_counter()
            loaded = load(path, device)
            elapsed = time.perf_counter() - t0
            assert all(t.device.type == device for t in loaded.values()), f"{name}: not on {device}"
            verify(f"{name} on {device}", loaded, reference_upstream)
            print(f"  {name:<30} {device:<5} {len(loaded)} tensors, bitwise identical to upstream ({elapsed * 1e3:.1f} ms)")

    _checkpoint_step(args.out, written, upstream)
    _transformers_step(args.out)

    if not args.skip_conform:
        try:
            from safeload.conformance import cli as conform_cli
        except ImportError as e:
            print(f"\n(conformance harness not available: {e})")
        else:
            # safeload fast through every surface (load_file, load, safe_open, get_slice), the
            # reference loader through load_file, which is all it has.
            for loader in ("safeload_fast", "safeload_reference"):
                _step(f"safeload conform --loader {loader} --property-cases 50 --index-cases 50")
                rc = conform_cli.main(["--loader", loader, "--property-cases", "50", "--index-cases", "50"])
                if rc != 0:
                    print(f"conformance failed for {loader}", file=sys.stderr)
                    return rc

    if not args.skip_bench:
        try:
            from safeload.bench import cli as bench_cli
        except ImportError as e:
            print(f"\n(benchmark not available: {e})")
        else:
            _step("safeload bench (short run on the demo file, page cache warm, a fresh process per load)")
            rc = bench_cli.main([path, "--rounds", "5", "--condition", "warm", "--state", "resident", "--no-progress",
                                 "--loaders", "safeload-fast,safeload-reference,safetensors"])
            if rc != 0:
                return rc

    print("\ndemo: all checks passed")
    return 0


def _checkpoint_step(out: str, written: dict, upstream) -> None:
    """The same tensors as a sharded checkpoint (shards and an index, as
    ``save_pretrained`` writes them), loaded in one call."""
    directory = os.path.join(out, "sharded")
    os.makedirs(directory, exist_ok=True)
    for old in os.listdir(directory):
        os.remove(os.path.join(directory, old))
    names = list(written)
    shards = [names[i::4] for i in range(4)]
    weight_map = {}
    for k, part in enumerate(shards, 1):
        file = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        upstream.save_file({n: written[n] for n in part}, os.path.join(directory, file), metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    total = sum(t.nbytes for t in written.values())
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    _step(f"safeload.load_checkpoint({directory!r}): {len(shards)} shards and an index, in one call")
    from safeload.bench.loaders import touch

    # Timed until every byte has been read once: upstream's tensors map the
    # file, so their pages are read when first touched, not by load_file.
    t0 = time.perf_counter()
    per_shard = {}
    for file in sorted(set(weight_map.values())):
        per_shard.update(upstream.load_file(os.path.join(directory, file)))
    touch(per_shard)
    t1 = time.perf_counter()
    loaded = safeload.load_checkpoint(directory)
    touch(loaded)
    t2 = time.perf_counter()
    verify("safeload.load_checkpoint", loaded, per_shard)
    print(f"  {len(loaded)} tensors from {len(shards)} shards, bitwise identical to upstream's per-shard "
          f"load_file ({(t2 - t1) * 1e3:.1f} ms; upstream's loop {(t1 - t0) * 1e3:.1f} ms; page cache warm, "
          "one run each, every byte read once: 'safeload bench' below measures properly)")


def _transformers_step(out: str) -> None:
    """A small Llama-style transformers model, saved sharded, loaded with
    from_pretrained under safeload.patch(): same weights and logits."""
    try:
        import transformers
    except ImportError:
        print("\n(transformers is not installed: skipping the from_pretrained step)")
        return
    directory = os.path.join(out, "tiny-llama")
    config = transformers.LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(directory, max_shard_size="100KB")
    _step(f"with safeload.patch(): AutoModelForCausalLM.from_pretrained({directory!r})")
    tokens = torch.tensor([[1, 5, 42, 7]])
    plain = transformers.AutoModelForCausalLM.from_pretrained(directory)
    with safeload.patch() as p:
        patched = transformers.AutoModelForCausalLM.from_pretrained(directory)
    want, got = plain.state_dict(), patched.state_dict()
    verify("from_pretrained under safeload.patch()", got, want)
    with torch.no_grad():
        same_logits = torch.equal(plain(tokens).logits, patched(tokens).logits)
    assert same_logits, "logits differ between plain and patched from_pretrained"
    served = {k: v for k, v in p.calls.items() if v}
    assert served, "safeload.patch() served no read"
    print(f"  {len(want)} tensors identical, logits identical; safeload served: {served}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
