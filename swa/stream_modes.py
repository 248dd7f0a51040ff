"""What stream.py runs: its settings, and its three modes on a model restored or initialised.

  * stream: a long stream (passkey text or any file) fed through the rolling cache, then greedy
    generation (`streaming.stream_tokens`);
  * passkey: exact match through the streaming path with each sink count, against the batch path;
  * benchmark: decode speed and memory against stream length (swa/bench/decode.py);
  * with hf_checkpoint: the stream mode on a Hugging Face checkpoint (swa/hf/), its tokenizer
    reading --prompt or --text_file (`run_hf_stream`).

`run(StreamSettings(...))` is the one call; every setting is checked before the model loads, in
one line naming the flag. Device memory is jax.devices()[0].memory_stats()["bytes_in_use"] where
the backend reports it (GPU), else "n/a"; the cache's own array bytes are reported everywhere.
"""

import dataclasses
import os
import sys
from typing import Optional

import numpy as np

from swa import cache as cache_lib
from swa import data, evaluate, reports, streaming, train_lib
from swa.attention import implementations
from swa.bench import decode
from swa.checks import check_int
from swa.model import config_of


@dataclasses.dataclass(frozen=True)
class StreamSettings:
  """stream.py's flags (stream.py documents each); `check` validates them before any work."""

  workdir: Optional[str] = None
  config: object = None  # an experiment ConfigDict for a random-init model, without a workdir
  config_name: Optional[str] = None
  out: Optional[str] = None
  mode: str = "stream"  # stream | passkey | benchmark
  chunk_size: int = 1024
  num_sinks: int = 0
  max_len: Optional[int] = None
  stream_tokens: int = 1_000_000
  key_distance: Optional[int] = None
  seed: int = 0
  text_file: Optional[str] = None
  generate: int = 5
  passkey_seq_len: Optional[int] = None
  passkey_distances: Optional[tuple] = None
  passkey_sinks: tuple = (0, 4)
  passkey_examples: int = 64
  passkey_batch_size: int = 64
  compare_batch: bool = True
  lengths: tuple = (1024, 4096, 16384, 65536, 262144, 1048576)
  decode_steps: int = 100
  batch_size: int = 16
  hf_checkpoint: Optional[str] = None  # a Hugging Face checkpoint folder (swa/hf/)
  prompt: Optional[str] = None  # with hf_checkpoint: the text streamed (else text_file's)
  attention: str = "auto"  # with hf_checkpoint: the attention implementation
  hf_dtype: str = "float32"  # with hf_checkpoint: weights and activations

  def check(self):
    """One-line ValueErrors naming the flag, for values no mode can use."""
    if self.mode not in ("stream", "passkey", "benchmark"):
      raise ValueError(f"mode={self.mode!r} must be stream, passkey or benchmark.")
    for name, low in (
      ("chunk_size", 1),
      ("num_sinks", 0),
      ("stream_tokens", data.MIN_CONTEXT_LEN),
      ("seed", 0),
      ("generate", 0),
      ("passkey_examples", 1),
      ("passkey_batch_size", 1),
      ("decode_steps", 1),
      ("batch_size", 1),
    ):
      check_int(f"--{name}", getattr(self, name), low)
    for name, low in (
      ("max_len", 1),
      ("key_distance", data.MIN_DISTANCE),
      ("passkey_seq_len", data.MIN_CONTEXT_LEN),
    ):
      if getattr(self, name) is not None:
        check_int(f"--{name}", getattr(self, name), low)
    for d in self.passkey_distances or ():
      check_int("--passkey_distances", d, data.MIN_DISTANCE)
    for k in self.passkey_sinks:
      check_int("--passkey_sinks", k, 0)
    for n in self.lengths:
      check_int("--lengths", n, data.MIN_CONTEXT_LEN)
    if self.text_file is not None and not os.path.isfile(self.text_file):
      raise ValueError(f"--text_file={self.text_file}: no such file.")
    if self.workdir is not None and not os.path.isdir(self.workdir):
      raise ValueError(f"--workdir={self.workdir}: no such folder.")
    if self.hf_checkpoint is not None:
      if not os.path.isdir(self.hf_checkpoint):
        raise ValueError(f"--hf_checkpoint={self.hf_checkpoint}: no such folder.")
      if self.mode != "stream":
        raise ValueError("--hf_checkpoint streams text: --passkey and --benchmark do not apply.")
      if (self.prompt is None) == (self.text_file is None):
        raise ValueError("With --hf_checkpoint pass one of --prompt and --text_file.")
      if self.attention not in implementations():
        raise ValueError(f"--attention={self.attention} must be one of {implementations()}.")
    elif self.prompt is not None:
      raise ValueError("--prompt needs --hf_checkpoint (other models read --text_file).")
    if self.workdir is None and self.config is None and self.hf_checkpoint is None:
      raise ValueError("Pass --workdir (a trained model) or --config (random init).")
    if self.mode != "stream" and self.out is None and self.workdir is None:
      raise ValueError("Pass --out (where to write the results) when there is no --workdir.")

  @property
  def out_dir(self):
    return self.out or os.path.join(self.workdir, "stream")


