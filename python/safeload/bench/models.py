"""Time to a usable model: the same checkpoint as 1, 4 and 16 shards, loaded every way.

    python -m safeload.bench.models [--model llama|diffusers] [--shards 1,4,16] [--rounds 5]
                                    [--condition warm|cold] [--device cpu|cuda] [--ways KEY,...]
                                    [--dir DIR] [--json OUT] [--list]

The checkpoint. With --model llama (the default), one Llama-style model in bf16 (hidden 1024,
8 layers, vocab 32,000 unless --hidden, --layers, --vocab say otherwise); with --model
diffusers, an SD3-style SD3Transformer2DModel in bf16 (hidden 1024, 4 layers). It is generated
once from a fixed seed and written as exactly N shards for each N in --shards, each in
DIR/shards-N/ with its config.json, under its library's names: model.safetensors (or
diffusion_pytorch_model.safetensors) for one shard; model-0000k-of-0000N.safetensors and
model.safetensors.index.json (metadata.total_size, weight_map), or diffusers' equivalents, for
more. The tensors, in state-dict order, are split into N contiguous groups of nearly equal
bytes, so every shard count holds the same bytes. The writer records a SHA-256 digest of every
tensor it wrote in DIR/shards-N/written.json, written last; a directory appears under its final
name only once complete (it is written under another name, then renamed), and a rerun reuses
every directory whose record matches the model asked for and whose files are all there.

The ways (--list shows each with whether it can run here, and why not):
- every state-dict loader of ``safeload bench`` that can run on --device (default cpu), given
  the list of shard files (each loads shard by shard, or takes the list in one call as
  load_checkpoint does);
- ``transformers`` (llama): ``AutoModelForCausalLM.from_pretrained(DIR/shards-N, dtype=bfloat16)``,
  with ``device_map=DEVICE`` for a device other than the CPU; ``diffusers`` (diffusers):
  ``SD3Transformer2DModel.from_pretrained(DIR/shards-N, torch_dtype=bfloat16)``;
- ``transformers-patched``, ``diffusers-patched``: the same under ``with safeload.patch():``,
  the patch applied inside the timed region;
- ``transformers-autopatch``, ``diffusers-autopatch``: the same in a process started with
  ``SAFELOAD_PATCH=1`` (the package's start-up hook patches when safetensors is first
  imported, before the clock).

Timed, in a fresh process per run, after imports and a settle wait: a state-dict way from the
loader call until every byte of every tensor has been read once (mapped tensors pay for their
pages); a from_pretrained way until the model is built with its weights in and every byte of
its state dict has been read once.

Checked, after the clock: a state-dict way's checksum of every byte against the same checksum
computed from the shard files themselves, and its tensor count against the writer's; a
from_pretrained model's tensors, name by name, against the writer's digests (a tensor tied to
another is compared once). A mismatch is reported as WRONG BYTES instead of a time.

Order: for each page-cache condition, each round runs every (shard count, way) once, each round
starting one run later than the one before (rotated, as safeload bench does: a run pays for what
the run before it freed, so no way follows the same one every round). Warm: the shard files are
read through the page cache before a run whenever mincore says they are not all resident. Cold:
the run's process evicts them (posix_fadvise DONTNEED) before its settle wait. Each run records
the resident fraction it found.

Output: one table per condition and shard count: median seconds (min-max), GB/s of tensor bytes
(the same bytes at every shard count), each way's median time over
safeload.load_checkpoint's, and a patched way's median time over its shipped way's with the number of
rounds in which its run was the faster of the round's two; --json writes every run
(a ``-patched`` run also records ``seconds_patch``: applying and releasing the patch, inside the clock).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import time

#: The from_pretrained ways of each model family: key -> (label, the family's library).
MODEL_WAYS = {
    "transformers": "transformers from_pretrained(dir)",
    "transformers-patched": "transformers under safeload.patch()",
    "transformers-autopatch": "transformers with SAFELOAD_PATCH=1",
    "diffusers": "diffusers from_pretrained(dir)",
    "diffusers-patched": "diffusers under safeload.patch()",
    "diffusers-autopatch": "diffusers with SAFELOAD_PATCH=1",
}
#: The ways through safeload: each one's shipped way is its key without the suffix.
_PATCHED_SUFFIXES = ("-patched", "-autopatch")


def shipped_way(key: str) -> str | None:
    """The shipped way a patched way is compared with; None for others."""
    for suffix in _PATCHED_SUFFIXES:
        if key.endswith(suffix):
            return key[:-len(suffix)]
    return None


FAMILIES = ("llama", "diffusers")
_FAMILY_LIBRARY = {"llama": "transformers", "diffusers": "diffusers"}
BASELINE = "safeload-checkpoint"
WRITTEN = "written.json"
INDEX = "model.safetensors.index.json"
#: Each family's file names, as its library writes them: (one file, index, shard prefix).
_NAMES = {
    "llama": ("model.safetensors", INDEX, "model"),
    "diffusers": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json",
                  "diffusion_pytorch_model"),
}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    hidden: int = 1024
    layers: int = 8
    vocab: int = 32000
    seed: int = 0
    #: "llama" (transformers' LlamaForCausalLM) or "diffusers" (an SD3-style
    #: SD3Transformer2DModel: hidden, layers; vocab unused).
    family: str = "llama"

    def describe(self) -> str:
        if self.family == "diffusers":
            return f"SD3-style diffusers transformer, bf16, hidden {self.hidden}, {self.layers} layers"
        return f"Llama-style, bf16, hidden {self.hidden}, {self.layers} layers, vocab {self.vocab:,}"


# The checkpoint ------------------------------------------------------------------------------


def build_model(spec: ModelSpec):
    """(config, state dict) of the seeded model: the same bytes every time it is built. The
    config is what ``save_pretrained(directory)`` writes config.json from."""
    import torch

    if spec.family == "diffusers":
        import diffusers

        torch.manual_seed(spec.seed)
        heads = max(1, spec.hidden // 64)
        model = diffusers.SD3Transformer2DModel(
            sample_size=32, patch_size=2, in_channels=16, out_channels=16, num_layers=spec.layers,
            attention_head_dim=64, num_attention_heads=heads, joint_attention_dim=spec.hidden,
            caption_projection_dim=heads * 64, pooled_projection_dim=768, pos_embed_max_size=96)
        model = model.to(torch.bfloat16)
        return _SaveConfig(model), {k: t.detach().contiguous() for k, t in model.state_dict().items()}
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=spec.vocab, hidden_size=spec.hidden, intermediate_size=spec.hidden * 11 // 4,
        num_hidden_layers=spec.layers, num_attention_heads=max(1, spec.hidden // 64),
        num_key_value_heads=max(1, spec.hidden // 128), tie_word_embeddings=False, dtype="bfloat16")
    torch.manual_seed(spec.seed)
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    state: dict = {}
    storages: dict = {}
    for name, t in model.state_dict().items():
        # A tensor sharing another's storage (tied weights) is written once, as transformers does.
        if (t.data_ptr(), t.dtype, tuple(t.shape)) in storages:
            continue
        storages[(t.data_ptr(), t.dtype, tuple(t.shape))] = name
        state[name] = t.detach().contiguous()
    return config, state


class _SaveConfig:
    """A diffusers model's config, written as its from_pretrained reads it."""

    def __init__(self, model):
        self.model = model

    def save_pretrained(self, directory: str) -> None:
        self.model.save_config(directory)


