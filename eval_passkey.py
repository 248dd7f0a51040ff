"""Passkey retrieval vs distance for trained runs: table, raw rows, figures, effective RFs.

  python eval_passkey.py --workdirs=workdirs/w128                 # writes workdirs/w128/eval/
  python eval_passkey.py --workdirs=workdirs/w128,workdirs/full --out=evals/both

Each workdir is a training run of train.py (config.json + checkpoints/); nothing is written
into it except, for a single run without --out, its own eval/ folder. Several runs need --out.
For each run the distance is swept from data.MIN_DISTANCE to --max_factor x its reach (full
attention: to its trained length, or --full_max_factor x that), or over --distances, with
--examples_per_distance fresh passkeys per distance, the same prompts train.py's tables score
(swa/evaluate.py). swa/passkey_report.py lists the files written; the summary table is printed
last, progress goes to stderr.

  python eval_passkey.py --from_csv=results/passkey.csv,evals/w512_s1/passkey.csv --out=merged

merges earlier results (each file keeps its rows; a model name found in several files takes its
file's folder name) into the same table and figures, with no checkpoints and no accelerator.
"""

import os

from absl import flags, logging

from swa import cli, evaluate, passkey_report

_WORKDIRS = flags.DEFINE_list("workdirs", None, "Training workdirs, comma-separated.")
_FROM_CSV = flags.DEFINE_list(
    "from_csv", [], "Instead of --workdirs: passkey.csv files written by earlier runs of this "
    "script (on any machine), merged into one table and the same figures; needs --out.")
_OUT = flags.DEFINE_string("out", None, "Folder for the table, CSVs and figures; default "
                           "<workdir>/eval for one workdir, required otherwise.")
_EXAMPLES = flags.DEFINE_integer("examples_per_distance", 100,
                                 "Fresh random passkeys per distance.")
_MAX_FACTOR = flags.DEFINE_float("max_factor", 2.0,
                                 "Windowed runs are swept up to max_factor x their reach.")
_FULL_MAX_FACTOR = flags.DEFINE_float(
    "full_max_factor", 1.0, "Full-attention runs are swept up to this many times the largest "
    "distance of their trained length (> 1: beyond it, to measure where full attention stops).")
_STEP = flags.DEFINE_integer("step", None, "Distance step of the sweep; default reach / 16 "
                             "(reach / 64 within 15 % of the reach, <= 8 tokens within 5 %).")
_DISTANCES = flags.DEFINE_list("distances", None, "Explicit distances for every run, instead "
                               "of the sweep grid.")
_SEED = flags.DEFINE_integer("seed", 0, "Seeds the evaluation prompts (train.py uses the run's "
                             "config.seed).")
_ERF_EXAMPLES = flags.DEFINE_integer("erf_examples", 32, "Prompts per distance for the "
                                     "effective receptive field at the key digits; 0 = none.")
_MAX_BATCH_TOKENS = flags.DEFINE_integer("max_batch_tokens", evaluate.MAX_BATCH_TOKENS,
                                         "Tokens per scored batch, at most (one prompt at least).")
_CROSS_WINDOWS = flags.DEFINE_list(
    "cross_windows", [], "Optional windows (e.g. 128,256,512,1024 or full) to run every model "
    "with, reusing its trained parameters (evaluate.test_passkey_retrieval).")


def _ints(flag, values, *, full_ok=False):
  """The integers of a list flag (with full_ok, "full"/"none" -> None); one-line error if not."""
  out = []
  for text in values:
    if full_ok and text.strip().lower() in ("none", "full"):
      out.append(None)
    elif text.strip().isdigit():
      out.append(int(text))
    else:
      allowed = "positive integers or full" if full_ok else "positive integers"
      raise cli.UserError(f"--{flag}={','.join(values)}: {text!r} is not allowed; give {allowed}.")
  return out


def main(argv):
  if len(argv) > 1:
    raise cli.UserError(f"Unexpected arguments: {argv[1:]}")
  if bool(_WORKDIRS.value) == bool(_FROM_CSV.value):
    raise cli.UserError("Pass exactly one of --workdirs (evaluate trained runs) and --from_csv "
                        "(merge earlier results).")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO.
  if _FROM_CSV.value:
    if not _OUT.value:
      raise cli.UserError("--from_csv needs --out=<folder> for the merged files.")
    passkey_report.merge_csvs(_FROM_CSV.value, out=_OUT.value)
    return
  out = _OUT.value
  if not out:
    if len(_WORKDIRS.value) > 1:
      raise cli.UserError(f"{len(_WORKDIRS.value)} workdirs need --out=<folder> for the "
                          "shared table.")
    out = os.path.join(_WORKDIRS.value[0], "eval")
  distances = _ints("distances", _DISTANCES.value) if _DISTANCES.value else None
  cross_windows = _ints("cross_windows", _CROSS_WINDOWS.value, full_ok=True)
  runs = passkey_report.load_runs(_WORKDIRS.value)
  passkey_report.evaluate_runs(
      runs, out=out, examples_per_distance=_EXAMPLES.value, max_factor=_MAX_FACTOR.value,
      step=_STEP.value, full_max_factor=_FULL_MAX_FACTOR.value,
      distances=distances,
      seed=_SEED.value, erf_examples=_ERF_EXAMPLES.value,
      cross_windows=cross_windows,
      max_batch_tokens=_MAX_BATCH_TOKENS.value)


if __name__ == "__main__":
  cli.run(main)
