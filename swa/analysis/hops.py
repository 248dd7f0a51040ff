"""When each hop of the relay forms, and what a lost hop looks like inside: tables and figures.

Inputs are training runs (folders with config.json, metrics.jsonl and eval.json, as train.py
and sweep.py write them; checkpoints not needed) trained with eval.hop_distances=True, and the
relay probe's CSVs (probe_hops.py: hop_probe.csv, hop_answer.csv).

- `train_eval_rows`: train.py's final evaluation (eval.json) as PasskeyRows, so that the one
  passkey pipeline (swa/analysis/report.py) reports seeds, intervals and "seeds with all hops".
- `formation_rows`: per run and hop k, the first evaluated step at which recall at that hop's
  distance (0.95 x the reach of the first k layers, swa/data.hop_distances) reached FORMED, and
  the run's final training exact match (the mean of its last logged steps).
- `plot_formation`: recall at each hop's distance against the training step, a panel per model
  and hop, a line per seed; seeds that lost a hop in red.
- `plot_probe`: the probe's change of the residual stream by offset from the key after each
  layer, for one seed that relays every hop and one that lost one, and the change at the
  answer position after the last layer for every seed.

No JAX here (like the rest of swa/analysis).
"""

import json
import os

import matplotlib.pyplot as plt
import numpy as np

from swa import data, reports
from swa.analysis import report as report_lib
from swa.analysis import rows as rows_lib
from swa.analysis import stats

FORMED = 0.9  # a hop has formed once recall at its distance reaches this
FINAL_STEPS = 5  # final training exact match: the mean over this many last logged steps
FORMATION_FIELDS = (
  "model", "seed", "hop", "distance", "formed_at", "final_train_exact_match", "all_hops",
)  # fmt: skip


def read_run(run_dir):
  """(config dict, metrics rows, eval.json dict) of a training run folder; one-line errors."""
  found = {}
  for name in ("config.json", "eval.json"):
    path = os.path.join(run_dir, name)
    if not os.path.isfile(path):
      raise ValueError(f"{run_dir} has no {name}: not a finished training run.")
    with open(path) as f:
      found[name] = json.load(f)
  path = os.path.join(run_dir, "metrics.jsonl")
  if not os.path.isfile(path):
    raise ValueError(f"{run_dir} has no metrics.jsonl.")
  with open(path) as f:
    metrics = [json.loads(line) for line in f if line.strip()]
  return found["config.json"], metrics, found["eval.json"]


def layer_windows(config):
  """The per-layer windows of a config.json (an int, None or a list per layer)."""
  w, num_layers = config["model"]["window_size"], config["model"]["num_layers"]
  return tuple(w) if isinstance(w, (list, tuple)) else (w,) * num_layers


def model_of(run_dir):
  """The model a run belongs to: the name of the folder that holds its seed folders."""
  return os.path.basename(os.path.dirname(os.path.normpath(run_dir)))


def train_eval_rows(run_dir, model=None):
  """PasskeyRows of train.py's final evaluation of one run (eval.json; every distance at the
  trained length, eval.examples_per_distance keys each)."""
  config, _, evaluation = read_run(run_dir)
  windows = layer_windows(config)
  names = ["full" if w is None else str(w) for w in windows]
  window = names[0] if len(set(names)) == 1 else ",".join(names)
  reach = None if None in windows else sum(w - 1 for w in windows)
  seq_len = config["data"]["seq_len"]
  return [
    rows_lib.PasskeyRow(
      model=model or model_of(run_dir),
      window=window,
      layers=len(windows),
      reach=reach,
      distance=int(d),
      accuracy=float(acc),
      n=int(config["eval"]["examples_per_distance"]),
      seq_len=seq_len,
      train_seq_len=seq_len,
      seed=int(config["seed"]),
    )
    for d, acc in sorted(evaluation["exact_match_by_distance"].items(), key=lambda x: int(x[0]))
  ]


def hop_curves(run_dir):
  """{hop distance: [(step, recall)]} from the in-training evaluations of metrics.jsonl."""
  config, metrics, _ = read_run(run_dir)
  distances = data.hop_distances(layer_windows(config), config["data"]["seq_len"]) or []
  curves = {}
  for d in distances:
    key = f"eval/exact_match_d{d:05d}"
    curves[d] = [(m["step"], m[key]) for m in metrics if key in m]
    if not curves[d]:
      raise ValueError(f"{run_dir} logged no {key}: train with --config.eval.hop_distances=True.")
  return curves