def digest(t) -> str:
    """SHA-256 of a tensor's bytes in row-major order: the conformance harness's digest."""
    from safeload.conformance.worker import digest as tensor_digest

    return tensor_digest(t)[0]


def split(sizes: list[int], n: int) -> list[tuple[int, int]]:
    """Cut ``sizes`` (in order) into exactly ``n`` non-empty contiguous groups of nearly equal sum.

    "Nearly equal" is the least sum of squared group sums (so the least spread around the mean),
    found exactly by dynamic programming over the cut positions, O(n * len(sizes)**2). A greedy
    cut at each equal share fails where a large tensor sits at the end (a Llama model's lm_head):
    the groups before it come out too large and the last few hold a norm weight each.
    Returns (start, stop) ranges.
    """
    m = len(sizes)
    if not 1 <= n <= m:
        raise ValueError(f"cannot split {m} tensors into {n} non-empty shards")
    prefix = [0]
    for s in sizes:
        prefix.append(prefix[-1] + s)
    # cost[k][i]: the least cost of the first i tensors in k groups; back[k][i]: its last cut.
    inf = float("inf")
    cost = [[inf] * (m + 1) for _ in range(n + 1)]
    back = [[0] * (m + 1) for _ in range(n + 1)]
    cost[0][0] = 0
    for k in range(1, n + 1):
        for i in range(k, m - (n - k) + 1):  # leave at least one tensor for each later group
            for j in range(k - 1, i):
                c = cost[k - 1][j] + (prefix[i] - prefix[j]) ** 2
                if c < cost[k][i]:
                    cost[k][i], back[k][i] = c, j
    cuts = [m]
    for k in range(n, 0, -1):
        cuts.append(back[k][cuts[-1]])
    cuts.reverse()
    return list(zip(cuts[:-1], cuts[1:]))


