"""Statistics of passkey rows: span weights, Wilson intervals, pooling seeds, the 50 % crossing.

The input is PasskeyRows (swa/analysis/rows.py). Rows of one model trained with several seeds
are grouped by their model name with the seed removed (rows.strip_seed: "w512_s1_f03" ->
"w512_f03", "window_size=128,num_layers=2,seed=1" -> "window_size=128,num_layers=2").

Intervals (95 %, z = 1.96):
  - Per distance: the Wilson score interval on the pooled keys, hits = sum over seeds of
    round(accuracy * n) out of keys = sum of n. Pooling treats every key as an independent draw
    from one recall value: it measures how well these seeds' models were measured, not how much a
    new seed would differ, which the per-seed values (always reported beside it) show.
  - Over a distance range (e.g. inside the reach): the mean over seeds of each seed's mean over
    distances, each distance weighted by the span of distances it stands for (span_weights, so
    the denser grid near the reach does not outweigh the rest). Its interval is Wilson's with
    Kish's effective number of keys n_eff = (sum_i u_i)^2 / sum_i u_i^2 for the per-key weights
    u_i of that mean; with one distance, or evenly spaced distances and the same n everywhere,
    this is the Wilson interval on the pooled keys exactly.
A run of n keys that are all right bounds recall only above 1 / (1 + z^2 / n) (Wilson; 96.3 % for
n = 100; Clopper-Pearson gives 0.025^(1/n) = 96.4 %): see all_hits_lower_bound; certifying a
recall p that way takes keys_to_certify(p) keys, all right (765 for 99.5 %).

The 50 % crossing (crossing) is where a curve first falls below 50 %, by linear interpolation
between the two tested distances around it; its ratio to the reach says how much of the
theoretical reach the models use. swa/analysis/summary.py puts these together per model.
"""

import collections
import math

import numpy as np

from swa.analysis import rows as rows_lib
from swa.checks import check_int

Z95 = 1.959963984540054  # two-sided 95 % normal quantile
CROSSING_LEVEL = 0.5
CROSSING_GOAL = 0.03  # the goal: the 50 % crossing within +-3 % of the reach


# --- Intervals ----------------------------------------------------------------------------------


def wilson_interval(hits, trials, z=Z95):
  """Wilson score interval of a binomial proportion.

  Args:
    hits: successes (may be fractional when trials is an effective count).
    trials: number of trials, > 0.
    z: normal quantile; the default gives a two-sided 95 % interval.

  Returns:
    (low, high), both in [0, 1].
  """
  if not trials > 0:
    raise ValueError(f"wilson_interval needs trials > 0, got {trials}.")
  if not -1e-9 <= hits <= trials + 1e-9:
    raise ValueError(f"wilson_interval needs 0 <= hits <= trials, got {hits} of {trials}.")
  p, z2 = min(max(hits / trials, 0.0), 1.0), z * z
  center = (p + z2 / (2 * trials)) / (1 + z2 / trials)
  half = z / (1 + z2 / trials) * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
  return max(0.0, center - half), min(1.0, center + half)


def all_hits_lower_bound(n, z=Z95):
  """{"wilson", "clopper_pearson"}: the 95 % lower bound on recall when n keys out of n are right."""
  alpha = 2 * (1 - 0.5 * (1 + math.erf(z / math.sqrt(2))))
  return {"wilson": wilson_interval(n, n, z)[0], "clopper_pearson": (alpha / 2) ** (1 / n)}


def keys_to_certify(recall, z=Z95):
  """Fewest keys that, all right, put the 95 % Wilson lower bound at `recall` or above."""
  if not 0 < recall < 1:
    raise ValueError(f"keys_to_certify needs 0 < recall < 1, got {recall}.")
  return math.ceil(z * z * recall / (1 - recall) - 1e-9)


