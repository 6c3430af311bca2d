"""The benchmark's machinery on a tiny generated file: it runs, lists every loader, computes the
limits and writes its table, JSON and chart. Nothing here asserts a speed."""
from __future__ import annotations

import argparse
import json
import os
import time

import pytest

from safeload.bench import cache, cli, limits, loaders, model, report, runner

TINY = 4 << 20


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory) -> str:
    from helpers import evictable_dir

    return str(model.ensure_file(TINY, evictable_dir(tmp_path_factory, "bench")))


def test_plan_keeps_qwen3_8b_shapes_at_full_width():
    p = model.plan(4 << 30)
    assert p.width_divisor == 1
    assert p.data_bytes >= 4 << 30
    shapes = dict(p.tensors)
    assert shapes["model.embed_tokens.weight"] == (151936, 4096)
    assert shapes["lm_head.weight"] == (151936, 4096)
    assert shapes["model.layers.0.mlp.down_proj.weight"] == (4096, 12288)
    assert shapes["model.layers.0.self_attn.k_proj.weight"] == (1024, 4096)
    assert shapes["model.layers.0.self_attn.q_norm.weight"] == (128,)
    assert f"model.layers.{p.layers - 1}.mlp.up_proj.weight" in shapes
    assert f"model.layers.{p.layers}.mlp.up_proj.weight" not in shapes
    # The smallest such file: one layer fewer would be under the size.
    layer = model._nbytes(model.layer_tensors(model.QWEN3_8B, 0))
    assert p.data_bytes - layer < 4 << 30


def test_generated_file_is_reused_and_readable_by_upstream(tiny_file):
    from safetensors import safe_open

    before = os.stat(tiny_file).st_mtime_ns
    again = model.ensure_file(TINY, os.path.dirname(tiny_file))
    assert str(again) == tiny_file and os.stat(tiny_file).st_mtime_ns == before
    with safe_open(tiny_file, "pt") as f:
        names = list(f.keys())
        assert f.metadata()["shapes_of"] == "Qwen3-8B"
    assert "model.embed_tokens.weight" in names and "model.layers.0.mlp.gate_proj.weight" in names


def test_touch_checksum_matches_the_file(tiny_file):
    from safetensors.torch import load_file

    assert loaders.touch(load_file(tiny_file)) == loaders.file_checksum([tiny_file])


def test_evict_and_warm_change_residency(tiny_file):
    cache.warm(tiny_file)
    assert cache.resident_fraction(tiny_file) == 1.0
    cache.evict(tiny_file)
    # Eviction is advice; a file system may keep a few pages, never most of them.
    assert cache.resident_fraction(tiny_file) < 0.5


def test_limit_probes_measure_every_byte(tiny_file):
    size = os.path.getsize(tiny_file)
    if limits.odirect_unavailable(tiny_file) is None:
        seconds, nbytes = limits.odirect_read([tiny_file], threads=2, chunk=1 << 20)
        assert nbytes == size and seconds > 0
    assert limits.memcpy(size, threads=2) > 0
    assert limits.h2d_unavailable("cpu") is not None


def test_new_memory_limit_is_the_fastest_of_its_methods():
    seconds, tried = limits.fresh_memory(8 << 20, threads=2)
    names = [name for name, *_ in limits.FRESH_METHODS]
    # Every method ran (populate only where the kernel has it), single-threaded one included.
    assert {"memset x1", "memset x2", "memset, huge pages x2"} <= set(tried) <= {
        "memset x1", "memset x2", "memset, huge pages x2", "populate x2"}, (names, tried)
    assert seconds == min(tried.values()) > 0


def test_every_loader_is_listed_with_a_status():
    for loader in loaders.LOADERS:
        why = loader.unavailable("cpu")
        assert why is None or why.startswith(("not installed", "not available"))
    keys = [l.key for l in loaders.LOADERS]
    for expected in ("safeload-fast", "safeload-reference", "safetensors", "safetensors-pread",
                     "fastsafetensors", "runai-model-streamer", "instanttensor"):
        assert expected in keys


def test_loaders_of_another_environment_run_with_its_interpreter():
    """safetensors 0.9 rows run with the interpreter given for their environment; without one
    they say how to give it, and in an environment with another version they say which."""
    import sys

    loader = loaders.BY_KEY["safetensors-0.9-pread"]
    why, python, _ = runner.loader_status(loader, "cpu", {})
    assert why.startswith("not available") and "--python st09=" in why and python is None
    import safetensors

    why, python, packages = runner.loader_status(loader, "cpu", {"st09": sys.executable})
    assert python == sys.executable and packages["safetensors"] == safetensors.__version__
    if safetensors.__version__.startswith("0.9"):
        assert why is None
    else:
        assert why == f"not available: needs safetensors 0.9, found {safetensors.__version__}"


