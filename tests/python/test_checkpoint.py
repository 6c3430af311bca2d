"""safeload.load_checkpoint on checkpoints written by huggingface_hub and
transformers, against upstream's per-shard load_file; and every index or
shard defect raising the contract's error with nothing returned."""
from __future__ import annotations

import io
import json
import os

import pytest
import torch

import safeload

safetensors_torch = pytest.importorskip("safetensors.torch")
upstream_load_file = safetensors_torch.load_file  # captured before any patch()


def per_shard(directory) -> dict:
    """The oracle: upstream load_file on each shard the index names, in the
    index's shard order (sorted file names, as writers number them)."""
    index = json.load(open(os.path.join(directory, "model.safetensors.index.json")))
    out = {}
    for shard in sorted(set(index["weight_map"].values())):
        out.update(upstream_load_file(os.path.join(directory, shard)))
    return out


def assert_same(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for k, w in want.items():
        g = got[k]
        assert g.dtype == w.dtype and g.shape == w.shape, k
        assert torch.equal(g.reshape(-1).view(torch.uint8), w.contiguous().reshape(-1).view(torch.uint8)), k


def state_dict():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(256, 64, generator=g).to(torch.bfloat16)
    sd = {"embed.weight": emb, "lm_head.weight": emb,  # tied: one storage, two names
          "norm.weight": torch.ones(64, dtype=torch.bfloat16),
          "scale": torch.tensor(0.5)}
    for i in range(4):
        sd[f"layers.{i}.fp8"] = torch.randn(128, 64, generator=g).to(torch.float8_e4m3fn)
        sd[f"layers.{i}.bf16"] = torch.randn(64, 128, generator=g).to(torch.bfloat16)
        sd[f"layers.{i}.i32"] = torch.arange(100, dtype=torch.int32) * i
    return sd


@pytest.fixture
def hub_checkpoint(tmp_path):
    from huggingface_hub import save_torch_state_dict

    save_torch_state_dict(state_dict(), tmp_path, max_shard_size="40KB")
    assert len(list(tmp_path.glob("*.safetensors"))) > 2
    return tmp_path


@pytest.mark.parametrize("form", ["directory", "index", "list"])
def test_hub_checkpoint_matches_upstream_per_shard(hub_checkpoint, form):
    index = hub_checkpoint / "model.safetensors.index.json"
    src = {"directory": hub_checkpoint, "index": index,
           "list": sorted(str(p) for p in hub_checkpoint.glob("*.safetensors"))}[form]
    assert_same(safeload.load_checkpoint(src, progress=False), per_shard(hub_checkpoint))


def test_transformers_checkpoint_matches_upstream_per_shard(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(tmp_path, max_shard_size="20KB")
    assert len(list(tmp_path.glob("*.safetensors"))) > 2
    assert_same(safeload.load_checkpoint(tmp_path), per_shard(tmp_path))


def test_single_file_is_a_checkpoint(tmp_path):
    path = tmp_path / "one.safetensors"
    safetensors_torch.save_file({"a": torch.ones(3), "b": torch.zeros(2)}, str(path))
    assert_same(safeload.load_checkpoint(path), upstream_load_file(str(path)))


# -- defects --------------------------------------------------------------------

def _rewrite_index(directory, change):
    path = directory / "model.safetensors.index.json"
    index = json.load(open(path))
    change(index["weight_map"])
    path.write_text(json.dumps(index))


def _shards(directory):
    return sorted(p.name for p in directory.glob("*.safetensors"))


def test_index_names_a_tensor_its_shard_lacks(hub_checkpoint):
    shards = _shards(hub_checkpoint)
    _rewrite_index(hub_checkpoint, lambda m: m.__setitem__("scale", next(s for s in shards if s != m["scale"])))
    with pytest.raises(safeload.SafetensorError) as e:
        safeload.load_checkpoint(hub_checkpoint)
    assert e.value.code == "INVALID_INDEX" and "scale" in str(e.value)


def test_index_names_a_tensor_no_shard_has(hub_checkpoint):
    _rewrite_index(hub_checkpoint, lambda m: m.__setitem__("ghost", m["scale"]))
    with pytest.raises(safeload.SafetensorError) as e:
        safeload.load_checkpoint(hub_checkpoint)
    assert e.value.code == "INVALID_INDEX" and "ghost" in str(e.value)


def test_shard_holds_a_tensor_the_index_omits(hub_checkpoint):
    _rewrite_index(hub_checkpoint, lambda m: m.pop("scale"))
    with pytest.raises(safeload.SafetensorError) as e:
        safeload.load_checkpoint(hub_checkpoint)
    assert e.value.code == "INVALID_INDEX" and "scale" in str(e.value)


def test_tensor_in_two_shards(tmp_path):
    safetensors_torch.save_file({"a": torch.ones(2), "b": torch.ones(2)}, str(tmp_path / "x-1.safetensors"))
    safetensors_torch.save_file({"b": torch.ones(2), "c": torch.ones(2)}, str(tmp_path / "x-2.safetensors"))
    with pytest.raises(safeload.SafetensorError) as e:
        safeload.load_checkpoint(tmp_path)  # no index: every .safetensors file
    assert e.value.code == "DUPLICATE_NAME"
    assert "x-1.safetensors" in str(e.value) and "x-2.safetensors" in str(e.value)


def test_missing_shard(hub_checkpoint):
    victim = _shards(hub_checkpoint)[1]
    os.remove(hub_checkpoint / victim)
    with pytest.raises(FileNotFoundError) as e:
        safeload.load_checkpoint(hub_checkpoint)
    assert victim in str(e.value)


@pytest.mark.parametrize("defect", ["truncated", "malformed"])
def test_broken_shard(hub_checkpoint, defect):
    victim = hub_checkpoint / _shards(hub_checkpoint)[-1]
    data = victim.read_bytes()
    victim.write_bytes(data[:-7] if defect == "truncated" else b"\xff" * 8 + data[8:])
    with pytest.raises(safeload.SafetensorError) as e:
        safeload.load_checkpoint(hub_checkpoint)
    assert e.value.code == ("METADATA_INCOMPLETE_BUFFER" if defect == "truncated" else "HEADER_TOO_LARGE")
    assert victim.name in str(e.value)


def test_empty_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        safeload.load_checkpoint(tmp_path)


# -- progress -------------------------------------------------------------------

def test_progress_callable_sees_every_byte(hub_checkpoint):
    seen = []
    safeload.load_checkpoint(hub_checkpoint, progress=lambda done, total: seen.append((done, total)))
    total = sum(safeload.read_header(p)["data_length"] for p in hub_checkpoint.glob("*.safetensors"))
    assert seen and seen[-1] == (total, total)
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))


def test_progress_bar():
    from safeload._progress import ProgressBar, resolve

    out = io.StringIO()
    bar = ProgressBar("loading", out)
    bar(0, 100)
    bar(100, 100)
    assert out.getvalue().endswith("\n") and "100%" in out.getvalue()
    assert resolve(False) is None
    assert resolve(None, stream=io.StringIO()) is None  # not a terminal: silent
    quiet = ProgressBar("loading", io.StringIO(), always=False)
    quiet(10, 100)
    quiet(100, 100)  # short and small: nothing drawn
    assert not quiet.shown
    with pytest.raises(TypeError):
        resolve("yes")
