"""Figures of passkey results and training: heatmap, recall per seed, ERF, training, depth.

plot_accuracy_heatmap (model x distance bucket -> recall), plot_seed_curves (recall against
distance, one panel per model, one line per seed), plot_erf_curves (effective receptive field
against distance), plot_training_curves (answer loss and training exact match against the step,
from metrics.jsonl) and plot_depth_sweep (the measured 50 % wall against the reach sum_l (w_l - 1)).
The passkey figures take PasskeyRows (swa/analysis/rows.py) and group seeds with
stats.group_by_model. Each returns its matplotlib Figure and saves it when given a path.

What they show, and why: a heatmap cell is the per-distance recall (keys pooled over seeds at
each distance) averaged over the distances of its bucket, each weighted by the span it stands for
(stats.span_weights), so the 600 keys of a distance near the reach weigh no more than the 100 of
a distance elsewhere. Seeds are drawn one by one, not as a mean: a mean over a seed that lost a
hop and one that kept it draws a plateau no model has. Lines break across gaps wider than the
gaps around them (no line across distances that were not measured). Windowed panels mark the reach,
full-attention panels the trained length (the largest distance inside).
"""

import collections
import math

import matplotlib.pyplot as plt
import numpy as np

from swa.analysis import stats, summary

_GAP_FACTOR = 2.0  # a gap this many times wider than both its neighbours is not bridged


def model_label(name, first):
  """ "w128 L=8" for a model named by its window, else "name (w128 L=8)"; full attention adds its
  trained length ("full L=4, T=1024")."""
  window = "full" if first.window == "full" else f"w{first.window}"
  shape = f"{window} L={first.layers}"
  if first.reach is None:
    shape += f", T={first.train_seq_len}"
  return shape if name in (first.window, "") else f"{name} ({shape})"


def _groups(rows):
  """{label: (first row, {seed: rows})} in summary.summarize's order."""
  groups = stats.group_by_model(rows)
  order = {s["model"]: i for i, s in enumerate(summary.summarize(rows))}
  out = collections.OrderedDict()
  for name in sorted(groups, key=order.get):
    by_seed = groups[name]
    first = next(iter(by_seed.values()))[0]
    out[model_label(name, first)] = (first, by_seed)
  return out


def broken_line(distances, values, factor=_GAP_FACTOR):
  """(x, y) with NaN inserted in each gap wider than `factor` times both gaps beside it.

  The grid is coarse far from the reach and fine near it; a gap much wider than its neighbours is
  a stretch where no distance was tested, and the line is left open there instead of drawing
  values nobody measured.
  """
  d = np.asarray(distances, dtype=np.float64)
  y = np.asarray(values, dtype=np.float64)
  if d.size < 3:
    return d, y
  gaps = np.diff(d)
  left = np.concatenate([[0.0], gaps[:-1]])
  right = np.concatenate([gaps[1:], [0.0]])
  breaks = np.flatnonzero(gaps > factor * np.maximum(left, right)) + 1
  return np.insert(d, breaks, np.nan), np.insert(y, breaks, np.nan)


# --- Heatmap -------------------------------------------------------------------------------------


def _bucket_width(span, max_buckets=40):
  """The smallest power of two >= 16 that cuts a distance span into <= max_buckets buckets."""
  width = 16
  while (span + 1) / width > max_buckets - 1:  # - 1: the span may straddle one more bucket
    width *= 2
  return width


def heatmap_cells(curve, limit, width, first, num_buckets):
  """One model's heatmap cells: buckets [lo, hi) of `width` tokens, split after the limit.

  A bucket holding both d = limit and d = limit + 1 becomes two cells, [lo, limit + 1) and
  [limit + 1, hi), so no cell mixes distances inside the reach with distances beyond it.

  Args:
    curve: (distance, recall) pairs of one model, sorted by distance.
    limit: the largest distance inside (the reach; the trained length's for full attention).
    width, first, num_buckets: the buckets [(first + b) * width, (first + b + 1) * width).

  Returns:
    list of (lo, hi, recall averaged over the cell's distances weighted by their span, or nan
    where nothing was tested).
  """
  edges = [(first + b) * width for b in range(num_buckets + 1)]
  if edges[0] < limit + 1 < edges[-1] and limit + 1 not in edges:
    edges = sorted(edges + [limit + 1])
  d = np.array([c[0] for c in curve], dtype=np.float64)
  acc = np.array([c[1] for c in curve], dtype=np.float64)
  weights = stats.span_weights(d)
  cells = []
  for lo, hi in zip(edges[:-1], edges[1:]):
    keep = (d >= lo) & (d < hi)
    value = float(np.average(acc[keep], weights=weights[keep])) if keep.any() else float("nan")
    cells.append((lo, hi, value))
  return cells


def plot_accuracy_heatmap(rows, path=None):
  """Heatmap: models (rows) x distance buckets (columns) -> recall (module docstring).

  Grey cells were not tested; a dashed red line in each model's row marks its reach (full
  attention: the trained length), where its bucket is split (heatmap_cells).
  """
  groups = _groups(rows)
  distances = [r.distance for r in rows]
  width = _bucket_width(max(distances) - min(distances))
  first = min(distances) // width  # buckets [b * width, (b + 1) * width)
  num_buckets = max(distances) // width + 1 - first
  fig, ax = plt.subplots(
    figsize=(max(8, 0.42 * num_buckets + 4), 0.7 * len(groups) + 2.4), layout="constrained"
  )
  cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
  mesh = None
  for i, (first_row, by_seed) in enumerate(groups.values()):
    curve = [(c["distance"], c["hits"] / c["keys"]) for c in stats.by_distance(by_seed)]
    cells = heatmap_cells(curve, first_row.limit, width, first, num_buckets)
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
    ax.plot([first_row.limit + 1] * 2, [i, i + 1], "--", color="red", linewidth=1.8)
  ax.set_xlim(first * width, (first + num_buckets) * width)
  ax.set_ylim(len(groups), 0)
  labels = [
    f"{label} ({len(by_seed)} seed{'s' * (len(by_seed) > 1)})"
    for label, (_, by_seed) in groups.items()
  ]
  ax.set_yticks(np.arange(len(groups)) + 0.5, labels, fontsize=8)
  ax.set_xlabel(
    f"distance d (buckets of {width} tokens; red dashes: the reach Σ(w−1), for full attention "
    "the trained length)"
  )
  ax.set_title(
    "Passkey recall (%) by distance: keys pooled over seeds per distance, distances weighted by "
    "their span",
    fontsize=10,
  )
  fig.colorbar(mesh, ax=ax, label="recall", fraction=0.03, pad=0.01)
  if path is not None:
    fig.savefig(path, dpi=120)
  return fig