@pytest.fixture(scope="module")
def smallest_measurable_file(tmp_path_factory) -> str:
    # The command refuses files too small to time.
    return str(model.ensure_file(cli.MIN_MEASURABLE_BYTES, tmp_path_factory.mktemp("bench")))


def test_one_command_writes_table_json_and_chart(smallest_measurable_file, tmp_path, capsys):
    tiny_file = smallest_measurable_file
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    argv = [tiny_file, "--rounds", "1", "--condition", "warm", "--state", "resident", "--device", "cpu",
            "--json", str(out_json), "--no-progress", "--timeout", "120", "--settle", "0"]
    if report.plot_unavailable() is None:
        argv += ["--plot", str(out_png)]
    assert cli.main(argv) == 0
    table = capsys.readouterr().out
    doc = json.loads(out_json.read_text())

    (block,) = doc["results"]
    assert (block["device"], block["condition"]) == ("cpu", "warm")
    rows = {r["key"]: r for r in block["rows"]}
    for loader in loaders.LOADERS:
        assert loader.key in rows
        assert loader.label in table
        if loader.unavailable("cpu") is None:
            assert rows[loader.key]["status"] == "ok", rows[loader.key]
            assert rows[loader.key]["nbytes"] > 0
        else:
            assert rows[loader.key]["status"].startswith(("not installed", "not available"))
    assert rows["memory"]["status"] == "ok" and rows["memory"]["gbps_median"] > 0
    assert rows["fresh"]["status"] == "ok" and rows["fresh"]["nbytes"] == os.path.getsize(tiny_file)
    methods = rows["fresh"]["methods_gbps_median"]
    assert "memset x1" in methods and rows["fresh"]["gbps_median"] == pytest.approx(max(methods.values()))
    assert "each way, median GB/s: memset x1" in table
    assert block["limit_gbps"] == min(rows["memory"]["gbps_median"], rows["fresh"]["gbps_median"])
    assert doc["machine"]["cores"] >= 1 and doc["checksum"]
    if report.plot_unavailable() is None:
        assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_each_round_starts_one_entry_later(monkeypatch, tiny_file):
    """A run pays for what the run before it freed, so no entry may follow the same one every
    round: the order rotates by one per round (and the new-memory probe's methods with it)."""
    order = []

    def fake_worker(spec, timeout=None, python=None):
        order.append((spec["round"], spec["key"]))
        return {"error": "not run"}

    monkeypatch.setattr(runner, "run_worker", fake_worker)
    runner.run([tiny_file], devices=["cpu"], conditions=["warm"], rounds=4,
               loader_keys=["safeload-fast", "safetensors"], timeout=1)
    keys = ["safeload-fast", "safetensors", "memory", "fresh"]
    for r in range(4):
        assert [k for rr, k in order if rr == r] == keys[r:] + keys[:r]
    _, first = limits.fresh_memory(1 << 20, threads=2, rotate=0)
    _, second = limits.fresh_memory(1 << 20, threads=2, rotate=1)
    assert list(second)[-1] == list(first)[0] and list(second)[0] == list(first)[1]


def test_cold_block_measures_the_storage_limit_and_lists_missing_peers(monkeypatch, tiny_file):
    ghost = loaders.Loader("ghost", "ghost loader", "safeload_bench_no_such_module",
                           "pip install ghost", lambda d: None, lambda p, d, t: {})
    monkeypatch.setattr(runner, "BY_KEY", {**loaders.BY_KEY, "ghost": ghost})
    doc = runner.run([tiny_file], devices=["cpu"], conditions=["cold"], rounds=1,
                     loader_keys=["safetensors", "ghost"], timeout=120)
    rows = {r["key"]: r for r in doc["results"][0]["rows"]}
    assert rows["ghost"]["status"].startswith("not installed")
    assert "ghost loader" in report.table(doc) and "not installed" in report.table(doc)
    assert rows["safetensors"]["status"] == "ok"
    assert rows["safetensors"]["resident_before_max"] < 0.5
    assert "files resident" not in report.table(doc)  # a cold block's state does not claim them
    storage = rows["storage"]
    if storage["status"] == "ok":
        assert storage["nbytes"] == os.path.getsize(tiny_file)
        assert doc["results"][0]["limit_gbps"] == min(storage["gbps_median"], rows["fresh"]["gbps_median"])
    else:
        assert storage["status"].startswith("O_DIRECT")