def run(settings: StreamSettings):
  """Checks the settings, loads the model and runs the mode they name."""
  settings.check()
  if settings.hf_checkpoint:
    return run_hf_stream(settings)
  if settings.workdir:
    config, graphdef, params = train_lib.restore_params(settings.workdir)
    source = f"checkpoint {settings.workdir}"
  else:
    config = settings.config
    graphdef, params = train_lib.create_model(config)
    source = f"random init of {settings.config_name}"
  model_config = config_of(graphdef, params)
  source = f"{source}; {describe(model_config)}"
  if settings.mode == "benchmark":
    run_benchmark(settings, graphdef, params, model_config, source)
  elif settings.mode == "passkey":
    run_passkey(settings, config, graphdef, params, model_config, source)
  else:
    run_stream(settings, graphdef, params, model_config, source)


def write(path, text):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    f.write(text)
  print(f"Wrote {path}.", file=sys.stderr)


def run_stream(s: StreamSettings, graphdef, params, model_config, source):
  reach = model_config.reach
  key_distance, answer = None, None
  if s.text_file:
    total = os.path.getsize(s.text_file)
    pieces = file_tokens(s.text_file)
    what = f"{s.text_file} ({total:,} tokens)"
  else:
    total = s.stream_tokens
    key_distance = s.key_distance or default_key_distance(reach)
    key_position = data.key_position_for_distance(total, key_distance)
    prompt, answer = data.create_passkey_dataset(total, key_position, seed=s.seed)
    pieces = [prompt]
    what = (
      f"{total:,} tokens of passkey text, key at position {key_position:,} (distance "
      f"{key_distance}; the model's reach is {reach})"
    )
    note = reach_note(key_distance, reach)
    if note:
      print(f"Warning: {note}", file=sys.stderr)
  print(f"Model: {source}", file=sys.stderr)
  print(f"Device: {reports.device_description()}", file=sys.stderr)
  print(f"Stream: {what}; chunks of {s.chunk_size}; {s.num_sinks} sinks", file=sys.stderr)
  result = streaming.stream_tokens(
    graphdef,
    params,
    model_config,
    pieces,
    total=total,
    chunk_size=s.chunk_size,
    num_sinks=s.num_sinks,
    max_len=s.max_len,
    num_generate=s.generate,
  )
  print("\n".join(format_stream(result, answer, key_distance, reach)))


def run_passkey(s: StreamSettings, config, graphdef, params, model_config, source):
  seq_len = s.passkey_seq_len or config.data.seq_len
  distances = list(s.passkey_distances or data.even_distances(seq_len, config.eval.num_distances))
  columns = passkey_columns(
    graphdef,
    params,
    distances,
    seq_len=seq_len,
    sinks_list=s.passkey_sinks,
    examples=s.passkey_examples,
    seed=config.seed,
    chunk_size=s.chunk_size,
    batch_size=s.passkey_batch_size,
    compare_batch=s.compare_batch,
  )
  lengths = sorted({data.context_len(d, seq_len) for d in distances})
  context = f"{lengths[0]:,}" if len(lengths) == 1 else f"{lengths[0]:,}-{lengths[-1]:,}"
  header = reports.header_lines(
    extra=[
      f"Model: {source}",
      f"Context {context} tokens (the trained {seq_len:,}, longer where a distance needs it), "
      f"{s.passkey_examples} examples per distance, prefill chunks of {s.chunk_size}. A sink "
      "count k keeps positions 0..k-1 visible to every query of every windowed layer "
      "(swa/cache.py).",
    ]
  )
  text = passkey_markdown(columns, distances, reach=model_config.reach, header=header)
  print(text)
  write(os.path.join(s.out_dir, "streaming_sinks.md"), text)


