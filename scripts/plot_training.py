"""Draws answer loss and training exact match against the step for several runs.

  python -m scripts.plot_training --out=curves.png results/training_h100/*.metrics.jsonl

Each file is a train.py metrics.jsonl; its run is named after the file (up to the first dot).
"""

import json
import os

from absl import app, flags

from swa import cli
from swa.analysis import figures

_OUT = flags.DEFINE_string("out", "training_curves.png", "Where the PNG goes.")
_SMOOTH = flags.DEFINE_integer("smooth", 5, "Logged values averaged per point.")


def main(argv):
  paths = argv[1:]
  if not paths:
    raise app.UsageError("Give one or more metrics.jsonl files.")
  metrics = {}
  for path in paths:
    with open(path) as f:
      metrics[os.path.basename(path).split(".")[0]] = [json.loads(line) for line in f]
  os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
  figures.plot_training_curves(metrics, path=_OUT.value, smooth=_SMOOTH.value)
  print(f"Wrote {_OUT.value}")


if __name__ == "__main__":
  cli.run(main)