def test_sizes_parse():
    assert cli.parse_size("4GiB") == 4 << 30
    assert cli.parse_size("512MiB") == 512 << 20
    assert cli.parse_size("2GB") == 2 * 10**9
    with pytest.raises(argparse.ArgumentTypeError, match="not a size: 'lots'"):
        cli.parse_size("lots")
    with pytest.raises(argparse.ArgumentTypeError, match="needs a unit"):
        cli.parse_size("4")
    with pytest.raises(argparse.ArgumentTypeError, match="too small to measure"):
        cli.parse_size("1MiB")


def test_files_too_small_to_time_are_refused(tiny_file, capsys):
    assert cli.main([tiny_file, "--rounds", "1", "--no-progress"]) == 2
    assert "too small to measure" in capsys.readouterr().err


# The sharded-checkpoint benchmark (python -m safeload.bench.models) -------------------------

from safeload.bench import models  # noqa: E402

TINY_MODEL = models.ModelSpec(hidden=64, layers=2, vocab=1000)


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory) -> tuple[str, dict]:
    root = str(tmp_path_factory.mktemp("models"))
    return root, models.ensure_checkpoints(root, [1, 4], TINY_MODEL)


def test_split_gives_exactly_n_contiguous_nonempty_groups():
    sizes = [7, 1, 3, 3, 2, 9, 1, 1, 4, 8]
    for n in range(1, len(sizes) + 1):
        groups = models.split(sizes, n)
        assert len(groups) == n
        assert groups[0][0] == 0 and groups[-1][1] == len(sizes)
        assert all(a < b for a, b in groups) and all(g[1] == h[0] for g, h in zip(groups, groups[1:]))
    # A large last tensor (lm_head) leaves the others balanced, not one norm weight a shard.
    sums = [sum(([64] + [4] * 12 + [1, 64])[a:b]) for a, b in models.split([64] + [4] * 12 + [1, 64], 6)]
    assert sums[0] == 64 and sums[-1] == 64 and max(sums[1:-1]) - min(sums[1:-1]) <= 4
    with pytest.raises(ValueError, match="cannot split 3 tensors into 4"):
        models.split([1, 2, 3], 4)


def test_sharded_checkpoints_hold_exactly_the_written_model(tiny_checkpoints):
    import torch
    from safetensors import safe_open

    root, records = tiny_checkpoints
    _, state = models.build_model(TINY_MODEL)  # the writer's input, built again from the seed
    for n in (1, 4):
        d = os.path.join(root, f"shards-{n}")
        files = sorted(f for f in os.listdir(d) if f.endswith(".safetensors"))
        assert len(files) == n
        if n == 1:
            assert files == ["model.safetensors"] and not os.path.exists(os.path.join(d, models.INDEX))
        else:
            assert files == [f"model-{k:05d}-of-{n:05d}.safetensors" for k in range(1, n + 1)]
        assert json.loads(open(os.path.join(d, "config.json")).read())["model_type"] == "llama"
        holder: dict[str, str] = {}
        loaded = {}
        for f in files:
            with safe_open(os.path.join(d, f), "pt") as st:
                assert st.metadata() == {"format": "pt"}
                for name in st.keys():
                    assert name not in holder, f"{name} in {holder.get(name)} and {f}"
                    holder[name] = f
                    loaded[name] = st.get_tensor(name)
        if n > 1:
            index = json.loads(open(os.path.join(d, models.INDEX)).read())
            assert index["weight_map"] == holder
            assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in state.values())
        assert set(loaded) == set(state)
        for name, t in state.items():
            assert loaded[name].dtype == t.dtype and loaded[name].shape == t.shape, name
            assert torch.equal(loaded[name].view(torch.uint8), t.view(torch.uint8)), name
        assert loaders.file_checksum([os.path.join(d, f) for f in files]) == loaders.touch(state)
        assert records[n]["digest"] == records[1]["digest"]


