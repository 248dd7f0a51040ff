"""Passkey retrieval vs distance for trained runs: table, raw rows, figures, effective RFs.

  python eval_passkey.py --workdirs=workdirs/w128,workdirs/w256,workdirs/w512,workdirs/full

Each workdir is a training run of train.py (config.json + checkpoints/). For each run the
distance is swept from data.MIN_DISTANCE to max_factor x its reach (full attention: to
its trained length), with examples_per_distance fresh passkeys per distance (see
swa/evaluate.py for the grid, the prompt lengths and why one teacher-forced pass is
greedy decoding). Writes, under --out:

  passkey.md                      summary table, beside the seed table's expectations
  passkey.csv                     one row per (model, distance)
  passkey_heatmap.png             distance bucket x model -> exact match
  passkey_curves.png              exact match vs distance, dashed lines at each reach
  effective_receptive_field.png   mean |d logit / d embedding| vs distance
  effective_receptive_field.csv   the same numbers
  passkey_cross_window.{md,csv}   only with --cross_windows: each run with other windows

and prints the summary table last. Progress goes to stderr.

  python eval_passkey.py --from_csv=results/passkey.csv,evals/w512_s1/passkey.csv --out=merged

merges earlier results (each file keeps its rows; a model name found in several files takes its
file's folder name) into the same table and figures, with no checkpoints and no accelerator.
"""

import collections
import csv
import datetime
import os
import shlex
import sys
import time

import jax
import matplotlib.pyplot as plt
from absl import app, flags, logging

from swa import evaluate, plotting, train_lib

_WORKDIRS = flags.DEFINE_list("workdirs", None, "Training workdirs, comma-separated.")
_EXAMPLES = flags.DEFINE_integer("examples_per_distance", 100,
                                 "Fresh random passkeys per distance.")
_OUT = flags.DEFINE_string("out", "results", "Directory for the table, CSVs and figures.")
_MAX_FACTOR = flags.DEFINE_float("max_factor", 2.0,
                                 "Windowed runs are swept up to max_factor x their reach.")
_STEP = flags.DEFINE_integer("step", None, "Distance step of the sweep; default reach / 16 "
                             "(and reach / 64 within 15 % of the reach).")
_SEED = flags.DEFINE_integer("seed", 0, "Seeds the evaluation prompts.")
_ERF_EXAMPLES = flags.DEFINE_integer("erf_examples", 16,
                                     "Prompts averaged for each effective receptive field.")
_CROSS_WINDOWS = flags.DEFINE_list(
    "cross_windows", [], "Optional windows (e.g. 128,256,512,1024 or full) to run every model "
    "with, reusing its trained parameters (evaluate.test_passkey_retrieval).")

_FROM_CSV = flags.DEFINE_list(
    "from_csv", [], "Instead of --workdirs: passkey.csv files written by earlier runs of this "
    "script (on any machine), merged into one table and the same figures; no checkpoints needed.")

CSV_FIELDS, ERF_FIELDS = evaluate.CSV_FIELDS, evaluate.ERF_FIELDS


def _model_names(workdirs):
  """Short unique names: the workdir's last component, or the whole path when they clash."""
  names = [os.path.basename(os.path.normpath(w)) for w in workdirs]
  return [n if names.count(n) == 1 else w for n, w in zip(names, workdirs)]


def _write_csv(path, rows, fields):
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)


def _device_kind():
  device = jax.devices()[0]
  return f"{device.device_kind} ({jax.default_backend()}, {jax.device_count()} device(s))"


def _parse_window(text):
  return None if text.strip().lower() in ("none", "full") else int(text)


NOTES = (
    "\nDistance d = (index of the token whose logits predict the first answer digit) − "
    "(index of the first key digit). Reach = Σ_l (w_l − 1), the largest d that any stack of "
    "these windows can carry; theoretical RF = reach + 1 positions. Exact match = all 5 "
    "digits right; scored teacher-forced, which equals greedy decoding (swa/evaluate.py). "
    "\"Max distance with ≥ 95 %\": the largest tested d such that every tested distance up "
    "to it is ≥ 95 %. Success inside / beyond: accuracy averaged uniformly over the tested "
    "distances ≤ reach / > reach. \"Measured up to the reference distance\": the same average "
    "over d ≤ the seed table's distance (all tested d for full attention).\n\n"
    "Prompts have the trained length while d fits in it; longer d use the shortest prompt "
    "(rounded up to 64 tokens), which a windowed RoPE model handles exactly as in training; "
    "such results are listed as beyond the trained length in `passkey.csv` "
    "(`beyond_train_len`) and drawn hollow in `passkey_curves.png`. Full-attention runs are "
    "evaluated only within their trained length.\n\n")


