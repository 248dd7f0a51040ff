"""Trains a sliding-window LM on passkey retrieval, then prints exact match by distance.

  python train.py --config=configs/tiny.py                  # -> workdirs/tiny
  python train.py --config=configs/w128.py --config.model.window_size=256 --workdir=workdirs/w256

Started again with the same command, it resumes from the newest checkpoint in --workdir that
restores (an unreadable one is reported and moved to <workdir>/unreadable_checkpoints/).

A workdir belongs to one run (docs/reliability.md). Without --workdir, a run goes to
workdirs/<config name>, plus `-` and a short hash of the overrides when --config.* overrides change
anything that shapes the run (workdirs/tiny-1a2b3c4d), so a changed run never resumes another;
the line "Workdir: ..." names it. Overrides of how often the run logs, evaluates or checkpoints,
of the mesh and of the attention kernel (swa/workdir.py FREE_FIELDS) keep the plain name and may
change on resume. Resuming with a different config is refused with one line naming the fields;
to extend a run, pass its --workdir, a larger --config.num_steps and --allow_change=num_steps.
Mistakes end in one `error: ...` line (--debug shows the traceback).
"""

import os
import sys

from absl import flags, logging
from ml_collections import config_flags

from swa import cli, sharding, train_lib
from swa import workdir as workdir_lib

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
  "workdir",
  None,
  "Checkpoints, metrics and the resolved config "
  "go here; defaults to workdirs/<config name>[-<hash of the "
  "overrides>].",
)
_ALLOW_CHANGE = flags.DEFINE_list(
  "allow_change",
  [],
  "Fields that may differ from the run saved "
  "in --workdir when resuming; only num_steps (to extend a run).",
)


def main(argv):
  if len(argv) > 1:
    raise cli.UserError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint step at INFO.
  sharding.maybe_initialize_distributed()  # Several processes (srun, mpirun, ...): join them.
  config_file = config_flags.get_config_filename(flags.FLAGS["config"])
  workdir = _WORKDIR.value
  if workdir is None:
    overrides = config_flags.get_override_values(flags.FLAGS["config"])
    name = os.path.basename(config_file).split(":", 1)[0].removesuffix(".py")
    workdir = os.path.join("workdirs", name + workdir_lib.override_suffix(overrides))
    print(f"Workdir: {workdir}", file=sys.stderr, flush=True)
  train_lib.train_and_evaluate(_CONFIG.value, workdir, allow_changes=tuple(_ALLOW_CHANGE.value))


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  cli.run(main)