def test_sharded_checkpoints_are_reused_and_an_incomplete_one_rewritten(tmp_path):
    root = str(tmp_path)
    first = models.ensure_checkpoints(root, [1, 4], TINY_MODEL)
    shard = os.path.join(root, "shards-4", "model-00002-of-00004.safetensors")
    stamps = {n: os.stat(os.path.join(root, f"shards-{n}", models.WRITTEN)).st_mtime_ns for n in (1, 4)}
    again = models.ensure_checkpoints(root, [1, 4], TINY_MODEL)
    assert again == first
    assert all(os.stat(os.path.join(root, f"shards-{n}", models.WRITTEN)).st_mtime_ns == stamps[n] for n in (1, 4))
    # A shard cut short (an interrupted copy) makes the directory incomplete: written again.
    with open(shard, "r+b") as f:
        f.truncate(100)
    assert models.read_checkpoint(root, 4, TINY_MODEL) is None
    # A half-written directory under its temporary name is never taken for a checkpoint.
    os.makedirs(os.path.join(root, ".shards-16.partial"))
    assert models.read_checkpoint(root, 16, TINY_MODEL) is None
    models.ensure_checkpoints(root, [1, 4], TINY_MODEL)
    assert os.stat(os.path.join(root, "shards-1", models.WRITTEN)).st_mtime_ns == stamps[1]
    assert models.read_checkpoint(root, 4, TINY_MODEL)["digest"] == first[4]["digest"]
    assert os.path.getsize(shard) == first[4]["files"]["model-00002-of-00004.safetensors"]
    # Another model asked for in the same place is not mistaken for this one.
    assert models.read_checkpoint(root, 4, models.ModelSpec(hidden=64, layers=2, vocab=1001)) is None


def test_wrong_bytes_are_reported_not_timed(tiny_checkpoints):
    root, records = tiny_checkpoints
    written = records[4]["tensors"]
    good = {k: v["sha256"] for k, v in written.items()}
    ok = models.check_model_run({"key": "transformers", "seconds": 1.0, "tensors": dict(good)}, written)
    assert not ok.get("wrong_bytes") and "tensors" not in ok
    name = next(iter(written))
    changed = dict(good, **{name: "0" * 64})
    assert models.check_model_run({"key": "transformers", "tensors": changed}, written)["wrong_bytes"]
    missing = {k: v for k, v in good.items() if k != name}
    assert models.check_model_run({"key": "transformers", "tensors": missing}, written)["wrong_bytes"]
    extra = dict(good, **{"lm_head.bias": "1" * 64})
    assert models.check_model_run({"key": "transformers", "tensors": extra}, written)["wrong_bytes"]
    unpatched = models.check_model_run({"key": "transformers-patched", "tensors": dict(good), "patch_calls": {}},
                                       written)
    assert "served no file" in unpatched["error"]
    mapped = models.check_model_run({"key": "diffusers-patched", "tensors": dict(good), "patch_calls": {"mapped": 1}},
                                    written)
    assert "error" not in mapped

    paths = models.shard_paths(root, records[4])
    expected = loaders.file_checksum(paths)
    n = len(written)
    assert not models.check_state_dict_run({"checksum": f"{expected:016x}", "ntensors": n}, expected, n).get("wrong_bytes")
    off = (expected + 1) % (1 << 64)
    assert models.check_state_dict_run({"checksum": f"{off:016x}", "ntensors": n}, expected, n)["wrong_bytes"]
    assert models.check_state_dict_run({"checksum": f"{expected:016x}", "ntensors": n - 1}, expected, n)["wrong_bytes"]
    entry = runner.Entry("loader", "x", "x", runs=[{"seconds": 1.0, "wrong_bytes": True}])
    assert runner.summarize(entry)["status"].startswith("WRONG BYTES")


def test_models_command_times_each_shard_count_and_checks_bytes(tiny_checkpoints, tmp_path, capsys):
    root, records = tiny_checkpoints
    out = tmp_path / "models.json"
    argv = ["--dir", root, "--hidden", "64", "--layers", "2", "--vocab", "1000", "--shards", "1,4",
            "--ways", "safeload-checkpoint,safetensors", "--condition", "warm", "--rounds", "1",
            "--settle", "0", "--json", str(out), "--no-progress"]
    assert models.main(argv) == 0
    text = capsys.readouterr().out
    assert "WRONG BYTES" not in text and "failed" not in text
    assert "page cache warm, 1 shard " in text and "page cache warm, 4 shards" in text
    doc = json.loads(out.read_text())
    assert [(b["condition"], b["shards"]) for b in doc["results"]] == [("warm", 1), ("warm", 4)]
    for block in doc["results"]:
        rows = {r["key"]: r for r in block["rows"]}
        assert set(rows) == {"safeload-checkpoint", "safetensors"}
        for row in rows.values():
            assert row["status"] == "ok", row
            assert row["seconds_median"] > 0 and row["nbytes"] == records[1]["total_size"]
        assert rows["safeload-checkpoint"]["time_over_load_checkpoint"] == 1.0
        for runs in block["runs"].values():
            assert [r["checksum"] for r in runs] == [doc["checkpoints"][str(block["shards"])]["checksum"]]