def pooled_mean(rows_by_seed):
  """Mean over seeds of each seed's span-weighted mean over its rows, with a Wilson interval.

  Args:
    rows_by_seed: {seed: PasskeyRows}; seeds without rows are left out.

  Returns:
    dict(mean, low, high, n_eff, per_seed={seed: mean}), or None when no seed has rows.
  """
  per_seed, weighted_hits, sum_u, sum_u2 = {}, 0.0, 0.0, 0.0
  for seed, rows in rows_by_seed.items():
    rows = sorted(rows, key=lambda r: r.distance)
    if not rows:
      continue
    w = span_weights([r.distance for r in rows])
    w = w / w.sum()
    acc = np.array([r.accuracy for r in rows])
    n = np.array([r.n for r in rows], dtype=np.float64)
    per_seed[seed] = float(np.dot(w, acc))
    weighted_hits += per_seed[seed]
    sum_u += 1.0  # each seed's key weights u = w_d / n_d sum to 1
    sum_u2 += float(np.sum(w * w / n))
  if not per_seed:
    return None
  mean, n_eff = weighted_hits / sum_u, sum_u * sum_u / sum_u2
  low, high = wilson_interval(mean * n_eff, n_eff)
  return {"mean": mean, "low": low, "high": high, "n_eff": n_eff, "per_seed": per_seed}


def span_weights(distances):
  """Weight of each sorted sampled distance: the span of distances it stands for.

  Each point covers half the gap to each neighbour (the outer ends mirror the inner gap), so
  evenly spaced points weigh the same and the denser grid near the reach does not outweigh the
  rest in a mean over distances.
  """
  d = np.asarray(distances, dtype=np.float64)
  if d.size == 1:
    return np.ones(1)
  padded = np.concatenate([[2 * d[0] - d[1]], d, [2 * d[-1] - d[-2]]])
  return (padded[2:] - padded[:-2]) / 2


def max_distance_at(curve, threshold):
  """Largest tested distance D with accuracy >= threshold at every tested distance <= D.

  Args:
    curve: (distance, accuracy) pairs, any order.
    threshold: the level, e.g. 0.95.

  Returns:
    D, or None when the shortest tested distance already falls short.
  """
  best = None
  for d, a in sorted(curve):
    if a < threshold - 1e-9:
      break
    best = d
  return best


# --- Seeds ----------------------------------------------------------------------------------------


def group_by_model(rows):
  """{model name without seed: {seed: rows sorted by distance}}: models in order of appearance,
  seeds in increasing order.

  One model's rows must agree on window, layers, reach and trained length, and a (model, seed,
  distance) may appear once.
  """
  groups = collections.OrderedDict()
  for r in rows:
    name = rows_lib.strip_seed(r.model)
    by_seed = groups.setdefault(name, collections.OrderedDict())
    by_seed.setdefault(r.seed, []).append(r)
  for name, by_seed in groups.items():
    shapes = {(r.window, r.layers, r.reach, r.train_seq_len) for rs in by_seed.values() for r in rs}
    if len(shapes) > 1:
      raise ValueError(
        f"Model {name!r} has rows of different models (window, layers, reach, trained T): "
        f"{sorted(shapes, key=str)}; give each a name of its own."
      )
    for seed, rs in by_seed.items():
      rs.sort(key=lambda r: r.distance)
      distances = [r.distance for r in rs]
      if len(set(distances)) < len(distances):
        raise ValueError(
          f"Model {name!r} seed {seed} has a distance twice (the same file "
          "given twice, or two runs of one seed?)."
        )
    groups[name] = collections.OrderedDict(sorted(by_seed.items()))
  return groups


