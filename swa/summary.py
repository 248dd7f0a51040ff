"""Summaries of passkey rows (swa/evaluate.py's passkey_sweep): per model, as a table, on disk.

summarize / format_summary_table give passkey.md's table (max distance at >= 95 %, success
inside and beyond the reach, the seed table's expectation); write_rows / read_rows and
write_erf / read_erf are passkey.csv and effective_receptive_field.csv, so a table can be
rebuilt from earlier results with no checkpoint (eval_passkey.py --from_csv).
"""

import collections
import csv

import numpy as np

from swa import reports

THRESHOLD = 0.95  # "max distance with >= 95 %"
# The seed table's expectations for the 4-layer models: window -> (distance, accuracy);
# None = no limit.
REFERENCE = {"128": (512, 0.95), "256": (1024, 0.90), "512": (2048, 0.85), "full": (None, 1.00)}


# --- Summary -------------------------------------------------------------------------------------


def span_weights(distances):
  """Weight of each sorted sampled distance: the span of distances it stands for.

  Each point covers half the gap to each neighbour (the outer ends mirror the inner
  gap), so evenly spaced points weigh the same and the denser grid near the reach does
  not outweigh the rest in a mean over distances.
  """
  d = np.asarray(distances, dtype=np.float64)
  if d.size == 1:
    return np.ones(1)
  padded = np.concatenate([[2 * d[0] - d[1]], d, [2 * d[-1] - d[-2]]])
  return (padded[2:] - padded[:-2]) / 2


def mean_over_distances(rows):
  """Accuracy averaged uniformly over the distance range the rows sample; None if no rows."""
  rows = sorted(rows, key=lambda r: r["distance"])
  if not rows:
    return None
  weights = span_weights([r["distance"] for r in rows])
  return float(np.average([r["accuracy"] for r in rows], weights=weights))


def max_distance_at(rows, threshold=THRESHOLD):
  """Largest tested distance D with accuracy >= threshold at every tested distance <= D.

  None when the shortest tested distance already falls short.
  """
  best = None
  for r in sorted(rows, key=lambda r: r["distance"]):
    if r["accuracy"] < threshold - 1e-9:
      break
    best = r["distance"]
  return best


def summarize(rows, threshold=THRESHOLD):
  """One summary dict per model (in order of first appearance in rows).

  Keys: model, window, layers, reach, theoretical_rf (reach + 1 positions; None = no
  limit), max_distance_at_threshold (max_distance_at), min_tested / max_tested
  distances, all_pass (every tested distance reaches the threshold), success_inside
  (mean accuracy over distances <= reach; all of them for full attention),
  success_beyond (mean over distances > reach; None for full attention or if none were
  tested), train_seq_len, max_seq_len, reference / at_reference (the seed table's
  expectation (distance, accuracy) for this window -- windowed rows only for 4 layers --
  and the measured mean over distances up to that distance; None where there is none).
  Means are uniform over distance (mean_over_distances).
  """
  by_model = collections.OrderedDict()
  for r in rows:
    by_model.setdefault(r["model"], []).append(r)
  out = []
  for model, rs in by_model.items():
    rs = sorted(rs, key=lambda r: r["distance"])
    first, reach = rs[0], rs[0]["reach"]
    inside = [r for r in rs if reach is None or r["distance"] <= reach]
    beyond = [r for r in rs if reach is not None and r["distance"] > reach]
    best = max_distance_at(rs, threshold)
    # The seed table's windowed rows are for 4 layers (512 = 4 x 128); full attention has
    # no depth limit.
    applies = first["window"] == "full" or first["layers"] == 4
    reference = REFERENCE.get(first["window"]) if applies else None
    at_reference = None
    if reference is not None:
      ref_rows = [r for r in rs if reference[0] is None or r["distance"] <= reference[0]]
      at_reference = mean_over_distances(ref_rows)
    out.append(
      {
        "model": model,
        "window": first["window"],
        "layers": first["layers"],
        "reach": reach,
        "theoretical_rf": None if reach is None else reach + 1,
        "threshold": threshold,
        "max_distance_at_threshold": best,
        "min_tested": rs[0]["distance"],
        "max_tested": rs[-1]["distance"],
        "all_pass": best == rs[-1]["distance"],
        "success_inside": mean_over_distances(inside),
        "success_beyond": mean_over_distances(beyond),
        "train_seq_len": first.get("train_seq_len"),
        "max_seq_len": max(r["seq_len"] for r in rs),
        "reference": reference,
        "at_reference": at_reference,
      }
    )
  return out


