"""The one evaluation path: prompt stream, token-capped batches, summaries, ERF, and
eval_passkey.py end to end (its numbers equal train.py's on the same checkpoint)."""

import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import passkey_rows

import eval_passkey
from configs import tiny
from swa import data, erf, evaluate, evaluate_workdirs, train_lib
from swa.analysis import report, summary, tables
from swa.analysis import rows as rows_lib
from swa.model import ModelConfig

WINDOW, LAYERS = 32, 2
REACH = LAYERS * (WINDOW - 1)  # 62: above data.MIN_DISTANCE, so some distances are inside
SEQ_LEN = 128


def tiny_config():
  config = tiny.get_config()
  config.model.num_layers = LAYERS
  config.model.window_size = WINDOW
  config.model.d_model = 32
  config.model.num_heads = 2
  config.model.num_kv_heads = 2
  config.model.mlp_dim = 64
  config.data.seq_len = SEQ_LEN
  config.data.batch_size = 4
  config.num_steps = 5
  config.optim.warmup_steps = 2
  config.log_every_steps = 5
  config.checkpoint_every_steps = 5
  config.eval.every_steps = 0
  config.eval.examples_per_distance = 2
  config.eval.num_distances = 2
  return config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("run") / "w32")
  train_lib.train_and_evaluate(tiny_config(), path)
  return path


@pytest.fixture(scope="module")
def restored(workdir):
  return train_lib.restore_params(workdir)  # (config, graphdef, params)


# --- The prompt stream and bounded memory --------------------------------------------------------


def test_prompts_are_one_stream_drawn_in_fixed_chunks():
  seq_len, d = 128, 60
  a = evaluate.prompts(3, d, 70, seq_len)
  assert a["inputs"].shape == (70, seq_len)
  np.testing.assert_array_equal(evaluate.prompts(3, d, 70, seq_len)["inputs"], a["inputs"])
  # Whole chunks do not depend on how many more are drawn after them.
  chunk = evaluate.prompts(3, d, evaluate.PROMPT_CHUNK, seq_len)["inputs"]
  np.testing.assert_array_equal(chunk, a["inputs"][: evaluate.PROMPT_CHUNK])
  rng = np.random.default_rng([3, evaluate.PROMPT_STREAM, d])
  first = data.passkey_batch(rng, evaluate.PROMPT_CHUNK, seq_len, d)
  np.testing.assert_array_equal(first["inputs"], a["inputs"][: evaluate.PROMPT_CHUNK])
  assert not np.array_equal(evaluate.prompts(4, d, 5, seq_len)["passkey"], a["passkey"][:5])


def test_long_contexts_are_scored_one_prompt_at_a_time():
  # Issue 16: the final evaluation of a T = 262,144 run tried to allocate 74-192 GiB (64
  # prompts a batch). Every scored batch must hold at most max_batch_tokens tokens.
  T = 1 << 18
  assert evaluate.batch_size_for(T) == 1 and evaluate.batch_size_for(128) == 2048
  shapes = []

  def score(batch):
    shapes.append(batch["inputs"].shape)
    return batch["inputs"][:, -4] % 2 == 0  # depends on the passkey's first digits

  results = evaluate.accuracy_by_distance(
    score, [42, 1000], train_seq_len=T, examples_per_distance=3, seed=0
  )
  assert shapes == [(1, T)] * 6
  assert {d: (n, t) for d, (_, n, t) in results.items()} == {42: (3, T), 1000: (3, T)}
  shapes.clear()
  evaluate.accuracy_by_distance(
    score, [42, 50, 60], train_seq_len=128, examples_per_distance=5, max_batch_tokens=128 * 4
  )
  assert shapes == [(4, 128)] * 4  # 15 prompts in batches of 4, the last one padded


def test_a_real_model_at_a_long_context_never_sees_a_batch_over_the_cap(restored):
  config, graphdef, params = restored
  shapes = []

  def score(batch):
    shapes.append(batch["inputs"].shape)
    return evaluate.exact_match_step(params, batch, graphdef=graphdef)

  accuracy = evaluate.passkey_accuracy(
    graphdef,
    params,
    [42, 3000],
    train_seq_len=4096,
    examples_per_distance=2,
    max_batch_tokens=4096,
    exact_match_fn=score,
  )
  assert set(accuracy) == {42, 3000} and shapes == [(1, 4096)] * 4


