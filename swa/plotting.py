"""Figures of the passkey runs: evaluation rows, effective receptive fields, training metrics.

plot_accuracy_heatmap (model x distance bucket -> exact match), plot_accuracy_curves (exact
match against distance, one curve per model), plot_erf_curves (effective receptive field
against distance) and plot_training_curves (answer loss and training exact match against the
step, from metrics.jsonl). Each returns its matplotlib Figure and saves it when given a path.
"""

import collections

import matplotlib.pyplot as plt
import numpy as np

from swa import summary


def _by_model(rows):
  groups = collections.OrderedDict()
  for r in rows:
    groups.setdefault(r["model"], []).append(r)
  return {m: sorted(rs, key=lambda r: r["distance"]) for m, rs in groups.items()}


def _reach_text(reach):
  return "∞" if reach is None else str(reach)


def _bucket_width(span, max_buckets=40):
  """The smallest power of two >= 16 that cuts a distance span into <= max_buckets buckets."""
  width = 16
  while (span + 1) / width > max_buckets - 1:  # - 1: the span may straddle one more bucket
    width *= 2
  return width


def heatmap_cells(rows, width, first, num_buckets):
  """One model's heatmap cells: buckets [lo, hi) of `width` tokens, split at the reach.

  A bucket holding both d = reach and d = reach + 1 becomes two cells, [lo, reach + 1) and
  [reach + 1, hi), so no cell mixes distances inside the reach with distances beyond it.

  Args:
    rows: one model's rows (distance, accuracy, n, reach).
    width, first, num_buckets: the buckets [(first + b) * width, (first + b + 1) * width).

  Returns:
    list of (lo, hi, accuracy weighted by n, or nan where nothing was tested).
  """
  edges = [(first + b) * width for b in range(num_buckets + 1)]
  reach = rows[0]["reach"]
  if reach is not None and edges[0] < reach + 1 < edges[-1] and reach + 1 not in edges:
    edges = sorted(edges + [reach + 1])
  cells = []
  for lo, hi in zip(edges[:-1], edges[1:]):
    cell = [r for r in rows if lo <= r["distance"] < hi]
    acc = (
      sum(r["accuracy"] * r["n"] for r in cell) / sum(r["n"] for r in cell)
      if cell
      else float("nan")
    )
    cells.append((lo, hi, acc))
  return cells


def plot_accuracy_heatmap(rows, path=None):
  """Heatmap: models (rows) x distance buckets (columns) -> mean exact match.

  Grey cells were not tested; a dashed red line in each model's row marks its reach, where its
  bucket is split (heatmap_cells), so no cell straddles the reach.
  Returns the matplotlib Figure.
  """
  groups = _by_model(rows)
  distances = [r["distance"] for r in rows]
  width = _bucket_width(max(distances) - min(distances))
  first = min(distances) // width  # buckets [b * width, (b + 1) * width)
  num_buckets = max(distances) // width + 1 - first
  fig, ax = plt.subplots(figsize=(max(8, 0.42 * num_buckets + 3), 0.7 * len(groups) + 2.2))
  cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
  mesh = None
  for i, rs in enumerate(groups.values()):
    cells = heatmap_cells(rs, width, first, num_buckets)
    edges = [lo for lo, _, _ in cells] + [cells[-1][1]]
    acc = np.ma.masked_invalid([[a for _, _, a in cells]])
    mesh = ax.pcolormesh(edges, [i, i + 1], acc, cmap=cmap, vmin=0, vmax=1)
    for lo, hi, a in cells:
      if not np.isnan(a) and hi - lo >= width / 2:  # a sliver left of a split has no room
        ax.text(
          (lo + hi) / 2,
          i + 0.5,
          f"{100 * a:.0f}",
          ha="center",
          va="center",
          fontsize=7,
          color="black" if a > 0.5 else "white",
        )
    if rs[0]["reach"] is not None:
      ax.plot([rs[0]["reach"] + 1] * 2, [i, i + 1], "--", color="red", linewidth=1.8)
  ax.set_xlim(first * width, (first + num_buckets) * width)
  ax.set_ylim(len(groups), 0)
  labels = [
    f"{m} (L={rs[0]['layers']}, reach {_reach_text(rs[0]['reach'])})" for m, rs in groups.items()
  ]
  ax.set_yticks(np.arange(len(groups)) + 0.5, labels)
  ax.set_xlabel(
    f"distance d (buckets of {width} tokens, split at each reach; red dashes: reach Σ(w−1))"
  )
  ax.set_title("Passkey exact match (%) by distance")
  fig.colorbar(mesh, ax=ax, label="exact match", fraction=0.03, pad=0.01)
  fig.tight_layout()
  if path is not None:
    fig.savefig(path, dpi=120)
  return fig


