"""Figures over seeds: per-seed recall curves with the mean over seeds and its interval.

plot_seed_curves takes the rows of aggregate.collect (passkey.csv rows with a seed) and groups them
with stats.group_by_model; it returns its matplotlib Figure and saves it when given a path. The
heatmap over seeds is plotting.plot_accuracy_heatmap of aggregate.pooled_rows.
"""

import math

import matplotlib.pyplot as plt

from swa import stats


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