def _model_digest(tensors: dict) -> str:
    return hashlib.sha256(json.dumps(tensors, sort_keys=True).encode()).hexdigest()


def shard_names(n: int, family: str = "llama") -> list[str]:
    single, _, prefix = _NAMES[family]
    return [single] if n == 1 else [f"{prefix}-{k:05d}-of-{n:05d}.safetensors" for k in range(1, n + 1)]


def shard_dir(root: str, n: int) -> str:
    return os.path.join(root, f"shards-{n}")


def default_dir(family: str) -> str:
    return os.path.join("bench", "out", "llama-shards" if family == "llama" else f"{family}-shards")


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: str, doc: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    _fsync(path)


def write_checkpoint(root: str, n: int, spec: ModelSpec, config, state: dict, tensors: dict,
                     model_digest: str) -> dict:
    """Write ``state`` as exactly ``n`` shards into DIR/shards-N; return the writer's record.

    Everything is written into a sibling directory first and renamed into place last, after the
    record: a directory under the final name is always complete.
    """
    from safetensors.torch import save_file

    final = shard_dir(root, n)
    partial = os.path.join(root, f".shards-{n}.partial")
    if os.path.exists(partial):
        shutil.rmtree(partial)
    os.makedirs(partial)
    config.save_pretrained(partial)
    names = list(state)
    groups = split([tensors[k]["nbytes"] for k in names], n)
    files = shard_names(n, spec.family)
    weight_map = {}
    for fname, (a, b) in zip(files, groups):
        path = os.path.join(partial, fname)
        save_file({k: state[k] for k in names[a:b]}, path, metadata={"format": "pt"})
        _fsync(path)
        weight_map.update({k: fname for k in names[a:b]})
    total_size = sum(t["nbytes"] for t in tensors.values())
    if n > 1:
        _write_json(os.path.join(partial, _NAMES[spec.family][1]), {
            "metadata": {"total_parameters": sum(t.numel() for t in state.values()), "total_size": total_size},
            "weight_map": weight_map,
        })
    record = {
        "spec": dataclasses.asdict(spec),
        "shards": n,
        "files": {f: os.path.getsize(os.path.join(partial, f)) for f in files},
        "weight_map": weight_map,
        "total_size": total_size,
        "digest": model_digest,
        "tensors": tensors,
    }
    _write_json(os.path.join(partial, WRITTEN), record)
    if os.path.exists(final):
        shutil.rmtree(final)
    os.rename(partial, final)
    return record