def test_distances_may_have_their_own_number_of_prompts(restored):
  score = lambda batch: batch["inputs"][:, -4] % 2 == 0  # depends on the passkey's first digit
  results = evaluate.accuracy_by_distance(
    score,
    [42, 50],
    train_seq_len=128,
    examples_per_distance={42: 3, 50: 70},
    max_batch_tokens=128 * 16,
  )
  assert {d: (n, t) for d, (_, n, t) in results.items()} == {42: (3, 128), 50: (70, 128)}
  for d, n in ((42, 3), (50, 70)):
    assert results[d][0] == np.mean(score(evaluate.prompts(0, d, n, 128)))
  config, graphdef, params = restored
  rows = evaluate.passkey_sweep(
    graphdef,
    params,
    reach=REACH,
    train_seq_len=SEQ_LEN,
    examples_per_distance=2,
    edge_examples_per_distance=5,
    distances=[42, 58, 60, 62, 63, 66, 100],
  )
  assert [r.n for r in rows] == [2, 2, 5, 5, 5, 2, 2]  # 5 within 5 % of the reach, 62


# --- Summaries (swa/analysis: tests/test_stats.py, tests/test_analysis.py) -----------------------


def _rows(model, window, reach, accuracies, start=50, step=10):
  distances = range(start, start + step * len(accuracies), step)
  return passkey_rows(
    model, dict(zip(distances, accuracies)), reach=reach, window=window, train=256, seq_len=256
  )


def test_model_names_group_seed_folders_by_their_parent():
  names = evaluate_workdirs.model_names(
    [
      "w/tiny1500/seed=0",
      "w/tiny750/seed=0",
      "w/tiny750/seed=1",
      "s/window_size=128,seed=1",
      "w128",
    ]
  )
  assert names == [
    "tiny1500/seed=0",
    "tiny750/seed=0",
    "tiny750/seed=1",
    "window_size=128,seed=1",
    "w128",
  ]
  assert [rows_lib.strip_seed(n) for n in names[:3]] == ["tiny1500", "tiny750", "tiny750"]
  assert evaluate_workdirs.model_names(["a/w128", "b/w128"]) == ["a/w128", "b/w128"]


def test_workdir_globs_reach_a_sweeps_comma_named_folders(tmp_path):
  for name in ("position_encoding=rope,seed=1", "position_encoding=rope,seed=0", "other"):
    os.makedirs(tmp_path / name)
  got = evaluate_workdirs.expand_workdirs([f"{tmp_path}/position_encoding=rope*", "plain/w128"])
  assert got == [
    f"{tmp_path}/position_encoding=rope,seed=0",
    f"{tmp_path}/position_encoding=rope,seed=1",
    "plain/w128",  # no glob character: kept as given (checked later)
  ]
  with pytest.raises(ValueError, match=r"^--workdirs: .*/nothing\* matches no folder\.$"):
    evaluate_workdirs.expand_workdirs([f"{tmp_path}/nothing*"])


def test_format_accuracy_table():
  table = evaluate.format_accuracy_table({100: 0.0, 42: 0.96875}, 93).splitlines()
  assert table == [
    "| distance | exact match | inside RF (distance <= 93) |",
    "|---:|---:|:---:|",
    "| 42 | 96.9% | yes |",
    "| 100 | 0.0% | no |",
  ]


# --- The trained tiny model ----------------------------------------------------------------------


def test_key_digit_erf_is_exactly_zero_beyond_the_reach(restored):
  config, graphdef, params = restored
  model_config = ModelConfig.from_config(config)
  assert model_config.reach == REACH
  distances = [42, 50, REACH - 1, REACH, REACH + 1, REACH + 5, 100]
  values = erf.effective_receptive_field(
    evaluate.graphdef_for(model_config, dtype="float32"),
    params,
    distances,
    train_seq_len=SEQ_LEN,
    examples_per_distance=3,
    seed=0,
    max_batch_tokens=256,
  )
  assert sorted(values) == distances
  assert all(values[d] > 0 for d in distances if d <= REACH)
  assert all(values[d] == 0.0 for d in distances if d > REACH)


