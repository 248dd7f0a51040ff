"""The headline table of passkey results, its notes, and the per-distance CSV's rows.

format_headline_table takes summary.summarize's dicts (one model per row, over its seeds; one
seed is n = 1); headline_notes is the paragraph under it; distance_rows gives
passkey_by_distance.csv (BY_DISTANCE_FIELDS): per model and distance, the mean over seeds, each
seed's value, the pooled keys and their Wilson interval. eval_passkey.py and sweep.py write them
through swa/analysis/report.py.
"""

import math

from swa.analysis import stats, summary

BY_DISTANCE_FIELDS = (
  "model",
  "window",
  "layers",
  "reach",
  "distance",
  "inside",
  "seeds",
  "accuracy",
  "per_seed",
  "min_seed",
  "hits",
  "keys",
  "wilson_low",
  "wilson_high",
)


# --- The headline table --------------------------------------------------------------------------

HEADLINE_COLUMNS = (
  "Model",
  "Window",
  "Layers",
  "Reach",
  "Seeds",
  "Inside the reach (full: the trained length): mean [95 % keys]",
  "[95 % seeds]",
  "Per seed",
  "Seeds with all hops",
  "Seed table expects",
  "Measured up to that distance: mean [95 %], verdict",
  "≥ 95 % up to d (mean / every seed)",
  "50 % crossing",
  "Crossing / reach [95 % seeds], verdict",
)


def _pct(x):
  return f"{100 * x:.1f} %"


def _bounds(m):
  return f"[{100 * m['low']:.1f}, {100 * m['high']:.1f}]"


def _interval(m):
  return "—" if m is None else f"{_pct(m['mean'])} {_bounds(m)}"


def _distance_cell(best, s):
  if best is None:
    return f"< {s['min_tested']}"
  return f"≥ {best} (all)" if best == s["max_tested"] else str(best)


def _crossing_cell(x, s):
  if x == -math.inf:
    return f"< {s['min_tested']}"
  if x == math.inf:
    return f"none ≤ {s['max_tested']}"
  return f"{x:.0f}"


def _reference_cells(s):
  """(expects, measured): the verdict on the seed-level interval (the key-level one for a single
  seed, which is a statement about that one model)."""
  if s["reference"] is None:
    return "—", "—"
  distance, accuracy = s["reference"]
  expects = f"{'unlimited' if distance is None else f'~{distance} tokens'} at {100 * accuracy:g} %"
  m = s["at_reference"]
  if m is None:
    return expects, "—"
  basis = s["at_reference_seeds"] or m
  judged = "seeds" if s["at_reference_seeds"] else "keys"
  cell = f"{_interval(m)}" + (f", seeds {_bounds(basis)}" if s["at_reference_seeds"] else "")
  return expects, f"{cell} {stats.verdict(basis['low'], basis['high'], accuracy)} ({judged})"


def _ratio_cell(s):
  if s["ratio"] is None:
    return "—"
  goal = (1 - stats.CROSSING_GOAL, 1 + stats.CROSSING_GOAL)
  cell = f"{s['ratio']:.3f} ({100 * (s['ratio'] - 1):+.1f} %)"
  r = s["ratio_seeds"]
  if r is None:  # one seed (or a seed without a crossing): the point against the goal
    return cell + f" {stats.verdict(s['ratio'], s['ratio'], *goal)}"
  return cell + f" [{r['low']:.3f}, {r['high']:.3f}] {stats.verdict(r['low'], r['high'], *goal)}"


