"""Seeds brought together: each run's evaluation, then one table, CSVs and figures over seeds.

evaluate_run writes one sweep run's passkey.csv (the rows of evaluate.passkey_sweep with a
`seed` column). collect reads passkey.csv files back from files, run folders or whole sweep
folders, taking each row's seed from its `seed` column, else from the model name, else from the
file's folder name (stats.seed_of), else 0. write_aggregate writes, into one folder:

  passkey.md               the headline table (format_headline_table) under its header
  passkey_seeds.csv        every input row with its seed
  passkey_by_distance.csv  per model and distance: mean over seeds, each seed, Wilson interval
  passkey_seed_curves.png  recall vs distance: one thin line per seed, the mean, the interval
  passkey_heatmap.png      recall on the keys pooled over seeds, by distance bucket (split at
                           each reach: plotting.plot_accuracy_heatmap of pooled_rows)
"""

import csv
import glob
import math
import os
import re

import numpy as np

from swa import reports, stats, summary, sweep
from swa.model import ModelConfig

SEED_FIELDS = summary.CSV_FIELDS + ("seed",)
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


# --- One run ---------------------------------------------------------------------------------------


def evaluate_run(run_dir, *, out=None, **sweep_kwargs):
  """Evaluates the latest checkpoint of a training workdir and writes its rows with their seed.

  The model name is the folder's name without its seed (sweep.model_name; the window label
  when that leaves nothing), the seed is config.seed, which also seeds the prompts (so each seed
  is scored on keys of its own).

  Args:
    run_dir: a train.py workdir.
    out: the CSV to write (default <run_dir>/passkey.csv), written atomically.
    **sweep_kwargs: examples_per_distance, max_factor, step, ... of evaluate.passkey_sweep.

  Returns:
    the rows written.
  """
  from swa import evaluate, train_lib  # Only here: reading CSVs back needs no JAX model.

  if not os.path.exists(os.path.join(run_dir, "config.json")):
    raise ValueError(f"{run_dir} is not a training workdir: it has no config.json.")
  config, graphdef, params = train_lib.restore_params(run_dir)
  model_config = ModelConfig.from_config(config)
  seed = int(config.seed)
  name = sweep.model_name(os.path.basename(os.path.normpath(run_dir))) or None
  rows = evaluate.passkey_sweep(
    graphdef,
    params,
    reach=model_config.reach,
    train_seq_len=int(config.data.seq_len),
    seed=seed,
    label=name,
    **sweep_kwargs,
  )
  rows = [{**r, "seed": seed} for r in rows]
  out = out or os.path.join(run_dir, "passkey.csv")
  tmp = f"{out}.tmp{os.getpid()}"
  reports.write_csv(tmp, rows, SEED_FIELDS)
  os.replace(tmp, out)
  return rows


# --- Reading rows back -----------------------------------------------------------------------------


def read_seed_rows(path):
  """The rows of one passkey.csv, each with its seed (module docstring)."""
  rows = summary.read_rows(path)
  with open(path, newline="") as f:
    column = [r.get("seed") for r in csv.DictReader(f)]
  folder_seed = stats.seed_of(os.path.basename(os.path.dirname(os.path.abspath(path))))
  for r, text in zip(rows, column):
    if text not in (None, ""):
      r["seed"] = int(text)
    else:
      from_name = stats.seed_of(r["model"])
      r["seed"] = from_name if from_name is not None else folder_seed or 0
  return rows


def csv_paths(paths):
  """passkey.csv files from files and folders.

  A folder stands for the passkey.csv of each of its subfolders (a sweep's runs), or for its own
  passkey.csv when no subfolder has one.
  """
  out = []
  for path in paths:
    if os.path.isdir(path):
      found = sorted(glob.glob(os.path.join(path, "*", "passkey.csv")))
      if not found and os.path.exists(os.path.join(path, "passkey.csv")):
        found = [os.path.join(path, "passkey.csv")]
      if not found:
        raise ValueError(f"{path} holds no passkey.csv, neither in it nor in its subfolders.")
      out += found
    elif os.path.exists(path):
      out.append(path)
    else:
      raise FileNotFoundError(f"No such file or folder: {path}")
  return out


