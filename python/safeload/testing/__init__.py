"""Test support shared by the fixture generator, the property-based
strategies, the conformance harness and the demo: a writer that can produce
valid and deliberately malformed safetensors files."""
from safeload.testing.writer import DELETE, Built, Layout, Raw, TensorSpec, build

__all__ = ["DELETE", "Built", "Layout", "Raw", "TensorSpec", "build"]
