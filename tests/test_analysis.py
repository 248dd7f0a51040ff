"""swa/analysis: the typed row and its files, no JAX, and one report for both commands."""

import csv
import dataclasses
import os
import subprocess
import sys

import pytest

from swa.analysis import rows as rows_lib
from swa.analysis import summary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = ("rows", "stats", "summary", "tables", "figures", "report")


def row(**changes):
  fields = dict(
    model="w8",
    window="8",
    layers=2,
    reach=14,
    distance=10,
    accuracy=0.5,
    n=4,
    seq_len=64,
    train_seq_len=64,
    seed=0,
  )
  return rows_lib.PasskeyRow(**{**fields, **changes})


def test_the_results_package_imports_no_jax():
  code = (
    "import sys, swa.analysis; "
    + "; ".join(f"import swa.analysis.{m}" for m in MODULES)
    + "; print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'optax')))"
  )
  done = subprocess.run(
    [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
  )
  assert done.stdout.strip() == "[]"


def test_inside_is_one_rule_for_windows_and_full_attention():
  assert row(distance=14).inside and not row(distance=15).inside  # the reach: 2 x (8 - 1)
  # Full attention: inside up to the trained context's largest distance (64 - 20 = 44).
  full = dict(model="full", window="full", reach=None)
  assert row(distance=44, **full).inside and row(distance=44, **full).limit == 44
  beyond = row(distance=45, seq_len=128, **full)
  assert not beyond.inside and beyond.beyond_train_len
  with pytest.raises(TypeError):
    row(inside=True)  # computed, never given


def test_summaries_count_full_attention_beyond_its_trained_length_as_beyond():
  full = dict(model="full", window="full", reach=None, layers=4)
  rows = [
    row(distance=42, accuracy=1.0, **full),
    row(distance=44, accuracy=1.0, **full),
    row(distance=100, accuracy=0.0, seq_len=128, **full),
  ]
  (s,) = summary.summarize(rows)
  assert s["limit"] == 44 and s["inside"]["mean"] == 1.0 and s["beyond"]["mean"] == 0.0


@pytest.mark.parametrize(
  "field, text, message",
  [
    ("accuracy", "1.5", "accuracy=1.5 must be in [0, 1]"),
    ("accuracy", "nan", "accuracy=nan must be in [0, 1]"),
    ("n", "-4", "n=-4 must be an integer >= 1"),
    ("n", "2.5", "n='2.5' is not an integer"),
    ("layers", "0", "layers=0 must be an integer >= 1"),
    ("beyond_train_len", "yes", "beyond_train_len='yes' is not True or False"),
  ],
)
def test_a_bad_value_in_a_csv_is_one_line_naming_file_line_and_field(
  tmp_path, field, text, message
):
  path = tmp_path / "passkey.csv"
  rows_lib.write_rows(path, [row(), row(distance=12)])
  lines = path.read_text().splitlines()
  header = lines[0].split(",")
  cells = lines[2].split(",")
  cells[header.index(field)] = text
  path.write_text("\n".join(lines[:2] + [",".join(cells)]) + "\n")
  with pytest.raises(ValueError) as error:
    rows_lib.read_rows(path)
  assert str(error.value).startswith(f"{path} line 3: ") and message in str(error.value)
  assert "\n" not in str(error.value)


def test_csv_round_trip_and_old_files_without_seeds(tmp_path):
  rows = [row(seed=3), row(distance=20, reach=None, window="full", model="full", seed=1)]
  rows_lib.write_rows(tmp_path / "a" / "passkey.csv", rows)
  assert rows_lib.read_rows(tmp_path / "a" / "passkey.csv") == rows
  old = tmp_path / "w8_s2" / "passkey.csv"  # no seed column: from the folder name
  old.parent.mkdir()
  with open(old, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(rows_lib.FIELDS[:-1])
    writer.writerow(["w8", "8", 2, 14, 10, True, 0.5, 4, 64, 64, False])
  assert rows_lib.read_rows(old) == [row(seed=2)]
  (tmp_path / "empty.csv").write_text(",".join(rows_lib.FIELDS) + "\n")
  with pytest.raises(ValueError, match="has no rows, only a header"):
    rows_lib.read_rows(tmp_path / "empty.csv")
  (tmp_path / "binary.csv").write_bytes(b"\x90\x91\x00")
  with pytest.raises(ValueError, match="is not UTF-8 text"):
    rows_lib.read_rows(tmp_path / "binary.csv")


def test_the_same_csv_twice_is_refused(tmp_path):
  path = tmp_path / "a" / "passkey.csv"
  rows_lib.write_rows(path, [row()])
  with pytest.raises(ValueError, match="is given twice"):
    rows_lib.collect([str(path), str(tmp_path / "a" / ".." / "a" / "passkey.csv")])
  with pytest.raises(ValueError, match="is given twice"):
    rows_lib.collect([str(tmp_path / "a"), str(path)])  # the folder stands for the same file


def _campaign(tmp_path):
  """Two small sweeps: a windowed model over 3 seeds, full attention evaluated beyond T."""
  for seed, accuracies in enumerate(([1.0, 0.96, 0.4, 0.0], [1.0, 0.9, 0.6, 0.0], [0.99] * 4)):
    rs = [
      row(model="w8", distance=d, accuracy=a, n=100, seed=seed)
      for d, a in zip((4, 10, 14, 20), accuracies)
    ]
    rows_lib.write_rows(tmp_path / "w8" / f"seed={seed}" / "passkey.csv", rs)
  full = [
    row(model="full", window="full", reach=None, layers=4, distance=d, seq_len=T, n=100, accuracy=a)
    for d, T, a in ((20, 64, 1.0), (44, 64, 1.0), (60, 128, 0.5), (100, 128, 0.0))
  ]
  rows_lib.write_rows(tmp_path / "full" / "seed=0" / "passkey.csv", full)
  return [str(tmp_path / "w8"), str(tmp_path / "full")]


def _table(path):
  return [line for line in open(path).read().splitlines() if line.startswith("|")]


def test_eval_passkey_from_csv_and_sweep_aggregate_give_the_same_report(tmp_path):
  inputs = ",".join(_campaign(tmp_path))
  for command in (
    ["eval_passkey.py", f"--from_csv={inputs}", f"--out={tmp_path / 'a'}"],
    ["sweep.py", f"--aggregate={inputs}", f"--out={tmp_path / 'b'}"],
  ):
    done = subprocess.run(
      [sys.executable, *command], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
  table = _table(tmp_path / "a" / "passkey.md")
  assert table == _table(tmp_path / "b" / "passkey.md") and len(table) == 4
  assert table[2].startswith("| w8 | 8 | 2 | 14 | 3 (0, 1, 2) |")
  # Full attention: inside is d <= 44 (its trained length), 60 and 100 are beyond.
  assert "| full | full | 4 | unlimited | 1 (0) | 100.0 % [" in table[3]
  assert "beyond the trained length 25.0 %" in table[3]
  for name in ("passkey.csv", "passkey_by_distance.csv"):
    a, b = (open(tmp_path / d / name).read() for d in "ab")
    assert a == b, name
  merged = rows_lib.read_rows(tmp_path / "a" / "passkey.csv")
  assert {dataclasses.replace(r, model="x") for r in merged if r.model == "w8"} == {
    dataclasses.replace(r, model="x") for r in rows_lib.collect([str(tmp_path / "w8")])
  }


# --- Bad input: one line naming the value, before any work (issue 28) ------------------------------


@pytest.fixture
def fake_workdir(tmp_path):
  """A folder that passes the workdir check (config.json, checkpoints/) but holds no model: any
  error that comes from it shows a check came too late."""
  path = tmp_path / "run"
  (path / "checkpoints").mkdir(parents=True)
  (path / "config.json").write_text("{}")
  return str(path)


def _bad_csv(tmp_path, field, text):
  path = tmp_path / "bad" / "passkey.csv"
  rows_lib.write_rows(path, [row()])
  header, cells = (line.split(",") for line in path.read_text().splitlines())
  cells[header.index(field)] = text
  path.write_text(",".join(header) + "\n" + ",".join(cells) + "\n")
  return str(path)


@pytest.mark.parametrize(
  "settings, message",
  [
    (lambda t, w: {"from_csv": [_bad_csv(t, "accuracy", "1.5")]}, "accuracy=1.5 must be in"),
    (lambda t, w: {"from_csv": [_bad_csv(t, "n", "-4")]}, "n=-4 must be an integer >= 1"),
    (lambda t, w: {"from_csv": [_bad_csv(t, "n", "7")] * 2}, "is given twice"),
    (lambda t, w: {"workdirs": [w, w + "/"]}, "names .* twice"),
    (lambda t, w: {"workdirs": [w], "max_factor": 0.0}, r"--max_factor=0.0 must be > 0"),
    (lambda t, w: {"workdirs": [w], "step": 0}, r"--step=0 must be an integer >= 1"),
    (lambda t, w: {"workdirs": [w], "examples_per_distance": 0}, "--examples_per_distance=0"),
    (lambda t, w: {"workdirs": [w], "erf_examples": -1}, "--erf_examples=-1"),
    (lambda t, w: {"workdirs": [w], "rope_scale": 0.5}, r"--rope_scale=0.5 must be >= 1"),
    (lambda t, w: {"workdirs": [w], "out": w + "/config.json"}, "is a file, not a folder"),
    (lambda t, w: {"workdirs": [w], "out": w + "/config.json/x"}, "cannot be created"),
  ],
)
def test_eval_passkey_refuses_bad_values_before_any_work(tmp_path, fake_workdir, settings, message):
  import eval_passkey  # JAX: the evaluation side

  kwargs = {"out": str(tmp_path / "out"), **settings(tmp_path, fake_workdir)}
  with pytest.raises(ValueError, match=message) as error:
    eval_passkey.run(**kwargs)
  assert "\n" not in str(error.value)


def test_eval_passkey_step_zero_is_one_line_on_the_command_line(fake_workdir, tmp_path):
  done = subprocess.run(
    [sys.executable, "eval_passkey.py", f"--workdirs={fake_workdir}", "--step=0"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert done.returncode == 1
  assert done.stderr.strip() == "error: --step=0 must be an integer >= 1."


def test_an_empty_name_in_a_list_of_csvs_is_refused():
  from swa.analysis import rows as rows_module

  with pytest.raises(ValueError, match="holds an empty name"):
    rows_module.csv_paths(["", ""])


def test_the_brief_row_applies_to_four_layers_of_one_window_alone_or_behind_a_short_first():
  assert summary.reference_for("512", 4) == (2048, 0.85)
  assert summary.reference_for("16,512,512,512,512", 5) == (2048, 0.85)
  assert summary.reference_for("128,128,128,128", 4) == (512, 0.95)
  assert summary.reference_for("full", 8) == (None, 1.0)
  for window, layers in (
    ("128", 8),
    ("512,16,512,512,512", 5),
    ("16,512,512,512", 4),
    ("16,256,512,512,512", 5),
  ):
    assert summary.reference_for(window, layers) is None, window


@pytest.mark.slow
def test_the_committed_headline_table_rebuilds_from_the_command_it_names(tmp_path):
  """results/passkey.md names the aggregate that made it: run again, its CSVs come out the same."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with open(os.path.join(repo, "results", "passkey.md")) as f:
    command = next(line for line in f if line.startswith("- Command: "))
  sources = command.split("--aggregate=")[1].split(" ")[0]
  done = subprocess.run(
    [sys.executable, "sweep.py", f"--aggregate={sources}", f"--out={tmp_path}"],
    cwd=repo, capture_output=True, text=True, timeout=600,
  )  # fmt: skip
  assert done.returncode == 0, done.stderr
  for name in ("passkey.csv", "passkey_by_distance.csv"):
    with open(os.path.join(repo, "results", name)) as a, open(tmp_path / name) as b:
      assert a.read() == b.read(), name
