"""The text report's figures (swa/analysis/text.py writes them): bits/byte vs window, loss by
position (log x), bits/byte vs the window at inference, and loss along a long stream."""

import math

import numpy as np

from swa.analysis import stats
from swa.analysis.text import PLATEAU_TOLERANCE, group, window_key


def plot_window(runs, path):
  """bits/byte vs window, one panel per corpus: each seed a dot, the mean with its t-interval."""
  import matplotlib.pyplot as plt

  corpora = sorted({r.corpus for r in runs})
  fig, axes = plt.subplots(1, len(corpora), figsize=(5.5 * len(corpora), 4), squeeze=False)
  for ax, corpus in zip(axes[0], corpora):
    groups = [(m, g) for (c, m), g in group(runs).items() if c == corpus]
    labels = [m for m, _ in groups]
    for i, (_, g) in enumerate(groups):
      values = [r.bits_per_byte for r in g]
      ax.scatter([i] * len(values), values, s=12, color="0.5", zorder=3)
      interval = stats.seed_interval(values, clip=None)
      mean = float(np.mean(values))
      if interval:
        ax.errorbar(
          [i], [mean], yerr=[[mean - interval["low"]], [interval["high"] - mean]], fmt="o",
          color="C0", capsize=4, zorder=4,
        )  # fmt: skip
      else:
        ax.plot([i], [mean], "o", color="C0", mfc="none", zorder=4)
    ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
    ax.set_title(corpus)
    ax.set_ylabel("validation bits/byte")
    ax.grid(alpha=0.3)
  seeds = sorted({len(g) for g in group(runs).values()})
  fig.suptitle(
    "bits/byte by model: grey dots = seeds, blue = mean with 95 % t-interval over seeds "
    f"(hollow: one seed); seeds per model {seeds}",
    fontsize=9,
  )
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_position(plateaus, path):
  """Loss by position (log x), one line per model, a panel per corpus; reach and plateau marked."""
  import matplotlib.pyplot as plt

  corpora = sorted({p["corpus"] for p in plateaus})
  fig, axes = plt.subplots(1, len(corpora), figsize=(6 * len(corpora), 4.2), squeeze=False)
  for ax, corpus in zip(axes[0], corpora):
    for i, p in enumerate(q for q in plateaus if q["corpus"] == corpus):
      # x = position + 1 (bytes seen, itself included), so position 0 sits at 1 on the log axis.
      edges = p["edges"] + 1
      centers = np.sqrt(edges[:-1] * (edges[1:] - 1))
      color = f"C{i % 10}"
      ax.plot(centers, p["curve"], "-", color=color, label=f"{p['model']} ({p['seeds']} s.)")
      ax.axvline(p["stops_improving_at"] + 1, color=color, ls=":", lw=1)
      if p["reach"]:
        ax.plot([p["reach"] + 1], [p["final_bits_per_byte"]], "v", color=color, ms=6)
    ax.set_xscale("log")
    ax.set_xlabel("position + 1 in the window (bytes seen)")
    ax.set_ylabel("validation bits/byte")
    ax.set_title(corpus)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(
    "Loss by position (mean over seeds, log-spaced buckets); dotted: where the curve stops "
    f"improving\n(no later bucket above its last octave by > {PLATEAU_TOLERANCE} bits/byte + 2 "
    "standard errors); "
    "triangle: reach L(w-1), at the last octave's level",
    fontsize=8,
  )
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_shrink(rows, path):
  """bits/byte vs inference window, one line per trained model."""
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6.5, 4.2))
  by_run = {}
  for r in rows:
    by_run.setdefault((r.corpus, r.model, r.run), []).append(r)
  finite = sorted({window_key(r.eval_window) for r in rows} - {math.inf})
  full_x = (finite[-1] * 2) if finite else 1
  for (corpus, model, run), rs in by_run.items():
    rs = sorted(rs, key=lambda r: window_key(r.eval_window))
    xs = [full_x if r.eval_window == "full" else int(r.eval_window) for r in rs]
    ax.plot(xs, [r.bits_per_byte for r in rs], "o-", label=f"{corpus} {model} ({run})")
  ax.set_xscale("log", base=2)
  ticks = finite + ([full_x] if any(r.eval_window == "full" for r in rows) else [])
  ax.set_xticks(ticks, [str(t) for t in finite] + (["full"] if len(ticks) > len(finite) else []))
  ax.set_xlabel("window at inference (every layer)")
  ax.set_ylabel("validation bits/byte")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  ax.set_title("Shrinking the window at inference (one seed per model)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_stream(rows, path):
  """bits/byte per segment vs tokens streamed, one line per stream; the kjv/stdlib boundary."""
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(8, 4.2))
  by_name = {}
  for r in rows:
    by_name.setdefault(r.name, []).append(r)
  boundary = None
  for name, rs in by_name.items():
    ax.plot([r.segment_end for r in rs], [r.bits_per_byte for r in rs], ".-", label=name)
    kjv_ends = [r.segment_end for r in rs if r.domain == "kjv"]
    if kjv_ends and any(r.domain == "stdlib" for r in rs):
      boundary = boundary or kjv_ends[-1]
  if boundary:
    ax.axvline(boundary, color="k", ls="--", lw=1)
    ax.text(boundary, ax.get_ylim()[1], " kjv test | stdlib test", va="top", fontsize=7)
  ax.set_xlabel("tokens streamed (end of segment)")
  ax.set_ylabel("bits/byte in the segment")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  ax.set_title("Streaming the held-out stream through the rolling KV cache", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# --- The report ----------------------------------------------------------------------------------
