"""Evaluate trained workdirs: restore each, sweep its distances, measure its ERF, write the report.

`evaluate_runs` is eval_passkey.py's evaluation: each run's passkey sweep (swa/evaluate.py), its
effective receptive field at the key digits (swa/erf.py), then swa/analysis/report.py's folder
(`write_report`), plus passkey_cross_window.{md,csv} with cross_windows. `evaluate_run` is one
sweep run's evaluation (sweep.py --evaluate_run): its passkey.csv, prompts seeded by its
config.seed. Rows carry the run's training seed (config.seed). `with_rope_scale` runs a trained
model with position interpolation (eval_passkey.py --rope_scale), its rows named "<run> @ rope_scale=s".
"""

import dataclasses
import glob
import os
import sys
import time

import ml_collections

from swa import data, erf, evaluate, reports, train_lib
from swa.analysis import report, rows, summary, tables
from swa.checks import check_int
from swa.model import ModelConfig


@dataclasses.dataclass(frozen=True)
class Run:
  """A trained model to evaluate: its name in the tables, config, graphdef and params."""

  name: str
  config: object
  graphdef: object
  params: object


def model_names(workdirs):
  """Short unique names: the workdir's last component ("w128"), with its parent's when that is
  only a seed ("tiny/seed=1", so seeds of one model group as "tiny"), or the whole path when
  names clash."""

  def short(workdir):
    parent, last = os.path.split(os.path.normpath(workdir))
    only_seed = rows.strip_seed(last) == last and rows.seed_of(last) is not None
    return os.path.join(os.path.basename(parent), last) if only_seed and parent else last

  names = [short(w) for w in workdirs]
  return [n if names.count(n) == 1 else w for n, w in zip(names, workdirs)]


def expand_workdirs(patterns):
  """Each --workdirs entry with a glob character (* ? [) as its matches, sorted; a sweep's run
  folders are named key=value,seed=s, and their commas cannot pass through a comma-separated
  flag: sweeps/length/position_encoding=rope* can. One-line error for a pattern matching nothing."""
  out = []
  for pattern in patterns:
    if not glob.has_magic(pattern):
      out.append(pattern)
      continue
    matches = sorted(glob.glob(pattern))
    if not matches:
      raise ValueError(f"--workdirs: {pattern} matches no folder.")
    out += matches
  return out


def check_workdirs(workdirs):
  """One-line errors, before anything is opened: no workdir, one given twice, not a workdir."""
  if not workdirs:
    raise ValueError("No training run given; pass e.g. --workdirs=workdirs/w128.")
  seen = {}
  for workdir in workdirs:
    if not workdir:
      raise ValueError(f"--workdirs={','.join(workdirs)} holds an empty name.")
    real = os.path.realpath(workdir)
    if real in seen:
      raise ValueError(f"--workdirs names {workdir} twice (also as {seen[real]}).")
    seen[real] = workdir
    for needed in ("config.json", "checkpoints"):
      if not os.path.exists(os.path.join(workdir, needed)):
        raise ValueError(f"{workdir} is not a training workdir: it has no {needed}.")


def load_runs(workdirs):
  """One Run per training workdir (latest checkpoint), named by model_names; reads only."""
  check_workdirs(workdirs)
  runs = []
  for name, workdir in zip(model_names(workdirs), workdirs):
    config, graphdef, params = train_lib.restore_params(workdir)
    runs.append(Run(name, config, graphdef, params))
  return runs


def with_rope_scale(run, rope_scale):
  """The run with its RoPE angles at position / rope_scale (position interpolation), same params.

  Its config says so (model.rope_scale, which the ERF's graphdef reads too) and its name becomes
  "<name> @ rope_scale=<s>", so its rows stay apart from the run's own in every table.
  """
  config = ml_collections.ConfigDict(run.config.to_dict())
  config.model.rope_scale = float(rope_scale)
  model_config = ModelConfig.from_config(config)  # one-line error for a bad scale or NoPE
  return Run(
    f"{run.name} @ rope_scale={rope_scale:g}",
    config,
    evaluate.graphdef_for(model_config),
    run.params,
  )


def _sweep(run, **sweep_kwargs):
  """(model config, reach, trained T, the run's PasskeyRows with its training seed)."""
  model_config = ModelConfig.from_config(run.config)
  reach, train_seq_len = model_config.reach, int(run.config.data.seq_len)
  print(
    f"{run.name}: windows {model_config.layer_windows}, reach {reach}, trained T={train_seq_len}",
    file=sys.stderr,
    flush=True,
  )
  found = evaluate.passkey_sweep(
    run.graphdef,
    run.params,
    reach=reach,
    train_seq_len=train_seq_len,
    label=run.name,
    **sweep_kwargs,
  )
  seed = int(run.config.seed)
  return model_config, train_seq_len, [dataclasses.replace(r, seed=seed) for r in found]