def run_benchmark(s: StreamSettings, graphdef, params, model_config, source):
  lengths = list(s.lengths)
  print(f"Model: {source}", file=sys.stderr)
  print(
    f"Device: {reports.device_description()}; batch {s.batch_size}; lengths {lengths}",
    file=sys.stderr,
  )
  rows, full_failed = decode.decode_benchmark(
    graphdef,
    params,
    model_config,
    lengths=lengths,
    steps=s.decode_steps,
    batch_size=s.batch_size,
    chunk_size=s.chunk_size,
    num_sinks=s.num_sinks,
    seed=s.seed,
  )
  header = reports.header_lines(extra=[f"Model: {source}"])
  text = decode.benchmark_markdown(
    rows,
    full_failed,
    header=header,
    batch_size=s.batch_size,
    steps=s.decode_steps,
    chunk_size=s.chunk_size,
    num_sinks=s.num_sinks,
  )
  print(text)
  write(os.path.join(s.out_dir, "streaming.md"), text)
  decode.plot_benchmark(
    rows,
    full_failed,
    os.path.join(s.out_dir, "streaming.png"),
    title=f"{describe(model_config)} on {reports.device_description()}",
    batch_size=s.batch_size,
  )


# --- Stream mode ---------------------------------------------------------------------------------


def run_hf_stream(s: StreamSettings):
  """A Hugging Face checkpoint: its tokens of --prompt / --text_file through the rolling cache."""
  from swa import hf  # noqa: PLC0415 (a wing, imported only for this mode)

  dtype = dict(dtype=s.hf_dtype, param_dtype=s.hf_dtype)
  graphdef, params = hf.load_checkpoint(s.hf_checkpoint, attention=s.attention, **dtype)
  tokenizer = hf.load_tokenizer(s.hf_checkpoint)
  model_config = config_of(graphdef, params)
  if s.prompt is None:
    with open(s.text_file) as f:
      text = f.read()
  else:
    text = s.prompt
  ids = np.asarray(tokenizer.encode(text).ids, np.int32)
  if ids.size == 0:
    raise ValueError("The prompt gives no tokens.")
  print(f"Model: {s.hf_checkpoint}; {describe(model_config)}", file=sys.stderr)
  print(f"Device: {reports.device_description()}", file=sys.stderr)
  print(
    f"Stream: {ids.size:,} tokens; chunks of {s.chunk_size}; {s.num_sinks} sinks; attention "
    f"{s.attention}",
    file=sys.stderr,
  )
  result = streaming.stream_tokens(
    graphdef,
    params,
    model_config,
    [ids],
    total=ids.size,
    chunk_size=s.chunk_size,
    num_sinks=s.num_sinks,
    max_len=s.max_len,
    num_generate=s.generate,
  )
  print(f"Prefill: {result['fed']:,} tokens in {result['seconds']:.1f} s (compilation included).")
  print(f"Cache arrays: {reports.format_mib(result['cache_bytes'])} MiB.")
  generated = result["generated"]
  if generated.size:
    print(
      f"Generated {generated.size} tokens in {result['generate_seconds']:.2f} s: "
      f"{tokenizer.decode(generated.tolist())!r}"
    )
  return result


def describe(model_config):
  """One line: layers, windows, width, heads, dtype."""
  c = model_config
  return (
    f"{c.num_layers} layers, windows {c.layer_windows}, d_model {c.d_model}, "
    f"{c.num_heads} heads / {c.num_kv_heads} kv heads, {c.dtype}"
  )


def file_tokens(path, block=1 << 20):
  """Yields int32 token arrays from a file read a block at a time (one token per byte).

  A byte outside the vocabulary becomes a space.
  """
  table = np.full(256, data.encode(" ")[0], np.int32)
  table[np.frombuffer(data.VOCAB.encode("ascii"), np.uint8)] = data.encode(data.VOCAB)
  with open(path, "rb") as f:
    while piece := f.read(block):
      yield table[np.frombuffer(piece, np.uint8)]


