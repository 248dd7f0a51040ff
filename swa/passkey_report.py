"""Passkey results of trained runs as files: evaluate workdirs, or merge earlier CSVs.

`evaluate_runs` sweeps each run's distances (swa/evaluate.py), measures its effective receptive
field at the key digits (swa/erf.py) and writes, under `out`:

  passkey.md                      summary table (swa/summary.py), header: command, device, date
  passkey.csv                     one row per (model, distance)
  passkey_heatmap.png             distance bucket x model -> exact match
  passkey_curves.png              exact match vs distance, dashed lines at each reach
  effective_receptive_field.png   mean |d logit / d key-digit embedding| vs distance
  effective_receptive_field.csv   the same numbers
  passkey_cross_window.{md,csv}   only with cross_windows: each run with other windows

`merge_csvs` rebuilds the same files from earlier passkey.csv files, with no checkpoints.
eval_passkey.py is the command line.
"""

import collections
import dataclasses
import os
import sys
import time

import matplotlib.pyplot as plt

from swa import data, erf, evaluate, plotting, reports, summary, train_lib
from swa.model import ModelConfig

TITLE = "Passkey retrieval vs distance"
NOTES = (
  "\nDistance d = (index of the token whose logits predict the first answer digit) − "
  "(index of the first key digit). Reach = Σ_l (w_l − 1), the largest d that any stack of "
  "these windows can carry; theoretical RF = reach + 1 positions. Exact match = all 5 "
  "digits right; scored teacher-forced, which equals greedy decoding (swa/evaluate.py). "
  '"Max distance with ≥ 95 %": the largest tested d such that every tested distance up '
  "to it is ≥ 95 %. Success inside / beyond: accuracy averaged uniformly over the tested "
  'distances ≤ reach / > reach. "Measured up to the reference distance": the same average '
  "over d ≤ the seed table's distance (all tested d for full attention).\n\n"
  "Prompts have the trained length while d fits in it; longer d use the shortest prompt "
  "(rounded up to 64 tokens), which a windowed RoPE model handles exactly as in training; "
  "such results are listed as beyond the trained length in `passkey.csv` "
  "(`beyond_train_len`) and drawn hollow in `passkey_curves.png`. Full-attention runs are "
  "evaluated only within their trained length.\n\n"
)
_FULL_BEYOND = (
  "Full-attention runs are evaluated only within their trained length.",
  "Full-attention runs are also evaluated beyond their trained length (RoPE "
  "positions never seen in training): hollow markers, `beyond_train_len`.",
)


@dataclasses.dataclass
class Run:
  """A trained model to evaluate: its name in the tables, config, graphdef and params."""

  name: str
  config: object
  graphdef: object
  params: object


def model_names(workdirs):
  """Short unique names: the workdir's last component, or the whole path when they clash."""
  names = [os.path.basename(os.path.normpath(w)) for w in workdirs]
  return [n if names.count(n) == 1 else w for n, w in zip(names, workdirs)]


def load_runs(workdirs):
  """One Run per training workdir (latest checkpoint), named by model_names.

  Reads only: a workdir without config.json or checkpoints/ is refused before anything is
  opened, so nothing is created in it.
  """
  if not workdirs:
    raise ValueError("No training run given; pass e.g. --workdirs=workdirs/w128.")
  for workdir in workdirs:
    for needed in ("config.json", "checkpoints"):
      if not os.path.exists(os.path.join(workdir, needed)):
        raise ValueError(f"{workdir} is not a training workdir: it has no {needed}.")
  runs = []
  for name, workdir in zip(model_names(workdirs), workdirs):
    config, graphdef, params = train_lib.restore_params(workdir)
    runs.append(Run(name, config, graphdef, params))
  return runs


