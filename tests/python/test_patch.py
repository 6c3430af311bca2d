"""safeload.patch(): what it routes, where, and that unpatch restores exactly."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import types

import pytest
import torch

import safeload

patching = sys.modules["safeload.patch"]  # the module; safeload.patch is the function

safetensors = pytest.importorskip("safetensors")
import safetensors.torch  # noqa: E402

ORIGINAL = {"safe_open": safetensors.safe_open, "load_file": safetensors.torch.load_file,
            "load": safetensors.torch.load, "load_model": safetensors.torch.load_model}


@pytest.fixture
def saved(tmp_path):
    tensors = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(3)}
    path = str(tmp_path / "m.safetensors")
    safetensors.torch.save_file(tensors, path)
    yield path, tensors
    safeload.unpatch()


ORIGINAL_CODE = {name: ORIGINAL[name].__code__ for name in ("load_file", "load")}


def _served_by_safeload(open_call, load_file_call, path, tensors) -> bool:
    """Whether these two callables, whatever names they are bound to, reached safeload (with
    backend="pread", which safeload reads rather than maps); the tensors are the writer's."""
    with open_call(path, framework="pt", backend="pread") as f:
        by_safeload = isinstance(f, safeload.safe_open)
        assert by_safeload == (type(f) is not ORIGINAL["safe_open"])
        assert torch.equal(f.get_tensor("w"), tensors["w"])
    before = patching.calls().get("load_file", 0)
    assert torch.equal(load_file_call(path, backend="pread")["b"], tensors["b"])
    assert (patching.calls().get("load_file", 0) > before) == by_safeload
    return by_safeload


def test_routes_and_restores(saved):
    path, tensors = saved
    model_path = path + ".model.safetensors"
    safetensors.torch.save_file({"weight": tensors["w"], "bias": tensors["w"][0, :2].clone()}, model_path)
    with safeload.patch() as p:
        assert patching.is_patched()
        # The objects are routed, not the names: every name still is upstream's object.
        assert safetensors.safe_open is ORIGINAL["safe_open"]
        assert safetensors.torch.load_file is ORIGINAL["load_file"]
        assert _served_by_safeload(safetensors.safe_open, safetensors.torch.load_file, path, tensors)
        assert torch.equal(safetensors.torch.load(open(path, "rb").read())["w"], tensors["w"])
        model = torch.nn.Linear(3, 2)
        safetensors.torch.load_model(model, model_path)  # calls the patched load_file
        assert torch.equal(model.weight, tensors["w"]) and torch.equal(model.bias, tensors["w"][0, :2])
        # Other frameworks still reach upstream.
        with safetensors.safe_open(path, framework="numpy") as f:
            assert type(f) is ORIGINAL["safe_open"]
    assert p.calls == {"safe_open": 1, "tensors": 5, "load_file": 1, "load": 1, "mapped": 1}
    assert not patching.is_patched()
    assert {name: ORIGINAL[name].__code__ for name in ORIGINAL_CODE} == ORIGINAL_CODE
    assert not _served_by_safeload(safetensors.safe_open, safetensors.torch.load_file, path, tensors)
    served = patching.calls()
    safetensors.torch.load_model(model, model_path)  # upstream's own again, calls included
    safetensors.torch.load(open(path, "rb").read())
    assert patching.calls() == served