def formation_rows(run_dirs):
  """One row per run and hop: model, seed, hop, distance, formed_at (step or None),
  final_train_exact_match, all_hops (stats.relays_all_hops on the final evaluation)."""
  out = []
  for run_dir in run_dirs:
    config, metrics, _ = read_run(run_dir)
    final = [m["exact_match"] for m in metrics if "exact_match" in m][-FINAL_STEPS:]
    passkey_rows = train_eval_rows(run_dir)
    all_hops = stats.relays_all_hops(passkey_rows, passkey_rows[0].reach)
    for hop, (d, curve) in enumerate(sorted(hop_curves(run_dir).items()), start=1):
      formed = next((step for step, acc in curve if acc >= FORMED), None)
      out.append(
        {
          "model": model_of(run_dir),
          "seed": int(config["seed"]),
          "hop": hop,
          "distance": d,
          "formed_at": formed,
          "final_train_exact_match": round(float(np.mean(final)), 4),
          "all_hops": all_hops,
        }
      )
  return out


def formation_table(rows):
  """Markdown: per model and seed, the step each hop formed ("—": never) and the final training
  exact match."""
  lines = []
  for model in dict.fromkeys(r["model"] for r in rows):
    mine = [r for r in rows if r["model"] == model]
    hops = sorted({(r["hop"], r["distance"]) for r in mine})
    head = " | ".join(f"hop {h} (d = {d})" for h, d in hops)
    lines += [
      f"**{model}**",
      "",
      f"| seed | {head} | all hops | final training exact match |",
      "|---:|" + "---:|" * len(hops) + ":---:|---:|",
    ]
    for seed in sorted({r["seed"] for r in mine}):
      by_hop = {r["hop"]: r for r in mine if r["seed"] == seed}
      first = next(iter(by_hop.values()))
      cells = " | ".join(
        "—" if by_hop[h]["formed_at"] is None else str(by_hop[h]["formed_at"]) for h, _ in hops
      )
      mark = "yes" if first["all_hops"] else "no"
      lines.append(f"| {seed} | {cells} | {mark} | {first['final_train_exact_match']:.2f} |")
    lines.append("")
  return "\n".join(lines)


def curriculum_reaches(metrics, distance):
  """The first logged step whose training batch reached `distance` (metrics' curriculum_top), or
  None (never, or a run that did not log it)."""
  return next(
    (m["step"] for m in metrics if m.get("curriculum_top", -1) >= distance), None
  )  # fmt: skip


def plot_formation(run_dirs, path=None):
  """Recall at each hop's distance against the step: rows = models, columns = hops; a dotted line
  per run where its distance curriculum first reached the hop's distance (one model's runs share
  a pace, so their lines coincide)."""
  by_model = {}
  for run_dir in run_dirs:
    by_model.setdefault(model_of(run_dir), []).append(run_dir)
  num_hops = max(len(hop_curves(r)) for r in run_dirs)
  fig, axes = plt.subplots(
    len(by_model), num_hops, figsize=(3.2 * num_hops, 2.6 * len(by_model) + 0.5), squeeze=False,
    layout="constrained",
  )  # fmt: skip
  for row, (model, runs) in enumerate(by_model.items()):
    used = 0
    for run_dir in runs:
      config, metrics, _ = read_run(run_dir)
      passkey_rows = train_eval_rows(run_dir)
      lost = not stats.relays_all_hops(passkey_rows, passkey_rows[0].reach)
      curves = sorted(hop_curves(run_dir).items())
      used = max(used, len(curves))
      for col, (d, curve) in enumerate(curves):
        steps, acc = zip(*curve)
        ax = axes[row, col]
        ax.plot(steps, acc, color="tab:red" if lost else "tab:blue", alpha=0.8, lw=1.2)
        reached = curriculum_reaches(metrics, d)
        if reached is not None:
          ax.axvline(reached, color="grey", ls=":", lw=1)
        if lost:
          ax.annotate(f"s{config['seed']}", (steps[-1], acc[-1]), fontsize=7, color="tab:red")
        ax.set_title(f"{model}: hop {col + 1}, d = {d}", fontsize=9)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("training step", fontsize=8)
    for ax in axes[row, used:]:
      ax.set_visible(False)
    axes[row, 0].set_ylabel("exact match")
  fig.suptitle(
    "When each hop forms (blue: runs relaying every hop; red: a hop lost; dotted: the step the "
    "training distances first reach the hop's distance)",
    fontsize=10,
  )
  if path:
    fig.savefig(path, dpi=120)
  return fig


def read_probe(folder):
  """(profile rows, answer rows) of probe_hops.py's two CSVs, with numbers parsed."""
  import csv

  out = []
  for name in ("hop_probe.csv", "hop_answer.csv"):
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
      raise ValueError(f"{folder} has no {name}; run probe_hops.py first.")
    with open(path, newline="") as f:
      rows = list(csv.DictReader(f))
    for r in rows:
      for key in ("seed", "distance", "layer", "offset"):
        if key in r:
          r[key] = int(r[key])
      for key in ("fraction", "change", "beyond_bound"):
        if key in r:
          r[key] = float(r[key])
    out.append(rows)
  return tuple(out)