def evaluate_runs(
  runs,
  *,
  out,
  examples_per_distance=100,
  max_factor=2.0,
  step=None,
  full_max_factor=1.0,
  distances=None,
  seed=0,
  erf_examples=32,
  cross_windows=(),
  max_batch_tokens=evaluate.MAX_BATCH_TOKENS,
  edge_examples_per_distance=None,
  command=None,
):
  """Evaluates every run and writes its report (module docstring) into `out`.

  Args:
    runs: list of Run (load_runs).
    out: the output folder, checked writable before anything is evaluated.
    examples_per_distance, max_factor, step, full_max_factor, distances, seed,
      max_batch_tokens, edge_examples_per_distance: evaluate.passkey_sweep's.
    erf_examples: prompts per distance for the effective receptive field (0: none).
    cross_windows: windows (None = full) to run every model with, reusing its parameters.
    command: the command line for the header (default reports.command_line()).

  Returns:
    summary.summarize's list, one dict per model.
  """
  if not runs:
    raise ValueError("No training run given; pass e.g. --workdirs=workdirs/w128.")
  report.check_writable(out)
  start = time.perf_counter()
  sweep = dict(
    examples_per_distance=examples_per_distance,
    step=step,
    max_factor=max_factor,
    full_max_factor=full_max_factor,
    seed=seed,
    distances=distances,
    max_batch_tokens=max_batch_tokens,
    edge_examples_per_distance=edge_examples_per_distance,
  )
  found, erfs, cross_rows = [], {}, []
  for run in runs:
    model_config, train_seq_len, model_rows = _sweep(run, **sweep)
    found += model_rows
    reach = model_rows[0].reach if model_rows else None
    if distances is not None and reach is not None and min(distances) > reach:
      print(
        f"Warning: {run.name}: every distance given is beyond its reach of {reach}, where recall "
        "is 0 by construction (the mask leaves no path): these rows test the evaluation, not the "
        "model.",
        file=sys.stderr,
      )
    if erf_examples:
      # Float32 activations for the gradients, so that small far-away values are not lost to
      # bfloat16 rounding; the parameters are the trained float32 ones either way.
      erfs[run.name] = erf.effective_receptive_field(
        evaluate.graphdef_for(model_config, dtype="float32"),
        run.params,
        [r.distance for r in model_rows],
        train_seq_len=train_seq_len,
        examples_per_distance=erf_examples,
        seed=seed,
        max_batch_tokens=max_batch_tokens,
        label=run.name,
      )
    if cross_windows:
      cross_rows += evaluate.cross_window_sweep(
        run.graphdef,
        run.params,
        cross_windows,
        train_seq_len=train_seq_len,
        label=run.name,
        **sweep,
      )
  grid = (
    "the distances given"
    if distances is not None
    else f"windowed runs swept to {max_factor:g} × their reach, full attention to "
    + (
      "its trained length"
      if full_max_factor == 1
      else f"{full_max_factor:g} × its trained length's largest distance"
    )
  )
  edge = (
    f", {edge_examples_per_distance} within ±{100 * data.FINE_FRACTION:g} % of each reach"
    if edge_examples_per_distance
    else ""
  )
  header = reports.header_lines(
    command,
    extra=[
      f"Evaluation took {time.perf_counter() - start:.0f} s",
      f"{examples_per_distance} fresh random passkeys per distance (seed {seed}){edge}; {grid}.",
    ],
  )
  erf_text = (
    "mean ‖∂ logit of the first answer digit / ∂ embedding of a key digit‖, keys at "
    f"each tested distance, {erf_examples} prompts per distance, float32; exactly zero "
    "beyond the reach"
  )
  notes = ()
  if cross_windows:
    cross_table = tables.format_headline_table(summary.summarize(cross_rows))
    rows.write_rows(os.path.join(out, "passkey_cross_window.csv"), cross_rows)
    with open(os.path.join(out, "passkey_cross_window.md"), "w") as f:
      f.write(
        reports.markdown_header("Passkey recall with the window changed at test time", header)
        + "Each trained model run with every layer's window set to w, same parameters.\n\n"
        + cross_table
      )
    notes = ("## Trained models run with other windows\n\n" + cross_table,)
  summaries, text = report.write_report(
    found, out, header=header, erfs=erfs, erf_text=erf_text, notes=notes
  )
  print(f"Wrote {out}/passkey.md, passkey.csv and the figures", file=sys.stderr)
  print(tables.format_headline_table(summaries))
  return summaries