def test_every_name_bound_anywhere_is_routed(saved):
    """Names bound before or during the patch, in any module (one under torch's package name
    too), as class attributes or in closures, and a module replaced in sys.modules: while
    patched each call reaches safeload, and upstream again after."""
    path, tensors = saved
    early = types.ModuleType("torch.safeload_test_early")  # like `from safetensors import safe_open`
    early.so, early.lf = safetensors.safe_open, safetensors.torch.load_file
    sys.modules[early.__name__] = early

    class Holder:
        so, lf = safetensors.safe_open, safetensors.torch.load_file

    def closure(so=safetensors.safe_open, lf=safetensors.torch.load_file):
        return lambda: (so, lf)

    holders = [(early.so, early.lf), (Holder.so, Holder.lf), closure()()]
    try:
        with safeload.patch():
            late = types.ModuleType("safeload_test_late")
            late.so, late.lf = safetensors.safe_open, safetensors.torch.load_file
            sys.modules[early.__name__] = late  # another namespace under the same name
            for so, lf in holders + [(late.so, late.lf), (safetensors.torch.safe_open, safetensors.torch.load_file)]:
                assert _served_by_safeload(so, lf, path, tensors)
        for so, lf in holders + [(late.so, late.lf)]:
            assert not _served_by_safeload(so, lf, path, tensors)
    finally:
        sys.modules.pop(early.__name__, None)


def test_the_routed_constructor_keeps_upstreams_object_model(saved):
    """While patched, upstream's class still makes its own objects where upstream serves
    (another framework), through its __new__ too, and raises its own errors; unpatched, its
    constructor is its own again."""
    path, _ = saved
    upstream = ORIGINAL["safe_open"]
    bad = path + ".bad"
    with open(bad, "wb") as f:
        f.write(b"\x05\x00\x00\x00\x00\x00\x00\x00{}")

    def errors():
        raised = []
        for target in (bad, path + ".missing"):
            with pytest.raises(Exception) as e:
                upstream(target, framework="numpy")
            raised.append((type(e.value), str(e.value)))
        return raised

    unpatched = errors()
    assert unpatched[0][0] is safetensors.SafetensorError
    with safeload.patch():
        handle = upstream.__new__(upstream, path, framework="numpy")
        assert type(handle) is upstream and handle.keys() == ["b", "w"]
        assert errors() == unpatched
        assert isinstance(upstream.__new__(upstream, path, "pt", backend="pread"), safeload.safe_open)
    assert type(upstream.__new__(upstream, path, "pt", backend="pread")) is upstream


def evict_or_skip(path: str) -> None:
    """Evicts ``path`` from the page cache; skips the test where it stays there."""
    from safeload.bench import cache

    for _ in range(2):
        cache.evict(path)
        if cache.resident_fraction(path) in (0.0, None):
            return
    pytest.skip(f"{path} stays in the page cache here")


def _kernel_counts_cached_pages() -> bool:
    """Whether this kernel answers cachestat(2) (Linux 6.5+; x86-64 and arm64 here)."""
    import ctypes
    import platform

    if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "aarch64"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(__file__, os.O_RDONLY)
    try:
        span, out = (ctypes.c_uint64 * 2)(0, 1), (ctypes.c_uint64 * 5)()
        return libc.syscall(451, fd, span, out, 0) == 0
    finally:
        os.close(fd)


