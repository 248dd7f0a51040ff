"""stream.py, swa/stream_modes.py and swa/bench/decode.py on a tiny model: a CPU smoke test of each
mode (stream, passkey, benchmark), its one-line errors, and that it reads a workdir only.
"""

import os
import re
import subprocess
import sys

import pytest

from configs import tiny as tiny_config
from swa import cache as cache_lib
from swa import data, stream_modes, streaming, train_lib
from swa.bench import decode
from swa.model import config_of

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
  """A 2-step training workdir of a 2-layer model with windows 24 (reach 46)."""
  config = tiny_config.get_config()
  config.model.num_layers, config.model.d_model, config.model.mlp_dim = 2, 32, 64
  config.model.window_size = 24
  config.data.seq_len, config.data.batch_size = 96, 2
  config.num_steps, config.checkpoint_every_steps, config.log_every_steps = 2, 2, 1
  config.eval.every_steps, config.eval.examples_per_distance, config.eval.num_distances = 0, 2, 2
  config.optim.warmup_steps = 1
  workdir = str(tmp_path_factory.mktemp("stream") / "run")
  train_lib.train_and_evaluate(config, workdir)
  return workdir


def listing(folder):
  return sorted(
    os.path.relpath(os.path.join(root, name), folder)
    for root, dirs, files in os.walk(folder)
    for name in dirs + files
  )


def test_stream_modes_streams_and_generates():
  """stream.py's stream mode on a small random model (reach 46): the report and the verdict."""
  config = tiny_config.get_config()
  config.model.num_layers, config.model.d_model, config.model.mlp_dim = 2, 32, 64
  config.model.window_size = 24
  graphdef, params = train_lib.create_model(config)
  model_config = config_of(graphdef, params)
  reach = model_config.reach
  assert reach == 46 and stream_modes.default_key_distance(reach) == data.MIN_DISTANCE
  assert stream_modes.default_key_distance(None) == 200
  assert stream_modes.reach_note(46, reach) is None and "beyond" in stream_modes.reach_note(
    47, reach
  )
  prompt, answer = data.create_passkey_dataset(300, data.key_position_for_distance(300, 42))
  result = streaming.stream_tokens(
    graphdef,
    params,
    model_config,
    [prompt[:100], prompt[100:]],
    total=300,
    chunk_size=64,
    num_generate=3,
  )
  assert result["fed"] == 300 and result["generated"].shape == (3,)
  assert result["cache_bytes"] == cache_lib.cache_bytes(cache_lib.init_cache(model_config, 1))
  assert [tokens for tokens, _ in result["samples"]] == [64, 128, 192, 256, 300]
  text = "\n".join(stream_modes.format_stream(result, answer, 42, reach))
  assert "Prefill: 300 tokens" in text and f"Passkey {data.decode(answer)}" in text
  assert "beyond" in "\n".join(stream_modes.format_stream(result, answer, 60, reach))


@pytest.mark.slow
def test_stream_modes_passkey_and_benchmark(trained_workdir):
  config, graphdef, params = train_lib.restore_params(trained_workdir)
  model_config = config_of(graphdef, params)
  columns = stream_modes.passkey_columns(
    graphdef,
    params,
    [42, 60],
    seq_len=96,
    sinks_list=[0, 2],
    examples=2,
    seed=0,
    chunk_size=32,
    batch_size=2,
  )
  assert list(columns) == ["streaming, 0 sinks", "streaming, 2 sinks", "batch path"]
  assert columns["streaming, 0 sinks"] == columns["batch path"]
  table = stream_modes.passkey_markdown(columns, [42, 60], reach=46, header=["Command: `x`"])
  assert "| 60 | no |" in table
  rows, full_failed = decode.decode_benchmark(
    graphdef,
    params,
    model_config,
    lengths=[64, 80],
    steps=2,
    batch_size=1,
    chunk_size=32,
    log=lambda line: None,
  )
  assert full_failed is None and [r["length"] for r in rows] == [64, 80]
  assert rows[0]["rolling"]["cache"] == rows[1]["rolling"]["cache"] < rows[1]["full"]["cache"]
  assert "| 80 |" in decode.benchmark_markdown(
    rows, None, header=[], batch_size=1, steps=2, chunk_size=32, num_sinks=0
  )


