"""Where each layer carries the passkey: the relay probe of swa/hop_probe.py over trained runs.

  python probe_hops.py --workdirs=sweeps/w512/seed0,sweeps/w512/seed1 --out=probes/w512

For each windowed training workdir, prompts at --fractions of its reach are paired with twins
that differ only in the key digits; the change of the residual stream after each layer, by
offset from the key, goes to <out>/hop_probe.csv, and its change at the answer position to
<out>/hop_answer.csv (one row per run, distance and layer; `beyond_bound` is the largest
change past the mask's bound, 0 by construction). swa/analysis/hops.py draws them.
"""

import os

from absl import flags, logging

from swa import cli, evaluate_workdirs, hop_probe, reports
from swa.model import ModelConfig

PROFILE_FIELDS = ("run", "model", "seed", "distance", "fraction", "layer", "offset", "change")
ANSWER_FIELDS = ("run", "model", "seed", "distance", "fraction", "layer", "change", "beyond_bound")


def define_flags():
  flags.DEFINE_list("workdirs", None, "Training workdirs (windowed models), comma-separated.")
  flags.DEFINE_string("out", None, "Folder for hop_probe.csv and hop_answer.csv.")
  flags.DEFINE_list("fractions", ["0.5", "0.9"], "Distances probed, as fractions of the reach.")
  flags.DEFINE_integer("num", 32, "Prompt pairs per distance.")
  flags.DEFINE_integer("bin_width", 16, "Offsets are averaged over bins of this many tokens.")


def run(workdirs, out, fractions, num, bin_width):
  """Probes every run and writes the two CSVs; returns (profile rows, answer rows)."""
  evaluate_workdirs.check_workdirs(workdirs)
  if not out:
    raise ValueError("--out is required (the folder for hop_probe.csv and hop_answer.csv).")
  reports.make_folder("--out", out)
  try:
    fractions = [float(f) for f in fractions]
  except ValueError:
    raise ValueError(f"--fractions={','.join(fractions)} must be numbers in (0, 1].") from None
  if not fractions or not all(0 < f <= 1 for f in fractions):
    raise ValueError(f"--fractions={fractions} must be numbers in (0, 1].")
  profile, answers = [], []
  for name, workdir in zip(evaluate_workdirs.model_names(workdirs), workdirs):
    config, rows, answer = hop_probe.probe_workdir(workdir, fractions, num=num, bin_width=bin_width)
    model_config = ModelConfig.from_config(config)
    label = f"w{model_config.window_label} L={model_config.num_layers}"
    extra = {"run": name, "model": label, "seed": config.seed}
    profile += [{**extra, **r} for r in rows]
    answers += [{**extra, **r} for r in answer]
    last = [a for a in answer if a["layer"] == model_config.num_layers]
    print(
      f"{name}: change at the answer after the last layer "
      + ", ".join(f"d={a['distance']}: {a['change']:.3g}" for a in last)
    )
  reports.write_csv(os.path.join(out, "hop_probe.csv"), profile, PROFILE_FIELDS)
  reports.write_csv(os.path.join(out, "hop_answer.csv"), answers, ANSWER_FIELDS)
  return profile, answers


def main(argv):
  if len(argv) > 1:
    raise cli.UserError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  f = flags.FLAGS
  run(tuple(f.workdirs or ()), f.out, f.fractions, f.num, f.bin_width)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
