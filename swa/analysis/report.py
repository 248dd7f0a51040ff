"""The one passkey report: a folder of table, CSVs and figures from PasskeyRows.

`write_report(rows, out, header=...)` writes, into `out`:

  passkey.md                     the headline table (tables.format_headline_table) under its header
  passkey.csv                    every row, with its seed (rows.FIELDS)
  passkey_by_distance.csv        per model and distance: mean over seeds, each seed, Wilson interval
  passkey_curves.png             recall vs distance, a panel per model, a line per seed
  passkey_heatmap.png            recall by distance bucket, split at each reach
  passkey_depth.png              the 50 % crossing against the reach (models of several reaches)
  effective_receptive_field.png  and .csv, when ERFs are given

Everything that reports passkey results writes it: eval_passkey.py after evaluating workdirs
(swa/evaluate_workdirs.py), and `merge` for eval_passkey.py --from_csv and sweep.py --aggregate,
which read earlier passkey.csv files, so both give the same files from the same inputs.
"""

import os

import numpy as np

from swa import reports
from swa.analysis import rows as rows_lib
from swa.analysis import summary, tables

TITLE = "Passkey recall vs distance"
PROMPT_NOTES = (
  "Prompts have the trained length while d fits in it; longer d use the shortest prompt "
  "(rounded up to 64 tokens), which a windowed RoPE model handles exactly as in training; such "
  "rows are marked `beyond_train_len` in `passkey.csv` and drawn hollow in `passkey_curves.png`. "
  "For full attention those distances are its extrapolation beyond the trained length, counted "
  "beyond (never inside).\n"
)


def check_writable(out):
  """A one-line error unless `out` is (or can be made) a writable folder; checked before any
  long evaluation. Creates the folder."""
  reports.make_folder("out", out)


def write_report(rows, out, *, header, erfs=None, erf_text="", notes=()):
  """Writes the files of the module docstring; returns (summaries, the text of passkey.md).

  Args:
    rows: PasskeyRows (any models and seeds).
    out: the folder.
    header: the provenance lines (reports.header_lines).
    erfs: optional {model: {distance: erf}}; the ERF figure and CSV are written when given.
    erf_text: what the ERF numbers are, for the files line.
    notes: more paragraphs, appended under the table's notes.
  """
  if not rows:
    raise ValueError("No passkey rows to report.")
  import matplotlib.pyplot as plt  # Only when figures are drawn.

  from swa.analysis import figures

  check_writable(out)
  summaries = summary.summarize(rows)
  rank = {s["model"]: i for i, s in enumerate(summaries)}
  rows = sorted(rows, key=lambda r: (rank[rows_lib.strip_seed(r.model)], r.seed, r.distance))
  rows_lib.write_rows(os.path.join(out, "passkey.csv"), rows)
  reports.write_csv(
    os.path.join(out, "passkey_by_distance.csv"),
    tables.distance_rows(rows),
    tables.BY_DISTANCE_FIELDS,
  )
  plt.close(figures.plot_seed_curves(rows, os.path.join(out, "passkey_curves.png")))
  plt.close(figures.plot_accuracy_heatmap(rows, os.path.join(out, "passkey_heatmap.png")))
  files = (
    "Files: `passkey.csv` (every row with its seed), `passkey_by_distance.csv` (mean, each "
    "seed, pooled keys and Wilson interval per distance), `passkey_curves.png` (each seed's "
    "recall), `passkey_heatmap.png` (per-distance recall, distances weighted by their span)"
  )
  if len({r.reach for r in rows if r.reach is not None}) > 1:
    plt.close(figures.plot_depth_sweep(rows, os.path.join(out, "passkey_depth.png")))
    files += ", `passkey_depth.png` (the 50 % crossing of each seed against the reach)"
  if erfs:
    reaches = {}
    for r in rows:
      reaches.setdefault(r.model, r.reach)
    plt.close(
      figures.plot_erf_curves(erfs, reaches, os.path.join(out, "effective_receptive_field.png"))
    )
    rows_lib.write_erf(os.path.join(out, "effective_receptive_field.csv"), erfs)
    files += f", `effective_receptive_field.png` / `.csv` ({erf_text})"
  keys = int(np.median([r.n for r in rows]))
  text = (
    reports.markdown_header(TITLE, header)
    + tables.format_headline_table(summaries)
    + "\n"
    + tables.headline_notes(keys)
    + "\n"
    + PROMPT_NOTES
    + "".join(f"\n{note}\n" for note in notes)
    + "\n"
    + files
    + ".\n"
  )
  with open(os.path.join(out, "passkey.md"), "w") as f:
    f.write(text)
  return summaries, text


def merge(paths, out, *, command=None, extra=()):
  """The report of earlier passkey.csv files or folders of them (rows.collect), in `out`.

  Where an effective_receptive_field.csv lies beside every input file, the ERFs are merged too.
  Rows are copied, not re-measured: each input's passkey.md says where it was measured. `extra`
  lines go to the header after the inputs.

  Returns:
    (summaries, the text of passkey.md).
  """
  if not paths:
    raise ValueError("No passkey.csv given; pass e.g. results/passkey_campaign_h200/w512.")
  rows, names = rows_lib.collect_named(paths)
  check_writable(out)
  csvs = list(dict.fromkeys(path for path, _ in names))
  erf_paths = {p: os.path.join(os.path.dirname(p), "effective_receptive_field.csv") for p in csvs}
  erfs = {}
  if all(os.path.exists(p) for p in erf_paths.values()):
    for path, erf_path in erf_paths.items():
      for model, by_d in rows_lib.read_erf(erf_path).items():
        if (path, model) in names:
          erfs[names[path, model]] = by_d
  sources = "".join(f"\n  - `{p}`" for p in paths)
  header = reports.header_lines(
    command,
    device=False,
    extra=[
      "CPU, rebuilt from committed or earlier CSVs: no checkpoint, no accelerator",
      "Merged from these files or folders, whose `passkey.md` says how, on which device and "
      "when each was measured (a model and seed found in several files takes its file's "
      f"folder name):{sources}",
      *extra,
    ],
  )
  erf_text = (
    "mean ‖∂ logit of the first answer digit / ∂ input embedding‖ by distance, copied from the "
    "files beside the inputs; exactly zero beyond the reach"
  )
  return write_report(rows, out, header=header, erfs=erfs, erf_text=erf_text)