def collect(paths):
  """Every row of the passkey.csv files that `paths` (files or folders) stand for, with seeds.

  Where several files hold the same model and seed (a continued run evaluated again, say), each
  of them is named after its file's folder (folder/model if the file holds several models), as
  eval_passkey.py --from_csv does; a sweep run's file (its folder ends in seed=N) is named after
  its sweep's folder instead, sweep/model, so that the seeds of one sweep stay together.
  """
  tables = [(path, read_seed_rows(path)) for path in csv_paths(paths)]
  files_of = {}
  for path, rows in tables:
    for key in {(r["model"], r["seed"]) for r in rows}:
      files_of.setdefault(key, set()).add(path)
  out = []
  for path, rows in tables:
    folder = os.path.dirname(os.path.abspath(path))
    several = len({r["model"] for r in rows}) > 1
    if re.search(r"(^|,)seed=\d+$", os.path.basename(folder)):  # A sweep's run.
      folder, several = os.path.dirname(folder), True
    folder = os.path.basename(folder)
    for r in rows:
      if len(files_of[r["model"], r["seed"]]) > 1:
        r = {**r, "model": f"{folder}/{r['model']}" if several else folder}
      out.append(r)
  return out


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
    per_seed = " / ".join(f"{100 * v:.1f}" for v in s["inside"]["per_seed"].values())
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
    "Wilson interval on the pooled keys (Kish's effective count for the weights; swa/stats.py); "
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


# --- The aggregate -------------------------------------------------------------------------------


def _window_order(window):
  """Sort key: windowed models by window, per-layer windows after, full attention last."""
  return (0, int(window), "") if window.isdigit() else (2 if window == "full" else 1, 0, window)


def summarize(rows):
  """stats.summarize_model for every model of rows, sorted by window, then layers, then name."""
  groups = stats.group_by_model(rows)
  out = []
  for name, by_seed in groups.items():
    first = next(iter(by_seed.values()))[0]
    applies = first["window"] == "full" or first["layers"] == 4  # the brief's table: 4 layers
    reference = summary.REFERENCE.get(first["window"]) if applies else None
    out.append(stats.summarize_model(name, by_seed, reference))
  return sorted(out, key=lambda s: (_window_order(s["window"]), s["layers"], s["model"]))


def distance_rows(rows):
  """The rows of passkey_by_distance.csv (BY_DISTANCE_FIELDS)."""
  out = []
  for name, by_seed in stats.group_by_model(rows).items():
    first = next(iter(by_seed.values()))[0]
    for c in stats.by_distance(by_seed):
      out.append(
        {
          "model": name,
          "window": first["window"],
          "layers": first["layers"],
          "reach": first["reach"],
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


def pooled_rows(rows):
  """One passkey.csv-like row per model and distance: the keys of every seed pooled.

  accuracy = hits / keys and n = keys (stats.by_distance), the model named "<model> (k seeds)",
  the other fields those of a seed's row at that distance: what plotting's figures take.
  """
  out = []
  for name, by_seed in stats.group_by_model(rows).items():
    label = f"{name} ({len(by_seed)} seed{'s' if len(by_seed) > 1 else ''})"
    at = {r["distance"]: r for rs in reversed(list(by_seed.values())) for r in rs}
    for c in stats.by_distance(by_seed):
      out.append(
        {**at[c["distance"]], "model": label, "accuracy": c["hits"] / c["keys"], "n": c["keys"]}
      )
  return out


def write_aggregate(rows, out, *, command=None, sources=(), notes=()):
  """Writes the files of the module docstring into `out`; returns (summaries, passkey.md text)."""
  if not rows:
    raise ValueError("No passkey rows to aggregate.")
  os.makedirs(out, exist_ok=True)
  summaries = summarize(rows)
  rank = {s["model"]: i for i, s in enumerate(summaries)}
  rows = sorted(rows, key=lambda r: (rank[stats.strip_seed(r["model"])], r["seed"], r["distance"]))
  reports.write_csv(os.path.join(out, "passkey_seeds.csv"), rows, SEED_FIELDS)
  reports.write_csv(
    os.path.join(out, "passkey_by_distance.csv"), distance_rows(rows), BY_DISTANCE_FIELDS
  )
  import matplotlib.pyplot as plt  # only when figures are drawn

  from swa import plotting, seed_plots

  plt.close(seed_plots.plot_seed_curves(rows, os.path.join(out, "passkey_seed_curves.png")))
  heatmap = plotting.plot_accuracy_heatmap(
    pooled_rows(rows), os.path.join(out, "passkey_heatmap.png")
  )
  plt.close(heatmap)
  keys = int(np.median([r["n"] for r in rows]))
  extra = ["Inputs: " + ", ".join(f"`{s}`" for s in sources)] if sources else []
  extra += list(notes)
  text = (
    reports.markdown_header(
      "Passkey recall over seeds", reports.header_lines(command, device=False, extra=extra)
    )
    + format_headline_table(summaries)
    + "\n"
    + headline_notes(keys)
    + "\nFiles: `passkey_seeds.csv` (every row with its seed), `passkey_by_distance.csv` "
    "(mean, each seed, pooled keys and Wilson interval per distance), "
    "`passkey_seed_curves.png`, `passkey_heatmap.png` (keys pooled over seeds; buckets split at "
    "each reach).\n"
  )
  with open(os.path.join(out, "passkey.md"), "w") as f:
    f.write(text)
  return summaries, text
