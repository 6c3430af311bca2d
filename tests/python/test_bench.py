"""The benchmark's machinery on a tiny generated file: it runs, lists every loader, computes the
limits and writes its table, JSON and chart. Nothing here asserts a speed."""
from __future__ import annotations

import argparse
import json
import os

import pytest

from safeload.bench import cache, cli, limits, loaders, model, report, runner

TINY = 4 << 20


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory) -> str:
    return str(model.ensure_file(TINY, tmp_path_factory.mktemp("bench")))


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


def test_every_loader_is_listed_with_a_status():
    for loader in loaders.LOADERS:
        why = loader.unavailable("cpu")
        assert why is None or why.startswith(("not installed", "not available"))
    keys = [l.key for l in loaders.LOADERS]
    for expected in ("safeload-fast", "safeload-reference", "safetensors", "safetensors-pread",
                     "fastsafetensors", "runai-model-streamer", "instanttensor"):
        assert expected in keys


@pytest.fixture(scope="module")
def smallest_measurable_file(tmp_path_factory) -> str:
    # The command refuses files too small to time.
    return str(model.ensure_file(cli.MIN_MEASURABLE_BYTES, tmp_path_factory.mktemp("bench")))


def test_one_command_writes_table_json_and_chart(smallest_measurable_file, tmp_path, capsys):
    tiny_file = smallest_measurable_file
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    argv = [tiny_file, "--rounds", "1", "--condition", "warm", "--device", "cpu",
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
    assert block["limit_gbps"] == min(rows["memory"]["gbps_median"], rows["fresh"]["gbps_median"])
    assert doc["machine"]["cores"] >= 1 and doc["checksum"]
    if report.plot_unavailable() is None:
        assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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
