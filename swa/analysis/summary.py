"""The one summary of passkey rows: per model, over its seeds (one seed is n = 1).

`summarize(rows)` groups PasskeyRows by model (the name without its seed, stats.group_by_model)
and gives each model's headline numbers (`summarize_model`): the mean recall inside and beyond
the reach with intervals, the brief's expectation beside it, how far recall stays >= 95 %, the
50 % crossing. Inside means d <= the model's reach, for full attention the largest distance of
its trained context (rows.limit_of): one rule for eval_passkey.py and sweep.py alike.
"""

import math

from swa.analysis import stats

THRESHOLD = 0.95  # "max distance with >= 95 %"
# The seed table's expectations for the 4-layer models: window -> (distance, accuracy);
# None = no limit.
REFERENCE = {"128": (512, 0.95), "256": (1024, 0.90), "512": (2048, 0.85), "full": (None, 1.00)}


def reference_for(window, layers):
  """The brief's (distance or None, accuracy) for this model, or None. Its windowed rows are for
  4 layers of one window (512 = 4 x 128), also behind one shorter first layer ("16,512,512,512,512":
  the recipe of results/hops_recipe_h200/, whose reach is 15 tokens longer); full attention has no
  depth limit."""
  if window == "full":
    return REFERENCE["full"]
  windows = str(window).split(",")
  if len(windows) == 5 and windows[0].isdigit() and windows[1].isdigit():
    if int(windows[0]) < int(windows[1]):
      windows, layers = windows[1:], layers - 1
  if layers != 4 or len(set(windows)) != 1:
    return None
  return REFERENCE.get(windows[0])


def summarize_model(name, rows_by_seed, reference=None, threshold=THRESHOLD):
  """The headline numbers of one model over its seeds.

  Args:
    name: the model's name (without seed).
    rows_by_seed: {seed: PasskeyRows} of stats.group_by_model.
    reference: the seed table's (distance or None, accuracy) for this model, or None.
    threshold: the recall level of max_distance (0.95).

  Returns:
    dict: model, window, layers, reach (None for full attention), limit (the largest distance
    inside: the reach, or the trained context's largest distance), train_seq_len, seeds,
    threshold, inside (stats.pooled_mean over d <= limit), inside_seeds (stats.seed_interval of
    its per-seed means; None for one seed), beyond (pooled_mean over d > limit; None if none),
    reference, at_reference (pooled_mean over d <= the reference distance; every tested d for
    full attention), at_reference_seeds (its seed_interval), all_hops {seed:
    stats.relays_all_hops}, max_distance (every tested d up to it has mean recall >= threshold),
    max_distance_every_seed (the same for the lowest seed at each distance), crossing (of the
    mean, stats.crossing), crossing_per_seed {seed: crossing}, ratio (crossing / reach; None
    without a reach or a finite crossing), ratio_seeds (seed_interval of the per-seed crossing /
    reach; None unless every seed has a finite one), min_tested, max_tested, max_seq_len.
  """
  first = next(iter(rows_by_seed.values()))[0]
  reach, limit = first.reach, first.limit
  curve = stats.by_distance(rows_by_seed)
  ds = [c["distance"] for c in curve]

  def subset(keep):
    return {s: [r for r in rs if keep(r)] for s, rs in rows_by_seed.items()}

  at_reference = None
  if reference is not None:
    at_reference = stats.pooled_mean(
      subset(lambda r: reference[0] is None or r.distance <= reference[0])
    )
  cross = stats.crossing(ds, [c["accuracy"] for c in curve])
  inside = stats.pooled_mean(subset(lambda r: r.distance <= limit))
  crossing_per_seed = {
    s: stats.crossing([r.distance for r in rs], [r.accuracy for r in rs])
    for s, rs in rows_by_seed.items()
  }
  ratios = [c / reach for c in crossing_per_seed.values() if reach and math.isfinite(c)]
  return {
    "model": name,
    "window": first.window,
    "layers": first.layers,
    "reach": reach,
    "limit": limit,
    "train_seq_len": first.train_seq_len,
    "seeds": sorted(rows_by_seed),
    "threshold": threshold,
    "inside": inside,
    "inside_seeds": inside and stats.seed_interval(inside["per_seed"].values()),
    "beyond": stats.pooled_mean(subset(lambda r: r.distance > limit)),
    "reference": reference,
    "at_reference": at_reference,
    "at_reference_seeds": at_reference and stats.seed_interval(at_reference["per_seed"].values()),
    "all_hops": {s: stats.relays_all_hops(rs, reach) for s, rs in rows_by_seed.items()},
    "max_distance": stats.max_distance_at(
      [(c["distance"], c["accuracy"]) for c in curve], threshold
    ),
    "max_distance_every_seed": stats.max_distance_at(
      [(c["distance"], c["min_seed"]) for c in curve], threshold
    ),
    "crossing": cross,
    "crossing_per_seed": crossing_per_seed,
    "ratio": cross / reach if reach and math.isfinite(cross) else None,
    "ratio_seeds": stats.seed_interval(ratios, clip=None)
    if len(ratios) == len(rows_by_seed)
    else None,
    "min_tested": ds[0],
    "max_tested": ds[-1],
    "max_seq_len": max(r.seq_len for rs in rows_by_seed.values() for r in rs),
  }


def _window_order(window):
  """Sort key: windowed models by window, per-layer windows after, full attention last."""
  return (0, int(window), "") if window.isdigit() else (2 if window == "full" else 1, 0, window)


def summarize(rows, threshold=THRESHOLD):
  """summarize_model for every model of rows, sorted by window, then layers, then name."""
  out = []
  for name, by_seed in stats.group_by_model(rows).items():
    first = next(iter(by_seed.values()))[0]
    reference = reference_for(first.window, first.layers)
    out.append(summarize_model(name, by_seed, reference, threshold))
  return sorted(out, key=lambda s: (_window_order(s["window"]), s["layers"], s["model"]))
