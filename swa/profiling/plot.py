"""memory.png of a memory sweep: memory and time against n, log-log, one line per variant."""

import os

import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter

from swa import reports
from swa.profiling.rows import KINDS, VARIANT_LABELS, VARIANTS, fit_slope
from swa.profiling.tables import main_method

format_bytes, format_ms = reports.format_bytes, reports.format_ms


def _format_n(n, _=None):
  """1024 -> 1k, 1048576 -> 1M (powers of two)."""
  for suffix, size in (("M", 2**20), ("k", 2**10)):
    if n >= size:
      return f"{n / size:g}{suffix}"
  return f"{n:g}"


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
