"""The passkey row: one type from the evaluation to passkey.csv to every summary and figure.

A `PasskeyRow` is one model (and training seed) scored at one distance d: `n` fresh passkeys,
`accuracy` the fraction whose five digits were all right. Its fields are the columns of
passkey.csv, in order (`FIELDS`). Files written before the `seed` column existed still load: the
seed then comes from the model name ("w512_s1", "...,seed=1"), else from the file's folder name,
else 0 (`seed_of`).

Inside. A row is inside when d <= its model's reach (`limit_of`): for windowed models the reach
sum_l (w_l - 1), beyond which the mask leaves no path; for full attention, which has no such
limit, the largest distance its trained context holds (data.context_max_distance), beyond which
it sees RoPE positions it was never trained on. The `inside` column of a file is recomputed on
reading (files before 2026-12 marked every full-attention distance inside).

`collect` reads the rows of passkey.csv files or folders of them (eval_passkey.py --from_csv and
sweep.py --aggregate), naming each model so that runs from different files stay apart.
"""

import collections
import csv
import dataclasses
import glob
import os
import re

from swa import data
from swa.checks import check_int
from swa.sweep import grid

# A seed inside a name: "seed=1", "seed1", "seed_1" or an "s1" token ("w512_s1_f03", "tiny_s0").
_SEED_TOKEN = re.compile(r"(?:^|(?<=[_,\-/ ]))(?:seed[=_]?|s)(\d+)(?=$|[_,\-/ ])")
ERF_FIELDS = ("model", "distance", "erf", "erf_normalized")  # effective_receptive_field.csv


def limit_of(reach, train_seq_len):
  """The largest distance counted inside: the reach, or, for full attention (reach None), the
  largest distance of the trained context."""
  return data.context_max_distance(train_seq_len) if reach is None else reach


@dataclasses.dataclass(frozen=True)
class PasskeyRow:
  """One model scored at one distance (module docstring).

  Attributes:
    model: the model's name in tables ("w128", "num_layers=2", a workdir's name).
    window: the window label ("128"; "full"; "8,32,32,32" for per-layer windows).
    layers: number of layers.
    reach: sum_l (w_l - 1); None for full attention.
    distance: d, from the first key digit to the token that predicts the first answer digit.
    inside: d <= limit_of(reach, train_seq_len); computed, never given.
    accuracy: exact match, in [0, 1].
    n: passkeys scored at this distance, >= 1.
    seq_len: the context length T of the prompts.
    train_seq_len: the context length the model was trained at.
    beyond_train_len: seq_len > train_seq_len.
    seed: the model's training seed (config.seed).
  """

  model: str
  window: str
  layers: int
  reach: int | None
  distance: int
  inside: bool = dataclasses.field(init=False)
  accuracy: float
  n: int
  seq_len: int
  train_seq_len: int
  beyond_train_len: bool = dataclasses.field(init=False)
  seed: int = 0

  def __post_init__(self):
    if not self.model or not self.window:
      raise ValueError(f"model={self.model!r}, window={self.window!r}: a row needs both names.")
    check_int("layers", self.layers)
    if self.reach is not None:
      check_int("reach", self.reach, low=0)
    check_int("distance", self.distance, low=0)
    check_int("n", self.n)
    check_int("seq_len", self.seq_len)
    check_int("train_seq_len", self.train_seq_len)
    check_int("seed", self.seed, low=0)
    if not 0.0 <= self.accuracy <= 1.0:  # NaN fails too
      raise ValueError(f"accuracy={self.accuracy!r} must be in [0, 1].")
    limit = limit_of(self.reach, self.train_seq_len)
    object.__setattr__(self, "inside", self.distance <= limit)
    object.__setattr__(self, "beyond_train_len", self.seq_len > self.train_seq_len)

  @property
  def limit(self):
    """limit_of(reach, train_seq_len): the largest distance inside."""
    return limit_of(self.reach, self.train_seq_len)

  @property
  def hits(self):
    """The passkeys right, round(accuracy * n)."""
    return round(self.accuracy * self.n)

  def to_dict(self):
    return dataclasses.asdict(self)