# --- Recall per seed -----------------------------------------------------------------------------


def plot_seed_curves(rows, path=None, threshold=summary.THRESHOLD):
  """Recall vs distance, one panel per model, one line per seed (module docstring).

  Dots are the tested distances (hollow: prompts longer than the trained length); the dashed red
  line is the reach (full attention: the trained length), the dotted grey line the threshold.
  """
  groups = _groups(rows)
  cols = min(3, len(groups))
  nrows = math.ceil(len(groups) / cols)
  fig, axes = plt.subplots(
    nrows,
    cols,
    figsize=(5.2 * cols, 3.4 * nrows + 0.6),
    squeeze=False,
    sharey=True,
    layout="constrained",
  )
  for ax, (label, (first, by_seed)) in zip(axes.flat, groups.items()):
    for seed, rs in by_seed.items():
      d = np.array([r.distance for r in rs])
      acc = np.array([r.accuracy for r in rs])
      beyond = np.array([r.beyond_train_len for r in rs])
      (line,) = ax.plot(*broken_line(d, acc), lw=1.0, alpha=0.8, label=f"seed {seed}")
      color = line.get_color()
      ax.plot(d[~beyond], acc[~beyond], "o", color=color, markersize=2.2)
      ax.plot(d[beyond], acc[beyond], "o", color=color, markerfacecolor="white", markersize=2.6)
    what = (
      f"reach {first.limit}" if first.reach is not None else f"trained length (d ≤ {first.limit})"
    )
    ax.axvline(first.limit, color="red", ls="--", lw=1.2, label=what)
    ax.axhline(threshold, color="grey", ls=":", lw=1)
    ax.set_title(f"{label}, {len(by_seed)} seed{'s' * (len(by_seed) > 1)}", fontsize=9)
    ax.set_xlabel("distance d (tokens)")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="lower left")
  for ax in axes[:, 0]:
    ax.set_ylabel("recall (5 digits)")
  for ax in list(axes.flat)[len(groups) :]:
    ax.set_visible(False)
  fig.suptitle(
    f"Passkey recall by seed (dots: tested distances; hollow: prompts longer than trained; "
    f"dotted: {100 * threshold:g} %)",
    fontsize=10,
  )
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


# --- The depth sweep -----------------------------------------------------------------------------


def plot_depth_sweep(rows, path=None):
  """The measured 50 % wall against the reach sum_l (w_l - 1), one point per seed of each windowed
  model.

  Small dots are each seed's crossing (stats.crossing of its own curve), a ring the crossing of
  the mean over seeds; the diagonal is wall = reach, the band the ±3 % goal. Models that never
  fall below 50 %, or start below it, have no finite crossing and are left out (the legend says
  which). Returns the Figure.
  """
  summaries = [s for s in summary.summarize(rows) if s["reach"] is not None]
  fig, ax = plt.subplots(figsize=(7.5, 5.6), layout="constrained")
  groups = stats.group_by_model(rows)
  top = max((s["reach"] for s in summaries), default=1)
  line = np.array([0, 1.08 * top])
  ax.fill_between(
    line, line * (1 - stats.CROSSING_GOAL), line * (1 + stats.CROSSING_GOAL), color="green",
    alpha=0.12, lw=0, label=f"±{100 * stats.CROSSING_GOAL:g} % of the reach",
  )  # fmt: skip
  ax.plot(line, line, "--", color="grey", lw=1, label="wall = reach Σ_l (w_l − 1)")
  colors = plt.get_cmap("tab20").colors  # tab10's 10 colours repeat in a campaign's legend
  for i, s in enumerate(summaries):
    first = next(iter(groups[s["model"]].values()))[0]
    label = model_label(s["model"], first)
    per_seed = [c for c in s["crossing_per_seed"].values() if math.isfinite(c)]
    if not per_seed:
      ax.plot([], [], " ", label=f"{label}: no 50 % crossing")
      continue
    (dots,) = ax.plot(
      [s["reach"]] * len(per_seed), per_seed, "o", ms=4, alpha=0.7, label=label,
      color=colors[i % len(colors)],
    )  # fmt: skip
    if math.isfinite(s["crossing"]):
      ax.plot(s["reach"], s["crossing"], "o", ms=10, mfc="none", color=dots.get_color())
  ax.set_xlim(0, 1.08 * top)
  ax.set_ylim(0, 1.08 * top)
  ax.set_xlabel("reach Σ_l (w_l − 1) = L·(w−1) for one window (tokens)")
  ax.set_ylabel("measured 50 % crossing (tokens)")
  ax.set_title(
    "Where recall falls below 50 % against the reach\n(dots: seeds; rings: mean over seeds)",
    fontsize=10,
  )
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="upper left")
  if path is not None:
    fig.savefig(path, dpi=120)
  return fig