def plot_probe(profile, answers, model, good_seed, lost_seed, fraction=0.9, path=None):
  """Change by offset after each layer for a good and a lost seed, and every seed's change at
  the answer position after the last layer, at `fraction` of the reach."""
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
  mine = [r for r in profile if r["model"] == model and r["fraction"] == fraction]
  for ax, seed in zip(axes[:2], (good_seed, lost_seed)):
    rows = [r for r in mine if r["seed"] == seed]
    if not rows:
      raise ValueError(f"No probe rows of {model} seed {seed} at fraction {fraction}.")
    for layer in sorted({r["layer"] for r in rows}):
      pts = sorted((r["offset"], r["change"]) for r in rows if r["layer"] == layer)
      ax.plot(*zip(*pts), label=f"after layer {layer}", lw=1.2)
    ax.set_title(f"{model}, seed {seed} (d = {rows[0]['distance']})", fontsize=9)
    ax.set_xlabel("offset from the first key digit (tokens)")
    ax.set_ylabel("|h - h'| / |h| (mean over prompts)")
    ax.legend(fontsize=7)
  last = max(a["layer"] for a in answers if a["model"] == model)
  ax = axes[2]
  for a in answers:
    if a["model"] == model and a["layer"] == last:
      ax.scatter(a["fraction"], a["change"], color="tab:blue", s=14)
      ax.annotate(f"s{a['seed']}", (a["fraction"], a["change"]), fontsize=6)
  ax.set_xlabel("distance / reach")
  ax.set_ylabel("change at the answer position, last layer")
  ax.set_title(f"{model}: every seed", fontsize=9)
  fig.tight_layout()
  if path:
    fig.savefig(path, dpi=120)
  return fig


def write_report(workdirs, out, profile, answers, *, measured_here):
  """probe_hops.py's report in `out`: passkey.md (the one pipeline, from each run's eval.json),
  hops.md, hop_formation.csv and the figures. measured_here: the header names this device."""
  if not workdirs:
    raise ValueError("No run given; pass e.g. --workdirs=sweeps/hops/w512/seed=0.")
  runs = [w.rstrip("/") for w in workdirs]
  rows = [r for w in runs for r in train_eval_rows(w)]
  header = reports.header_lines(
    None,
    device=measured_here,
    extra=[
      "Rows: train.py's final evaluation of each run (eval.json: eval.examples_per_distance keys "
      "at each of eval.num_distances even distances and each hop's distance)",
    ],
  )
  report_lib.write_report(rows, out, header=header)
  formation = formation_rows(runs)
  reports.write_csv(os.path.join(out, "hop_formation.csv"), formation, FORMATION_FIELDS)
  plot_formation(runs, os.path.join(out, "hops_formation.png"))
  text = [
    reports.markdown_header("When each hop formed", header),
    f"First evaluated step with recall >= {FORMED:.0%} at each hop's distance "
    "(0.95 x the reach of the first k layers; evaluated every eval.every_steps):",
    "",
    formation_table(formation),
  ]
  models = list(dict.fromkeys(model_of(w) for w in runs))
  for model in models:
    mine = [f for f in formation if f["model"] == model and f["hop"] == 1]
    good = [f["seed"] for f in mine if f["all_hops"]]
    lost = [f["seed"] for f in mine if not f["all_hops"]]
    if good and lost:
      plot_probe(
        profile, answers, model, good[0], lost[0], path=os.path.join(out, f"hops_probe_{model}.png")
      )
  last = {}
  for a in answers:
    last[a["model"]] = max(last.get(a["model"], 0), a["layer"])
  text += [
    "Change of the residual stream at the answer position after the last layer (probe_hops.py; "
    "|h - h'| / |h| for key digits swapped), by distance / reach:",
    "",
    "| model | seed | "
    + " | ".join(f"{f:g}" for f in sorted({a["fraction"] for a in answers}))
    + " | largest change beyond the mask's bound |",
    "|---|---:|" + "---:|" * len({a["fraction"] for a in answers}) + "---:|",
  ]
  for model in models:
    for seed in sorted({a["seed"] for a in answers if a["model"] == model}):
      mine = [a for a in answers if a["model"] == model and a["seed"] == seed]
      at_last = sorted((a["fraction"], a["change"]) for a in mine if a["layer"] == last[model])
      beyond = max(a["beyond_bound"] for a in mine)
      text.append(
        f"| {model} | {seed} | " + " | ".join(f"{c:.2f}" for _, c in at_last) + f" | {beyond:g} |"
      )
  with open(os.path.join(out, "hops.md"), "w") as f:
    f.write("\n".join(text) + "\n")