def read_checkpoint(root: str, n: int, spec: ModelSpec) -> dict | None:
    """The writer's record of DIR/shards-N if that directory is complete and holds ``spec``."""
    d = shard_dir(root, n)
    try:
        with open(os.path.join(d, WRITTEN), encoding="utf-8") as f:
            record = json.load(f)
        if record.get("spec") != dataclasses.asdict(spec) or record.get("shards") != n:
            return None
        if list(record["files"]) != shard_names(n, spec.family) or not os.path.isfile(os.path.join(d, "config.json")):
            return None
        if record["digest"] != _model_digest(record["tensors"]):
            return None
        for fname, size in record["files"].items():
            if os.path.getsize(os.path.join(d, fname)) != size:
                return None
        if n > 1:
            with open(os.path.join(d, _NAMES[spec.family][1]), encoding="utf-8") as f:
                index = json.load(f)
            if (index.get("weight_map") != record["weight_map"]
                    or index.get("metadata", {}).get("total_size") != record["total_size"]):
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return record


def ensure_checkpoints(root: str, counts: list[int], spec: ModelSpec) -> dict[int, dict]:
    """The model written as each shard count in ``counts``, reusing complete directories.

    Every directory returned holds the same bytes: one written from another build of the model
    (its digest differs) is written again.
    """
    records = {n: read_checkpoint(root, n, spec) for n in counts}
    if all(records.values()) and len({r["digest"] for r in records.values()}) == 1:
        return records
    config, state = build_model(spec)
    if max(counts) > len(state):
        raise SystemExit(f"safeload.bench.models: cannot write {max(counts)} shards: the model "
                         f"({spec.describe()}) has {len(state)} tensors and each shard holds at "
                         "least one; use more --layers")
    tensors = {k: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                   "nbytes": t.numel() * t.element_size(), "sha256": digest(t)} for k, t in state.items()}
    model_digest = _model_digest(tensors)
    os.makedirs(root, exist_ok=True)
    for n in counts:
        if records[n] is None or records[n]["digest"] != model_digest:
            records[n] = write_checkpoint(root, n, spec, config, state, tensors, model_digest)
    return records


def shard_paths(root: str, record: dict) -> list[str]:
    d = os.path.abspath(shard_dir(root, record["shards"]))
    return [os.path.join(d, f) for f in record["files"]]


# The ways ------------------------------------------------------------------------------------


def ways(device: str = "cpu", family: str = "llama") -> list[tuple[str, str, str | None]]:
    """Every way for a checkpoint of ``family``: (key, label, None if it can run on ``device``
    here, else why not)."""
    from safeload.bench.loaders import LOADERS

    out = [(loader.key, loader.label, loader.unavailable(device)) for loader in LOADERS]
    library = _FAMILY_LIBRARY[family]
    missing = (f"not installed (pip install {library})"
               if importlib.util.find_spec(library) is None else None)
    out += [(k, label, missing) for k, label in MODEL_WAYS.items() if k.split("-")[0] == library]
    return out


def check_state_dict_run(result: dict, expected_checksum: int, ntensors: int) -> dict:
    """Mark a state-dict run whose bytes or tensor count differ from the files' as wrong."""
    if "checksum" in result:
        got = int(result["checksum"], 16)
        if got != expected_checksum:
            result["wrong_bytes"] = True
            result["mismatch"] = [f"checksum {got:016x}, the shard files' is {expected_checksum:016x}"]
        elif result.get("ntensors") != ntensors:
            result["wrong_bytes"] = True
            result["mismatch"] = [f"{result.get('ntensors')} tensors, the checkpoint holds {ntensors}"]
    return result