def format_headline_table(summaries):
  """Markdown table of summary.summarize's dicts, one row per model (columns HEADLINE_COLUMNS)."""
  threshold = summaries[0]["threshold"] if summaries else summary.THRESHOLD
  header = [
    c.replace("95", f"{100 * threshold:g}", 1) if c.startswith("≥") else c for c in HEADLINE_COLUMNS
  ]
  lines = ["| " + " | ".join(header) + " |", "|---|---|---:|---:|---|" + "---:|" * 9]
  for s in summaries:
    reach = "unlimited" if s["reach"] is None else str(s["reach"])
    seeds = f"{len(s['seeds'])} ({', '.join(str(x) for x in s['seeds'])})"
    inside = s["inside"]
    per_seed = (
      "—" if inside is None else " / ".join(f"{100 * v:.1f}" for v in inside["per_seed"].values())
    )
    hops = [v for v in s["all_hops"].values() if v is not None]
    beyond = ""
    if s["reach"] is None and s["beyond"]:
      beyond = f"; beyond the trained length {100 * s['beyond']['mean']:.1f} %"
    cells = [
      s["model"],
      s["window"],
      str(s["layers"]),
      reach,
      seeds,
      _interval(inside) + beyond,
      "—" if s["inside_seeds"] is None else _bounds(s["inside_seeds"]),
      per_seed,
      f"{sum(hops)} of {len(hops)}" if hops else "—",
      *_reference_cells(s),
      f"{_distance_cell(s['max_distance'], s)} / {_distance_cell(s['max_distance_every_seed'], s)}",
      _crossing_cell(s["crossing"], s),
      _ratio_cell(s),
    ]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def headline_notes(keys_per_point):
  """The paragraphs under the headline table: what is measured, what is by construction."""
  bound = stats.all_hits_lower_bound(keys_per_point)
  return (
    "Distance d runs from the first key digit to the token that predicts the first answer "
    "digit; the reach Σ_l (w_l − 1) is the largest d any stack of these windows can carry. "
    "**Recall beyond the reach is 0 by construction:** the attention mask leaves the answer no "
    "path to the key, whatever the weights, so a 0 % there checks the mask and the evaluation, "
    "not learning (a rare chance hit, 1 in 90,000 for five random digits, is all that can "
    "appear). The findings are inside the reach.\n\n"
    "Inside the reach: the mean over seeds of each seed's recall averaged uniformly over the "
    "tested distances d ≤ reach (each distance weighted by the span it stands for). Two 95 % "
    "intervals: [keys] is Wilson's on the pooled keys (Kish's effective count for the weights; "
    "swa/analysis/stats.py): how well these seeds' models were measured; [seeds] is the "
    "t-interval over the per-seed means (mean ± t₀.₉₇₅(k−1)·sd/√k, k seeds; none for one seed): "
    "how much a new seed of the same recipe may differ. Full attention has no reach: inside is "
    "d up to the largest distance of its trained length, and the mean beyond it is beside. "
    f'"Seeds with all hops": seeds whose recall is ≥ {100 * stats.HOPS_LEVEL:g} % at every '
    f"tested d ≤ {stats.HOPS_FRACTION:g} × reach (a lost hop collapses recall well before the "
    "reach; 100 keys put the sampling noise of a 95 % recall at about ±4 points). "
    '"Seed table expects": the brief\'s row for this window (4 layers, alone or behind one '
    "shorter first layer; full attention "
    "unlimited, judged on every tested distance), the same mean over d up to that distance, and "
    "a verdict only where the interval decides it: ✓ when the whole seed-level interval (the "
    "key-level one for a single seed) reaches the expected recall, ✗ when all of it falls short, "
    '? when it straddles the expectation (not established with these seeds). "≥ 95 % up to d": '
    "the largest tested d such that recall is ≥ 95 % at every tested distance up to it, for the "
    "mean over seeds and for the lowest seed. 50 % crossing: where the mean over seeds first "
    "falls below 50 %, linearly interpolated between tested distances; its ratio to the reach "
    f"is judged against the goal of ±{100 * stats.CROSSING_GOAL:g} % on the t-interval of the "
    "per-seed ratios (one seed: on its value).\n\n"
    f"With {keys_per_point} keys per distance, a {keys_per_point}/{keys_per_point} bounds recall "
    f"only above {_pct(bound['wilson'])} (Wilson 95 %; Clopper–Pearson: "
    f"{_pct(bound['clopper_pearson'])}); certifying ≥ 99.5 % at one distance takes "
    f"{stats.keys_to_certify(0.995)} keys, all right. Per-distance intervals are in "
    "`passkey_by_distance.csv`.\n"
  )


def distance_rows(rows):
  """The rows of passkey_by_distance.csv (BY_DISTANCE_FIELDS)."""
  out = []
  for name, by_seed in stats.group_by_model(rows).items():
    first = next(iter(by_seed.values()))[0]
    for c in stats.by_distance(by_seed):
      out.append(
        {
          "model": name,
          "window": first.window,
          "layers": first.layers,
          "reach": first.reach,
          "distance": c["distance"],
          "inside": c["inside"],
          "seeds": ";".join(str(s) for s in c["seeds"]),
          "accuracy": c["accuracy"],
          "per_seed": ";".join(f"{c['per_seed'][s]:g}" for s in c["seeds"]),
          "min_seed": c["min_seed"],
          "hits": c["hits"],
          "keys": c["keys"],
          "wilson_low": round(c["low"], 6),
          "wilson_high": round(c["high"], 6),
        }
      )
  return out