def _stream_cli(*args):
  return subprocess.run(
    [sys.executable, os.path.join(REPO, "stream.py"), *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )


@pytest.mark.slow
def test_stream_command_line(trained_workdir, tmp_path):
  before = listing(trained_workdir)
  done = _stream_cli(f"--workdir={trained_workdir}", "--stream_tokens=400", "--chunk_size=64")
  assert done.returncode == 0, done.stderr[-2000:]
  assert "distance 42; the model's reach is 46" in done.stderr
  assert re.search(r"Passkey \d{5}: the model answered", done.stdout)
  done = _stream_cli(f"--workdir={trained_workdir}", "--stream_tokens=400", "--key_distance=60")
  assert done.returncode == 0 and "beyond the model's reach of 46" in done.stdout
  text_file = tmp_path / "book.txt"
  text_file.write_text("The grass is green. \u00e9t\u00e9\n" * 20)  # non-vocabulary bytes -> spaces
  done = _stream_cli(f"--workdir={trained_workdir}", f"--text_file={text_file}", "--generate=2")
  assert done.returncode == 0, done.stderr[-2000:]
  assert "Prefill: 520 tokens" in done.stdout and "Generated 2 tokens" in done.stdout
  assert listing(trained_workdir) == before  # read only
  out = tmp_path / "out"
  done = _stream_cli(
    f"--workdir={trained_workdir}",
    f"--out={out}",
    "--passkey",
    "--passkey_examples=2",
    "--passkey_distances=42,50",
    "--chunk_size=32",
  )
  assert done.returncode == 0, done.stderr[-2000:]
  assert "| 42 | yes |" in (out / "streaming_sinks.md").read_text()
  assert "Context 96-128 tokens" in (out / "streaming_sinks.md").read_text()
  done = _stream_cli(
    f"--workdir={trained_workdir}",
    f"--out={out}",
    "--benchmark",
    "--lengths=64,96",
    "--decode_steps=2",
    "--batch_size=1",
    "--chunk_size=32",
  )
  assert done.returncode == 0, done.stderr[-2000:]
  assert (out / "streaming.md").exists() and (out / "streaming.png").exists()
  assert listing(trained_workdir) == before


@pytest.mark.slow
@pytest.mark.parametrize(
  "args, message",
  [
    (["--workdir=/nonexistent/run"], "error: --workdir=/nonexistent/run: no such folder."),
    ([], "error: Pass --workdir (a trained model) or --config (random init)."),
    (["--config=configs/tiny.py", "--benchmark"], "error: Pass --out"),
  ],
)
def test_stream_command_line_errors_are_one_line(args, message):
  done = _stream_cli(*args)
  assert done.returncode == 1
  assert done.stderr.strip().splitlines()[-1].startswith(message), done.stderr[-2000:]
  assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
  "changes, message",
  [
    (dict(key_distance=0), "--key_distance=0 must be an integer >= 42."),
    (dict(max_len=-5), "--max_len=-5 must be an integer >= 1."),
    (dict(stream_tokens=10), "--stream_tokens=10 must be an integer >= 62."),
    (dict(passkey_seq_len=-1), "--passkey_seq_len=-1 must be an integer >= 62."),
    (dict(lengths=(0,)), "--lengths=0 must be an integer >= 62."),
    (dict(passkey_sinks=(-1,)), "--passkey_sinks=-1 must be an integer >= 0."),
    (dict(chunk_size=0), "--chunk_size=0 must be an integer >= 1."),
    (dict(generate=-1), "--generate=-1 must be an integer >= 0."),
    (dict(workdir=None, config=None), "Pass --workdir (a trained model) or --config"),
    (dict(workdir=None, mode="benchmark"), "Pass --out (where to write the results)"),
    (dict(mode="decode"), "mode='decode' must be stream, passkey or benchmark."),
  ],
)
def test_stream_settings_refuse_bad_values_before_any_work(tmp_path, changes, message):
  """Each mistake is one line naming the flag, raised before a model is loaded (issue 28, D8/D15)."""
  settings = stream_modes.StreamSettings(
    **{"workdir": str(tmp_path), "config": object(), **changes}
  )
  with pytest.raises(ValueError) as error:
    settings.check()
  assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_format_stream_does_not_judge_too_few_generated_tokens():
  result = dict(fed=10, rate=None, seconds=0.1, samples=[], cache_bytes=0)
  result.update(generated=data.encode("12"), generate_seconds=0.1)
  text = "\n".join(stream_modes.format_stream(result, data.encode("12345"), 42, 100))
  assert "too few tokens to judge" in text and "(wrong)" not in text
