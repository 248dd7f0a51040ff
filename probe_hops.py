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

PROFILE_FIELDS = ("run", "model", "seed", "distance", "fraction", "layer", "offset", "change")
ANSWER_FIELDS = ("run", "model", "seed", "distance", "fraction", "layer", "change", "beyond_bound")


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


def run(workdirs, out, fractions, num, bin_width, probe_csv=None):
  """Probes (or reads the probe's CSVs) and writes the report; returns (profile, answers)."""
  if probe_csv:
    if not out:
      raise ValueError("--out is required (the folder for the report).")
    reports.make_folder("out", out)
    profile, answers = hops.read_probe(probe_csv)
  else:
    profile, answers = probe(workdirs, out, fractions, num, bin_width)
  hops.write_report(workdirs, out, profile, answers, measured_here=not probe_csv)
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