@pytest.mark.skipif(not _kernel_counts_cached_pages(), reason="the kernel has no cachestat(2): safeload samples")
def test_a_files_cached_fraction_is_counted_not_sampled(tmp_path_factory):
    """The whole-file fraction the patch weighs (map or read) is the page cache's count, page
    for page as mincore over every page of the file reports it (the bench's own ctypes
    reader, the oracle), not an estimate from sampled pages."""
    from helpers import evictable_dir
    from safeload import _C
    from safeload.bench import cache

    path = os.path.join(evictable_dir(tmp_path_factory, "fraction"), "f.bin")
    pages = 1024
    with open(path, "wb") as f:
        f.write(os.urandom(pages * 4096))
    evict_or_skip(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # what is read and no more
        os.pread(fd, 300 * 4096, 0)
    finally:
        os.close(fd)
    oracle = cache.resident_fraction(path)
    if oracle is None or not 0.25 < oracle < 0.5:
        pytest.skip(f"the page cache holds {oracle} of the file after reading 300 of its {pages} pages")
    (counted,) = _C.cached_fractions([os.fsencode(path)])
    assert abs(counted - oracle) <= 2 / pages, (counted, oracle)


def test_a_warm_file_is_mapped_and_a_cold_one_read(tmp_path_factory):
    """Under the default backend on the CPU, a file the page cache holds is served by upstream
    (a mapping: safeload's reading would be slower) and counted as mapped; a cold one, another
    backend, or safeload's own options are read by safeload. The tensors are the writer's."""
    from helpers import evictable_dir

    path = os.path.join(evictable_dir(tmp_path_factory, "patch"), "m.safetensors")
    tensors = {"w": torch.arange(1 << 16, dtype=torch.float32), "b": torch.ones(3)}
    safetensors.torch.save_file(tensors, path)
    with safeload.patch() as p:
        safetensors.torch.load_file(path)  # warm now, whatever it was
        with safetensors.safe_open(path, framework="pt") as f:
            assert not isinstance(f, safeload.safe_open)
            assert torch.equal(f.get_tensor("w"), tensors["w"])
        assert torch.equal(safetensors.torch.load_file(path)["w"], tensors["w"])
        with safetensors.safe_open(path, framework="pt", threads=1) as f:  # safeload's option
            assert isinstance(f, safeload.safe_open)
        evict_or_skip(path)
        with safetensors.safe_open(path, framework="pt") as f:
            assert isinstance(f, safeload.safe_open)
            assert torch.equal(f.get_tensor("w"), tensors["w"])
    assert p.calls["mapped"] >= 3 and p.calls["safe_open"] == 2


def test_nesting_and_plain_calls(saved):
    outer = safeload.patch()
    with safeload.patch():
        assert patching.is_patched()
    assert patching.is_patched()  # the outer plain call is still in force
    patched = safetensors.torch.load_file.__code__
    assert patched is not ORIGINAL_CODE["load_file"]
    safeload.patch()
    assert safetensors.torch.load_file.__code__ is patched  # patching twice does not wrap twice
    assert safeload.unpatch() is True  # undoes every patch in force
    assert safetensors.torch.load_file.__code__ is ORIGINAL_CODE["load_file"]
    assert safeload.unpatch() is False
    outer.release()  # a handle from before unpatch() releases nothing later
    with safeload.patch():
        outer.release()
        assert patching.is_patched()
    assert not patching.is_patched()


def test_errors_keep_upstream_classes(saved, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{}")
    with safeload.patch():
        for call in (lambda: safetensors.torch.load_file(str(bad)),
                     lambda: safetensors.safe_open(str(bad), framework="pt"),
                     lambda: safetensors.torch.load(bad.read_bytes())):
            with pytest.raises(safetensors.SafetensorError):
                call()
        with pytest.raises(safetensors.SafetensorError):  # upstream refuses an unknown backend too
            safetensors.torch.load_file(saved[0], backend="nonsense")


PTH = os.path.join(os.path.dirname(safeload.__file__), "safeload-autopatch.pth")


def child_env(**variables) -> dict:
    """This environment for a child Python, safeload's directory first on its path."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(safeload.__file__))]
                                                       + sys.path), **variables)
CHILD = """
import site, sys
site.addsitedir(sys.argv[1])
print("torch" in sys.modules, "safeload" in sys.modules)
if sys.argv[2] == "safeload first":  # the package imported before safetensors.torch
    import safeload
import safetensors.torch
print(safetensors.torch.load_file.__code__.co_filename.endswith("patch.py"))
"""


@pytest.mark.parametrize("value,patched,order", [("1", True, ""), ("0", False, ""), ("", False, ""),
                                                  ("1", True, "safeload first")])
def test_environment_variable_through_pth(tmp_path, value, patched, order):
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    (site_dir / "safeload-autopatch.pth").write_text(open(PTH).read())
    env = child_env(SAFELOAD_PATCH=value)
    out = subprocess.run([sys.executable, "-c", CHILD, str(site_dir), order], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.split("\n")[:2]
    assert first == "False False"  # the hook imports neither torch nor safeload at start
    assert second == ("True" if patched else "False"), out.stdout + out.stderr


WRAPPED_CHILD = """
import site, sys
site.addsitedir(sys.argv[1])
import transformers.modeling_utils as m  # imports safetensors.torch before it defines PreTrainedModel
print(getattr(m.PreTrainedModel.from_pretrained.__func__, "__safeload_patch__", False))
"""


def test_environment_variable_wraps_from_pretrained(tmp_path):
    """SAFELOAD_PATCH=1 patches while transformers' model module runs, before it defines
    from_pretrained: the hook has the patch wrap it once the module is done."""
    from safeload import _autopatch

    assert set(_autopatch.WATCHED) == {entry[0] for entry in patching._FROM_PRETRAINED}
    pytest.importorskip("transformers")
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    (site_dir / "safeload-autopatch.pth").write_text(open(PTH).read())
    env = child_env(SAFELOAD_PATCH="1")
    out = subprocess.run([sys.executable, "-c", WRAPPED_CHILD, str(site_dir)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True"], out.stdout + out.stderr


def _rchar() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar"))


@pytest.fixture
def cold(monkeypatch):
    """The patch's residency checks made to say cold: safeload reads every file, and
    from_pretrained's checkpoint is preloaded."""
    monkeypatch.setattr(patching, "_mapping_serves", lambda *args: False)
    monkeypatch.setattr(patching, "_to_read", lambda files: files)
    yield
    safeload.unpatch()


def _check_read_once(tmp_path, load, state: dict) -> dict:
    """Runs ``load`` under patch(); every shard's bytes passed through read calls once (the
    kernel's count: a handle that read its file again would double it), the result is the
    writer's ``state``, and the preload is gone after. Returns the patch's calls."""
    files = sum(p.stat().st_size for p in tmp_path.rglob("*.safetensors"))
    before = _rchar()
    with safeload.patch() as p:
        loaded = load()
    read = _rchar() - before
    assert files <= read < files * 1.3, f"read {read} bytes through read calls for {files} bytes of shards"
    got = loaded.state_dict()
    assert list(got) == list(state)
    assert all(torch.equal(got[k], state[k]) for k in state)
    assert not sys.modules["safeload.safe_open"]._preloads
    return p.calls


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux /proc/self/io")
def test_from_pretrained_reads_a_cold_checkpoint_once_from_the_start(tmp_path, cold):
    transformers = pytest.importorskip("transformers")
    state, shards = _small_llama(tmp_path)
    calls = _check_read_once(tmp_path, lambda: transformers.AutoModelForCausalLM.from_pretrained(tmp_path), state)
    assert calls["preloaded"] == 1 and calls["safe_open"] == len(shards), calls


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux /proc/self/io")
def test_diffusers_from_pretrained_reads_a_cold_checkpoint_once_from_the_start(tmp_path, cold):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    model = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                  block_out_channels=(64, 128), norm_num_groups=8,
                                  down_block_types=("DownBlock2D", "DownBlock2D"),
                                  up_block_types=("UpBlock2D", "UpBlock2D"))
    model.save_pretrained(tmp_path / "unet", max_shard_size="1MB")
    shards = list(tmp_path.rglob("*.safetensors"))
    assert len(shards) > 2
    calls = _check_read_once(tmp_path, lambda: diffusers.UNet2DModel.from_pretrained(tmp_path, subfolder="unet"),
                             model.state_dict())
    assert calls["preloaded"] == 1 and calls["load_file"] == len(shards), calls


def _small_llama(directory) -> tuple:
    """A small Llama saved as several shards in ``directory``: (its state dict, the shards)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=4000, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(directory, max_shard_size="1MB")
    shards = sorted(str(p) for p in pathlib.Path(directory).glob("*.safetensors"))
    assert len(shards) > 2
    return model.state_dict(), shards


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux /proc/self/io")
def test_from_pretrained_preloads_only_the_shards_not_in_the_page_cache(tmp_path_factory):
    """One shard evicted, the others warm: that shard alone is read (once, from the start),
    the others are mapped as upstream maps them, and the model is the writer's."""
    from helpers import evictable_dir
    from safeload.bench import cache

    transformers = pytest.importorskip("transformers")
    directory = evictable_dir(tmp_path_factory, "preload-part")
    state, shards = _small_llama(directory)
    cold_one = shards[1]
    for path in shards:
        with open(path, "rb") as f:
            f.read()
    evict_or_skip(cold_one)
    if min(cache.resident_fraction(p) or 0.0 for p in shards if p != cold_one) < 1.0:
        pytest.skip("the warm shards left the page cache here")
    before = _rchar()
    try:
        with safeload.patch() as p:
            loaded = transformers.AutoModelForCausalLM.from_pretrained(directory)
    finally:
        safeload.unpatch()
    read = _rchar() - before
    size = os.path.getsize(cold_one)
    assert size <= read < size * 1.3 + (1 << 20), f"read {read} bytes through read calls; the cold shard has {size}"
    assert p.calls.get("preloaded") == 1 and p.calls.get("safe_open") == 1, p.calls
    assert p.calls.get("mapped") == len(shards) - 1, p.calls
    got = loaded.state_dict()
    assert list(got) == list(state) and all(torch.equal(got[k], state[k]) for k in state)
    assert not sys.modules["safeload.safe_open"]._preloads


def test_from_pretrained_measures_a_warm_checkpoint_once(tmp_path, monkeypatch):
    """The page-cache residency of a warm checkpoint's shards is measured once, by the
    from_pretrained wrapper; the library's safe_open calls reuse what it found, and the
    finding ends with the call."""
    from safeload import _C

    transformers = pytest.importorskip("transformers")
    state, shards = _small_llama(tmp_path)
    for path in shards:
        with open(path, "rb") as f:
            f.read()
    measured = []

    def fractions(paths):
        measured.append(len(paths))
        return [1.0] * len(paths)  # as found in the page cache, whatever this machine keeps

    monkeypatch.setattr(_C, "cached_fractions", fractions)
    try:
        with safeload.patch() as p:
            loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    finally:
        safeload.unpatch()
    assert measured == [len(shards)], measured
    assert p.calls.get("mapped") == len(shards) and "preloaded" not in p.calls, p.calls
    assert not patching._found_mapped
    got = loaded.state_dict()
    assert all(torch.equal(got[k], state[k]) for k in state)


def test_a_preloaded_shard_is_taken_even_where_mapping_would_serve(tmp_path, monkeypatch):
    """The patched safe_open takes a file the preload offers before asking whether mapping
    would serve it: a preload is never read in vain beside a mapping of the same file."""
    transformers = pytest.importorskip("transformers")
    state, shards = _small_llama(tmp_path)
    monkeypatch.setattr(patching, "_to_read", lambda files: files)
    monkeypatch.setattr(patching, "_mapping_serves", lambda *args: True)
    try:
        with safeload.patch() as p:
            loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    finally:
        safeload.unpatch()
    assert p.calls.get("preloaded") == 1 and p.calls.get("safe_open") == len(shards), p.calls
    got = loaded.state_dict()
    assert all(torch.equal(got[k], state[k]) for k in state)


def test_which_from_pretrained_calls_are_preloaded(tmp_path):
    """A local checkpoint under the library's own names, for the CPU, read as usual; nothing
    for a hub name, another device, a variant or other files."""
    single, index = "model.safetensors", "model.safetensors.index.json"
    (tmp_path / "sub").mkdir()
    (tmp_path / single).write_bytes(b"")
    (tmp_path / "sub" / index).write_bytes(b"")
    (tmp_path / "sub" / single).write_bytes(b"")

    def source(*args, **kwargs):
        return patching._preload_source(args, kwargs, single, index)

    assert source(tmp_path) == str(tmp_path / single)
    assert source(str(tmp_path), subfolder="sub", device_map="cpu") == str(tmp_path / "sub" / index)
    assert source(pretrained_model_name_or_path=tmp_path, dtype=torch.bfloat16) == str(tmp_path / single)
    assert source(tmp_path, device_map=torch.device("cpu")) == str(tmp_path / single)
    for kwargs in ({"device_map": "cuda"}, {"device_map": "auto"}, {"variant": "fp16"}, {"gguf_file": "m.gguf"},
                   {"use_safetensors": False}, {"disable_mmap": True}, {"state_dict": {}}, {"subfolder": "none"}):
        assert source(tmp_path, **kwargs) is None, kwargs
    assert source("org/model") is None  # a hub name: not a local directory
    assert source(tmp_path, None) is None  # more positional arguments than a path


def test_shard_files_are_those_the_core_resolves(tmp_path):
    """The wrapper reads the index with json; the shard files it names are the core resolver's
    (the oracle), and where the core refuses an index the wrapper preloads nothing."""
    import json

    from safeload import _C

    def index(weight_map, name="model.safetensors.index.json") -> str:
        path = tmp_path / name
        path.write_text(weight_map if isinstance(weight_map, str) else json.dumps({"weight_map": weight_map}))
        return str(path)

    accepted = [
        lambda: index({"a": "s-2.safetensors", "b": "s-1.safetensors", "c": "s-2.safetensors",
                       "d": "sub/s-3.safetensors"}),
        lambda: index({"x": "one.safetensors"}, "other.index.json"),
        lambda: index(json.dumps({"metadata": {"total_size": 1}, "weight_map": {"w": "./dot/w.safetensors"}})),
        lambda: str(tmp_path / "model.safetensors"),
    ]
    for write in accepted:  # each written, then read both ways, before the next overwrites it
        source = write()
        files = patching._shard_files(source)
        assert files == _C.resolve_checkpoint(os.fsencode(source))[0], source
    refused = [{"a": "/abs.safetensors"}, {"a": "../up.safetensors"}, {"a": "sub/../../up.safetensors"},
               {"a": ""}, {}, {"a": 3}, {"a": ["list"]}, "[1, 2]", '{"weight_map": []}', "{not json", "{}"]
    for weight_map in refused:
        source = index(weight_map)
        with pytest.raises(safeload.SafetensorError):
            _C.resolve_checkpoint(os.fsencode(source))
        try:
            files = patching._shard_files(source)
        except ValueError:  # not JSON: what _preload takes as "no preload"
            files = None
        assert files is None, weight_map


def test_a_warm_checkpoint_is_found_without_an_abc_check(tmp_path, monkeypatch):
    """Deciding that a warm checkpoint needs no preload, and ending that decision, ask no
    isinstance question of an abstract base class: with transformers loaded, the first such
    question of a fresh process walks every class registered under it (milliseconds, see the
    README)."""
    import abc

    from safeload import _C

    _, shards = _small_llama(tmp_path)
    monkeypatch.setattr(_C, "cached_fractions", lambda paths: [1.0] * len(paths))
    asked = []
    own = abc.ABCMeta.__instancecheck__

    def instancecheck(cls, instance):
        asked.append((cls, type(instance)))
        return own(cls, instance)

    monkeypatch.setattr(abc.ABCMeta, "__instancecheck__", instancecheck)
    end = patching._preload(str(tmp_path / "model.safetensors.index.json"))
    found = dict(patching._found_mapped)
    end()
    monkeypatch.undo()
    assert asked == []
    assert sorted(found.values()) == [1] * len(shards) and not patching._found_mapped


def test_a_preload_is_withdrawn_when_from_pretrained_raises(tmp_path, cold):
    tensors = {"w": torch.arange(1000, dtype=torch.float32)}
    safetensors.torch.save_file(tensors, str(tmp_path / "model.safetensors"))
    preloads = sys.modules["safeload.safe_open"]._preloads

    def fails(cls, path):
        assert len(preloads) == 1, "preloaded while the library builds the model"
        raise KeyboardInterrupt

    wrapped = patching._wrap_from_pretrained(fails, "model.safetensors", "model.safetensors.index.json")
    with pytest.raises(KeyboardInterrupt):
        wrapped(object, str(tmp_path))
    assert not preloads