def check_model_run(result: dict, written: dict) -> dict:
    """Compare a from_pretrained run's tensors, name by name, with the writer's digests."""
    got = result.pop("tensors", None)
    if got is None:
        return result
    mismatch = []
    for name, info in written.items():
        if name not in got:
            mismatch.append(f"{name}: not in the loaded model's state dict")
        elif got[name] != info["sha256"]:
            mismatch.append(f"{name}: sha256 {got[name][:16]}..., written {info['sha256'][:16]}...")
    mismatch += [f"{name}: in the loaded model but not in the checkpoint" for name in got if name not in written]
    if mismatch:
        result["wrong_bytes"] = True
        result["mismatch"] = mismatch[:5] + ([f"... {len(mismatch) - 5} more"] if len(mismatch) > 5 else [])
    elif shipped_way(str(result.get("key"))) and not any(
            result.get("patch_calls", {}).get(k) for k in ("tensors", "mapped")):
        # Served means read by safeload, or handed to upstream's mapping by its policy.
        result["error"] = f"safeload.patch() served no file (calls: {result.get('patch_calls')})"
    return result


def _run_model(spec: dict) -> dict:
    """In this (fresh) process: from_pretrained one way, timed as the docstring says."""
    import torch

    from safeload.bench import cache, worker
    from safeload.bench.loaders import touch

    directory, key = spec["dir"], spec["key"]
    device = spec.get("device", "cpu")
    if key.startswith("diffusers"):
        from diffusers import SD3Transformer2DModel as Model  # the model's code, imported before the clock

        kwargs = {"torch_dtype": torch.bfloat16}
    else:
        from transformers import AutoModelForCausalLM as Model
        from transformers.models.llama import modeling_llama  # noqa: F401  imported before the clock

        kwargs = {"dtype": torch.bfloat16}
    if device != "cpu":
        kwargs["device_map"] = device
    patched = key.endswith("-patched")
    autopatched = key.endswith("-autopatch")
    if patched or autopatched:
        import importlib

        import safeload
        patch_module = importlib.import_module("safeload.patch")
        if autopatched and not patch_module.is_patched():
            raise RuntimeError("SAFELOAD_PATCH=1 did not patch safetensors: the safeload-autopatch.pth "
                               "start-up hook is not installed in this environment")
        calls_before = patch_module.calls()
    if spec.get("condition") == "cold":
        for name in os.listdir(directory):
            cache.evict(os.path.join(directory, name))
    if spec.get("settle"):
        time.sleep(spec["settle"])
    resident = [cache.resident_fraction(p) for p in spec["paths"]]
    result: dict = {"key": key, "resident_before": None if None in resident else min(resident)}
    rss_before = worker._current_rss_bytes()
    result["peak_reset"] = worker._reset_peak_rss()

    t0 = time.perf_counter()
    if patched:
        p = safeload.patch()  # as `with safeload.patch() as p:`, its own cost timed too
        applied = time.perf_counter()
        try:
            model = Model.from_pretrained(directory, **kwargs)
        finally:
            returned = time.perf_counter()
            p.release()
        t1 = time.perf_counter()
        result["patch_calls"] = p.calls
        result["seconds_patch"] = (applied - t0) + (t1 - returned)
    else:
        model = Model.from_pretrained(directory, **kwargs)
        t1 = time.perf_counter()
    if autopatched:
        result["patch_calls"] = {k: v - calls_before.get(k, 0) for k, v in patch_module.calls().items()
                                 if v != calls_before.get(k, 0)}
    state = model.state_dict()
    checksum = touch(dict(state))
    t2 = time.perf_counter()
    result["rss_peak_bytes"] = worker._peak_rss_bytes()
    result["rss_before_bytes"] = rss_before

    tensors, tied, seen = {}, {}, {}
    for name, t in state.items():
        where = (t.data_ptr(), t.dtype, tuple(t.shape), t.stride())
        if where in seen:
            tied[name] = seen[where]
            continue
        seen[where] = name
        tensors[name] = digest(t)
    result.update(
        seconds=t2 - t0, seconds_load=t1 - t0, seconds_touch=t2 - t1,
        nbytes=sum(t.numel() * t.element_size() for n, t in state.items() if n not in tied),
        ntensors=len(tensors), checksum=f"{checksum:016x}", tied=tied, tensors=tensors,
    )
    return result