def test_passkey_retrieval_per_window(restored):
  config, graphdef, params = restored
  result = evaluate.test_passkey_retrieval(
    graphdef, params, [8, 32], train_seq_len=SEQ_LEN, distances=[42, 70], examples_per_distance=4
  )
  assert set(result) == {8, 32}
  for accuracy in result.values():
    assert set(accuracy) == {42, 70}
    assert all(0.0 <= a <= 1.0 for a in accuracy.values())
  # At the trained window it is the model's own accuracy, on the same prompts.
  assert result[32] == evaluate.passkey_accuracy(
    graphdef, params, [42, 70], train_seq_len=SEQ_LEN, examples_per_distance=4
  )


# --- train.py and eval_passkey.py agree ----------------------------------------------------------


def _csv_accuracy(path):
  return {r.distance: r.accuracy for r in rows_lib.read_rows(path)}


def test_train_table_equals_eval_passkey_on_the_same_checkpoint(workdir, tmp_path):
  config, _, _ = train_lib.restore_params(workdir)
  with open(os.path.join(workdir, "eval.json")) as f:
    trained = {int(d): a for d, a in json.load(f)["exact_match_by_distance"].items()}
  distances = data.even_distances(SEQ_LEN, config.eval.num_distances)
  assert sorted(trained) == distances
  before = _tree(workdir)
  eval_passkey.run(
    workdirs=[workdir],
    out=str(tmp_path),
    seed=config.seed,
    examples_per_distance=config.eval.examples_per_distance,
    distances=distances,
    erf_examples=0,
  )
  assert _csv_accuracy(tmp_path / "passkey.csv") == trained
  assert _tree(workdir) == before  # read only: nothing created or changed in the workdir


def _tree(path):
  """{relative path: (size, mtime)} of every file and folder under path."""
  out = {}
  for root, dirs, files in os.walk(path):
    for name in dirs + files:
      full = os.path.join(root, name)
      out[os.path.relpath(full, path)] = (os.path.getsize(full), os.path.getmtime(full))
  return out


def test_train_and_eval_passkey_score_the_same_prompts(tmp_path, monkeypatch):
  # A random model scores 0 everywhere, whatever the prompts. A scorer that passes about half of
  # the passkeys makes the numbers depend on which prompts each path drew.
  monkeypatch.setattr(
    evaluate, "exact_match_step", lambda params, batch, graphdef: batch["inputs"][:, -4] % 2 == 0
  )
  config = tiny_config()
  config.num_steps = config.log_every_steps = config.checkpoint_every_steps = 1
  config.eval.examples_per_distance, config.eval.num_distances = 40, 3
  run = tmp_path / "run"
  trained = train_lib.train_and_evaluate(config, str(run))["exact_match_by_distance"]
  assert len(set(trained.values())) > 1 or 0 < min(trained.values()) < 1
  eval_passkey.run(
    workdirs=[str(run)],
    seed=config.seed,
    examples_per_distance=40,
    distances=list(trained),
    erf_examples=0,
  )
  assert _csv_accuracy(run / "eval" / "passkey.csv") == trained  # default out: <workdir>/eval
  eval_passkey.run(
    workdirs=[str(run)],
    seed=config.seed + 1,
    out=str(tmp_path / "b"),
    examples_per_distance=40,
    distances=list(trained),
    erf_examples=0,
  )
  assert _csv_accuracy(tmp_path / "b" / "passkey.csv") != trained  # another seed, other prompts


# --- eval_passkey.py -----------------------------------------------------------------------------


