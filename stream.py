"""Streams text of any length through a trained model with a rolling KV cache (swa/streaming.py).

  # A million tokens of passkey text (the key inside the model's reach), then the answer:
  python stream.py --workdir=workdirs/w128
  # Any text file (characters outside the vocabulary become spaces), then 200 generated tokens:
  python stream.py --workdir=workdirs/w128 --text_file=book.txt --generate=200
  # Passkey exact match through the streaming path, without and with 4 attention sinks
  # (-> <out>/streaming_sinks.md):
  python stream.py --workdir=workdirs/w128 --passkey --passkey_seq_len=4096 --passkey_sinks=0,4
  # Decode speed and memory against stream length, rolling vs full-length cache
  # (-> <out>/streaming.md and streaming.png; about a minute on one H100):
  python stream.py --workdir=workdirs/w128 --benchmark

Without --workdir, --config=configs/w128.py gives a randomly initialised model of that
architecture (enough for --benchmark, whose numbers do not depend on the weights); --out is then
required for --passkey and --benchmark. With --workdir, --out defaults to <workdir>/stream. The
stream mode writes nothing; nothing is ever written inside the checkpoints.

The passkey stream puts its key --key_distance tokens before the question; by default half the
model's reach (the sum over layers of window - 1), at most 200, so the model can answer it. A
distance beyond the reach is allowed, and the verdict then says why no answer can be right.
"""

import os
import sys

from absl import flags, logging
from ml_collections import config_flags