def _run_child(spec: dict, timeout: float | None) -> dict:
    from safeload.bench import runner

    env = {"SAFELOAD_PATCH": "1"} if spec["key"].endswith("-autopatch") else {"SAFELOAD_PATCH": ""}
    return runner.run_child(["-m", "safeload.bench.models", "--_run", json.dumps(spec)], timeout, what="run",
                            env=env)


# The schedule and the report -----------------------------------------------------------------


def run(root: str, records: dict[int, dict], *, keys: list[str], conditions: list[str], rounds: int,
        settle: float, timeout: float | None, on_run=None, device: str = "cpu") -> dict:
    """Every (condition, round, shard count, way) in turn; the JSON-ready results document."""
    from safeload.bench import cache, report, runner
    from safeload.bench.loaders import file_checksum

    family = next(iter(records.values()))["spec"].get("family", "llama")
    status = {k: (label, why) for k, label, why in ways(device, family)}
    counts = list(records)
    paths = {n: shard_paths(root, records[n]) for n in counts}
    expected = {n: file_checksum(paths[n]) for n in counts}
    entries = {(c, n): [runner.Entry("loader", k, status[k][0], status[k][1]) for k in keys]
               for c in conditions for n in counts}

    cpu_before = runner._cpu_seconds()
    started = time.time()
    total = rounds * sum(1 for es in entries.values() for e in es if not e.unavailable)
    done = 0
    for condition in conditions:
        runnable = [(n, e) for n in counts for e in entries[(condition, n)] if not e.unavailable]
        for r in range(rounds):
            # Rotated as in safeload bench (runner.py): each round starts one run later, so no
            # way always follows the same one (a run pays for what the run before it freed).
            for n, e in runner.rotated(runnable, r):
                if on_run:
                    on_run(done, total, f"{condition} {r + 1}/{rounds} {n} shards {e.label}")
                if condition == "warm":
                    for p in paths[n]:
                        if (cache.resident_fraction(p) or 0.0) < 1.0:
                            cache.warm(p)
                if e.key in MODEL_WAYS:
                    spec = {"key": e.key, "dir": os.path.dirname(paths[n][0]), "paths": paths[n],
                            "condition": condition, "settle": settle, "device": device}
                    result = check_model_run(_run_child(spec, timeout), records[n]["tensors"])
                else:
                    spec = {"kind": "loader", "key": e.key, "paths": paths[n], "device": device,
                            "condition": condition, "threads": None, "settle": settle,
                            "nbytes": records[n]["total_size"]}
                    result = check_state_dict_run(runner.run_worker(spec, timeout), expected[n],
                                                  len(records[n]["tensors"]))
                result.pop("traceback", None)
                e.runs.append(result)
                done += 1
    if on_run:
        on_run(done, total, "done")

    results = []
    for (condition, n), es in entries.items():
        rows = [runner.summarize(e) for e in es]
        for e, row in zip(es, rows):
            wrong = next((x["mismatch"] for x in e.runs if x.get("wrong_bytes")), None)
            if wrong:
                row["mismatch"] = wrong
        base = next((x for x in rows if x["key"] == BASELINE and "seconds_median" in x), None)
        by_key = {x["key"]: x for x in rows}
        for x in rows:
            if base and "seconds_median" in x:
                x["time_over_load_checkpoint"] = x["seconds_median"] / base["seconds_median"]
            shipped = by_key.get(shipped_way(x["key"]) or "")
            if shipped and "seconds_median" in x and "seconds_median" in shipped:
                x["time_over_shipped"] = x["seconds_median"] / shipped["seconds_median"]
        results.append({"condition": condition, "shards": n, "rows": rows,
                        "runs": {e.key: e.runs for e in es if e.runs}})
    first = records[counts[0]]
    return {
        "schema": "safeload-bench-models/1",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": time.time() - started,
        "device": device,
        "other_load_cores": runner._other_load(cpu_before, runner._cpu_seconds(), time.time() - started),
        "machine": runner.machine(),
        "packages": {**runner.package_versions(), "transformers": _version("transformers"),
                     "diffusers": _version("diffusers")},
        "model": {**first["spec"], "tensors": len(first["tensors"]), "tensor_bytes": first["total_size"],
                  "digest": first["digest"]},
        "checkpoints": {str(n): {"dir": report.shown_path(os.path.dirname(paths[n][0])),
                                 "files": [{"path": os.path.basename(p), "bytes": os.path.getsize(p)}
                                           for p in paths[n]],
                                 "checksum": f"{expected[n]:016x}"} for n in counts},
        "rounds": rounds,
        "settle": settle,
        "method": {
            "timed": "state-dict ways: from the loader call until every byte of every tensor has "
                     "been read once; from_pretrained ways: until the model is built with its "
                     "weights in and every byte of its state dict has been read once; a fresh "
                     "process per run, imports and the settle wait before the clock",
            "checked": "state-dict ways: checksum of every byte against the shard files' and tensor "
                       "count; from_pretrained: every tensor's SHA-256 against the writer's",
            "gbps": "tensor bytes (the same at every shard count) / median seconds, 1e9 bytes",
            "cold": "posix_fadvise(POSIX_FADV_DONTNEED) on the checkpoint's files in each run's process",
            "warm": "shard files read through the page cache first; mincore checks residency",
            "order": "for each condition and round: every (shard count, way) once, rotated by one each round",
        },
        "results": results,
    }


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def rounds_faster(block: dict, key: str) -> tuple[int, int] | None:
    """For a patched way of a results block: in how many rounds its run took less time than its
    shipped way's run of the same round, of the rounds where both were timed, as (faster,
    rounds); None where there is no such pair. The two runs of a round are minutes apart at
    most, so the count is not moved by the machine drifting over a long run, as a ratio of
    medians can be."""
    runs = block.get("runs", {})
    shipped = shipped_way(key)
    if shipped is None or key not in runs or shipped not in runs:
        return None
    pairs = [(a["seconds"], b["seconds"]) for a, b in zip(runs[key], runs[shipped])
             if "seconds" in a and "seconds" in b and not a.get("wrong_bytes") and not b.get("wrong_bytes")]
    return (sum(a < b for a, b in pairs), len(pairs)) if pairs else None


