"""``safeload bench``: loaders side by side against the hardware's limits.

Modules:
  model    writes a model-shaped safetensors file (Qwen3-8B layer shapes, bf16), once.
  cache    page-cache eviction and residency checks for cold and warm runs.
  limits   the physical limits: parallel O_DIRECT read, parallel memcpy, first write of new
           memory, pinned H2D copy.
  loaders  one adapter per loader, each reporting why it is unavailable when it is.
  worker   one measured run in a fresh process (time, bytes touched, peak RSS).
  runner   the interleaved schedule of runs and the statistics over them.
  report   the terminal table, the JSON document and the bar chart.
  cli      ``safeload bench`` argument parsing.
"""