def test_eval_passkey_main_writes_every_file(workdir, tmp_path, capsys):
  out = tmp_path / "results"
  eval_passkey.run(
    workdirs=[workdir], out=str(out), examples_per_distance=4, erf_examples=2, step=16
  )
  for name in (
    "passkey.md",
    "passkey.csv",
    "passkey_heatmap.png",
    "passkey_curves.png",
    "effective_receptive_field.png",
    "effective_receptive_field.csv",
  ):
    assert os.path.getsize(out / name) > 0, name

  with open(out / "passkey.csv") as f:
    rows = list(csv.DictReader(f))
  distances = [int(r["distance"]) for r in rows]
  assert distances[0] == data.MIN_DISTANCE and distances[-1] == 2 * REACH
  assert {r["model"] for r in rows} == {"w32"} and all(r["n"] == "4" for r in rows)
  for r in rows:
    assert (r["inside"] == "True") == (int(r["distance"]) <= REACH)
    assert 0.0 <= float(r["accuracy"]) <= 1.0
    assert (r["beyond_train_len"] == "True") == (int(r["seq_len"]) > SEQ_LEN)

  text = (out / "passkey.md").read_text()
  assert "- Command: `" in text and "- Device: " in text and "- Date: " in text
  table = [line for line in text.splitlines() if line.startswith("| ")]
  header = [h.strip() for h in table[0].strip("|").split("|")]
  assert header == list(tables.HEADLINE_COLUMNS)
  cells = dict(zip(header, (c.strip() for c in table[1].strip("|").split("|"))))
  assert cells["Window"] == "32" and cells["Layers"] == "2" and cells["Reach"] == str(REACH)

  erfs = rows_lib.read_erf(out / "effective_receptive_field.csv")["w32"]
  assert sorted(erfs) == distances  # measured at every tested distance
  assert all((v == 0.0) == (d > REACH) for d, v in erfs.items())

  stdout = capsys.readouterr().out.rstrip()
  assert stdout.endswith(table[-1])  # the summary table is printed last


def test_rope_scale_runs_the_trained_params_with_position_interpolation(workdir, tmp_path):
  """eval_passkey.py --rope_scale: same params, RoPE at position / s, rows named apart."""
  (run,) = evaluate_workdirs.load_runs([workdir])
  del run.config.model["rope_scale"]  # as in a workdir saved before the field existed
  scaled = evaluate_workdirs.with_rope_scale(run, 2.0)
  assert scaled.name == "w32 @ rope_scale=2" and scaled.params is run.params
  assert scaled.config.model.rope_scale == 2.0 and "rope_scale" not in run.config.model
  assert evaluate.config_of(scaled.graphdef, scaled.params).rope_scale == 2.0
  evaluate_workdirs.evaluate_runs(
    [run, scaled], out=str(tmp_path), distances=[42], examples_per_distance=2, erf_examples=0
  )
  rows = rows_lib.read_rows(tmp_path / "passkey.csv")
  assert [r.model for r in rows] == ["w32", "w32 @ rope_scale=2"]


def test_distances_all_beyond_the_reach_are_evaluated_with_a_warning(workdir, tmp_path, capsys):
  (run,) = evaluate_workdirs.load_runs([workdir])
  for distances, warned in (([REACH + 1, 100], True), ([REACH, 100], False)):
    evaluate_workdirs.evaluate_runs(
      [run], out=str(tmp_path), distances=distances, examples_per_distance=2, erf_examples=0
    )
    err = capsys.readouterr().err
    assert (f"w32: every distance given is beyond its reach of {REACH}" in err) == warned, err
  assert [r.distance for r in rows_lib.read_rows(tmp_path / "passkey.csv")] == [REACH, 100]


def test_from_csv_merges_earlier_results(workdir, tmp_path):
  first = tmp_path / "run_a"
  runs = evaluate_workdirs.load_runs([workdir])
  summaries = evaluate_workdirs.evaluate_runs(
    runs, out=str(first), examples_per_distance=4, step=16, erf_examples=2
  )
  rows = rows_lib.read_rows(first / "passkey.csv")
  assert summary.summarize(rows) == summaries  # the CSV round trip keeps every value and type
  shutil.copytree(first, tmp_path / "run_b")  # the same model name in two files

  merged = tmp_path / "merged"
  combined, _ = report.merge(
    [str(first / "passkey.csv"), str(tmp_path / "run_b/passkey.csv")],
    str(merged),
    command="python eval_passkey.py --from_csv=...",
  )
  assert [s["model"] for s in combined] == ["run_a", "run_b"]  # renamed to their folders
  assert [{**s, "model": "w32"} for s in combined] == summaries * 2
  merged_rows = rows_lib.read_rows(merged / "passkey.csv")
  assert merged_rows == [
    dataclasses.replace(r, model=name) for name in ("run_a", "run_b") for r in rows
  ]
  erfs = rows_lib.read_erf(merged / "effective_receptive_field.csv")
  original = rows_lib.read_erf(first / "effective_receptive_field.csv")["w32"]
  assert set(erfs) == {"run_a", "run_b"} and erfs["run_b"] == original
  text = (merged / "passkey.md").read_text()
  assert "Merged from" in text and str(tmp_path / "run_b/passkey.csv") in text
  for name in ("passkey_heatmap.png", "passkey_curves.png", "effective_receptive_field.png"):
    assert os.path.getsize(merged / name) > 0, name


