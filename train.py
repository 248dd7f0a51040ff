"""Trains a sliding-window LM on passkey retrieval, then prints exact match by distance.

  python train.py --config=configs/w128.py --workdir=workdirs/w128
  python train.py --config=configs/w128.py --config.model.window_size=256 --workdir=workdirs/w256

Started again with the same command, it resumes from the latest checkpoint in --workdir.
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

from swa import cli, sharding, train_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics and the resolved config "
                               "go here; defaults to workdirs/<config name>.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint step at INFO.
  sharding.maybe_initialize_distributed()   # Several processes (srun, mpirun, ...): join them.
  config_name = os.path.basename(config_flags.get_config_filename(flags.FLAGS["config"]))
  workdir = _WORKDIR.value or os.path.join("workdirs", config_name.removesuffix(".py"))
  train_lib.train_and_evaluate(_CONFIG.value, workdir)


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  cli.run(main)