def table(doc: dict) -> str:
    m = doc["model"]
    spec = ModelSpec(**{f.name: m[f.name] for f in dataclasses.fields(ModelSpec) if f.name in m})
    lines = [f"{m['tensors']} tensors, {m['tensor_bytes'] / 2**20:.1f} MiB ({spec.describe()}); "
             f"{doc['rounds']} interleaved rounds, a fresh process per run, device {doc.get('device', 'cpu')}; "
             "median s (min-max)"]
    other = doc.get("other_load_cores")
    if other is not None and other > 0.25:
        lines.append(f"WARNING: other work kept {other:.2f} cores busy on average during the runs")
    for block in doc["results"]:
        n = block["shards"]
        files = doc["checkpoints"][str(n)]["files"]
        lines.append(f"\npage cache {block['condition']}, {n} shard{'s' if n > 1 else ''} "
                     f"({sum(f['bytes'] for f in files) / 2**20:.1f} MiB in files)")
        lines.append(f"  {'way':<42} {'median s (min-max)':>23} {'GB/s':>6}  time / load_checkpoint's"
                     "  patched / shipped  faster in")
        for row in block["rows"]:
            if "seconds_median" in row:
                ratio = row.get("time_over_load_checkpoint")
                shipped = row.get("time_over_shipped")
                faster = rounds_faster(block, row["key"])
                spread = f"{row['seconds_median']:.3f} ({row['seconds_min']:.3f}-{row['seconds_max']:.3f})"
                lines.append(f"  {row['label']:<42} {spread:>23} {row['gbps_median']:6.2f}  "
                             f"{'' if ratio is None else f'{ratio:5.2f}x':>24}"
                             f"{'' if shipped is None else f'{shipped:19.2f}'}"
                             f"{'' if faster is None else f'  {faster[0]}/{faster[1]} rounds'}")
            else:
                lines.append(f"  {row['label']:<42} {row['status']}")
                for why in row.get("mismatch", []):
                    lines.append(f"  {'':<42}   {why}")
    return "\n".join(lines)


