"""The package's dependencies, for scikit-build-core (pyproject.toml's
[tool.scikit-build.metadata.dependencies]): the ones listed there as
``requires``, and torch pinned to the release the extension is compiled against,
the torch of the build environment (``pip install --no-build-isolation``).
An extension built for one torch release cannot load into another."""
from __future__ import annotations


def dynamic_metadata(field, settings=None):
    if field != "dependencies":
        raise RuntimeError(f"torch_pin provides the dependencies, not {field}")
    try:
        import torch
    except ImportError as e:
        raise RuntimeError("safeload is built against the installed torch: install torch first and build "
                           "with pip install --no-build-isolation .") from e
    release = torch.__version__.split("+")[0]
    return [f"torch=={release}", *(settings or {}).get("requires", [])]
