"""``safeload demo``: the main job, end to end on a small model-shaped file.

Writes a file with the layer shapes of a (scaled-down) Qwen3 decoder in
bf16, prints its header, loads it with the reference and the fast loader,
and checks every tensor byte for byte against upstream ``safetensors`` and
against what was written. Then runs the conformance suite on both loaders
and a short benchmark.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

import safeload
from safeload import inspect as inspect_cmd


def qwen3_like_state_dict(layers: int = 2, hidden: int = 256, intermediate: int = 768,
                          heads: int = 4, kv_heads: int = 2, head_dim: int = 64,
                          vocab: int = 4096, seed: int = 0) -> dict[str, torch.Tensor]:
    """Qwen3 decoder layer shapes (same names and structure, smaller sizes)."""
    g = torch.Generator().manual_seed(seed)

    def w(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float32).to(torch.bfloat16)

    sd = {"model.embed_tokens.weight": w(vocab, hidden), "model.norm.weight": w(hidden), "lm_head.weight": w(vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        sd.update({
            p + "input_layernorm.weight": w(hidden),
            p + "post_attention_layernorm.weight": w(hidden),
            p + "self_attn.q_proj.weight": w(heads * head_dim, hidden),
            p + "self_attn.k_proj.weight": w(kv_heads * head_dim, hidden),
            p + "self_attn.v_proj.weight": w(kv_heads * head_dim, hidden),
            p + "self_attn.o_proj.weight": w(hidden, heads * head_dim),
            p + "self_attn.q_norm.weight": w(head_dim),
            p + "self_attn.k_norm.weight": w(head_dim),
            p + "mlp.gate_proj.weight": w(intermediate, hidden),
            p + "mlp.up_proj.weight": w(intermediate, hidden),
            p + "mlp.down_proj.weight": w(hidden, intermediate),
        })
    return sd


def _raw(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def verify(name: str, loaded: dict, expected: dict) -> None:
    """Raises AssertionError naming the first difference."""
    assert set(loaded) == set(expected), f"{name}: tensor names differ: {sorted(set(loaded) ^ set(expected))[:5]}"
    for key, want in expected.items():
        got = loaded[key]
        assert got.dtype == want.dtype, f"{name}: {key}: dtype {got.dtype} != {want.dtype}"
        assert tuple(got.shape) == tuple(want.shape), f"{name}: {key}: shape {tuple(got.shape)} != {tuple(want.shape)}"
        assert _raw(got) == _raw(want), f"{name}: {key}: bytes differ"


def _step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="safeload demo", description=__doc__)
    parser.add_argument("--out", default=os.path.join("build", "demo"), help="where to write the demo files")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--skip-conform", action="store_true")
    parser.add_argument("--skip-bench", action="store_true")
    args = parser.parse_args(argv)

    import safetensors.torch as upstream

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "qwen3-like-bf16.safetensors")
    written = qwen3_like_state_dict(layers=args.layers)
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

    if not args.skip_conform:
        try:
            from safeload.conformance import cli as conform_cli
        except ImportError as e:
            print(f"\n(conformance harness not available: {e})")
        else:
            for loader in ("safeload.conformance.adapters.safeload_fast:load_file",
                           "safeload.conformance.adapters.safeload_reference:load_file"):
                _step(f"safeload conform --loader {loader}")
                rc = conform_cli.main(["--loader", loader, "--property-cases", "50"])
                if rc != 0:
                    print(f"conformance failed for {loader}", file=sys.stderr)
                    return rc

    if not args.skip_bench:
        try:
            from safeload.bench import cli as bench_cli
        except ImportError as e:
            print(f"\n(benchmark not available: {e})")
        else:
            _step("safeload bench (short run on the demo file, warm page cache)")
            rc = bench_cli.main([path, "--rounds", "2", "--condition", "warm", "--no-progress",
                                 "--loaders", "safeload-fast,safeload-reference,safetensors"])
            if rc != 0:
                return rc

    print("\ndemo: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