def test_old_dense_erf_files_still_load(tmp_path):
  path = tmp_path / "effective_receptive_field.csv"
  path.write_text("model,distance,erf,erf_normalized\nw8,0,0.5,1.0\nw8,1,0.25,0.5\nw8,2,0.0,0.0\n")
  assert rows_lib.read_erf(path) == {"w8": {0: 0.5, 1: 0.25, 2: 0.0}}
  rows_lib.write_erf(tmp_path / "again.csv", rows_lib.read_erf(path))
  assert (tmp_path / "again.csv").read_text().replace("\r", "") == path.read_text()


def test_from_csv_errors(tmp_path):
  (tmp_path / "other.csv").write_text("a,b\n1,2\n")
  with pytest.raises(ValueError, match="not a passkey.csv"):
    rows_lib.read_rows(tmp_path / "other.csv")
  with pytest.raises(ValueError, match="No passkey.csv given"):
    report.merge([], str(tmp_path))
  row = _rows("m", "32", 62, [1.0])[0]
  for folder in ("x/same", "y/same"):  # same model, same folder name: no way to tell them apart
    rows_lib.write_rows(tmp_path / folder / "passkey.csv", [row])
  with pytest.raises(ValueError, match="put each file in a folder of its own name"):
    report.merge(
      [str(tmp_path / "x/same/passkey.csv"), str(tmp_path / "y/same/passkey.csv")],
      str(tmp_path / "out"),
    )


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({}, "exactly one of"),
    ({"workdirs": ["a"], "from_csv": ["b/passkey.csv"]}, "exactly one of"),
    ({"from_csv": ["b/passkey.csv"]}, "needs --out"),
    ({"workdirs": ["a", "b"]}, "need --out"),
    ({"workdirs": ["a"], "distances": ["42", "x"]}, "'x' is not allowed"),
    ({"workdirs": ["a"], "cross_windows": ["8", "-1"]}, "'-1' is not allowed; give positive"),
  ],
)
def test_eval_passkey_refuses_unclear_requests(kwargs, message):
  with pytest.raises(ValueError, match=message):
    eval_passkey.run(**kwargs)


def test_eval_passkey_creates_nothing_in_a_workdir_it_cannot_read(tmp_path):
  run = tmp_path / "run"
  run.mkdir()
  (run / "config.json").write_text(tiny_config().to_json())
  with pytest.raises(ValueError, match="has no checkpoints"):
    eval_passkey.run(workdirs=[str(run)])
  assert os.listdir(run) == ["config.json"]


@pytest.mark.slow
def test_eval_passkey_command_line_smoke(tmp_path):
  """The real command: a merge of a small CSV, then a user mistake in one line."""
  rows = _rows("m", "8", 80, [1.0, 0.5, 0.0])
  rows_lib.write_rows(tmp_path / "a" / "passkey.csv", rows)
  command = [sys.executable, "eval_passkey.py", f"--from_csv={tmp_path / 'a' / 'passkey.csv'}"]
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  done = subprocess.run(
    command + [f"--out={tmp_path / 'out'}"], cwd=root, capture_output=True, text=True, check=True
  )
  assert "| m | 8 | 4 |" in done.stdout and (tmp_path / "out" / "passkey.md").exists()
  failed = subprocess.run(command, cwd=root, capture_output=True, text=True)
  assert failed.returncode == 1
  assert failed.stderr.strip() == "error: --from_csv needs --out=<folder> for the merged files."
  missing = tmp_path / "no_run"
  failed = subprocess.run(
    [
      sys.executable,
      "eval_passkey.py",
      f"--workdirs={missing}",
      "--examples_per_distance=3",
      "--distances=42,50",
    ],
    cwd=root,
    capture_output=True,
    text=True,
  )
  assert failed.returncode == 1 and not missing.exists()
  assert failed.stderr.strip() == (
    f"error: {missing} is not a training workdir: it has no config.json."
  )