def test_models_table_counts_the_rounds_a_patched_way_won():
    """Pairs are the two ways' runs of the same round; a run without a time, or with wrong
    bytes, pairs with nothing."""
    def runs(*seconds):
        return [{"seconds": s} if s is not None else {"error": "failed"} for s in seconds]

    block = {"condition": "warm", "shards": 1, "runs": {
        "transformers": runs(1.5, 1.5, 1.5, 1.5, 1.5),
        "transformers-patched": runs(1.0, 2.0, 1.4, None) + [{"seconds": 1.2, "wrong_bytes": True}]}}
    assert models.rounds_faster(block, "transformers-patched") == (2, 3)
    assert models.rounds_faster(block, "transformers") is None  # not a patched way
    assert models.rounds_faster({"runs": {"transformers-patched": runs(1.0)}}, "transformers-patched") is None
    rows = [{"key": k, "label": k, "seconds_median": 1.5, "seconds_min": 1.0, "seconds_max": 2.0, "gbps_median": 1.0}
            for k in ("transformers", "transformers-patched")]
    rows[1]["time_over_shipped"] = 1.0
    doc = {"model": {"family": "llama", "hidden": 64, "layers": 2, "vocab": 1000, "tensors": 1, "tensor_bytes": 1},
           "rounds": 5, "checkpoints": {"1": {"files": [{"bytes": 1}]}}, "results": [{**block, "rows": rows}]}
    lines = models.table(doc).splitlines()
    assert lines[-1].startswith("  transformers-patched") and lines[-1].endswith("1.00  2/3 rounds")
    assert lines[-2].startswith("  transformers ") and "rounds" not in lines[-2]  # the shipped way: no count


def test_models_rounds_start_one_run_later(monkeypatch, tiny_checkpoints):
    """As in safeload bench: no (shard count, way) follows the same one every round."""
    root, records = tiny_checkpoints
    order = []

    def fake_worker(spec, timeout=None, python=None):
        order.append((len(spec["paths"]), spec["key"]))
        return {"error": "not run"}

    monkeypatch.setattr(runner, "run_worker", fake_worker)
    models.run(root, records, keys=["safeload-checkpoint", "safetensors"], conditions=["warm"], rounds=5,
               settle=0, timeout=1)
    # (shard files, way) of a round's four runs, in the order of the first round.
    expected = [(1, "safeload-checkpoint"), (1, "safetensors"), (4, "safeload-checkpoint"), (4, "safetensors")]
    assert len(order) == 5 * 4
    for r in range(5):
        assert order[4 * r:4 * r + 4] == expected[r % 4:] + expected[:r % 4]


def test_models_command_loads_a_diffusers_checkpoint_patched_and_shipped(tmp_path, capsys):
    pytest.importorskip("diffusers")
    root = str(tmp_path / "d")
    out = tmp_path / "models.json"
    argv = ["--model", "diffusers", "--dir", root, "--hidden", "64", "--layers", "1", "--shards", "2",
            "--ways", "diffusers,diffusers-patched,diffusers-autopatch", "--condition", "warm", "--rounds", "1",
            "--settle", "0", "--json", str(out), "--no-progress"]
    assert models.main(argv) == 0
    text = capsys.readouterr().out
    assert "WRONG BYTES" not in text and "failed" not in text, text
    assert sorted(os.listdir(os.path.join(root, "shards-2")))[:2] == [
        "config.json", "diffusion_pytorch_model-00001-of-00002.safetensors"]
    assert os.path.exists(os.path.join(root, "shards-2", "diffusion_pytorch_model.safetensors.index.json"))
    doc = json.loads(out.read_text())
    for block in doc["results"]:
        rows = {r["key"]: r for r in block["rows"]}
        assert set(rows) == {"diffusers", "diffusers-patched", "diffusers-autopatch"}
        assert all(r["status"] == "ok" for r in rows.values()), rows
        # The patched way's time over the shipped way's, from the same run's medians.
        for way in ("diffusers-patched", "diffusers-autopatch"):
            assert rows[way]["time_over_shipped"] == pytest.approx(
                rows[way]["seconds_median"] / rows["diffusers"]["seconds_median"])
            calls = block["runs"][way][0]["patch_calls"]
            assert calls.get("tensors") or calls.get("mapped"), calls


