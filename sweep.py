"""Trains a grid of configs x seeds, evaluates every run, and aggregates them over seeds.

  python sweep.py --config=configs/w128.py --workdir=sweeps/depth \
      --grid='model.window_size=128,256;model.num_layers=1,2,4,8' --seeds=0,1,2 [--parallel=8]
      [--config.num_steps=2000 ...] [--examples_per_distance=100 --edge_examples_per_distance=600 --full_max_factor=2]

Every grid point x seed is a train.py run in its own folder, <workdir>/window_size=128,
num_layers=2,seed=1/ (config.seed = its seed), then evaluated into its passkey.csv with
evaluate.passkey_sweep (swa/sweep.py says how runs resume and share GPUs). Run the same command
again after an interruption (Ctrl-C or SIGTERM end the running subprocesses; checkpoints stay):
finished runs are skipped, trained ones evaluated, the others resume from their checkpoints;
changed evaluation flags re-evaluate every run without retraining. At the end (and with whatever
finished when some runs fail), the sweep folder gets passkey.md (the headline table over seeds),
passkey_seeds.csv, passkey_by_distance.csv and two figures (swa/aggregate.py), and sweep.json
(the command, date, devices, wall time and each run's outcome). Runs go --parallel at a time,
round-robin over the GPUs (default: one per GPU; on the CPU: one), sharing one JAX compilation
cache in <workdir>/.jax_cache.

  python sweep.py --aggregate=sweeps/depth,results/passkey_h100/passkey.csv --out=tables

builds the same table and files from passkey.csv files or sweep folders alone (no checkpoints,
no accelerator). `--evaluate_run=<run folder>` evaluates one trained run (the sweep's own
evaluation step; also for re-evaluating a run by hand).
"""

import json
import os
import signal
import sys
import time

from absl import flags, logging
from ml_collections import config_flags

from swa import aggregate, cli, reports, sweep, workers

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
  "Full-attention runs are evaluated "
  "up to this x their trained length's largest distance "
  "(> 1: beyond the trained length).",
)
_EVAL_STEP = flags.DEFINE_integer(
  "eval_step", None, "Distance step of the evaluation (default: data.sweep_distances' grid)."
)
_AGGREGATE = flags.DEFINE_list(
  "aggregate",
  [],
  "Instead of training: passkey.csv files or sweep folders to aggregate into --out.",
)
_OUT = flags.DEFINE_string("out", None, "With --aggregate: the folder for passkey.md and the rest.")
_EVALUATE_RUN = flags.DEFINE_string(
  "evaluate_run",
  None,
  "Evaluate this one trained run folder into its passkey.csv (what the sweep runs for each run).",
)


def _eval_kwargs():
  return {
    "examples_per_distance": _EXAMPLES.value,
    "max_factor": _MAX_FACTOR.value,
    "full_max_factor": _FULL_MAX_FACTOR.value,
    "step": _EVAL_STEP.value,
    "edge_examples_per_distance": _EDGE_EXAMPLES.value or None,
  }


def _eval_command(run, run_dir):
  command = [
    sys.executable,
    os.path.abspath(__file__),
    f"--evaluate_run={run_dir}",
    f"--examples_per_distance={_EXAMPLES.value}",
    f"--max_factor={_MAX_FACTOR.value}",
    f"--full_max_factor={_FULL_MAX_FACTOR.value}",
    f"--edge_examples_per_distance={_EDGE_EXAMPLES.value}",
  ]
  return command + ([f"--eval_step={_EVAL_STEP.value}"] if _EVAL_STEP.value else [])


def _aggregate(paths, out, command, sources=None, notes=()):
  rows = aggregate.collect(paths)
  summaries, _ = aggregate.write_aggregate(
    rows, out, command=command, sources=sources or paths, notes=notes
  )
  print(aggregate.format_headline_table(summaries))
  print(
    f"Wrote {out}/passkey.md, passkey_seeds.csv, passkey_by_distance.csv, "
    "passkey_seed_curves.png, passkey_heatmap.png",
    file=sys.stderr,
  )


def _sweep(command):
  if _CONFIG.value is None or not _WORKDIR.value:
    raise ValueError("A sweep needs --config and --workdir (or pass --aggregate / --evaluate_run).")
  config_path = config_flags.get_config_filename(flags.FLAGS["config"])
  axes = sweep.parse_grid(_GRID.value)
  sweep.check_keys(axes, _CONFIG.value)
  runs = sweep.expand(axes, sweep.parse_seeds(_SEEDS.value))
  gpus = workers.detect_gpus() if _GPUS.value is None else [g for g in _GPUS.value if g]
  parallel = _PARALLEL.value or max(1, len(gpus))
  overrides = sweep.forwarded_overrides(sys.argv[1:])
  train_script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py")
  start = time.perf_counter()
  outcome = sweep.run_sweep(
    runs,
    _WORKDIR.value,
    config_path=config_path,
    extra_overrides=overrides,
    train_script=train_script,
    eval_command=_eval_command,
    evaluation=_eval_kwargs(),
    parallel=parallel,
    gpus=gpus,
    log=lambda line: print(line, flush=True),
  )
  with open(os.path.join(_WORKDIR.value, "sweep.json"), "w") as f:
    json.dump(
      {
        "command": command,
        "date": reports.utc_date(with_time=True),
        "devices": workers.describe(gpus),
        "parallel": parallel,
        "wall_seconds": round(time.perf_counter() - start, 1),
        "runs": outcome,
      },
      f,
      indent=2,
    )
  finished = [
    os.path.join(_WORKDIR.value, r.name)
    for r in runs
    if os.path.exists(os.path.join(_WORKDIR.value, r.name, sweep.RESULT_FILE))
  ]
  if finished:
    _aggregate(
      finished,
      _WORKDIR.value,
      command,
      sources=[_WORKDIR.value],
      notes=[
        f"Runs: {len(finished)} of {len(runs)} finished; trained on {workers.describe(gpus)}, "
        f"{parallel} at a time (`sweep.json`: each run's outcome, the wall time)"
      ],
    )
  failed = {name: why for name, why in outcome.items() if why.startswith("failed")}
  if failed:
    raise cli.UserError(
      f"{len(failed)} of {len(runs)} runs failed; the table holds the others. "
      f"First: {next(iter(failed))}: {next(iter(failed.values()))}"
    )


def _interrupt(signum, frame):
  raise KeyboardInterrupt(f"signal {signum}")


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO.
  command = reports.command_line()
  if _EVALUATE_RUN.value:
    aggregate.evaluate_run(_EVALUATE_RUN.value, **_eval_kwargs())
  elif _AGGREGATE.value:
    if not _OUT.value:
      raise ValueError("--aggregate needs --out, the folder for the table and files.")
    _aggregate(_AGGREGATE.value, _OUT.value, command)
  else:
    # A stop request (SIGTERM: a cancelled job, a closed session) ends like Ctrl-C: the running
    # subprocesses are terminated (their checkpoints stay) and the sweep resumes when run again.
    signal.signal(signal.SIGTERM, _interrupt)
    _sweep(command)


if __name__ == "__main__":
  cli.run(main)
