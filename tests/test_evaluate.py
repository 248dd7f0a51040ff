"""Passkey evaluation: sweep grid, summaries, exact ERF locality, eval_passkey end to end."""

import csv
import os
import shutil

import numpy as np
import pytest
from absl import app, flags
from flax import nnx

import eval_passkey
from configs import tiny
from swa import data, evaluate, train_lib

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


# --- The grid ------------------------------------------------------------------------------------

def test_sweep_covers_twice_the_reach_and_is_dense_near_it():
  distances = evaluate.sweep_distances(508, 1024, max_factor=2.0)
  assert distances[0] == data.MIN_DISTANCE and distances[-1] == 1016
  assert {508, 509} <= set(distances)
  gaps = np.diff(distances)
  near = [g for d, g in zip(distances, gaps) if 0.85 * 508 <= d < 1.15 * 508]
  far = [g for d, g in zip(distances[:-2], gaps) if d > 1.2 * 508]  # the last gap is a remainder
  assert max(near) <= 8 and min(far) >= 30


def test_full_attention_sweeps_to_the_trained_length():
  distances = evaluate.sweep_distances(None, 1024)
  assert distances[0] == data.MIN_DISTANCE
  assert distances[-1] == data.context_max_distance(1024) == 1004
  assert len(distances) >= 30


@pytest.mark.parametrize("distance, train_seq_len, expected", [
    (42, 128, 128), (108, 128, 128), (109, 128, 192), (124, 128, 192), (300, 0, 320),
    (44, 0, 64), (45, 0, 128)])
def test_context_len(distance, train_seq_len, expected):
  T = evaluate.context_len(distance, train_seq_len)
  assert T == expected
  assert distance <= data.max_distance(T + 1 - data.ANSWER_LEN)  # the distance fits


# --- Summaries -----------------------------------------------------------------------------------

def _rows(model, window, reach, accuracies, start=50, step=10):
  return [{"model": model, "window": window, "layers": 4, "reach": reach, "distance": d,
           "inside": reach is None or d <= reach, "accuracy": a, "n": 100, "seq_len": 256,
           "train_seq_len": 256, "beyond_train_len": False}
          for d, a in zip(range(start, start + step * len(accuracies), step), accuracies)]


def test_summarize_hand_made_rows():
  rows = (_rows("a", "8", 80, [1.0, 0.97, 0.95, 0.9, 0.96, 0.2])   # 50..100; 80 fails, 90 passes
          + _rows("full", "full", None, [1.0, 1.0, 0.99])
          + _rows("c", "128", 60, [0.5, 0.99, 0.99]))
  a, full, c = evaluate.summarize(rows)
  assert a["model"] == "a" and a["theoretical_rf"] == 81
  assert a["max_distance_at_threshold"] == 70      # 0.95 counts; the first failure (80) stops it
  assert not a["all_pass"]
  np.testing.assert_allclose(a["success_inside"], np.mean([1.0, 0.97, 0.95, 0.9]))
  np.testing.assert_allclose(a["success_beyond"], np.mean([0.96, 0.2]))
  assert a["reference"] is None and a["at_reference"] is None
  assert full["theoretical_rf"] is None and full["success_beyond"] is None
  assert full["max_distance_at_threshold"] == 70 and full["all_pass"]
  assert full["reference"] == (None, 1.0)
  np.testing.assert_allclose(full["at_reference"], np.mean([1.0, 1.0, 0.99]))
  assert c["max_distance_at_threshold"] is None    # fails at the shortest distance
  assert c["reference"] == (512, 0.95)
  table = evaluate.format_summary_table([a, full, c])
  lines = table.splitlines()
  assert [h.strip() for h in lines[0].strip("|").split("|")] == list(evaluate.SUMMARY_COLUMNS)
  assert "≥ 70 (all tested)" in lines[3] and "n/a (no limit)" in lines[3]
  assert "< 50" in lines[4] and "~512 tokens at 95 %" in lines[4]


def test_mean_over_distances_does_not_overweight_a_dense_cluster():
  # Accuracy 1 on 0..50, 0 on 50..100, with eight extra points packed into 55..62.
  even = _rows("m", "8", 100, [1] * 5 + [0] * 6, start=0)
  dense = even + _rows("m", "8", 100, [0] * 8, start=55, step=1)
  plain = np.mean([r["accuracy"] for r in dense])
  assert evaluate.mean_over_distances(even) == pytest.approx(5 / 11)
  assert abs(evaluate.mean_over_distances(dense) - 5 / 11) < abs(plain - 5 / 11)


# --- The trained tiny model ----------------------------------------------------------------------

def test_erf_is_exactly_zero_beyond_the_reach(restored):
  config, graphdef, params = restored
  assert train_lib.receptive_reach(config) == REACH
  erf = evaluate.effective_receptive_field_of_model(graphdef, params, seq_len=SEQ_LEN,
                                                    num_examples=2, seed=0)
  assert erf.shape == (SEQ_LEN - data.ANSWER_LEN + 1,)
  assert np.all(erf[REACH + 1:] == 0.0)
  assert np.all(np.isfinite(erf)) and np.count_nonzero(erf[:REACH + 1]) > REACH // 2
  assert erf[REACH] > 0.0


