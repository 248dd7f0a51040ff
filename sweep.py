"""Trains a grid of configs x seeds, evaluates every run, and aggregates them over seeds.

  python sweep.py --config=configs/w128.py --workdir=sweeps/depth \
      --grid='model.window_size=128,256;model.num_layers=1,2,4,8' --seeds=0,1,2 [--parallel=8]
      [--config.num_steps=2000 ...] [--examples_per_distance=100 --edge_examples_per_distance=600 --full_max_factor=2]

Every grid point x seed is a train.py run in its own folder, <workdir>/window_size=128,
num_layers=2,seed=1/ (config.seed = its seed), then evaluated into its passkey.csv with
evaluate.passkey_sweep (swa/sweep/runner.py says how runs resume and share GPUs). Run the same command
again after an interruption (Ctrl-C or SIGTERM end the running subprocesses; checkpoints stay):
finished runs are skipped, trained ones evaluated, the others resume from their checkpoints;
changed evaluation flags re-evaluate every run without retraining. At the end (and with whatever
finished when some runs fail), the sweep folder gets passkey.md (the headline table over seeds),
passkey.csv, passkey_by_distance.csv and two figures (swa/analysis/report.py), and sweep.json
(the command, date, devices, wall time and each run's outcome). Runs go --parallel at a time,
round-robin over the GPUs (default: one per GPU; on the CPU: one), sharing one JAX compilation
cache in <workdir>/.jax_cache.

  python sweep.py --aggregate=sweeps/depth,results/passkey_h100/passkey.csv --out=tables

builds the same table and files from passkey.csv files or sweep folders alone (no checkpoints,
no accelerator), exactly as `eval_passkey.py --from_csv` does. A config whose `task` is not
"passkey" (e.g. "text") trains its runs only (each train.py writes eval.json) and prints the
command that reports them. `--evaluate_run=<run folder>` evaluates one trained run (the sweep's own
evaluation step; also for re-evaluating a run by hand).
"""

import signal
import sys

from absl import flags, logging
from ml_collections import config_flags

from swa import cli, reports
from swa.sweep import grid, runner

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment config file (train.py's).", lock_config=True
)
_GRID = flags.DEFINE_string(
  "grid",
  "",
  "Config fields to sweep: 'key=v1,v2;key=v1,v2' (a value "
  "list with '|' is split on '|', for values holding commas).",
)
_SEEDS = flags.DEFINE_string("seeds", "0", "config.seed of each grid point: 0,1,2 or 0-2.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The sweep folder, e.g. sweeps/depth.")
_PARALLEL = flags.DEFINE_integer("parallel", None, "Runs at once; default one per GPU, 1 on CPU.")
_GPUS = flags.DEFINE_list(
  "gpus",
  None,
  "GPU ids to use (default: CUDA_VISIBLE_DEVICES, else "
  "every GPU nvidia-smi lists); an empty value runs on the CPU.",
)
_EXAMPLES = flags.DEFINE_integer("examples_per_distance", 100, "Fresh passkeys per distance.")
_EDGE_EXAMPLES = flags.DEFINE_integer(
  "edge_examples_per_distance",
  0,
  "More passkeys at the distances within +-5 % of the reach (0: as many as elsewhere; "
  "certifying >= 99.5 % takes about 600).",
)
_MAX_FACTOR = flags.DEFINE_float(
  "max_factor", 2.0, "Windowed runs are evaluated up to max_factor x their reach."
)
_FULL_MAX_FACTOR = flags.DEFINE_float(
  "full_max_factor",
  1.0,
  "Full-attention runs are evaluated up to this x their trained length's largest distance "
  "(> 1: beyond the trained length).",
)
_EVAL_STEP = flags.DEFINE_integer(
  "eval_step", None, "Distance step of the evaluation (default: data.sweep_distances' grid)."
)
_AGGREGATE = flags.DEFINE_list(
  "aggregate", [], "Instead of training: passkey.csv files or sweep folders to report into --out."
)
_OUT = flags.DEFINE_string("out", None, "With --aggregate: the folder for passkey.md and the rest.")
_EVALUATE_RUN = flags.DEFINE_string(
  "evaluate_run",
  None,
  "Evaluate this one trained run folder into its passkey.csv (what the sweep runs for each run).",
)


def _interrupt(signum, frame):
  raise KeyboardInterrupt(f"signal {signum}")


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO.
  settings = runner.Settings(
    script=__file__,
    command=reports.command_line(),
    config=_CONFIG.value,
    config_path=config_flags.get_config_filename(flags.FLAGS["config"]) if _CONFIG.value else None,
    workdir=_WORKDIR.value,
    grid=_GRID.value,
    seeds=_SEEDS.value,
    overrides=tuple(grid.forwarded_overrides(sys.argv[1:])),
    parallel=_PARALLEL.value,
    gpus=None if _GPUS.value is None else tuple(_GPUS.value),
    evaluation={
      "examples_per_distance": _EXAMPLES.value,
      "max_factor": _MAX_FACTOR.value,
      "full_max_factor": _FULL_MAX_FACTOR.value,
      "step": _EVAL_STEP.value,
      "edge_examples_per_distance": _EDGE_EXAMPLES.value or None,
    },
    aggregate=tuple(_AGGREGATE.value),
    out=_OUT.value,
    evaluate_run=_EVALUATE_RUN.value,
  )
  # A stop request (SIGTERM: a cancelled job, a closed session) ends like Ctrl-C: the running
  # subprocesses are terminated (their checkpoints stay) and the sweep resumes when run again.
  signal.signal(signal.SIGTERM, _interrupt)
  runner.main(settings)


if __name__ == "__main__":
  cli.run(main)