def default_key_distance(reach, longest=200):
  """A key distance the model can answer: `longest`, or half the reach if that is shorter."""
  if reach is None:
    return longest
  return max(data.MIN_DISTANCE, min(longest, reach // 2))


def reach_note(key_distance, reach):
  """Why a passkey answer cannot be right (the key is beyond the reach), or None."""
  if reach is not None and key_distance > reach:
    return (
      f"the key is {key_distance} tokens back, beyond the model's reach of {reach} "
      "(the sum over layers of window - 1): no answer can be right; pass a smaller "
      "--key_distance."
    )
  return None


def format_stream(result, answer=None, key_distance=None, reach=None):
  """The report of stream_tokens as text lines; with a passkey answer, the verdict and why."""
  fed, lines = result["fed"], []
  if result["rate"] is not None:
    lines.append(
      f"Prefill: {fed:,} tokens in {result['seconds']:.1f} s; {result['rate']:,.0f} "
      "tokens/s after the first chunk (which includes compilation)."
    )
  else:
    lines.append(
      f"Prefill: {fed:,} tokens in {result['seconds']:.1f} s (one chunk, compilation included)."
    )
  lines.append(
    f"Memory as the stream grows (cache arrays: {reports.format_mib(result['cache_bytes'])} MiB throughout):"
  )
  lines.append("| tokens fed | device MiB in use |\n|---:|---:|")
  lines += [f"| {tokens:,} | {reports.format_mib(used)} |" for tokens, used in result["samples"]]
  generated = result["generated"]
  if generated.size:
    text = data.decode(generated)
    seconds = result["generate_seconds"]
    lines.append(
      f"Generated {generated.size} tokens in {seconds:.2f} s (one jitted loop, compilation "
      f"included; stream.py --benchmark times decoding): {text!r}"
    )
    if answer is not None:
      key = data.decode(answer)
      verdict = (
        "correct"
        if text.startswith(key)
        else "wrong"
        if generated.size >= data.ANSWER_LEN
        else f"too few tokens to judge: --generate={generated.size} < {data.ANSWER_LEN} digits"
      )
      note = reach_note(key_distance, reach) if key_distance is not None else None
      lines.append(
        f"Passkey {key}: the model answered {text[: data.ANSWER_LEN]!r} ({verdict})"
        + (f"; {note}" if note else ".")
      )
  lines.append(
    f"Device memory in use at the end: {reports.format_mib(cache_lib.device_bytes_in_use())} MiB."
  )
  return lines


# --- Passkey mode --------------------------------------------------------------------------------


def passkey_columns(
  graphdef,
  params,
  distances,
  *,
  seq_len,
  sinks_list,
  examples,
  seed,
  chunk_size,
  batch_size,
  compare_batch=True,
  progress=None,
):
  """{column name: {distance: accuracy}}: streaming with each sink count, then the batch path."""
  kwargs = dict(
    train_seq_len=seq_len,
    examples_per_distance=examples,
    seed=seed,
    max_batch_tokens=batch_size * seq_len,
  )
  columns = {}
  for sinks in sinks_list:
    columns[f"streaming, {sinks} sinks"] = streaming.passkey_accuracy_streaming(
      graphdef,
      params,
      distances,
      chunk_size=chunk_size,
      num_sinks=sinks,
      progress=progress,
      **kwargs,
    )
  if compare_batch:
    columns["batch path"] = evaluate.passkey_accuracy(graphdef, params, distances, **kwargs)
  return columns


def passkey_markdown(columns, distances, *, reach, header):
  """The passkey table with its provenance lines (`header`, e.g. reports.header_lines())."""
  rows = []
  for d in distances:
    inside = "yes" if reach is None or d <= reach else "no"
    rows.append([d, inside] + [f"{col[d]:.1%}" for col in columns.values()])
  table = reports.markdown_table(
    ["distance", f"inside RF (<= {reach})", *columns], rows, align="rc" + "r" * len(columns)
  )
  return reports.markdown_header("Passkey exact match through the streaming path", header) + table
