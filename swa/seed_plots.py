"""Figures over seeds: per-seed recall curves with the mean and its interval, a reach-aligned heatmap.

Both take the rows of aggregate.collect (passkey.csv rows with a seed) and group them with
stats.group_by_model. Each returns its matplotlib Figure and saves it when given a path.
"""

import math

import matplotlib.pyplot as plt
import numpy as np

from swa import stats


def _bucket_width(span, max_buckets=40):
  """The smallest power of two >= 16 that cuts a span into <= max_buckets - 1 buckets."""
  width = 16
  while (span + 1) / width > max_buckets - 1:
    width *= 2
  return width


def plot_seed_curves(rows, path=None):
  """Exact match vs distance, one panel per model: a thin line per seed, the mean over seeds,
  a band for the 95 % Wilson interval on the pooled keys, and a dashed line at the reach."""
  groups = stats.group_by_model(rows)
  cols = min(3, len(groups))
  nrows = math.ceil(len(groups) / cols)
  fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.2 * nrows), squeeze=False, sharey=True)
  for ax, (name, by_seed) in zip(axes.flat, groups.items()):
    curve = stats.by_distance(by_seed)
    d = [c["distance"] for c in curve]
    for seed, rs in by_seed.items():
      ax.plot(
        [r["distance"] for r in rs],
        [r["accuracy"] for r in rs],
        lw=0.8,
        alpha=0.45,
        label=f"seed {seed}",
      )
    ax.fill_between(
      d,
      [c["low"] for c in curve],
      [c["high"] for c in curve],
      color="black",
      alpha=0.15,
      lw=0,
      label="95 % Wilson (pooled keys)",
    )
    ax.plot(d, [c["accuracy"] for c in curve], color="black", lw=1.8, label="mean")
    reach = next(iter(by_seed.values()))[0]["reach"]
    if reach is not None:
      ax.axvline(reach, color="red", ls="--", lw=1.2, label=f"reach {reach}")
    ax.set_title(f"{name} ({len(by_seed)} seed{'s' if len(by_seed) > 1 else ''})", fontsize=9)
    ax.set_xlabel("distance d")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="lower left")
  for ax in axes[:, 0]:
    ax.set_ylabel("exact match")
  for ax in list(axes.flat)[len(groups) :]:
    ax.set_visible(False)
  fig.suptitle(
    "Passkey recall by seed: thin lines seeds, black the mean, grey its 95 % interval", fontsize=10
  )
  fig.tight_layout()
  if path is not None:
    fig.savefig(path, dpi=120)
  return fig


def plot_reach_heatmap(rows, path=None):
  """Models x distance buckets -> mean exact match over seeds (keys pooled in each bucket).

  Each model's buckets have an edge at its reach + 0.5 (stats.reach_aligned_edges), so no
  cell mixes distances inside the reach with distances beyond it. Grey: not tested.
  """
  groups = stats.group_by_model(rows)
  distances = [r["distance"] for r in rows]
  lo, hi = min(distances), max(distances)
  fig, ax = plt.subplots(figsize=(16, 0.7 * len(groups) + 2.2))
  cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
  image = None
  for i, by_seed in enumerate(groups.values()):
    reach = next(iter(by_seed.values()))[0]["reach"]
    curve = stats.by_distance(by_seed)
    first, last = curve[0]["distance"], curve[-1]["distance"]
    edges = stats.reach_aligned_edges(reach, first, last, _bucket_width(last - first))
    acc = np.full(len(edges) - 1, np.nan)
    for b in range(len(edges) - 1):
      cell = [c for c in curve if edges[b] <= c["distance"] < edges[b + 1]]
      if cell:
        acc[b] = sum(c["hits"] for c in cell) / sum(c["keys"] for c in cell)
      if cell and edges[1] - edges[0] >= (hi - lo) / 60:  # a label only where it fits
        ax.text(
          (edges[b] + edges[b + 1]) / 2,
          i + 0.5,
          f"{100 * acc[b]:.0f}",
          ha="center",
          va="center",
          fontsize=7,
          color="black" if acc[b] > 0.5 else "white",
        )
    image = ax.pcolormesh(
      edges, [i, i + 1], np.ma.masked_invalid(acc[None]), cmap=cmap, vmin=0, vmax=1
    )
    if reach is not None:
      ax.plot([reach + 0.5] * 2, [i, i + 1], "--", color="red", lw=1.8)
  labels = [f"{name} ({len(s)} seeds, reach {_reach(s)})" for name, s in groups.items()]
  ax.set_yticks(np.arange(len(groups)) + 0.5, labels)
  ax.set_ylim(len(groups), 0)
  ax.set_xlim(lo - 0.02 * (hi - lo), hi + 0.02 * (hi - lo))
  ax.set_xlabel(
    "distance d (each model's buckets: a power of two >= 16 tokens wide, about 40 "
    "over its tested range, one ending at its reach, red)"
  )
  ax.set_title("Passkey exact match (%), mean over seeds")
  fig.colorbar(image, ax=ax, label="exact match", fraction=0.03, pad=0.01)
  fig.tight_layout()
  if path is not None:
    fig.savefig(path, dpi=120)
  return fig


def _reach(by_seed):
  reach = next(iter(by_seed.values()))[0]["reach"]
  return "∞" if reach is None else reach
