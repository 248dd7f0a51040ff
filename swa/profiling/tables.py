"""memory.md and memory.csv of a memory sweep (swa/profiling/sweep.py's rows).

`write_markdown` gives memory.md: per kind, n against every variant's memory and time, the
full/sliding ratios, the fitted slopes, how far each variant got. `write_csv` and `read_csv`
give memory.csv and read it back, so the reports can be redrawn without measuring again;
`merge_rows` joins several sweeps of one device.
"""

import csv
import math
import os

import numpy as np

from swa import reports
from swa.profiling.rows import (
  CSV_FIELDS,
  KINDS,
  VARIANT_LABELS,
  VARIANTS,
  describe,
  fit_slope,
  sort_rows,
)

format_ms = reports.format_ms


def _cell(row, what, main_method):
  if row is None:
    return "—"
  if what == "memory":
    text = describe(row)
    if row.get("status") == "ok" and row.get("method") != main_method:
      text += " ᶜ" if row.get("method") == "compiled" else " ᵖ"
    return text
  if row.get("status") == "ok" and row.get("time_ms") is not None:
    return format_ms(row["time_ms"])
  return "skip" if row.get("time_skipped") else "—"


def main_method(rows):
  """The memory method of most measured rows (the others are marked in the tables)."""
  methods = [r["method"] for r in rows if r.get("status") == "ok"]
  return max(set(methods), key=methods.count) if methods else "compiled"


def _ratio(rows, num, den):
  a, b = rows.get(num), rows.get(den)
  if not (a and b and a.get("status") == "ok" and b.get("status") == "ok"):
    return "—"
  if not b.get("memory_bytes"):
    return "—"
  return f"{a['memory_bytes'] / b['memory_bytes']:.3g}×"


def slopes(rows, kind, variant, what="memory_bytes"):
  """Fitted log-log slope of memory (or time_ms) over n for one kind and variant."""
  ok = [
    r
    for r in rows
    if r["kind"] == kind and r.get("variant") == variant and r.get("status") == "ok" and r.get(what)
  ]
  return fit_slope([r["seq_len"] for r in ok], [r[what] for r in ok])


def _settings(row):
  bits = []
  if row.get("blocks_per_step"):
    bits.append(f"chunked blocks_per_step={row['blocks_per_step']}")
  if row.get("remat"):
    bits.append("remat")
  return ", ".join(bits)