def test_passkey_retrieval_per_window(restored):
  config, graphdef, params = restored
  result = evaluate.test_passkey_retrieval((graphdef, params, config), window_sizes=[8, 32],
                                           distances=[42, 70], examples_per_distance=4)
  assert set(result) == {8, 32}
  for accuracy in result.values():
    assert set(accuracy) == {42, 70}
    assert all(0.0 <= a <= 1.0 for a in accuracy.values())

  # restore_params' own (config, graphdef, params) order, and a callable
  # model(tokens, window_size) -> logits, give the same numbers.
  assert evaluate.test_passkey_retrieval(restored, window_sizes=[32], distances=[42, 70],
                                         examples_per_distance=4) == {32: result[32]}
  model_config = train_lib.model_config(config)
  call = lambda tokens, w: nnx.merge(evaluate.graphdef_for(model_config, window_size=w),
                                     params)(tokens)
  by_callable = evaluate.test_passkey_retrieval(call, window_sizes=[32], distances=[42, 70],
                                                examples_per_distance=4,
                                                train_seq_len=SEQ_LEN)
  assert by_callable[32] == result[32]


def test_eval_passkey_main_writes_every_file(workdir, tmp_path, capsys):
  out = tmp_path / "results"
  argv = ["eval_passkey.py", f"--workdirs={workdir}", f"--out={out}",
          "--examples_per_distance=4", "--erf_examples=2", "--step=8"]
  flags.FLAGS(argv)
  try:
    eval_passkey.main(argv[:1])
  finally:
    flags.FLAGS.unparse_flags()
  for name in ("passkey.md", "passkey.csv", "passkey_heatmap.png", "passkey_curves.png",
               "effective_receptive_field.png", "effective_receptive_field.csv"):
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
  assert header == list(evaluate.SUMMARY_COLUMNS)
  cells = dict(zip(header, (c.strip() for c in table[1].strip("|").split("|"))))
  assert cells["Window"] == "32" and cells["Layers"] == "2"
  assert cells["Theoretical RF"] == f"{REACH + 1} (reach {REACH})"

  with open(out / "effective_receptive_field.csv") as f:
    erf = [r for r in csv.DictReader(f)]
  assert all(float(r["erf"]) == 0.0 for r in erf if int(r["distance"]) > REACH)

  stdout = capsys.readouterr().out.rstrip()
  assert stdout.endswith(table[-1])  # the summary table is printed last


def test_from_csv_merges_earlier_results(workdir, tmp_path):
  first = tmp_path / "run_a"
  summary = eval_passkey.run([workdir], out=str(first), examples_per_distance=4, step=8,
                             erf_examples=2)
  rows = evaluate.read_rows(first / "passkey.csv")
  assert evaluate.summarize(rows) == summary  # the CSV round trip keeps every value and type
  shutil.copytree(first, tmp_path / "run_b")  # the same model name in two files

  merged = tmp_path / "merged"
  combined = eval_passkey.combine([str(first / "passkey.csv"), str(tmp_path / "run_b/passkey.csv")],
                                  out=str(merged), command="python eval_passkey.py --from_csv=...")
  assert [s["model"] for s in combined] == ["run_a", "run_b"]  # renamed to their folders
  assert [{**s, "model": "w32"} for s in combined] == summary * 2
  merged_rows = evaluate.read_rows(merged / "passkey.csv")
  assert merged_rows == [{**r, "model": name} for name in ("run_a", "run_b") for r in rows]
  erfs = evaluate.read_erf(merged / "effective_receptive_field.csv")
  original = evaluate.read_erf(first / "effective_receptive_field.csv")["w32"]
  assert set(erfs) == {"run_a", "run_b"} and np.array_equal(erfs["run_b"], original)
  text = (merged / "passkey.md").read_text()
  assert "Merged from" in text and str(tmp_path / "run_b/passkey.csv") in text
  for name in ("passkey_heatmap.png", "passkey_curves.png", "effective_receptive_field.png"):
    assert os.path.getsize(merged / name) > 0, name


def test_from_csv_errors(tmp_path):
  (tmp_path / "other.csv").write_text("a,b\n1,2\n")
  with pytest.raises(ValueError, match="not a passkey.csv"):
    evaluate.read_rows(tmp_path / "other.csv")
  with pytest.raises(ValueError, match="names no file"):
    eval_passkey.combine([], out=str(tmp_path))
  row = dict(zip(evaluate.CSV_FIELDS, ["m", "32", "2", "62", "42", "True", "1.0", "4", "128",
                                       "128", "False"]))
  for folder in ("x/same", "y/same"):  # same model, same folder name: no way to tell them apart
    (tmp_path / folder).mkdir(parents=True)
    with open(tmp_path / folder / "passkey.csv", "w", newline="") as f:
      writer = csv.DictWriter(f, fieldnames=evaluate.CSV_FIELDS)
      writer.writeheader()
      writer.writerow(row)
  with pytest.raises(ValueError, match="clash"):
    eval_passkey.combine([str(tmp_path / "x/same/passkey.csv"),
                          str(tmp_path / "y/same/passkey.csv")], out=str(tmp_path / "out"))


def test_eval_passkey_wants_workdirs_or_from_csv():
  for argv in (["eval_passkey.py"],
               ["eval_passkey.py", "--workdirs=a", "--from_csv=b/passkey.csv"]):
    flags.FLAGS(argv)
    try:
      with pytest.raises(app.UsageError, match="exactly one of"):
        eval_passkey.main(argv[:1])
    finally:
      flags.FLAGS.unparse_flags()
