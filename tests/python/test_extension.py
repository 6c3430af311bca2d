"""The compiled extension and the torch it was built against."""
from __future__ import annotations

import sys
import types

import pytest
import torch

from safeload import _extension


def test_the_build_records_the_torch_it_compiled_against():
    from safeload import _build_info

    assert _build_info.TORCH_VERSION == torch.__version__.split("+")[0]
    assert _extension.torch_mismatch() is None
    assert _extension.available(_extension.load())


def test_another_torch_release_gives_a_stand_in_naming_both(monkeypatch):
    record = types.ModuleType("safeload._build_info")
    record.TORCH_VERSION = "2.0.1"
    monkeypatch.setitem(sys.modules, "safeload._build_info", record)
    loaded = _extension.load()
    assert not _extension.available(loaded)
    with pytest.raises(_extension.ExtensionMissing) as e:
        loaded.Loading
    assert "torch 2.0.1" in str(e.value) and f"torch {torch.__version__}" in str(e.value)