def _shard_counts(text: str) -> list[int]:
    try:
        counts = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of shard counts: {text!r}; example: 1,4,16")
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError(f"shard counts must be 1 or more: {text!r}")
    return counts


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m safeload.bench.models", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", type=_shard_counts, default=[1, 4, 16],
                   help="comma-separated shard counts, each the same model (default 1,4,16)")
    p.add_argument("--rounds", type=int, default=5, help="runs of each (shard count, way), interleaved (default 5)")
    p.add_argument("--condition", choices=["warm", "cold"], action="append",
                   help="page-cache condition, repeatable (default: warm and cold)")
    p.add_argument("--ways", help="comma-separated way keys to run (default: all; see --list)")
    p.add_argument("--device", default="cpu", help="where the tensors and the model go (default cpu)")
    p.add_argument("--list", action="store_true", help="list the ways and whether each can run, then exit")
    p.add_argument("--model", choices=FAMILIES, default="llama",
                   help="the checkpoint: llama (transformers' from_pretrained) or diffusers (an SD3-style "
                        "transformer through diffusers' from_pretrained) (default llama)")
    p.add_argument("--dir", default=None,
                   help="where the checkpoints are written once and reused "
                        "(default bench/out/llama-shards or bench/out/diffusers-shards)")
    p.add_argument("--hidden", type=int, default=ModelSpec.hidden, help="model width (default 1024)")
    p.add_argument("--layers", type=int, default=None,
                   help="decoder layers (default 8 for llama, 4 for diffusers)")
    p.add_argument("--vocab", type=int, default=ModelSpec.vocab, help="vocabulary size (default 32000)")
    p.add_argument("--settle", type=float, default=3.0,
                   help="seconds each run waits before its clock starts, as in safeload bench (default 3)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds before one run is abandoned")
    p.add_argument("--json", metavar="OUT", help="write every run as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--_run", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args._run:
        import traceback

        try:
            result = _run_model(json.loads(args._run))
        except Exception as e:
            result = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        sys.stdout.flush()
        os.write(1, ("\n" + json.dumps(result) + "\n").encode())  # after anything transformers printed
        return 0

    from safeload.bench.cli import Progress

    available = ways(args.device, args.model)
    if args.list:
        for key, label, why in available:
            print(f"{key:26} {label:42} {'ok' if why is None else why}")
        return 0
    keys = [k for k, _, _ in available]
    if args.ways:
        wanted = [k.strip() for k in args.ways.split(",") if k.strip()]
        unknown = [k for k in wanted if k not in keys]
        if unknown:
            print(f"safeload.bench.models: unknown way(s) {', '.join(unknown)}; known: {', '.join(keys)}",
                  file=sys.stderr)
            return 2
        keys = [k for k in keys if k in wanted]
    if args.rounds < 1:
        print("safeload.bench.models: --rounds must be at least 1", file=sys.stderr)
        return 2

    layers = args.layers if args.layers is not None else (4 if args.model == "diffusers" else ModelSpec.layers)
    spec = ModelSpec(hidden=args.hidden, layers=layers, vocab=args.vocab, family=args.model)
    directory = args.dir or default_dir(args.model)
    records = ensure_checkpoints(directory, args.shards, spec)
    progress = Progress(enabled=not args.no_progress and sys.stderr.isatty())
    doc = run(directory, records, keys=keys, conditions=args.condition or ["warm", "cold"],
              rounds=args.rounds, settle=args.settle, timeout=args.timeout, on_run=progress, device=args.device)
    print(table(doc))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