SUMMARY_COLUMNS = (
  "Model",
  "Window",
  "Layers",
  "Theoretical RF",
  "Max distance with ≥ 95 %",
  "Success inside the RF",
  "Success beyond the RF",
  "Reference (seed table)",
  "Measured up to the reference distance",
  "Tested distances",
)


def _pct(x):
  return "—" if x is None else f"{100 * x:.1f} %"


def format_summary_table(summary) -> str:
  """The summarize() rows as a markdown table (columns SUMMARY_COLUMNS)."""
  threshold = summary[0]["threshold"] if summary else THRESHOLD
  header = [c.replace("95", f"{100 * threshold:g}") for c in SUMMARY_COLUMNS]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 2 + "---:|" * 7 + "---|"]
  for s in summary:
    rf_cell = "unlimited" if s["reach"] is None else f"{s['theoretical_rf']} (reach {s['reach']})"
    best = s["max_distance_at_threshold"]
    if best is None:
      best_cell = f"< {s['min_tested']}"
    elif s["all_pass"]:
      best_cell = f"≥ {best} (all tested)"
    else:
      best_cell = str(best)
    beyond = "n/a (no limit)" if s["reach"] is None else _pct(s["success_beyond"])
    if s["reference"] is None:
      ref_cell, at_ref = "—", "—"
    else:
      distance, accuracy = s["reference"]
      ref_cell = (
        f"{'unlimited' if distance is None else f'~{distance} tokens'} at {100 * accuracy:g} %"
      )
      at_ref = _pct(s["at_reference"])
    tested = f"{s['min_tested']}–{s['max_tested']}"
    if s["train_seq_len"] and s["max_seq_len"] > s["train_seq_len"]:
      tested += f" (prompts up to T={s['max_seq_len']}, trained T={s['train_seq_len']})"
    elif s["train_seq_len"]:
      tested += f" (trained T={s['train_seq_len']})"
    cells = [
      s["model"],
      s["window"],
      str(s["layers"]),
      rf_cell,
      best_cell,
      _pct(s["success_inside"]),
      beyond,
      ref_cell,
      at_ref,
      tested,
    ]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


# --- Rows on disk (the CSVs of eval_passkey.py) --------------------------------------------------

# The columns of passkey.csv (eval_passkey.py), one per key of a _rows() row, and how
# read_rows() turns each text cell back into its value.
_CSV_TYPES = {
  "model": str,
  "window": str,
  "layers": int,
  "reach": lambda text: int(text) if text else None,
  "distance": int,
  "inside": lambda text: text == "True",
  "accuracy": float,
  "n": int,
  "seq_len": int,
  "train_seq_len": int,
  "beyond_train_len": lambda text: text == "True",
}
CSV_FIELDS = tuple(_CSV_TYPES)
ERF_FIELDS = ("model", "distance", "erf", "erf_normalized")  # effective_receptive_field.csv


def read_rows(path):
  """The rows of a passkey.csv written by eval_passkey.py, typed as passkey_sweep returns them."""
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    missing = [k for k in CSV_FIELDS if k not in (reader.fieldnames or ())]
    if missing:
      raise ValueError(f"{path} is not a passkey.csv of eval_passkey.py: no column {missing}.")
    return [{k: _CSV_TYPES[k](r[k]) for k in CSV_FIELDS} for r in reader]


def write_rows(path, rows):
  """passkey.csv: one line per row of passkey_sweep, columns CSV_FIELDS."""
  reports.write_csv(path, rows, CSV_FIELDS)


def write_erf(path, erfs):
  """effective_receptive_field.csv from {model: {distance: erf}} (swa/erf.py).

  Columns ERF_FIELDS; erf_normalized is erf divided by the model's largest value.
  """
  rows = []
  for model, by_d in erfs.items():
    top = max(by_d.values(), default=0.0)
    rows += [
      {
        "model": model,
        "distance": d,
        "erf": float(v),
        "erf_normalized": float(v / top) if top > 0 else 0.0,
      }
      for d, v in sorted(by_d.items())
    ]
  reports.write_csv(path, rows, ERF_FIELDS)


def read_erf(path):
  """{model: {distance: erf}} from an effective_receptive_field.csv (old dense files too)."""
  erfs = collections.defaultdict(dict)
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    missing = [k for k in ("model", "distance", "erf") if k not in (reader.fieldnames or ())]
    if missing:
      raise ValueError(f"{path} is not an effective_receptive_field.csv: no column {missing}.")
    for r in reader:
      erfs[r["model"]][int(r["distance"])] = float(r["erf"])
  return dict(erfs)