def evaluate_run(run_dir, *, out=None, **sweep_kwargs):
  """Evaluates the latest checkpoint of one sweep run into its passkey.csv, written atomically.

  The model name is the folder's name without its seed (the window label when that leaves
  nothing); config.seed seeds the prompts too, so each seed is scored on keys of its own.

  Args:
    run_dir: a train.py workdir.
    out: the CSV to write (default <run_dir>/passkey.csv).
    **sweep_kwargs: examples_per_distance, max_factor, step, ... of evaluate.passkey_sweep.

  Returns:
    the rows written.
  """
  from swa.sweep import grid  # The run's name without its seed.

  if not os.path.exists(os.path.join(run_dir, "config.json")):
    raise ValueError(f"{run_dir} is not a training workdir: it has no config.json.")
  config, graphdef, params = train_lib.restore_params(run_dir)
  name = grid.model_name(os.path.basename(os.path.normpath(run_dir))) or None
  run = Run(name, config, graphdef, params)
  _, _, found = _sweep(run, seed=int(config.seed), **sweep_kwargs)
  out = out or os.path.join(run_dir, "passkey.csv")
  tmp = f"{out}.tmp{os.getpid()}"
  rows.write_rows(tmp, found)
  os.replace(tmp, out)
  return found


# --- eval_passkey.py -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Settings:
  """What eval_passkey.py was asked to do (its flags); checked by `main` before any work."""

  workdirs: tuple = ()
  from_csv: tuple = ()
  out: str = None
  examples_per_distance: int = 100
  max_factor: float = 2.0
  full_max_factor: float = 1.0
  step: int = None
  distances: tuple = None
  seed: int = 0
  erf_examples: int = 32
  max_batch_tokens: int = evaluate.MAX_BATCH_TOKENS
  cross_windows: tuple = ()
  edge_examples_per_distance: int = 0
  rope_scale: float = None
  command: str = None


def _ints(flag, values, *, full_ok=False):
  """The integers of a list flag (with full_ok, "full"/"none" -> None); one-line error if not."""
  out = []
  for text in map(str, values):
    if full_ok and text.strip().lower() in ("none", "full"):
      out.append(None)
    elif text.strip().isdigit() and int(text) > 0:
      out.append(int(text))
    else:
      allowed = "positive integers or full" if full_ok else "positive integers"
      raise ValueError(
        f"--{flag}={','.join(map(str, values))}: {text!r} is not allowed; give {allowed}."
      )
  return out


def main(s):
  """eval_passkey.py's one call: merge --from_csv files, or evaluate --workdirs; the summaries.

  Every setting is checked (and --out made and checked writable) before a checkpoint is read.
  """
  if bool(s.workdirs) == bool(s.from_csv):
    raise ValueError(
      "Pass exactly one of --workdirs (evaluate trained runs) and --from_csv "
      "(merge earlier results)."
    )
  if s.from_csv:
    if not s.out:
      raise ValueError("--from_csv needs --out=<folder> for the merged files.")
    summaries, _ = report.merge(list(s.from_csv), s.out, command=s.command)
    print(f"Wrote {s.out}/passkey.md and the merged files", file=sys.stderr)
    print(tables.format_headline_table(summaries))
    return summaries
  check_int("--examples_per_distance", s.examples_per_distance)
  check_int("--edge_examples_per_distance", s.edge_examples_per_distance, low=0)
  check_int("--erf_examples", s.erf_examples, low=0)
  check_int("--max_batch_tokens", s.max_batch_tokens)
  check_int("--seed", s.seed, low=0)
  if s.step is not None:
    check_int("--step", s.step)
  if not s.max_factor > 0:
    raise ValueError(f"--max_factor={s.max_factor} must be > 0.")
  if not s.full_max_factor >= 1:
    raise ValueError(f"--full_max_factor={s.full_max_factor} must be >= 1.")
  if s.rope_scale is not None and not s.rope_scale >= 1:  # NaN fails too
    raise ValueError(f"--rope_scale={s.rope_scale} must be >= 1.")
  distances = _ints("distances", s.distances) if s.distances else None
  cross_windows = _ints("cross_windows", s.cross_windows or (), full_ok=True)
  workdirs = expand_workdirs(s.workdirs)
  out = s.out
  if not all(workdirs):
    raise ValueError(f"--workdirs={','.join(workdirs)} holds an empty name.")
  if not out and len(workdirs) > 1:
    raise ValueError(f"{len(workdirs)} workdirs need --out=<folder> for the shared table.")
  check_workdirs(workdirs)
  out = out or os.path.join(workdirs[0], "eval")
  report.check_writable(out)
  runs = load_runs(workdirs)
  if s.rope_scale is not None:
    runs = [with_rope_scale(run, s.rope_scale) for run in runs]
  return evaluate_runs(
    runs,
    out=out,
    examples_per_distance=s.examples_per_distance,
    max_factor=s.max_factor,
    step=s.step,
    full_max_factor=s.full_max_factor,
    distances=distances,
    seed=s.seed,
    erf_examples=s.erf_examples,
    cross_windows=cross_windows,
    max_batch_tokens=s.max_batch_tokens,
    edge_examples_per_distance=s.edge_examples_per_distance or None,
    command=s.command,
  )