FIELDS = tuple(f.name for f in dataclasses.fields(PasskeyRow))  # passkey.csv's columns, in order
_GIVEN = tuple(f.name for f in dataclasses.fields(PasskeyRow) if f.init)


# --- Text cells to values -------------------------------------------------------------------------


def _int(text):
  if not re.fullmatch(r"-?\d+", text.strip()):
    raise ValueError("is not an integer")
  return int(text)


def _bool(text):
  if text not in ("True", "False"):
    raise ValueError("is not True or False")
  return text == "True"


def _float(text):
  return float(text)


_PARSE = {
  "model": str,
  "window": str,
  "layers": _int,
  "reach": lambda text: None if text == "" else _int(text),
  "distance": _int,
  "inside": _bool,
  "accuracy": _float,
  "n": _int,
  "seq_len": _int,
  "train_seq_len": _int,
  "beyond_train_len": _bool,
  "seed": _int,
}


def parse_row(cells, where, seed=None):
  """A PasskeyRow from one CSV row's text cells; one-line ValueError naming `where` and the field.

  Args:
    cells: {column: text} (csv.DictReader's row).
    where: "<file> line <k>", for the error.
    seed: the seed to use when the row has no `seed` cell.
  """
  values = {}
  for field in FIELDS:
    text = cells.get(field)
    if field == "seed" and text in (None, ""):
      continue
    try:
      values[field] = _PARSE[field](text)
    except (ValueError, TypeError) as error:
      raise ValueError(f"{where}: {field}={text!r} {error}.") from None
  values.setdefault("seed", seed)
  try:
    return PasskeyRow(**{k: values[k] for k in _GIVEN})
  except ValueError as error:
    raise ValueError(f"{where}: {error}") from None


def read_rows(path):
  """Every row of one passkey.csv (eval_passkey.py or a sweep run), each with its seed."""
  try:
    with open(path, newline="") as f:
      reader = csv.DictReader(f)
      missing = [k for k in FIELDS if k != "seed" and k not in (reader.fieldnames or ())]
      if missing:
        raise ValueError(f"{path} is not a passkey.csv of eval_passkey.py: no column {missing}.")
      texts = list(reader)
  except UnicodeDecodeError:
    raise ValueError(f"{path} is not a passkey.csv: it is not UTF-8 text.") from None
  if not texts:
    raise ValueError(f"{path} has no rows, only a header.")
  folder_seed = seed_of(os.path.basename(os.path.dirname(os.path.abspath(path))))
  rows = []
  for line, cells in enumerate(texts, start=2):
    from_name = seed_of(cells.get("model", ""))
    seed = from_name if from_name is not None else folder_seed or 0
    rows.append(parse_row(cells, f"{path} line {line}", seed=seed))
  return rows


