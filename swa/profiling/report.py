"""Reports of a memory sweep (swa/profiling/sweep.py's rows): markdown tables, CSV, plot.

`write_markdown` gives memory.md (per kind, n against every variant's memory and time, the
full/sliding ratios, the fitted slopes, how far each variant got), `write_csv` and `read_csv`
memory.csv (so the reports can be redrawn without measuring again: `rebuild`), `plot_memory`
memory.png. `profile` and `rebuild` are the two jobs of profile_memory.py.
"""

import csv
import math
import os
import time

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FuncFormatter

from swa import reports
from swa.profiling import sweep
from swa.profiling.rows import (
  CSV_FIELDS,
  KINDS,
  VARIANT_LABELS,
  VARIANTS,
  describe,
  fit_slope,
  sort_rows,
)

format_bytes, format_ms = reports.format_bytes, reports.format_ms


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


def _format_n(n, _=None):
  """1024 -> 1k, 1048576 -> 1M (powers of two)."""
  for suffix, size in (("M", 2**20), ("k", 2**10)):
    if n >= size:
      return f"{n / size:g}{suffix}"
  return f"{n:g}"


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

  with open(path, newline="") as f:
    return [{k: parse(k, v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


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


def plot_memory(path, rows, title=""):
  """Log-log memory (top) and time (bottom) against n, one panel per kind, one line per variant
  with its fitted slope in the legend. Out-of-memory points are red crosses on the device's
  limit; hollow markers are compiled memory plans of configurations too slow to run."""
  kinds = [k for k in KINDS if any(r["kind"] == k for r in rows)]
  styles = {
    "full_reference": ("tab:red", "o", "-"),
    "full_cudnn": ("tab:orange", "s", "-"),
    "sliding_chunked": ("tab:blue", "o", "--"),
    "sliding_cudnn": ("tab:cyan", "s", "--"),
  }
  method = main_method(rows)
  fig, axes = plt.subplots(2, len(kinds), figsize=(5.2 * len(kinds), 8.4), squeeze=False)
  limit = next((r["bytes_limit"] for r in rows if r.get("bytes_limit")), None)
  for col, kind in enumerate(kinds):
    mem_ax, time_ax = axes[0, col], axes[1, col]
    for v in VARIANTS:
      vrows = sorted(
        (r for r in rows if r["kind"] == kind and r.get("variant") == v), key=lambda r: r["seq_len"]
      )
      ok = [r for r in vrows if r.get("status") == "ok" and r.get("memory_bytes")]
      color, marker, ls = styles[v]
      if ok:
        ns, mem = [r["seq_len"] for r in ok], [r["memory_bytes"] for r in ok]
        mem_ax.loglog(
          ns,
          mem,
          marker=marker,
          ls=ls,
          color=color,
          base=2,
          label=f"{VARIANT_LABELS[v]}: slope {fit_slope(ns, mem):.2f}",
        )
        planned = [r for r in ok if r.get("method") != method]
        mem_ax.plot(
          [r["seq_len"] for r in planned],
          [r["memory_bytes"] for r in planned],
          marker=marker,
          color=color,
          mfc="white",
          ls="",
        )
        timed = [r for r in ok if r.get("time_ms")]
        if timed:
          tn, ts = [r["seq_len"] for r in timed], [r["time_ms"] for r in timed]
          time_ax.plot(
            tn,
            ts,
            marker=marker,
            ls=ls,
            color=color,
            label=f"{VARIANT_LABELS[v]}: slope {fit_slope(tn, ts):.2f}",
          )
      for r in vrows:
        if r.get("status") == "OOM":
          y = limit or (2 * ok[-1]["memory_bytes"] if ok else 2**30)
          mem_ax.plot([r["seq_len"]], [y], marker="x", color="red", ms=11, mew=2.5, ls="")
          mem_ax.annotate(
            f"OOM: {VARIANT_LABELS[v]}",
            (r["seq_len"], y),
            fontsize=7,
            color=color,
            textcoords="offset points",
            xytext=(8, -16),
            ha="right",
          )
    if limit:
      mem_ax.axhline(limit, color="gray", lw=0.8, ls=":")
      mem_ax.annotate(
        f"allocator limit {format_bytes(limit)}",
        (0.02, limit),
        xycoords=("axes fraction", "data"),
        fontsize=7,
        color="gray",
        textcoords="offset points",
        xytext=(0, 3),
      )
    name = {
      "attention_fwd": "attention fwd",
      "attention_fwdbwd": "attention fwd+bwd",
      "train_step": "LM train step",
    }[kind]
    mem_ax.set_title(f"{name}: memory, net of the inputs ({method})", fontsize=10)
    time_ax.set_title(f"{name}: time per call", fontsize=10)
    time_ax.set_xscale("log", base=2)
    time_ax.set_yscale("log", base=10)
    mem_ax.yaxis.set_major_formatter(FuncFormatter(lambda b, _: format_bytes(b)))
    time_ax.yaxis.set_major_formatter(FuncFormatter(lambda ms, _: format_ms(ms)))
    for ax in (mem_ax, time_ax):
      ax.xaxis.set_major_formatter(FuncFormatter(_format_n))
      ax.set_xlabel("sequence length n")
      ax.grid(True, which="major", alpha=0.3)
      if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower right")
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)


# --- The jobs of profile_memory.py -----------------------------------------------------------------

GPU_SEQ_LENGTHS = [2**k for k in range(10, 21)]  # 1,024 ... 1,048,576
GPU_TRAIN_SEQ_LENGTHS = [4096, 16384, 65536, 262144, 1048576]
CPU_SEQ_LENGTHS = [512, 1024, 2048, 4096]


def write_reports(out, rows, header, window, final=True, train_model="configs/base.py"):
  """memory.csv and memory.md (and memory.png when final) under out; returns the markdown."""
  path = lambda ext: os.path.join(out, f"memory.{ext}")
  write_csv(path("csv"), rows)
  if final:
    device = next((r for r in rows if r.get("device")), {})
    plot_memory(
      path("png"),
      rows,
      title=f"Memory and time against n, window {window}, "
      f"on {device.get('device', '?')} ({device.get('backend', '?')})",
    )
  else:
    header = header + [
      f"Partial: {len(rows)} configurations so far; the sweep is still running or was stopped."
    ]
  return write_markdown(path("md"), rows, header, train_model)


def rebuild(csv_paths, out, *, window=512, command=None):
  """memory.md, .csv and .png in `out` from earlier sweeps' memory.csv files of one device.

  A later file fills only what the earlier ones skipped (merge_rows). Returns the markdown.
  """
  if not csv_paths:
    raise ValueError("No memory.csv given to rebuild from.")
  rows = merge_rows([read_csv(p) for p in csv_paths])
  device = next((r for r in rows if r.get("device")), {})
  window = next((r["window"] for r in rows if r.get("window")), window)
  header = [
    f"Command: `{command or reports.command_line()}` (rebuilt from "
    f"{', '.join(csv_paths)}; the measurements' own commands and dates are in the "
    "markdown that came with each)",
    f"Device: {device.get('device')} ({device.get('backend')}); JAX {device.get('jax_version')}",
    f"Date: rebuilt {reports.utc_date().split()[0]}; measured on the dates in the "
    "markdown of each source",
  ]
  return write_reports(out, rows, header, window)


def default_out(device):
  """profiles/<device kind>, e.g. profiles/nvidia_h200 (git-ignored; never results/)."""
  name = "".join(c if c.isalnum() else "_" for c in device["device"].lower()).strip("_")
  return os.path.join("profiles", name or device["backend"])


def profile(
  out=None,
  *,
  base_config,
  window=512,
  seq_lengths=None,
  train_seq_lengths=None,
  long_from=131072,
  group_queries=32768,
  repeats=5,
  time_budget_s=1.0,
  mem_fraction=0.95,
  deadline_minutes=6.0,
  command=None,
  log=None,
  config_name="configs/base.py",
  **sweep_kwargs,
):
  """The memory sweep of profile_memory.py: runs it, writes memory.{md,csv,png} under out.

  Args:
    out: output folder; default default_out(device).
    base_config: the experiment config whose LM the train steps use, as a dict.
    config_name: how the report names that config (e.g. its file).
    window: w of the sliding variants.
    seq_lengths, train_seq_lengths: n of the attention kinds and of train_step; defaults by
      device (GPU_SEQ_LENGTHS, GPU_TRAIN_SEQ_LENGTHS; CPU_SEQ_LENGTHS for both elsewhere).
    long_from, group_queries, repeats, time_budget_s, mem_fraction: compare_memory_usage's.
    deadline_minutes: start no new configuration after this many minutes; 0 = no limit.
    command: the header's command (default reports.command_line()).
    log: callable(str) for progress lines.
    **sweep_kwargs: the rest of compare_memory_usage's keywords (kinds, variants, method, ...).

  Returns:
    (out, the markdown text).
  """
  start = time.perf_counter()
  device = sweep.probe_device(mem_fraction)
  gpu = device["backend"] == "gpu"
  out = out or default_out(device)
  seq_lengths = [int(n) for n in seq_lengths or (GPU_SEQ_LENGTHS if gpu else CPU_SEQ_LENGTHS)]
  train_seq_lengths = [
    int(n) for n in train_seq_lengths or (GPU_TRAIN_SEQ_LENGTHS if gpu else seq_lengths)
  ]
  limit = device.get("bytes_limit")
  header = [
    f"Command: `{command or reports.command_line()}`",
    f"Device: {device['device']} ({device['backend']}); JAX {device['jax_version']}"
    + (f"; allocator limit {format_bytes(limit)} per process" if limit else ""),
    f"Date: {reports.utc_date()}",
    f"Times: median of up to {repeats} runs after a warm-up (compilation excluded; timing "
    f"stops once the runs add up to {time_budget_s:g} s), each ended by `block_until_ready`; "
    "one set of random inputs.",
    f"Long sequences: from n = {long_from:,} chunked attention runs {group_queries:,} queries "
    "a loop step (`blocks_per_step`, recomputed in the backward pass) and train steps "
    "recompute each block (`model.remat`); the settings column says where.",
  ]
  rows = sweep.compare_memory_usage(
    seq_lengths,
    window,
    train_seq_lengths=train_seq_lengths,
    long_from=long_from,
    group_queries=group_queries,
    repeats=repeats,
    time_budget_s=time_budget_s,
    mem_fraction=mem_fraction,
    deadline_s=60 * deadline_minutes if deadline_minutes else None,
    gpu=gpu,
    log=log,
    base_config=base_config,
    on_row=lambda rows: write_reports(
      out, rows, header, window, final=False, train_model=config_name
    ),
    **sweep_kwargs,
  )
  header[2] = (
    f"Date: {reports.utc_date()}; sweep wall time "
    f"{(time.perf_counter() - start) / 60:.1f} min, "
    f"{sum(r.get('process_s') is not None for r in rows)} processes"
  )
  return out, write_reports(out, rows, header, window, train_model=config_name)