def by_distance(rows_by_seed):
  """Per-distance rows of one model: the mean over seeds, each seed's value, Wilson on pooled keys.

  Returns:
    list of dicts sorted by distance: distance, inside, seeds (those that tested it), accuracy
    (mean over those seeds), per_seed {seed: accuracy}, min_seed (lowest seed value), hits, keys
    (pooled over seeds), low, high (Wilson 95 % on hits / keys).
  """
  table = collections.defaultdict(dict)
  for seed, rs in rows_by_seed.items():
    for r in rs:
      table[r.distance][seed] = r
  out = []
  for d in sorted(table):
    cell = table[d]
    hits = sum(r.hits for r in cell.values())
    keys = sum(r.n for r in cell.values())
    low, high = wilson_interval(hits, keys)
    per_seed = {s: r.accuracy for s, r in cell.items()}
    out.append(
      {
        "distance": d,
        "inside": next(iter(cell.values())).inside,
        "seeds": sorted(cell),
        "accuracy": float(np.mean(list(per_seed.values()))),
        "per_seed": per_seed,
        "min_seed": min(per_seed.values()),
        "hits": hits,
        "keys": keys,
        "low": low,
        "high": high,
      }
    )
  return out


# --- Reading a curve -----------------------------------------------------------------------------


def crossing(distances, accuracies, level=CROSSING_LEVEL):
  """Distance where accuracy first falls below `level`, linearly interpolated.

  Returns:
    a float; -inf when the first tested distance is already below level, +inf when no
    tested distance is.
  """
  pairs = sorted(zip(distances, accuracies))
  if not pairs:
    raise ValueError("crossing needs at least one tested distance.")
  if pairs[0][1] < level:
    return -math.inf
  for (d0, a0), (d1, a1) in zip(pairs, pairs[1:]):
    if a1 < level:
      return d0 + (a0 - level) / (a0 - a1) * (d1 - d0)
  return math.inf


# --- Seeds as a distribution ---------------------------------------------------------------------

# Two-sided 95 % quantiles of Student's t, t_{0.975}(df), df = 1..30 (textbook table).
_T975 = (
  12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
  2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
  2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
HOPS_FRACTION = 0.9  # "relays all hops": judged on the tested d <= 0.9 x reach ...
HOPS_LEVEL = 0.5  # ... where recall never falls below 50 %


def t975(df):
  """t_{0.975}(df): the table for df <= 30, else Cornish-Fisher's expansion around z (error <
  1e-3)."""
  check_int("df", df)
  if df <= len(_T975):
    return _T975[df - 1]
  z = Z95
  return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df * df)


def seed_interval(values, clip=(0.0, 1.0)):
  """The t-interval over seeds: mean +- t975(k - 1) * sd / sqrt(k) of k per-seed values.

  It says how much a new seed of the same recipe may differ, which the key-level Wilson interval
  (how well these seeds were measured) does not. The bounds are clipped to `clip` (recall lies
  in [0, 1]; None: no clipping).

  Returns:
    dict(mean, low, high, k), or None for fewer than two seeds (no spread to measure).
  """
  v = np.asarray(list(values), dtype=np.float64)
  if v.size < 2:
    return None
  half = t975(v.size - 1) * float(np.std(v, ddof=1)) / math.sqrt(v.size)
  mean = float(v.mean())
  low, high = mean - half, mean + half
  if clip is not None:
    low, high = max(clip[0], low), min(clip[1], high)
  return {"mean": mean, "low": low, "high": high, "k": int(v.size)}


def relays_all_hops(rows, reach):
  """Whether one seed's model relays the key through every layer: recall >= HOPS_LEVEL at every
  tested d <= HOPS_FRACTION x reach (a lost hop is a collapse well before the reach, far below
  the key-sampling noise of 100 keys around 95 %). None without a reach or a tested d there."""
  if reach is None:
    return None
  judged = [r.accuracy for r in rows if r.distance <= HOPS_FRACTION * reach]
  return min(judged) >= HOPS_LEVEL if judged else None


def verdict(low, high, goal_low, goal_high=math.inf):
  """ "✓" when the interval [low, high] lies inside [goal_low, goal_high], "✗" when it lies wholly
  outside, "?" (not established) when it straddles an edge."""
  if goal_low - 1e-12 <= low and high <= goal_high + 1e-12:
    return "✓"
  if high < goal_low - 1e-12 or low > goal_high + 1e-12:
    return "✗"
  return "?"