def _write_results(out, rows, erfs, reaches, header, erf_note):
  """Writes passkey.{md,csv}, the two passkey figures and, if erfs, the ERF figure and CSV.

  Returns:
    (evaluate.summarize(rows), its markdown table, the text written to passkey.md).
  """
  os.makedirs(out, exist_ok=True)
  summary = evaluate.summarize(rows)
  table = evaluate.format_summary_table(summary)
  _write_csv(os.path.join(out, "passkey.csv"), rows, CSV_FIELDS)
  plt.close(plotting.plot_accuracy_heatmap(rows, os.path.join(out, "passkey_heatmap.png")))
  plt.close(plotting.plot_accuracy_curves(rows, os.path.join(out, "passkey_curves.png")))
  files = "Files: `passkey.csv` (raw rows), `passkey_heatmap.png`, `passkey_curves.png`"
  if erfs:
    plt.close(plotting.plot_erf_curves(erfs, reaches,
                                       os.path.join(out, "effective_receptive_field.png")))
    erf_rows = [{"model": name, "distance": d, "erf": float(v),
                 "erf_normalized": float(v / erf.max()) if erf.max() > 0 else 0.0}
                for name, erf in erfs.items() for d, v in enumerate(erf)]
    _write_csv(os.path.join(out, "effective_receptive_field.csv"), erf_rows, ERF_FIELDS)
    files += (", `effective_receptive_field.png` / `.csv` (mean ‖∂ logit of the first answer "
              f"digit / ∂ input embedding‖ by distance, {erf_note}exactly zero beyond the "
              "reach)")
  return summary, table, header + table + NOTES + files + ".\n"


def run(workdirs, *, out="results", examples_per_distance=100, max_factor=2.0, step=None, seed=0,
        erf_examples=16, cross_windows=(), command=None):
  """Evaluates every workdir and writes the files listed in the module docstring.

  Returns:
    the evaluate.summarize() list, one dict per workdir.
  """
  if not workdirs:
    raise ValueError("--workdirs names no training run; pass e.g. --workdirs=workdirs/w128.")
  for workdir in workdirs:
    if not os.path.exists(os.path.join(workdir, "config.json")):
      raise ValueError(f"{workdir} is not a training workdir: it has no config.json.")
  os.makedirs(out, exist_ok=True)
  start = time.perf_counter()
  rows, erfs, reaches, cross_rows = [], {}, {}, []
  for name, workdir in zip(_model_names(workdirs), workdirs):
    config, graphdef, params = train_lib.restore_params(workdir)
    model_config = train_lib.model_config(config)
    reach, train_seq_len = evaluate.reach_of(model_config), int(config.data.seq_len)
    print(f"{name}: windows {model_config.layer_windows}, reach {reach}, trained T="
          f"{train_seq_len}", file=sys.stderr, flush=True)
    model_rows = evaluate.passkey_sweep(
        graphdef, params, reach=reach, train_seq_len=train_seq_len,
        examples_per_distance=examples_per_distance, step=step, max_factor=max_factor, seed=seed,
        label=name)
    rows += model_rows
    # Float32 activations for the gradients, so that small far-away values are not lost to
    # bfloat16 rounding; the parameters are the trained float32 ones either way.
    erf_graphdef = evaluate.graphdef_for(model_config, dtype="float32")
    erfs[name] = evaluate.effective_receptive_field_of_model(
        erf_graphdef, params, seq_len=max(r["seq_len"] for r in model_rows),
        num_examples=erf_examples, seed=seed)
    reaches[name] = reach
    if cross_windows:
      cross_rows += evaluate.cross_window_sweep(
          graphdef, params, model_config, cross_windows, train_seq_len=train_seq_len,
          label=name, examples_per_distance=examples_per_distance, step=step,
          max_factor=max_factor, seed=seed)

  command = command or shlex.join(["python"] + sys.argv)
  header = (f"# Passkey retrieval vs distance\n\n"
            f"- Command: `{command}`\n"
            f"- Device: {_device_kind()}; JAX {jax.__version__}\n"
            f"- Date: {datetime.datetime.now().isoformat(timespec='seconds')}; "
            f"evaluation took {time.perf_counter() - start:.0f} s\n"
            f"- {examples_per_distance} fresh random passkeys per distance (seed {seed}); "
            f"windowed runs swept to {max_factor:g} × their reach, full attention to its "
            f"trained length.\n\n")
  erf_note = f"float32, {erf_examples} prompts; "
  summary, table, text = _write_results(out, rows, erfs, reaches, header, erf_note)
  if cross_windows:
    cross_summary = evaluate.summarize(cross_rows)
    _write_csv(os.path.join(out, "passkey_cross_window.csv"), cross_rows, CSV_FIELDS)
    cross_table = evaluate.format_summary_table(cross_summary)
    with open(os.path.join(out, "passkey_cross_window.md"), "w") as f:
      f.write(header.replace("# Passkey retrieval vs distance",
                             "# Passkey retrieval with the window changed at test time")
              + "Each trained model run with every layer's window set to w, same parameters.\n\n"
              + cross_table)
    text += "\n## Trained models run with other windows\n\n" + cross_table
  with open(os.path.join(out, "passkey.md"), "w") as f:
    f.write(text)
  print(f"Wrote {out}/passkey.md, passkey.csv, passkey_heatmap.png, passkey_curves.png, "
        f"effective_receptive_field.png/.csv", file=sys.stderr)
  print(table)
  return summary