def test_safe_open_bench_counts_what_each_caller_reads(tmp_path, capsys):
    from safeload.bench import partial

    path = str(model.ensure_file(16 << 20, tmp_path))
    chosen = partial.targets(path)
    expected = partial._expected_checksums(path, chosen)
    doc = partial.run(path, conditions=["warm"], rounds=1, settle=0, timeout=300, interpreters={})
    rows = {(r["task"], r["key"]): r for r in doc["rows"]}
    assert {t for t, _ in rows} == set(partial.TASKS)
    for (task, key), r in rows.items():
        assert "error" not in r, r
        assert r["asked_bytes"] == chosen[task]["nbytes"]
    assert rows[("every tensor", "safeload")]["report"]["read_ahead"]
    assert not rows[("one tensor", "safeload")]["report"]["read_ahead"]
    # The checksums each run is checked against come from the file's bytes; a caller given
    # the wrong slice would be reported as wrong.
    assert len(set(expected.values())) == len(expected)
    print(partial.table(doc))
    assert "quarter of columns" in capsys.readouterr().out


def test_warm_states_each_have_their_own_new_memory_probe(tiny_file):
    """Beyond the resident state, a block times the loaders against the every-core first write
    taken in the same state; the idle state's runs each wait the idle time, then take turns."""
    doc = runner.run([tiny_file], devices=["cpu"], conditions=["warm"], rounds=1, loader_keys=["safeload-fast"],
                     timeout=120, states=["freed", "idle"], idle=1.0)
    blocks = {b["state"]: b for b in doc["results"]}
    assert set(blocks) == {"freed", "idle"}
    for block in blocks.values():
        assert [r["key"] for r in block["rows"]] == ["safeload-fast", "fresh"]
        assert all(r["status"] == "ok" for r in block["rows"]), block["rows"]
        (way,) = block["rows"][1]["methods_gbps_median"]
        assert way.startswith("memset x"), way
        assert block["state_label"] in report.table(doc)
    runs = sorted((r for rs in blocks["idle"]["runs"].values() for r in rs), key=lambda r: r["clock_started_at"])
    assert len(runs) == 2
    for r in runs:
        assert r["clock_started_at"] - r["waiting_since"] >= 1.0
    assert runs[1]["clock_started_at"] >= runs[0]["clock_stopped_at"]


def test_a_gated_worker_starts_its_clock_only_when_let_go(tiny_file):
    spec = {"kind": "loader", "key": "safeload-fast", "paths": [tiny_file], "device": "cpu", "condition": "warm",
            "threads": None, "nbytes": os.path.getsize(tiny_file), "settle": 0.1, "gate": True}
    proc = runner.start_worker(spec)
    time.sleep(5.0)  # far longer than the worker's start and settle
    let_go = time.time()
    result = runner.finish_child(proc, 120)
    assert "error" not in result, result
    assert result["clock_started_at"] >= let_go


def _processes_naming(text: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="lists processes through /proc")
def test_ctrl_c_ends_the_benchmark_and_its_waiting_workers(smallest_measurable_file):
    import signal
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "safeload", "bench", smallest_measurable_file, "--rounds", "1", "--condition", "warm",
           "--state", "idle", "--idle", "60", "--loaders", "safeload-fast", "--no-progress"]
    # Started with SIGINT at its default whatever this process ignores, as from a terminal.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while len(_processes_naming(smallest_measurable_file)) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)  # the command and its two idle workers (the loader and the probe)
        assert len(_processes_naming(smallest_measurable_file)) >= 3
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    time.sleep(0.5)
    assert _processes_naming(smallest_measurable_file) == []


def test_results_name_paths_relative_to_the_working_or_home_directory(tmp_path, monkeypatch):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert report.shown_path(str(tmp_path / "work" / "build" / "python")) == os.path.join("build", "python")
    assert report.shown_path(str(tmp_path / "home" / ".cache" / "f")) == os.path.join("~", ".cache", "f")
    assert report.shown_path(str(tmp_path / "other" / "f")) == str(tmp_path / "other" / "f")
