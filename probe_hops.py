"""Where each layer carries the passkey, and when each hop forms: probe and report.

  python probe_hops.py --workdirs=sweeps/hops/w512/seed=0,sweeps/hops/w512/seed=1 --out=probes
  python probe_hops.py --workdirs=results/hops_h200/w512/seed=0,... --probe_csv=results/hops_h200 --out=results/hops_h200

For each windowed training workdir, prompts at --fractions of its reach are paired with twins
that differ only in the key digits; the change of the residual stream after each layer, by
offset from the key, goes to <out>/hop_probe.csv, and its change at the answer position to
<out>/hop_answer.csv (one row per run, distance and layer; `beyond_bound` is the largest
change past the mask's bound, 0 by construction). With --probe_csv those CSVs are read from
that folder instead (no checkpoint, no accelerator: the report is rebuilt from files).

Then the report (swa/analysis/hops.py) goes to <out>: passkey.md and its figures from each run's
final train.py evaluation (eval.json, through the one passkey pipeline: seed intervals, seeds
with all hops), hops.md (when each hop formed, from metrics.jsonl of runs trained with
--config.eval.hop_distances=True; the probe's change at the answer position),
hop_formation.csv, hops_formation.png and hops_probe.png. A run's model is the name of the
folder holding its seed folders.
"""

import os

from absl import flags, logging

from swa import cli, evaluate_workdirs, hop_probe, reports
from swa.analysis import hops
from swa.analysis import report as report_lib

PROFILE_FIELDS = ("run", "model", "seed", "distance", "fraction", "layer", "offset", "change")
ANSWER_FIELDS = ("run", "model", "seed", "distance", "fraction", "layer", "change", "beyond_bound")
FORMATION_FIELDS = (
  "model", "seed", "hop", "distance", "formed_at", "final_train_exact_match", "all_hops",
)  # fmt: skip


def define_flags():
  flags.DEFINE_list("workdirs", None, "Training workdirs (windowed models), comma-separated.")
  flags.DEFINE_string("out", None, "Folder for hop_probe.csv and hop_answer.csv.")
  flags.DEFINE_list("fractions", ["0.5", "0.9"], "Distances probed, as fractions of the reach.")
  flags.DEFINE_integer("num", 32, "Prompt pairs per distance.")
  flags.DEFINE_integer("bin_width", 16, "Offsets are averaged over bins of this many tokens.")
  flags.DEFINE_string(
    "probe_csv", None, "Read hop_probe.csv and hop_answer.csv from this folder instead of probing."
  )


def probe(workdirs, out, fractions, num, bin_width):
  """Probes every run and writes the two CSVs; returns (profile rows, answer rows)."""
  evaluate_workdirs.check_workdirs(workdirs)
  if not out:
    raise ValueError("--out is required (the folder for hop_probe.csv and hop_answer.csv).")
  reports.make_folder("out", out)
  try:
    fractions = [float(f) for f in fractions]
  except ValueError:
    raise ValueError(f"--fractions={','.join(fractions)} must be numbers in (0, 1].") from None
  if not fractions or not all(0 < f <= 1 for f in fractions):
    raise ValueError(f"--fractions={fractions} must be numbers in (0, 1].")
  profile, answers = [], []
  for name, workdir in zip(evaluate_workdirs.model_names(workdirs), workdirs):
    config, rows, answer = hop_probe.probe_workdir(workdir, fractions, num=num, bin_width=bin_width)
    extra = {"run": name, "model": hops.model_of(workdir), "seed": config.seed}
    profile += [{**extra, **r} for r in rows]
    answers += [{**extra, **r} for r in answer]
    last = [a for a in answer if a["layer"] == config.model.num_layers]
    print(
      f"{name}: change at the answer after the last layer "
      + ", ".join(f"d={a['distance']}: {a['change']:.3g}" for a in last)
    )
  reports.write_csv(os.path.join(out, "hop_probe.csv"), profile, PROFILE_FIELDS)
  reports.write_csv(os.path.join(out, "hop_answer.csv"), answers, ANSWER_FIELDS)
  return profile, answers


def write_report(workdirs, out, profile, answers, *, measured_here):
  """The report of the module docstring, in `out`."""
  if not workdirs:
    raise ValueError("No run given; pass e.g. --workdirs=sweeps/hops/w512/seed=0.")
  runs = [w.rstrip("/") for w in workdirs]
  rows = [r for w in runs for r in hops.train_eval_rows(w)]
  header = reports.header_lines(
    None,
    device=measured_here,
    extra=[
      "Rows: train.py's final evaluation of each run (eval.json: eval.examples_per_distance keys "
      "at each of eval.num_distances even distances and each hop's distance)",
    ],
  )
  report_lib.write_report(rows, out, header=header)
  formation = hops.formation_rows(runs)
  reports.write_csv(os.path.join(out, "hop_formation.csv"), formation, FORMATION_FIELDS)
  hops.plot_formation(runs, os.path.join(out, "hops_formation.png"))
  text = [
    reports.markdown_header("When each hop formed", header),
    f"First evaluated step with recall >= {hops.FORMED:.0%} at each hop's distance "
    "(0.95 x the reach of the first k layers; evaluated every eval.every_steps):",
    "",
    hops.formation_table(formation),
  ]
  models = list(dict.fromkeys(hops.model_of(w) for w in runs))
  for model in models:
    mine = [f for f in formation if f["model"] == model and f["hop"] == 1]
    good = [f["seed"] for f in mine if f["all_hops"]]
    lost = [f["seed"] for f in mine if not f["all_hops"]]
    if good and lost:
      hops.plot_probe(
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


def run(workdirs, out, fractions, num, bin_width, probe_csv=None):
  """Probes (or reads the probe's CSVs) and writes the report; returns (profile, answers)."""
  if probe_csv:
    if not out:
      raise ValueError("--out is required (the folder for the report).")
    reports.make_folder("out", out)
    profile, answers = hops.read_probe(probe_csv)
  else:
    profile, answers = probe(workdirs, out, fractions, num, bin_width)
  write_report(workdirs, out, profile, answers, measured_here=not probe_csv)
  return profile, answers


def main(argv):
  if len(argv) > 1:
    raise cli.UserError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  f = flags.FLAGS
  run(tuple(f.workdirs or ()), f.out, f.fractions, f.num, f.bin_width, f.probe_csv)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
