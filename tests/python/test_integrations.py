"""transformers, diffusers and accelerate load through safeload under
safeload.patch(): same state dict and outputs as without it, and proof that
safeload served the reads, both ways it serves them: reading (as for a cold
file), and handing a warm file to upstream's mapping. Models are built from
configs here, never downloaded."""
from __future__ import annotations

import sys

import pytest
import torch

import safeload


@pytest.fixture(params=["read", "preloaded", "mapped"])
def serving(request, monkeypatch):
    """How the patch serves the files: "read" by safeload (the mapping decision made to say
    no, as for a cold file); "preloaded" the same, and from_pretrained's checkpoint read from
    the start (the residency check made to say cold); "mapped" as decided (the files were
    just written: warm)."""
    patching = sys.modules["safeload.patch"]
    if request.param in ("read", "preloaded"):
        monkeypatch.setattr(patching, "_mapping_serves", lambda *args: False)
    if request.param == "preloaded":
        monkeypatch.setattr(patching, "_to_read", lambda files: files)
    return request.param


def check_served(calls: dict, files: int, serving: str, at_least: bool = False, preloads: int = 1) -> None:
    """Every file went through the patch, read by safeload or mapped, as ``serving`` says; with
    "preloaded", from ``preloads`` preloads (one per from_pretrained call), and nothing left
    offered after."""
    read = calls.get("load_file", 0) + calls.get("safe_open", 0)
    served, other = (calls.get("mapped", 0), read) if serving == "mapped" else (read, calls.get("mapped", 0))
    assert (served >= files if at_least else served == files) and other == 0, calls
    assert calls.get("preloaded", 0) == (preloads if serving == "preloaded" else 0), calls
    assert not sys.modules["safeload.safe_open"]._preloads


def same_state(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].stride() == b[k].stride(), k
        assert torch.equal(a[k].view(torch.uint8) if a[k].element_size() == 1 else a[k],
                           b[k].view(torch.uint8) if b[k].element_size() == 1 else b[k]), k


@pytest.mark.parametrize("tied", [True, False])
def test_transformers_llama_sharded(tmp_path, tied, serving):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=2,
                                      tie_word_embeddings=tied)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(tmp_path, max_shard_size="60KB")
    shards = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert len(shards) > 2 and (tmp_path / "model.safetensors.index.json").exists()
    ids = torch.randint(0, 320, (1, 12), generator=torch.Generator().manual_seed(1))

    plain = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    with safeload.patch() as p:
        routed = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, device_map="cpu").eval()
    check_served(p.calls, len(shards), serving)
    if serving != "mapped":
        assert p.calls.get("tensors", 0) >= len(routed.state_dict()) - (1 if tied else 0)
    same_state(routed.state_dict(), plain.state_dict())
    same_state(routed.state_dict(), model.state_dict())
    with torch.no_grad():
        assert torch.equal(routed(ids).logits, plain(ids).logits)
    if tied:
        assert routed.lm_head.weight.data_ptr() == routed.model.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize("shard", [None, "40KB"])
def test_diffusers_models(tmp_path, shard, serving):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    models = {
        "unet": diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                      block_out_channels=(16, 32), norm_num_groups=8,
                                      down_block_types=("DownBlock2D", "DownBlock2D"),
                                      up_block_types=("UpBlock2D", "UpBlock2D")),
        "vae": diffusers.AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(16, 32),
                                       down_block_types=("DownEncoderBlock2D",) * 2,
                                       up_block_types=("UpDecoderBlock2D",) * 2,
                                       latent_channels=4, norm_num_groups=8, sample_size=8),
    }
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    for name, model in models.items():
        where = tmp_path / name
        kwargs = {"max_shard_size": shard} if shard else {}
        model.save_pretrained(where, **kwargs)
        cls = type(model)
        plain = cls.from_pretrained(where).eval()
        with safeload.patch() as p:
            routed = cls.from_pretrained(where).eval()
        check_served(p.calls, len(list(where.glob("*.safetensors"))), serving)
        same_state(routed.state_dict(), plain.state_dict())
        # Upstream's tensors map the file, so their addresses keep the file's
        # 8-byte alignment; safeload's come from torch's allocator (64-byte).
        # CPU convolution kernels round differently with the two (last-bit
        # differences), so the bitwise oracle is the plain model with its
        # parameters copied into torch-allocated memory; the plain model
        # itself must agree to float tolerance.
        aligned = cls.from_pretrained(where).eval()
        with torch.no_grad():
            for param in aligned.parameters():
                param.data = param.data.clone()
            run = (lambda m: m(x, 3).sample) if name == "unet" else \
                (lambda m: m(x, sample_posterior=False).sample)
            got = run(routed)
            if serving == "mapped":  # upstream's own tensors, alignment and all
                assert torch.equal(got, run(plain))
            else:
                assert torch.equal(got, run(aligned))
                torch.testing.assert_close(got, run(plain))


def test_accelerate_load_checkpoint_in_model(tmp_path, serving):
    accelerate = pytest.importorskip("accelerate")
    from accelerate.utils import load_checkpoint_in_model
    from huggingface_hub import save_torch_state_dict

    torch.manual_seed(0)
    source = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64))
    save_torch_state_dict(source.state_dict(), tmp_path, max_shard_size="20KB")
    index = tmp_path / "model.safetensors.index.json"
    assert index.exists()

    def fresh():
        with accelerate.init_empty_weights():
            return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64))

    plain = fresh()
    load_checkpoint_in_model(plain, str(index), device_map={"": "cpu"})
    with safeload.patch() as p:
        routed = fresh()
        load_checkpoint_in_model(routed, str(index), device_map={"": "cpu"})
    # Not through from_pretrained: nothing is preloaded.
    check_served(p.calls, len(list(tmp_path.glob("*.safetensors"))), serving, at_least=True, preloads=0)
    same_state(routed.state_dict(), plain.state_dict())
    same_state(routed.state_dict(), source.state_dict())