def _combined_names(tables):
  """{(path, model): label}: the model's own name, or, where several files hold a model of
  that name, the name of its file's folder (folder/model if that file holds several models)."""
  counts = collections.Counter(m for _, rows in tables for m in {r["model"] for r in rows})
  names = {}
  for path, rows in tables:
    folder = os.path.basename(os.path.dirname(os.path.abspath(path)))
    models = list(dict.fromkeys(r["model"] for r in rows))
    for m in models:
      clash = counts[m] > 1
      names[path, m] = m if not clash else folder if len(models) == 1 else f"{folder}/{m}"
  labels = list(names.values())
  if len(set(labels)) < len(labels):
    raise ValueError(f"--from_csv: model names clash even with folder names ({sorted(labels)}); "
                     "put each file in a folder of its own name.")
  return names


def combine(csv_paths, *, out="results", command=None):
  """Merges earlier runs' passkey.csv files into one passkey.md, passkey.csv and figures.

  Where an effective_receptive_field.csv lies beside every input file, the ERFs are merged too.
  Rows are copied, not re-measured: each input file's passkey.md says where it was measured.

  Returns:
    the evaluate.summarize() list, one dict per model.
  """
  if not csv_paths:
    raise ValueError("--from_csv names no file; pass e.g. --from_csv=results/passkey.csv.")
  tables = [(path, evaluate.read_rows(path)) for path in csv_paths]
  names = _combined_names(tables)
  erf_paths = [os.path.join(os.path.dirname(path), "effective_receptive_field.csv")
               for path in csv_paths]
  with_erf = all(os.path.exists(p) for p in erf_paths)
  rows, erfs, reaches = [], {}, {}
  for (path, file_rows), erf_path in zip(tables, erf_paths):
    rows += [{**r, "model": names[path, r["model"]]} for r in file_rows]
    if with_erf:
      for model, erf in evaluate.read_erf(erf_path).items():
        if (path, model) in names:
          label = names[path, model]
          erfs[label] = erf
          reaches[label] = next(r["reach"] for r in file_rows if r["model"] == model)
  command = command or shlex.join(["python"] + sys.argv)
  sources = "".join(f"  - `{path}`\n" for path in csv_paths)
  header = (f"# Passkey retrieval vs distance\n\n"
            f"- Command: `{command}`\n"
            f"- Date: {datetime.datetime.now().isoformat(timespec='seconds')}\n"
            f"- Merged from these files, whose `passkey.md` beside each says how, on which device "
            f"and when it was measured (model names clashing between files take their file's "
            f"folder name):\n{sources}\n")
  erf_note = "copied from the files beside the inputs; "
  summary, table, text = _write_results(out, rows, erfs, reaches, header, erf_note)
  with open(os.path.join(out, "passkey.md"), "w") as f:
    f.write(text)
  print(f"Wrote {out}/passkey.md and the merged files", file=sys.stderr)
  print(table)
  return summary


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if bool(_WORKDIRS.value) == bool(_FROM_CSV.value):
    raise app.UsageError("Pass exactly one of --workdirs (evaluate trained runs) and --from_csv "
                         "(merge earlier results).")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO.
  if _FROM_CSV.value:
    combine(_FROM_CSV.value, out=_OUT.value)
    return
  run(_WORKDIRS.value, out=_OUT.value, examples_per_distance=_EXAMPLES.value,
      max_factor=_MAX_FACTOR.value, step=_STEP.value, seed=_SEED.value,
      erf_examples=_ERF_EXAMPLES.value,
      cross_windows=[_parse_window(w) for w in _CROSS_WINDOWS.value])


if __name__ == "__main__":
  app.run(main)
