"""The rows of a memory sweep: what is measured, in which order, and how a cell reads.

One *configuration* is (kind, variant, n): the kind of program (KINDS), the variant of attention
(VARIANTS: an implementation and whether it is windowed) and the sequence length n. A row is a
flat dict of one configuration's settings and results (measure.measure), CSV_FIELDS its columns.
"""

import math

import numpy as np

from swa import reports

KINDS = ("attention_fwd", "attention_fwdbwd", "train_step")
METHODS = ("auto", "peak", "compiled")

# Variant name -> (implementation, windowed?). Full attention is window None.
VARIANTS = {
  "full_reference": ("reference", False),
  "full_cudnn": ("cudnn", False),
  "sliding_chunked": ("chunked", True),
  "sliding_cudnn": ("cudnn", True),
}
VARIANT_LABELS = {
  "full_reference": "full (reference)",
  "full_cudnn": "full (cuDNN)",
  "sliding_chunked": "sliding (chunked)",
  "sliding_cudnn": "sliding (cuDNN)",
}
# Prefix of the one stdout line that carries a worker's result (measure.main, sweep).
RESULT_MARKER = "SWA_PROFILE_RESULT "

CSV_FIELDS = (
  "kind",
  "variant",
  "impl",
  "seq_len",
  "window",
  "status",
  "method",
  "memory_bytes",
  "time_ms",
  "time_skipped",
  "peak_bytes",
  "baseline_bytes",
  "peak_before_bytes",
  "peak_hidden",
  "compile_peak_bytes",
  "compiled_bytes",
  "compiled_temp_bytes",
  "compiled_output_bytes",
  "compiled_argument_bytes",
  "compiled_alias_bytes",
  "bytes_limit",
  "dtype",
  "batch",
  "heads",
  "head_dim",
  "block_size",
  "blocks_per_step",
  "remat",
  "num_params",
  "times_ms",
  "process_s",
  "device",
  "backend",
  "jax_version",
  "stage",
  "error",
)


def sort_rows(rows):
  """Rows (dicts with kind, variant, seq_len) in report order: by kind, variant, then n."""
  order = {k: i for i, k in enumerate(KINDS + tuple(VARIANTS))}
  return sorted(rows, key=lambda r: (order[r["kind"]], order[r["variant"]], r["seq_len"]))


def describe(row):
  """One cell's text: the memory, or why there is none."""
  status = row.get("status", "")
  if status == "ok":
    text = reports.format_bytes(row.get("memory_bytes"))
    return ("≤ " + text) if row.get("peak_hidden") else text
  if status.startswith("skipped"):
    return "skip"
  if status.startswith("n/a") or status.startswith("unsupported"):
    return "n/a"
  return status.split(":")[0]


def fit_slope(ns, values):
  """Least-squares slope of log(values) against log(ns); nan with fewer than two points."""
  pairs = [
    (n, v)
    for n, v in zip(ns, values)
    if v is not None and v > 0 and not (isinstance(v, float) and math.isnan(v))
  ]
  if len(set(n for n, _ in pairs)) < 2:
    return float("nan")
  x, y = np.log([n for n, _ in pairs]), np.log([v for _, v in pairs])
  return float(np.polyfit(x, y, 1)[0])