def write_results(out, rows, erfs, reaches, header, erf_text):
  """Writes passkey.{md,csv}, the two passkey figures and, if erfs, the ERF figure and CSV.

  Returns:
    (summary.summarize(rows), its markdown table, the text for passkey.md).
  """
  os.makedirs(out, exist_ok=True)
  summaries = summary.summarize(rows)
  table = summary.format_summary_table(summaries)
  summary.write_rows(os.path.join(out, "passkey.csv"), rows)
  plt.close(plotting.plot_accuracy_heatmap(rows, os.path.join(out, "passkey_heatmap.png")))
  plt.close(plotting.plot_accuracy_curves(rows, os.path.join(out, "passkey_curves.png")))
  files = "Files: `passkey.csv` (raw rows), `passkey_heatmap.png`, `passkey_curves.png`"
  if erfs:
    plt.close(
      plotting.plot_erf_curves(erfs, reaches, os.path.join(out, "effective_receptive_field.png"))
    )
    summary.write_erf(os.path.join(out, "effective_receptive_field.csv"), erfs)
    files += f", `effective_receptive_field.png` / `.csv` ({erf_text})"
  return summaries, table, header + table + NOTES + files + ".\n"


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
  """Evaluates every run and writes the files of the module docstring under `out`.

  Args:
    runs: list of Run (load_runs).
    out: the output folder.
    examples_per_distance, max_factor, step, full_max_factor, distances, seed,
      max_batch_tokens, edge_examples_per_distance: evaluate.passkey_sweep's.
    erf_examples: prompts per distance for the effective receptive field (0: none).
    cross_windows: windows (None = full) to run every model with, reusing its parameters.
    command: the command line for the header (default reports.command_line()).

  Returns:
    the summary.summarize() list, one dict per run.
  """
  if not runs:
    raise ValueError("No training run given; pass e.g. --workdirs=workdirs/w128.")
  start = time.perf_counter()
  rows, erfs, reaches, cross_rows = [], {}, {}, []
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
  for run in runs:
    model_config = ModelConfig.from_config(run.config)
    reach, train_seq_len = model_config.reach, int(run.config.data.seq_len)
    print(
      f"{run.name}: windows {model_config.layer_windows}, reach {reach}, trained T={train_seq_len}",
      file=sys.stderr,
      flush=True,
    )
    model_rows = evaluate.passkey_sweep(
      run.graphdef, run.params, reach=reach, train_seq_len=train_seq_len, label=run.name, **sweep
    )
    rows += model_rows
    reaches[run.name] = reach
    if erf_examples:
      # Float32 activations for the gradients, so that small far-away values are not lost to
      # bfloat16 rounding; the parameters are the trained float32 ones either way.
      erfs[run.name] = erf.effective_receptive_field(
        evaluate.graphdef_for(model_config, dtype="float32"),
        run.params,
        [r["distance"] for r in model_rows],
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
  header = reports.markdown_header(
    TITLE,
    reports.header_lines(
      command,
      extra=[
        f"Evaluation took {time.perf_counter() - start:.0f} s",
        f"{examples_per_distance} fresh random passkeys per distance (seed {seed})"
        + (
          f", {edge_examples_per_distance} within ±{100 * data.FINE_FRACTION:g} % of each reach"
          if edge_examples_per_distance
          else ""
        )
        + f"; {grid}.",
      ],
    ),
  )
  erf_text = (
    "mean ‖∂ logit of the first answer digit / ∂ embedding of a key digit‖, keys at "
    f"each tested distance, {erf_examples} prompts per distance, float32; exactly zero "
    "beyond the reach"
  )
  summaries, table, text = write_results(out, rows, erfs, reaches, header, erf_text)
  if full_max_factor != 1:
    text = text.replace(*_FULL_BEYOND)
  if cross_windows:
    summary.write_rows(os.path.join(out, "passkey_cross_window.csv"), cross_rows)
    cross_table = summary.format_summary_table(summary.summarize(cross_rows))
    with open(os.path.join(out, "passkey_cross_window.md"), "w") as f:
      f.write(
        header.replace(f"# {TITLE}", "# Passkey retrieval with the window changed at test time")
        + "Each trained model run with every layer's window set to "
        "w, same parameters.\n\n" + cross_table
      )
    text += "\n## Trained models run with other windows\n\n" + cross_table
  with open(os.path.join(out, "passkey.md"), "w") as f:
    f.write(text)
  print(f"Wrote {out}/passkey.md, passkey.csv and the figures", file=sys.stderr)
  print(table)
  return summaries


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
    raise ValueError(
      f"--from_csv: model names clash even with folder names ({sorted(labels)}); "
      "put each file in a folder of its own name."
    )
  return names


def merge_csvs(csv_paths, *, out, command=None):
  """Merges earlier runs' passkey.csv files into one passkey.md, passkey.csv and figures.

  Where an effective_receptive_field.csv lies beside every input file, the ERFs are merged too.
  Rows are copied, not re-measured: each input file's passkey.md says where it was measured.

  Returns:
    the summary.summarize() list, one dict per model.
  """
  if not csv_paths:
    raise ValueError("--from_csv names no file; pass e.g. --from_csv=results/passkey.csv.")
  tables = [(path, summary.read_rows(path)) for path in csv_paths]
  names = _combined_names(tables)
  erf_paths = [
    os.path.join(os.path.dirname(path), "effective_receptive_field.csv") for path in csv_paths
  ]
  with_erf = all(os.path.exists(p) for p in erf_paths)
  rows, erfs, reaches = [], {}, {}
  for (path, file_rows), erf_path in zip(tables, erf_paths):
    rows += [{**r, "model": names[path, r["model"]]} for r in file_rows]
    if with_erf:
      for model, by_d in summary.read_erf(erf_path).items():
        if (path, model) in names:
          label = names[path, model]
          erfs[label] = by_d
          reaches[label] = next(r["reach"] for r in file_rows if r["model"] == model)
  sources = "".join(f"\n  - `{path}`" for path in csv_paths)
  header = reports.markdown_header(
    TITLE,
    reports.header_lines(
      command,
      device=False,
      extra=[
        "Merged from these files, whose `passkey.md` beside each says how, on which device and "
        "when it was measured (model names clashing between files take their file's folder "
        f"name):{sources}"
      ],
    ),
  )
  erf_text = (
    "mean ‖∂ logit of the first answer digit / ∂ input embedding‖ by distance, copied "
    "from the files beside the inputs; exactly zero beyond the reach"
  )
  summaries, table, text = write_results(out, rows, erfs, reaches, header, erf_text)
  with open(os.path.join(out, "passkey.md"), "w") as f:
    f.write(text)
  print(f"Wrote {out}/passkey.md and the merged files", file=sys.stderr)
  print(table)
  return summaries