def write_markdown(path, rows, header, train_model="configs/base.py"):
  """The report: header lines, then per kind a table of n against every variant's memory and
  time, the full/sliding ratios and the fitted slopes; train_model names the train steps'
  config. Returns the text."""
  lines = ["# Memory: full against sliding-window attention", ""]
  lines += [f"- {h}" for h in header]
  method = main_method(rows)
  explain = {
    "peak": "**peak**: the device allocator's `peak_bytes_in_use` after the call minus its "
    "`bytes_in_use` just before (inputs, parameters, optimiser state already there); "
    "one fresh process per configuration, preallocation off",
    "compiled": "**compiled**: XLA's plan for the compiled program, `memory_analysis()`: "
    "temp + outputs − outputs aliased to donated inputs; not a measurement",
  }
  others = sorted({r["method"] for r in rows if r.get("status") == "ok"} - {method})
  lines += [
    f"- Memory (net of the inputs) by {explain[method]}."
    + "".join(
      f" Cells marked {'ᶜ' if m == 'compiled' else 'ᵖ'}: {explain[m]}"
      + (" (too slow to time there)." if m == "compiled" else ".")
      for m in others
    )
  ]
  lines += [
    "- Cells: OOM = out of device memory; timeout = process killed after "
    "--timeout_per_config; skip = not run (after an OOM, timeout or failure of the same "
    "variant at a smaller n), or, in a time column, too slow to time (more than "
    "--max_run_seconds a run, extrapolated); n/a = cuDNN needs a GPU; ≤ = the run did "
    "not raise the peak above its setup's, so only an upper bound."
  ]
  variants = [v for v in VARIANTS if any(r.get("variant") == v for r in rows)]
  for kind in KINDS:
    krows = [r for r in rows if r["kind"] == kind]
    if not krows:
      continue
    by_n = {}
    for r in krows:
      by_n.setdefault(r["seq_len"], {})[r["variant"]] = r
    title = {
      "attention_fwd": "attention forward",
      "attention_fwdbwd": "attention forward + backward (grad w.r.t. q, k, v)",
      "train_step": "one LM training step",
    }[kind]
    ex = krows[0]
    if kind == "train_step":
      shape = (
        f"{train_model} model, batch {ex.get('batch')}, dtype {ex.get('dtype')}; "
        "full = window None, sliding = window "
        + str(next((r["window"] for r in krows if r.get("window")), "—"))
      )
    else:
      shape = (
        f"q, k, v [B={ex.get('batch')}, n, N={ex.get('heads')}, H={ex.get('head_dim')}] "
        f"{ex.get('dtype')}; sliding window "
        + str(next((r["window"] for r in krows if r.get("window")), "—"))
      )
    lines += ["", f"## {title}", "", shape, ""]
    head = ["n"] + [f"{VARIANT_LABELS[v]}" for v in variants]
    head += ["reference / chunked", "cuDNN full / window"]
    head += [f"time: {VARIANT_LABELS[v]}" for v in variants] + ["settings"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---:|" * (len(head) - 1) + "---|"]
    for n in sorted(by_n):
      cells = by_n[n]
      row = [f"{n:,}"] + [_cell(cells.get(v), "memory", method) for v in variants]
      row += [
        _ratio(cells, "full_reference", "sliding_chunked"),
        _ratio(cells, "full_cudnn", "sliding_cudnn"),
      ]
      row += [_cell(cells.get(v), "time", method) for v in variants]
      row += ["; ".join(sorted({_settings(r) for r in cells.values() if _settings(r)}))]
      lines.append("| " + " | ".join(row) + " |")
    fits = []
    for v in variants:
      m, t = slopes(rows, kind, v), slopes(rows, kind, v, "time_ms")
      if not math.isnan(m):
        fits.append(f"{VARIANT_LABELS[v]} memory {m:.2f}, time {t:.2f}")
    lines += ["", "Log-log slopes (least squares over the n that ran): " + "; ".join(fits) + "."]
    reach = []
    for v in variants:
      vrows = [r for r in krows if r.get("variant") == v]
      ok = [r for r in vrows if r.get("status") == "ok"]
      ran = [r["seq_len"] for r in ok if not r.get("time_skipped")]
      planned = [r["seq_len"] for r in ok if r.get("time_skipped")]
      oom = min(
        (r for r in vrows if r.get("status") == "OOM"), key=lambda r: r["seq_len"], default=None
      )
      if ran or planned or oom:
        reach.append(
          f"{VARIANT_LABELS[v]} "
          + (f"ran up to n={max(ran):,}" if ran else "never ran")
          + (f" (compiled memory plan, not run, up to n={max(planned):,})" if planned else "")
          + (
            f", out of memory at n={oom['seq_len']:,}"
            + (" (in compilation)" if oom.get("stage") == "compile" else "")
            if oom
            else ""
          )
        )
    lines.append("Reach: " + "; ".join(reach) + ".")
    both = [
      r["memory_bytes"] / r["compiled_bytes"]
      for r in krows
      if r.get("status") == "ok" and r.get("method") == "peak" and r.get("compiled_bytes")
    ]
    if both:
      lines.append(
        f"Cross-check: measured peak / compiled plan = {np.median(both):.2f} (median), "
        f"{min(both):.2f} ... {max(both):.2f} over {len(both)} configurations."
      )
    for r in krows:
      if r.get("status", "").startswith(("failed", "timeout", "unsupported")):
        why = (r.get("error") or "").strip().splitlines()
        lines.append(
          f"- {VARIANT_LABELS[r['variant']]}, n={r['seq_len']:,}: {r['status']}"
          + (f" ({r.get('stage')})" if r.get("stage") else "")
          + (f": `{why[0][:200]}`" if why else "")
        )
  text = "\n".join(lines) + "\n"
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    f.write(text)
  return text


def write_csv(path, rows):
  """Every row, one configuration a line (errors cut to their first line)."""
  lines = []
  for r in rows:
    r = dict(r)
    if r.get("error"):
      r["error"] = r["error"].strip().splitlines()[0][:300]
    if r.get("times_ms"):
      r["times_ms"] = " ".join(f"{t:.4g}" for t in r["times_ms"])
    lines.append(r)
  reports.write_csv(path, lines, CSV_FIELDS)


def read_csv(path):
  """Rows back from write_csv (numbers as numbers, empty cells dropped)."""

  def parse(key, value):
    if key == "times_ms":
      return [float(t) for t in value.split()]
    if key in ("peak_hidden", "remat"):
      return value == "True"
    for cast in (int, float):
      try:
        return cast(value)
      except ValueError:
        pass
    return value

  if not os.path.isfile(path):
    raise ValueError(f"{path} is not a file (a memory.csv of profile_memory.py).")
  try:
    with open(path, newline="") as f:
      reader = csv.DictReader(f)
      found = list(reader)
      columns = reader.fieldnames or ()
  except UnicodeDecodeError:
    raise ValueError(f"{path} is not a memory.csv: it is not UTF-8 text.") from None
  missing = [k for k in ("kind", "variant", "seq_len", "status") if k not in columns]
  if missing:
    raise ValueError(f"{path} is not a memory.csv of profile_memory.py: no column {missing}.")
  if not found:
    raise ValueError(f"{path} has no rows, only a header.")
  return [{k: parse(k, v) for k, v in row.items() if v != ""} for row in found]


def merge_rows(tables):
  """One sweep's rows from several sweeps' rows (read_csv of each) taken on one device.

  Each (kind, variant, n) keeps the first row that measured it (any status but "skipped: ..."),
  so a later sweep fills only what the earlier ones left skipped; rows come back sorted by kind,
  variant and n like compare_memory_usage's. Raises ValueError when the sweeps name different
  devices, whose numbers do not belong in one table.
  """
  devices = sorted({r["device"] for rows in tables for r in rows if r.get("device")})
  if len(devices) > 1:
    raise ValueError(f"These sweeps ran on different devices {devices}; merge one device's only.")
  merged = {}
  for rows in tables:
    for r in rows:
      key = (r["kind"], r["variant"], r["seq_len"])
      if key not in merged or str(merged[key]["status"]).startswith("skipped"):
        merged[key] = r
  return sort_rows(merged.values())