def write_rows(path, rows):
  """passkey.csv: one line per PasskeyRow, columns FIELDS; the folder is made."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(FIELDS)
    for r in rows:
      writer.writerow(["" if v is None else v for v in (getattr(r, k) for k in FIELDS)])


# --- Seeds in names ------------------------------------------------------------------------------


def seed_of(name):
  """The seed written in a model name or path ("seed=1", "seed1", "_s1_"), else None."""
  found = _SEED_TOKEN.findall(str(name))
  return int(found[-1]) if found else None


def strip_seed(name):
  """The name without its seed token and the separator before it ("w512_s1_f03" -> "w512_f03")."""
  stripped = re.sub(r"[_,\-/ ]?" + _SEED_TOKEN.pattern, "", str(name), count=1)
  stripped = stripped.strip("_,-/ ")
  return stripped or str(name)


# --- Many files ----------------------------------------------------------------------------------


def csv_paths(paths):
  """passkey.csv files from files and folders, each once.

  A folder stands for the passkey.csv of each of its subfolders (a sweep's runs), or for its own
  passkey.csv when no subfolder has one. A file reached twice is a one-line error: its rows would
  count twice and tighten every interval.
  """
  out = []
  for path in paths:
    if not path:
      raise ValueError(f"The list {','.join(paths)!r} holds an empty name.")
    if os.path.isdir(path):
      found = sorted(glob.glob(os.path.join(path, "*", "passkey.csv")))
      if not found and os.path.exists(os.path.join(path, "passkey.csv")):
        found = [os.path.join(path, "passkey.csv")]
      if not found:
        raise ValueError(f"{path} holds no passkey.csv, neither in it nor in its subfolders.")
      out += found
    elif os.path.exists(path):
      out.append(path)
    else:
      raise FileNotFoundError(f"No such file or folder: {path}")
  seen = {}
  for path in out:
    real = os.path.realpath(path)
    if real in seen:
      raise ValueError(f"{path} is given twice (also as {seen[real]}); its rows would count twice.")
    seen[real] = path
  return out


def collect(paths):
  """Every row of the passkey.csv files that `paths` (files or folders) stand for.

  A sweep run's file (its folder ends in seed=N) is named by the run's grid point
  ("num_layers=2" for num_layers=2,seed=1), or by its sweep's folder when the sweep had no grid
  ("depth8" for depth8/seed=1, whose file says only its window, "128"), so that the seeds of one
  sweep stay together under a name that says which sweep. Any other file keeps the model names
  written in it. Where several files hold the same name and seed (a continued run evaluated
  again, two sweeps of one grid point), every row of that name is named after its file's folder
  instead (folder/model if the file holds several models; sweep/grid point, or parent/sweep, for
  a sweep's run).
  """
  return collect_named(paths)[0]


def _names(path, rows):
  """(name of each model of one file's rows, the name to use instead on a clash)."""
  folder = os.path.dirname(os.path.abspath(path))
  run = os.path.basename(folder)
  label = grid.model_name(run)  # the run's name without its seed
  if label != run:  # A sweep's run: named by its grid point or sweep.
    sweep_dir = os.path.dirname(folder)
    sweep = os.path.basename(sweep_dir)
    name = label or sweep
    clash = (
      f"{sweep}/{label}" if label else f"{os.path.basename(os.path.dirname(sweep_dir))}/{sweep}"
    )
    return {r.model: (name, clash) for r in rows}
  several = len({r.model for r in rows}) > 1
  folder = os.path.basename(folder)
  return {r.model: (r.model, f"{folder}/{r.model}" if several else folder) for r in rows}


def collect_named(paths):
  """(collect's rows, {(file, model name in the file): its name in the rows})."""
  tables = [(path, read_rows(path)) for path in csv_paths(paths)]
  named = [(path, rows, _names(path, rows)) for path, rows in tables]
  files_of = collections.defaultdict(set)
  for path, rows, names_of in named:
    for r in rows:
      files_of[names_of[r.model][0], r.seed].add(path)
  clashing = {name for (name, _), files in files_of.items() if len(files) > 1}
  out, names, owner = [], {}, {}
  for path, rows, names_of in named:
    for r in rows:
      name, clash = names_of[r.model]
      if name in clashing:  # every seed of it, so that one sweep's seeds stay together
        name = clash
      names[path, r.model] = name
      if owner.setdefault((name, r.seed), path) != path:
        raise ValueError(
          f"{path} and {owner[name, r.seed]} both hold {name!r} seed {r.seed}, even named by "
          "their folders; put each file in a folder of its own name."
        )
      out.append(dataclasses.replace(r, model=name) if name != r.model else r)
  return out, names


# --- Effective receptive fields ------------------------------------------------------------------


def write_erf(path, erfs):
  """effective_receptive_field.csv from {model: {distance: erf}} (swa/erf.py).

  Columns ERF_FIELDS; erf_normalized is erf divided by the model's largest value.
  """
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(ERF_FIELDS)
    for model, by_d in erfs.items():
      top = max(by_d.values(), default=0.0)
      for d, v in sorted(by_d.items()):
        writer.writerow([model, d, float(v), float(v / top) if top > 0 else 0.0])


def read_erf(path):
  """{model: {distance: erf}} from an effective_receptive_field.csv (old dense files too)."""
  erfs = collections.defaultdict(dict)
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    missing = [k for k in ("model", "distance", "erf") if k not in (reader.fieldnames or ())]
    if missing:
      raise ValueError(f"{path} is not an effective_receptive_field.csv: no column {missing}.")
    for r in reader:
      erfs[r["model"]][int(r["distance"])] = float(r["erf"])
  return dict(erfs)