from swa import cli, data, reports, stream_bench, stream_lib, train_lib
from swa.model import config_of

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Experiment config for a random-init model; ignored with --workdir.",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Training workdir to restore the model from (read only)."
)
_OUT = flags.DEFINE_string(
  "out", None, "Folder for --passkey and --benchmark outputs; default <workdir>/stream."
)
_CHUNK = flags.DEFINE_integer("chunk_size", 1024, "Prefill chunk (tokens per forward call).")
_SINKS = flags.DEFINE_integer("num_sinks", 0, "Attention sinks kept by every windowed layer.")
_MAX_LEN = flags.DEFINE_integer(
  "max_len", None, "Slots of full-attention layers; default: the stream length plus --generate."
)
# Stream mode.
_STREAM_TOKENS = flags.DEFINE_integer(
  "stream_tokens", 1_000_000, "Length of the passkey stream (without --text_file)."
)
_KEY_DISTANCE = flags.DEFINE_integer(
  "key_distance",
  None,
  "Passkey stream: distance from the key "
  "to the question (swa/data.py's definition); default half "
  "the model's reach, at most 200.",
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the passkey text.")
_TEXT_FILE = flags.DEFINE_string("text_file", None, "Stream this file instead of passkey text.")
_GENERATE = flags.DEFINE_integer("generate", 5, "Greedy tokens to generate after the stream.")
# Passkey mode.
_PASSKEY = flags.DEFINE_bool("passkey", False, "Passkey exact match through the streaming path.")
_PASSKEY_SEQ_LEN = flags.DEFINE_integer(
  "passkey_seq_len", None, "Context length; default the training one."
)
_PASSKEY_DISTANCES = flags.DEFINE_list(
  "passkey_distances",
  None,
  "Default: the config's number of distances spread over all the length allows.",
)
_PASSKEY_SINKS = flags.DEFINE_list("passkey_sinks", ["0", "4"], "Sink counts to compare.")
_PASSKEY_EXAMPLES = flags.DEFINE_integer("passkey_examples", 64, "Examples per distance.")
_PASSKEY_BATCH = flags.DEFINE_integer("passkey_batch_size", 64, "Examples per forward call.")
_COMPARE_BATCH = flags.DEFINE_bool(
  "compare_batch",
  True,
  "Also run the batch (whole-sequence) evaluation, which the 0-sink streaming one must equal.",
)
# Benchmark mode.
_BENCHMARK = flags.DEFINE_bool("benchmark", False, "Decode speed and memory vs stream length.")
_LENGTHS = flags.DEFINE_list(
  "lengths",
  ["1024", "4096", "16384", "65536", "262144", "1048576"],
  "Stream lengths at which decoding is timed.",
)
_DECODE_STEPS = flags.DEFINE_integer("decode_steps", 100, "Decode steps timed at each length.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Benchmark: streams decoded side by side.")


def _ints(values, flag):
  try:
    return [int(v) for v in values]
  except ValueError:
    raise cli.UserError(f"--{flag}={','.join(values)} must be a list of integers.") from None


def load_model():
  """(config, graphdef, params, description) from --workdir, else a random init of --config."""
  if _WORKDIR.value:
    if not os.path.isdir(_WORKDIR.value):
      raise cli.UserError(f"--workdir={_WORKDIR.value}: no such folder.")
    config, graphdef, params = train_lib.restore_params(_WORKDIR.value)
    return config, graphdef, params, f"checkpoint {_WORKDIR.value}"
  if _CONFIG.value is None:
    raise cli.UserError("Pass --workdir (a trained model) or --config (random init).")
  graphdef, params = train_lib.create_model(_CONFIG.value)
  name = config_flags.get_config_filename(flags.FLAGS["config"])
  return _CONFIG.value, graphdef, params, f"random init of {name}"


def out_dir():
  if _OUT.value:
    return _OUT.value
  if _WORKDIR.value:
    return os.path.join(_WORKDIR.value, "stream")
  raise cli.UserError("Pass --out (where to write the results) when there is no --workdir.")


def write(path, text):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    f.write(text)
  print(f"Wrote {path}.", file=sys.stderr)


def run_stream(graphdef, params, model_config, source):
  reach = model_config.reach
  key_distance, answer = None, None
  if _TEXT_FILE.value:
    if not os.path.isfile(_TEXT_FILE.value):
      raise cli.UserError(f"--text_file={_TEXT_FILE.value}: no such file.")
    total = os.path.getsize(_TEXT_FILE.value)
    pieces = stream_lib.file_tokens(_TEXT_FILE.value)
    what = f"{_TEXT_FILE.value} ({total:,} tokens)"
  else:
    total = _STREAM_TOKENS.value
    key_distance = _KEY_DISTANCE.value or stream_lib.default_key_distance(reach)
    key_position = data.key_position_for_distance(total, key_distance)
    prompt, answer = data.create_passkey_dataset(total, key_position, seed=_SEED.value)
    pieces = [prompt]
    what = (
      f"{total:,} tokens of passkey text, key at position {key_position:,} (distance "
      f"{key_distance}; the model's reach is {reach})"
    )
    note = stream_lib.reach_note(key_distance, reach)
    if note:
      print(f"Warning: {note}", file=sys.stderr)
  print(f"Model: {source}; {stream_lib.describe(model_config)}", file=sys.stderr)
  print(f"Device: {reports.device_description()}", file=sys.stderr)
  print(f"Stream: {what}; chunks of {_CHUNK.value}; {_SINKS.value} sinks", file=sys.stderr)
  result = stream_lib.stream_tokens(
    graphdef,
    params,
    model_config,
    pieces,
    total=total,
    chunk_size=_CHUNK.value,
    num_sinks=_SINKS.value,
    max_len=_MAX_LEN.value,
    num_generate=_GENERATE.value,
  )
  print("\n".join(stream_lib.format_stream(result, answer, key_distance, reach)))


def run_passkey(config, graphdef, params, model_config, source):
  seq_len = _PASSKEY_SEQ_LEN.value or config.data.seq_len
  distances = (
    _ints(_PASSKEY_DISTANCES.value, "passkey_distances")
    if _PASSKEY_DISTANCES.value
    else data.even_distances(seq_len, config.eval.num_distances)
  )
  sinks_list = _ints(_PASSKEY_SINKS.value, "passkey_sinks")
  path = os.path.join(out_dir(), "streaming_sinks.md")
  columns = stream_lib.passkey_columns(
    graphdef,
    params,
    distances,
    seq_len=seq_len,
    sinks_list=sinks_list,
    examples=_PASSKEY_EXAMPLES.value,
    seed=config.seed,
    chunk_size=_CHUNK.value,
    batch_size=_PASSKEY_BATCH.value,
    compare_batch=_COMPARE_BATCH.value,
  )
  header = reports.header_lines(
    extra=[
      f"Model: {source}; {stream_lib.describe(model_config)}",
      f"Context {seq_len} tokens, {_PASSKEY_EXAMPLES.value} examples per distance, prefill chunks "
      f"of {_CHUNK.value}. A sink count k keeps positions 0..k-1 visible to every query of every "
      "windowed layer (swa/cache.py).",
    ]
  )
  text = stream_lib.passkey_markdown(columns, distances, reach=model_config.reach, header=header)
  print(text)
  write(path, text)


def run_benchmark(graphdef, params, model_config, source):
  out = out_dir()
  lengths = _ints(_LENGTHS.value, "lengths")
  print(f"Model: {source}; {stream_lib.describe(model_config)}", file=sys.stderr)
  print(
    f"Device: {reports.device_description()}; batch {_BATCH.value}; lengths {lengths}",
    file=sys.stderr,
  )
  rows, full_failed = stream_bench.decode_benchmark(
    graphdef,
    params,
    model_config,
    lengths=lengths,
    steps=_DECODE_STEPS.value,
    batch_size=_BATCH.value,
    chunk_size=_CHUNK.value,
    num_sinks=_SINKS.value,
    seed=_SEED.value,
  )
  header = reports.header_lines(extra=[f"Model: {source}; {stream_lib.describe(model_config)}"])
  text = stream_bench.benchmark_markdown(
    rows,
    full_failed,
    header=header,
    batch_size=_BATCH.value,
    steps=_DECODE_STEPS.value,
    chunk_size=_CHUNK.value,
    num_sinks=_SINKS.value,
  )
  print(text)
  write(os.path.join(out, "streaming.md"), text)
  stream_bench.plot_benchmark(
    rows,
    full_failed,
    os.path.join(out, "streaming.png"),
    title=f"{stream_lib.describe(model_config)} on {reports.device_description()}",
    batch_size=_BATCH.value,
  )


def main(argv):
  if len(argv) > 1:
    raise cli.UserError(f"Unexpected arguments: {argv[1:]}")
  if _PASSKEY.value and _BENCHMARK.value:
    raise cli.UserError("Choose one of --passkey and --benchmark.")
  for flag in (
    _CHUNK,
    _GENERATE,
    _STREAM_TOKENS,
    _DECODE_STEPS,
    _BATCH,
    _PASSKEY_EXAMPLES,
    _PASSKEY_BATCH,
  ):
    if flag.value < (0 if flag is _GENERATE else 1):
      raise cli.UserError(f"--{flag.name}={flag.value} must be >= {0 if flag is _GENERATE else 1}.")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every restore step at INFO.
  config, graphdef, params, source = load_model()
  model_config = config_of(graphdef, params)
  if _BENCHMARK.value:
    run_benchmark(graphdef, params, model_config, source)
  elif _PASSKEY.value:
    run_passkey(config, graphdef, params, model_config, source)
  else:
    run_stream(graphdef, params, model_config, source)


if __name__ == "__main__":
  cli.run(main)
