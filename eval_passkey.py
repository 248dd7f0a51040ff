"""Passkey retrieval vs distance for trained runs: table, raw rows, figures, effective RFs.

  python eval_passkey.py --workdirs=workdirs/w128                 # writes workdirs/w128/eval/
  python eval_passkey.py --workdirs=workdirs/w128,workdirs/full --out=evals/both
  python eval_passkey.py --workdirs='sweeps/length/position_encoding=rope*' --out=evals/rope
                                      # a glob: a sweep's run folders (key=value,seed=s) hold commas

Each workdir is a training run of train.py (config.json + checkpoints/); nothing is written
into it except, for a single run without --out, its own eval/ folder. Several runs need --out.
For each run the distance is swept from data.MIN_DISTANCE to --max_factor x its reach (full
attention: to its trained length, or --full_max_factor x that), or over --distances, with
--examples_per_distance fresh passkeys per distance, the same prompts train.py's tables score
(swa/evaluate.py). swa/analysis/report.py lists the files written; the summary table is printed
last, progress goes to stderr.

  python eval_passkey.py --from_csv=results/passkey.csv,evals/w512_s1/passkey.csv --out=merged

merges earlier results (each file keeps its rows; a model and seed found in several files takes
its file's folder name) into the same table and figures, with no checkpoints and no accelerator:
the same report as `sweep.py --aggregate` of the same files.

  python eval_passkey.py --workdirs=workdirs/full1024 --full_max_factor=4 --rope_scale=2 \
    --out=evals/full1024_pi2

runs a model with position interpolation (RoPE angles at position / 2) beyond its trained length.
"""

from absl import flags, logging

from swa import cli, evaluate, evaluate_workdirs


def define_flags():
  """The command's flags; defined only when it runs as a program, so that importing this file
  (tests, other tools) adds nothing to absl's global flags."""
  flags.DEFINE_list(
    "workdirs",
    None,
    "Training workdirs, comma-separated; globs too (a sweep's run folders hold commas: "
    "--workdirs='sweeps/length/position_encoding=rope*').",
  )
  flags.DEFINE_list(
    "from_csv",
    [],
    "Instead of --workdirs: passkey.csv files written by earlier runs of this "
    "script (on any machine), merged into one table and the same figures; needs --out.",
  )
  flags.DEFINE_string(
    "out",
    None,
    "Folder for the table, CSVs and figures; default "
    "<workdir>/eval for one workdir, required otherwise.",
  )
  flags.DEFINE_integer("examples_per_distance", 100, "Fresh random passkeys per distance.")
  flags.DEFINE_integer(
    "edge_examples_per_distance",
    0,
    "Passkeys at each distance within 5 % of "
    "a windowed run's reach (0: --examples_per_distance); ~600 certify "
    ">= 99.5 %.",
  )
  flags.DEFINE_float("max_factor", 2.0, "Windowed runs are swept up to max_factor x their reach.")
  flags.DEFINE_float(
    "full_max_factor",
    1.0,
    "Full-attention runs are swept up to this many times the largest "
    "distance of their trained length (> 1: beyond it, to measure where full attention "
    "stops).",
  )
  flags.DEFINE_integer(
    "step",
    None,
    "Distance step of the sweep; default reach / 16 (reach / 64 "
    "within 15 % of the reach, <= 8 tokens within 5 %).",
  )
  flags.DEFINE_list(
    "distances", None, "Explicit distances for every run, instead of the sweep grid."
  )
  flags.DEFINE_integer(
    "seed", 0, "Seeds the evaluation prompts (train.py uses the run's config.seed)."
  )
  flags.DEFINE_integer(
    "erf_examples",
    32,
    "Prompts per distance for the effective receptive field at the key digits; 0 = none.",
  )
  flags.DEFINE_integer(
    "max_batch_tokens",
    evaluate.MAX_BATCH_TOKENS,
    "Tokens per scored batch, at most (one prompt at least).",
  )
  flags.DEFINE_list(
    "cross_windows",
    [],
    "Optional windows (e.g. 128,256,512,1024 or full) to run every model "
    "with, reusing its trained parameters (evaluate.test_passkey_retrieval).",
  )
  flags.DEFINE_float(
    "rope_scale",
    None,
    "Run every model with position interpolation: RoPE angles at position / rope_scale (>= 1), "
    "same parameters; its rows are named '<run> @ rope_scale=<s>'. Default: as trained.",
  )


def run(**settings):
  """What the command does (module docstring), from the flags' values; returns the summaries."""
  return evaluate_workdirs.main(evaluate_workdirs.Settings(**settings))


def main(argv):
  if len(argv) > 1:
    raise cli.UserError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO.
  f = flags.FLAGS
  run(
    workdirs=tuple(f.workdirs or ()),
    from_csv=tuple(f.from_csv),
    out=f.out,
    examples_per_distance=f.examples_per_distance,
    max_factor=f.max_factor,
    full_max_factor=f.full_max_factor,
    step=f.step,
    distances=f.distances,
    seed=f.seed,
    erf_examples=f.erf_examples,
    max_batch_tokens=f.max_batch_tokens,
    cross_windows=tuple(f.cross_windows),
    edge_examples_per_distance=f.edge_examples_per_distance,
    rope_scale=f.rope_scale,
  )


if __name__ == "__main__":
  define_flags()
  cli.run(main)