def plot_accuracy_curves(rows, path=None, threshold=summary.THRESHOLD):
  """Exact match vs distance, one curve per model; dashed verticals at each reach.

  Hollow markers: prompts longer than the model's trained length. Returns the Figure.
  """
  fig, ax = plt.subplots(figsize=(10, 5))
  any_beyond = False
  for model, rs in _by_model(rows).items():
    d = np.array([r["distance"] for r in rs])
    acc = np.array([r["accuracy"] for r in rs])
    beyond = np.array([r["beyond_train_len"] for r in rs])
    reach = rs[0]["reach"]
    (line,) = ax.plot(
      d, acc, "-", linewidth=1.2, label=f"{model} (L={rs[0]['layers']}, reach {_reach_text(reach)})"
    )
    color = line.get_color()
    ax.plot(d[~beyond], acc[~beyond], "o", color=color, markersize=3.5)
    ax.plot(d[beyond], acc[beyond], "o", markerfacecolor="white", color=color, markersize=3.5)
    any_beyond |= bool(beyond.any())
    if reach is not None:
      ax.axvline(reach, color=color, linestyle="--", linewidth=1)
  ax.axhline(threshold, color="grey", linestyle=":", linewidth=1)
  ax.set_ylim(-0.03, 1.03)
  ax.set_xlabel("distance d = p_last − first key digit (tokens)")
  ax.set_ylabel("exact match (5 digits, greedy)")
  note = "; hollow: prompts longer than trained" if any_beyond else ""
  ax.set_title(
    f"Passkey retrieval vs distance (dashed: reach Σ(w−1); dotted: {100 * threshold:g} %{note})",
    fontsize=10,
  )
  ax.legend(fontsize=8, loc="lower left")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  if path is not None:
    fig.savefig(path, dpi=120)
  return fig


def plot_erf_curves(erfs, reaches, path=None):
  """Effective receptive field vs distance on a log axis, each curve divided by its maximum.

  Args:
    erfs: {label: {distance: erf}} (swa/erf.py, or summary.read_erf of any earlier file).
    reaches: {label: reach or None}; a dashed vertical line at each reach.
    path: if given, the figure is saved there.

  Returns:
    The Figure. Exact zeros (beyond the reach) cannot sit on a log axis: curves stop there,
    and the legend says from where the values are 0.
  """
  fig, ax = plt.subplots(figsize=(10, 4.8))
  longest = 0
  for label, by_d in erfs.items():
    d = np.array(sorted(by_d), dtype=np.int64)
    erf = np.array([by_d[k] for k in d], dtype=np.float64)
    values = erf / erf.max() if erf.size and erf.max() > 0 else erf
    nonzero = np.flatnonzero(values > 0)
    zero_from = ""
    if nonzero.size and nonzero[-1] < d.size - 1:
      zero_from = f"; 0 beyond d={d[nonzero[-1]]}"
    style = "-" if d.size > 200 else ".-"  # sparse grids (key-digit ERF) show their points
    (line,) = ax.plot(
      d,
      np.where(values > 0, values, np.nan),
      style,
      linewidth=1,
      markersize=3,
      label=f"{label}{zero_from}",
    )
    longest = max(longest, int(d[-1]) if d.size else 0)
    if reaches.get(label) is not None:
      ax.axvline(reaches[label], color=line.get_color(), linestyle="--", linewidth=1)
  ax.set_yscale("log")
  ax.set_xlim(0, longest)
  ax.set_xlabel("distance d = p_last − s (tokens)")
  ax.set_ylabel("mean ‖∂ logit(first digit) / ∂ x_s‖ / max")
  ax.set_title("Effective receptive field of the first answer digit (dashed: reach Σ(w−1))")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  if path is not None:
    fig.savefig(path, dpi=120)
  return fig


def plot_training_curves(metrics, path=None, smooth=5):
  """Answer loss and training exact match against the step, one line per run.

  Args:
    metrics: {run name: list of metrics.jsonl rows (dicts with "step")}; rows without
      "answer_loss" (throughput, evaluation) are skipped.
    path: if given, the figure is saved there.
    smooth: each point is the mean of this many consecutive logged values (1 = raw).

  Returns:
    The Figure, with two axes.
  """
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for name, rows in metrics.items():
    rows = sorted(
      {r["step"]: r for r in rows if "answer_loss" in r}.values(), key=lambda r: r["step"]
    )  # A resumed run logs a few steps twice: keep the last.
    if not rows:
      raise ValueError(f"run {name!r} has no training rows (no 'answer_loss' in its metrics).")
    width = min(smooth, len(rows))
    kernel = np.ones(width) / width
    steps = np.convolve([r["step"] for r in rows], kernel, mode="valid")
    for ax, key in zip(axes, ("answer_loss", "exact_match")):
      ax.plot(steps, np.convolve([r[key] for r in rows], kernel, mode="valid"), label=name)
  axes[0].set_ylabel("answer loss (5 digits)")
  axes[1].set_ylabel("exact match on the training batch")
  axes[1].set_ylim(-0.03, 1.03)
  for ax in axes:
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  axes[1].legend(fontsize=8)
  fig.suptitle(f"Training (mean of {smooth} logged values per point)", fontsize=10)
  fig.tight_layout()
  if path is not None:
    fig.savefig(path, dpi=120)
  return fig
