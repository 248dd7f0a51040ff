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
  "Inside the reach (full: the trained length): mean [95 % interval]",
  "Per seed",
  "Seed table expects",
  "Measured up to that distance",
  "≥ 95 % up to d (mean / every seed)",
  "50 % crossing",
  "Crossing / reach",
)


def _pct(x):
  return f"{100 * x:.1f} %"


def _interval(m):
  return "—" if m is None else f"{_pct(m['mean'])} [{100 * m['low']:.1f}, {100 * m['high']:.1f}]"


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


def format_headline_table(summaries):
  """Markdown table of summarize_model() dicts, one row per model (columns HEADLINE_COLUMNS)."""
  threshold = summaries[0]["threshold"] if summaries else summary.THRESHOLD
  header = [
    c.replace("95", f"{100 * threshold:g}", 1) if c.startswith("≥") else c for c in HEADLINE_COLUMNS
  ]
  lines = ["| " + " | ".join(header) + " |", "|---|---|---:|---:|---|" + "---:|" * 7]
  for s in summaries:
    reach = "unlimited" if s["reach"] is None else str(s["reach"])
    seeds = f"{len(s['seeds'])} ({', '.join(str(x) for x in s['seeds'])})"
    per_seed = (
      "—"
      if s["inside"] is None
      else " / ".join(f"{100 * v:.1f}" for v in s["inside"]["per_seed"].values())
    )
    if s["reference"] is None:
      ref_cell = at_ref = "—"
    else:
      distance, accuracy = s["reference"]
      ref_cell = (
        f"{'unlimited' if distance is None else f'~{distance} tokens'} at {100 * accuracy:g} %"
      )
      met = s["at_reference"] is not None and s["at_reference"]["mean"] >= accuracy - 1e-9
      at_ref = _interval(s["at_reference"]) + (" ✓" if met else " ✗")
    best = (
      f"{_distance_cell(s['max_distance'], s)} / {_distance_cell(s['max_distance_every_seed'], s)}"
    )
    if s["ratio"] is None:
      ratio = "—"
    else:
      off = s["ratio"] - 1
      ratio = f"{s['ratio']:.3f} ({100 * off:+.1f} %)" + (
        " ✓" if abs(off) <= stats.CROSSING_GOAL + 1e-12 else " ✗"
      )
    cells = [
      s["model"],
      s["window"],
      str(s["layers"]),
      reach,
      seeds,
      _interval(s["inside"])
      + (
        f"; beyond the trained length {100 * s['beyond']['mean']:.1f} %"
        if s["reach"] is None and s["beyond"]
        else ""
      ),
      per_seed,
      ref_cell,
      at_ref,
      best,
      _crossing_cell(s["crossing"], s),
      ratio,
    ]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def headline_notes(keys_per_point):
  """The paragraph under the headline table: what is measured, what is by construction."""
  bound = stats.all_hits_lower_bound(keys_per_point)
  return (
    "Distance d runs from the first key digit to the token that predicts the first answer "
    "digit; the reach Σ_l (w_l − 1) is the largest d any stack of these windows can carry. "
    "**Recall beyond the reach is 0 by construction:** the attention mask leaves the answer no "
    "path to the key, whatever the weights, so a 0 % there checks the mask and the evaluation, "
    "not learning (a rare chance hit, 1 in 90,000 for five random digits, is all that can "
    "appear). The findings are inside the reach.\n\n"
    "Inside the reach: the mean over seeds of each seed's recall averaged uniformly over the "
    "tested distances d ≤ reach (each distance weighted by the span it stands for), with a 95 % "
    "Wilson interval on the pooled keys (Kish's effective count for the weights; swa/analysis/stats.py); "
    "the per-seed values show the spread between seeds, which the interval does not. Full "
    "attention has no reach: its mean is over the distances inside its trained length, with the "
    "mean over those beyond it beside. "
    '"Seed table expects": the brief\'s row for this window (4 layers; full attention '
    "unlimited, judged on every tested distance), and the same mean over d up to that distance "
    "(✓ when it reaches the "
    'expected recall). "≥ 95 % up to d": the largest tested d such that recall is ≥ 95 % at '
    "every tested distance up to it, for the mean over seeds and for the lowest seed. "
    "50 % crossing: where the mean over seeds first falls below 50 %, linearly interpolated "
    f"between tested distances; the goal is a crossing within ±{100 * stats.CROSSING_GOAL:g} % of "
    "the reach (✓).\n\n"
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
