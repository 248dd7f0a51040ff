"""What stream.py runs: a long stream with generation, and passkey exact match through the
streaming path (swa/stream_bench.py has the decode benchmark). Plain arguments in, results and
text out.

Device memory is jax.devices()[0].memory_stats()["bytes_in_use"] where the backend reports it
(GPU), else None ("n/a"); the cache's own array bytes are reported everywhere.
"""

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from swa import cache as cache_lib
from swa import data, evaluate, reports, streaming

MIB = 2**20


def device_bytes_in_use():
  """Bytes the default device's allocator holds, or None where the backend does not say."""
  stats = jax.devices()[0].memory_stats()
  return None if not stats or "bytes_in_use" not in stats else int(stats["bytes_in_use"])


def fmt_mib(num_bytes):
  return "n/a" if num_bytes is None else f"{num_bytes / MIB:,.2f}"


def describe(model_config):
  """One line: layers, windows, width, heads, dtype."""
  c = model_config
  return (
    f"{c.num_layers} layers, windows {c.layer_windows}, d_model {c.d_model}, "
    f"{c.num_heads} heads / {c.num_kv_heads} kv heads, {c.dtype}"
  )


# ---------------------------------------------------------------------------------------------
# Stream mode.


def file_tokens(path, block=1 << 20):
  """Yields int32 token arrays from a file read a block at a time (one token per byte).

  A byte outside the vocabulary becomes a space.
  """
  table = np.full(256, data.encode(" ")[0], np.int32)
  table[np.frombuffer(data.VOCAB.encode("ascii"), np.uint8)] = data.encode(data.VOCAB)
  with open(path, "rb") as f:
    while piece := f.read(block):
      yield table[np.frombuffer(piece, np.uint8)]


def fixed_chunks(pieces, size):
  """Regroups arrays of any lengths into arrays of exactly `size` (the last may be shorter)."""
  buffer = np.zeros(0, np.int32)
  for piece in pieces:
    buffer = np.concatenate([buffer, piece])
    while buffer.size >= size:
      yield buffer[:size]
      buffer = buffer[size:]
  if buffer.size:
    yield buffer


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


def stream_tokens(
  graphdef,
  params,
  model_config,
  pieces,
  *,
  total,
  chunk_size,
  num_sinks=0,
  max_len=None,
  num_generate=0,
):
  """Feeds a stream of `total` tokens (an iterable of arrays) in chunks, then generates.

  Args:
    graphdef, params, model_config: the model.
    pieces: iterable of int32 arrays, `total` tokens in all.
    total: the stream's length.
    chunk_size: tokens per forward call.
    num_sinks: attention sinks kept by every windowed layer.
    max_len: slots of full-attention layers; default total + num_generate.
    num_generate: greedy tokens generated after the stream.

  Returns:
    dict: fed, seconds, rate (tokens/s after the first chunk, None with one chunk), samples
    [(tokens fed, device bytes in use)], cache_bytes, generated (int32 [num_generate]),
    generate_seconds (of the generation, its compilation included; None without one).
  """
  max_len = max_len or total + num_generate
  cache = cache_lib.init_cache(model_config, 1, max_len, num_sinks=num_sinks)
  cache_lib.check_capacity(model_config, cache, total + num_generate)
  samples, next_sample, fed, pending, last_logits = [], 0, 0, None, None
  start, compiled_at, fed_at_compile = time.perf_counter(), None, 0
  bar = tqdm.tqdm(
    total=total,
    unit="tok",
    unit_scale=True,
    file=sys.stderr,
    mininterval=0.5 if sys.stderr.isatty() else 30,
  )
  for chunk in fixed_chunks(pieces, chunk_size):
    n = chunk.size
    logits, cache = streaming.forward(
      graphdef,
      params,
      cache,
      streaming.pad_chunk(chunk[None], chunk_size),
      jnp.asarray(n, jnp.int32),
    )
    last_logits = logits[:, n - 1]
    # Wait for the previous chunk only, so the device always has the next one queued.
    if pending is not None:
      jax.block_until_ready(pending[0])
      bar.update(pending[1])
      if compiled_at is None:
        compiled_at, fed_at_compile = time.perf_counter(), fed
    pending, fed = (last_logits, n), fed + n
    if fed >= next_sample:
      jax.block_until_ready(last_logits)
      samples.append((fed, device_bytes_in_use()))
      bar.set_postfix(device_mib=fmt_mib(samples[-1][1]))
      next_sample += max(total // 10, 1)
  if pending is not None:
    jax.block_until_ready(pending[0])
    bar.update(pending[1])
  bar.close()
  end = time.perf_counter()
  if not samples or samples[-1][0] != fed:
    samples.append((fed, device_bytes_in_use()))
  rate = None
  if compiled_at is not None and end > compiled_at:
    rate = (fed - fed_at_compile) / (end - compiled_at)
  result = dict(
    fed=fed,
    seconds=end - start,
    rate=rate,
    samples=samples,
    cache_bytes=cache_lib.cache_bytes(cache),
    generated=np.zeros(0, np.int32),
    generate_seconds=None,
  )
  if num_generate and last_logits is not None:
    # One jitted loop over every token, its compilation included in the time.
    t0 = time.perf_counter()
    tokens_1N, _, cache = streaming.generate(graphdef, params, cache, last_logits, num_generate)
    result["generate_seconds"] = time.perf_counter() - t0
    result["generated"] = tokens_1N[0]
  return result


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
    f"Memory as the stream grows (cache arrays: {fmt_mib(result['cache_bytes'])} MiB throughout):"
  )
  lines.append("| tokens fed | device MiB in use |\n|---:|---:|")
  lines += [f"| {tokens:,} | {fmt_mib(used)} |" for tokens, used in result["samples"]]
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
      verdict = "correct" if text.startswith(key) else "wrong"
      note = reach_note(key_distance, reach) if key_distance is not None else None
      lines.append(
        f"Passkey {key}: the model answered {text[: data.ANSWER_LEN]!r} ({verdict})"
        + (f"; {note}" if note else ".")
      )
  lines.append(f"Device memory in use at the end: {fmt_mib(device_bytes_in_use())} MiB.")
  return lines


# ---------------------------------------------------------------------------------------------
# Passkey mode.


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
