"""Streams text of any length through a trained model with a rolling KV cache (swa/cache.py).

  # A million tokens of passkey text (key 200 tokens before the question), then the answer:
  python stream.py --workdir=workdirs/w128
  # Any text file (characters outside the vocabulary become spaces), then 200 generated tokens:
  python stream.py --workdir=workdirs/w128 --text_file=book.txt --generate=200
  # Passkey exact match through the streaming path, without and with 4 attention sinks:
  python stream.py --workdir=workdirs/w128 --passkey --passkey_seq_len=4096 --passkey_sinks=0,4
  # Decode speed and memory against stream length, rolling vs full-length cache
  # (-> results/streaming.md, results/streaming.png; about a minute on one H100):
  python stream.py --workdir=workdirs/w128 --benchmark

Without --workdir, --config=configs/w128.py gives a randomly initialised model of that
architecture (enough for --benchmark, whose numbers do not depend on the weights).
Device memory is jax.devices()[0].memory_stats()["bytes_in_use"] where the backend reports it
(GPU), else "n/a"; the cache's own array bytes are printed everywhere.
"""

import datetime
import os
import shlex
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from swa import cache as cache_lib
from swa import data
from swa import profiling
from swa import train_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config for a random-init model; ignored with --workdir.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir to restore the model from.")
_CHUNK = flags.DEFINE_integer("chunk_size", 1024, "Prefill chunk (tokens per forward call).")
_SINKS = flags.DEFINE_integer("num_sinks", 0, "Attention sinks kept by every windowed layer.")
_MAX_LEN = flags.DEFINE_integer("max_len", None, "Slots of full-attention layers; default: the "
                                "stream length plus --generate.")
# Stream mode.
_STREAM_TOKENS = flags.DEFINE_integer("stream_tokens", 1_000_000,
                                      "Length of the passkey stream (without --text_file).")
_KEY_DISTANCE = flags.DEFINE_integer("key_distance", 200, "Passkey stream: distance from the key "
                                     "to the question (swa/data.py's definition).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the passkey text.")
_TEXT_FILE = flags.DEFINE_string("text_file", None, "Stream this file instead of passkey text.")
_GENERATE = flags.DEFINE_integer("generate", 5, "Greedy tokens to generate after the stream.")
# Passkey mode.
_PASSKEY = flags.DEFINE_bool("passkey", False, "Passkey exact match through the streaming path.")
_PASSKEY_SEQ_LEN = flags.DEFINE_integer("passkey_seq_len", None,
                                        "Context length; default the training one.")
_PASSKEY_DISTANCES = flags.DEFINE_list("passkey_distances", None, "Default: the config's number "
                                       "of distances spread over all the length allows.")
_PASSKEY_SINKS = flags.DEFINE_list("passkey_sinks", ["0", "4"], "Sink counts to compare.")
_PASSKEY_EXAMPLES = flags.DEFINE_integer("passkey_examples", 64, "Examples per distance.")
_PASSKEY_BATCH = flags.DEFINE_integer("passkey_batch_size", 64, "Examples per forward call.")
_COMPARE_BATCH = flags.DEFINE_bool("compare_batch", True, "Also run the batch (whole-sequence) "
                                   "evaluation, which the 0-sink streaming one must equal.")
_PASSKEY_OUTPUT = flags.DEFINE_string("passkey_output", None, "Also write the table here (.md).")
# Benchmark mode.
_BENCHMARK = flags.DEFINE_bool("benchmark", False, "Decode speed and memory vs stream length.")
_LENGTHS = flags.DEFINE_list("lengths", ["1024", "4096", "16384", "65536", "262144", "1048576"],
                             "Stream lengths at which decoding is timed.")
_DECODE_STEPS = flags.DEFINE_integer("decode_steps", 100, "Decode steps timed at each length.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Benchmark: streams decoded side by side.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "results", "Benchmark: streaming.md/.png go here.")

MIB = 2 ** 20


def device_bytes_in_use():
  """Bytes the default device's allocator holds, or None where the backend does not say."""
  stats = jax.devices()[0].memory_stats()
  return None if not stats or "bytes_in_use" not in stats else int(stats["bytes_in_use"])


def fmt_mib(num_bytes):
  return "n/a" if num_bytes is None else f"{num_bytes / MIB:,.2f}"


def device_description():
  d = jax.devices()[0]
  return f"{d.device_kind} ({d.platform}, {jax.device_count()} device(s)), JAX {jax.__version__}"


def command_line():
  return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def load_model():
  """(config, graphdef, params, description) from --workdir, else a random init of --config."""
  if _WORKDIR.value:
    config, graphdef, params = train_lib.restore_params(_WORKDIR.value)
    return config, graphdef, params, f"checkpoint {_WORKDIR.value}"
  if _CONFIG.value is None:
    raise app.UsageError("Pass --workdir (a trained model) or --config (random init).")
  config = _CONFIG.value
  graphdef, params = train_lib.create_model(config)
  return (config, graphdef, params,
          f"random init of {config_flags.get_config_filename(flags.FLAGS['config'])}")


def describe(model_config):
  c = model_config
  return (f"{c.num_layers} layers, windows {c.layer_windows}, d_model {c.d_model}, "
          f"{c.num_heads} heads / {c.num_kv_heads} kv heads, {c.dtype}")


# ---------------------------------------------------------------------------------------------
# Stream mode.


def _byte_table():
  """Token id of every byte: a vocabulary character's own id, else the space's."""
  table = np.full(256, data.encode(" ")[0], np.int32)
  table[np.frombuffer(data.VOCAB.encode("ascii"), np.uint8)] = data.encode(data.VOCAB)
  return table


def file_tokens(path, block=1 << 20):
  """Yields int32 token arrays from a file read a block at a time (one token per byte)."""
  table = _byte_table()
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


def run_stream(config, graphdef, params, source):
  model_config = train_lib.model_config(config)
  if _TEXT_FILE.value:
    total = os.path.getsize(_TEXT_FILE.value)
    pieces, answer = file_tokens(_TEXT_FILE.value), None
    what = f"{_TEXT_FILE.value} ({total:,} tokens)"
  else:
    total = _STREAM_TOKENS.value
    key_position = data.key_position_for_distance(total, _KEY_DISTANCE.value)
    prompt, answer = data.create_passkey_dataset(total, key_position, seed=_SEED.value)
    pieces = [prompt]
    what = (f"{total:,} tokens of passkey text, key at position {key_position:,} "
            f"(distance {_KEY_DISTANCE.value})")
  chunk_size = _CHUNK.value
  max_len = _MAX_LEN.value or total + _GENERATE.value
  cache = cache_lib.init_cache(model_config, 1, max_len, num_sinks=_SINKS.value)
  cache_lib.check_capacity(model_config, cache, total + _GENERATE.value)
  print(f"Model: {source}; {describe(model_config)}", file=sys.stderr)
  print(f"Device: {device_description()}", file=sys.stderr)
  print(f"Stream: {what}; chunks of {chunk_size}; {_SINKS.value} sinks; cache "
        f"{fmt_mib(cache_lib.cache_bytes(cache))} MiB", file=sys.stderr)

  samples = []  # (tokens fed, device bytes in use)
  next_sample, fed, pending, last_logits = 0, 0, None, None
  start = time.perf_counter()
  compiled_at = None
  bar = tqdm.tqdm(total=total, unit="tok", unit_scale=True, file=sys.stderr,
                  mininterval=0.5 if sys.stderr.isatty() else 30)
  for chunk in fixed_chunks(pieces, chunk_size):
    n = chunk.size
    padded = np.pad(chunk, (0, chunk_size - n), constant_values=data.PAD_ID)[None]
    logits, cache = cache_lib.forward_with_cache(graphdef, params, cache, padded, n)
    last_logits = logits[:, n - 1]
    # Wait for the previous chunk only, so the device always has the next one queued.
    if pending is not None:
      jax.block_until_ready(pending[0])
      bar.update(pending[1])
      if compiled_at is None:
        compiled_at, fed_at_compile = time.perf_counter(), fed
    pending = (last_logits, n)
    fed += n
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
  if compiled_at is not None and end > compiled_at:
    rate = (fed - fed_at_compile) / (end - compiled_at)
    print(f"Prefill: {fed:,} tokens in {end - start:.1f} s; {rate:,.0f} tokens/s after the first "
          "chunk (which includes compilation).")
  else:
    print(f"Prefill: {fed:,} tokens in {end - start:.1f} s (one chunk, compilation included).")
  print("Memory as the stream grows (cache arrays: "
        f"{fmt_mib(cache_lib.cache_bytes(cache))} MiB throughout):")
  print("| tokens fed | device MiB in use |\n|---:|---:|")
  for tokens, used in samples:
    print(f"| {tokens:,} | {fmt_mib(used)} |")

  if _GENERATE.value and last_logits is not None:
    # The first token compiles the decode step; the rest are timed.
    first, logits, cache = cache_lib.generate(graphdef, params, cache, last_logits, 1)
    t0 = time.perf_counter()
    rest, logits, cache = cache_lib.generate(graphdef, params, cache, logits,
                                             _GENERATE.value - 1)
    jax.block_until_ready(logits)
    dt = time.perf_counter() - t0
    text = data.decode(np.concatenate([first, rest], 1)[0])
    speed = f"{(_GENERATE.value - 1) / dt:,.0f} tokens/s" if _GENERATE.value > 1 else "n/a"
    print(f"Generated {_GENERATE.value} tokens ({speed} after the first): {text!r}")
    if answer is not None:
      key = data.decode(answer)
      verdict = "correct" if text.startswith(key) else "wrong"
      print(f"Passkey {key}: the model answered {text[:data.ANSWER_LEN]!r} ({verdict}).")
  print(f"Device memory in use at the end: {fmt_mib(device_bytes_in_use())} MiB.")


# ---------------------------------------------------------------------------------------------
# Passkey mode.


def run_passkey(config, graphdef, params, source):
  seq_len = _PASSKEY_SEQ_LEN.value or config.data.seq_len
  distances = ([int(d) for d in _PASSKEY_DISTANCES.value] if _PASSKEY_DISTANCES.value
               else train_lib.eval_distances(seq_len, config.eval.num_distances))
  sinks_list = [int(k) for k in _PASSKEY_SINKS.value]
  kwargs = dict(seq_len=seq_len, distances=distances, examples_per_distance=_PASSKEY_EXAMPLES.value,
                seed=config.seed, batch_size=_PASSKEY_BATCH.value)
  bar = tqdm.tqdm(total=len(distances) * _PASSKEY_EXAMPLES.value * len(sinks_list),
                  unit="example", file=sys.stderr)
  columns = {}
  for sinks in sinks_list:
    columns[f"streaming, {sinks} sinks"] = cache_lib.evaluate_passkey_streaming(
        graphdef, params, chunk_size=_CHUNK.value, num_sinks=sinks, progress=bar.update,
        **kwargs)
  bar.close()
  if _COMPARE_BATCH.value:
    columns["batch path"] = train_lib.evaluate_passkey(graphdef, params, **kwargs)
  reach = train_lib.receptive_reach(config)
  lines = [
      "# Passkey exact match through the streaming path",
      "",
      f"Command: `{command_line()}`  ",
      f"Device: {device_description()}; date {datetime.date.today().isoformat()}  ",
      f"Model: {source}; {describe(train_lib.model_config(config))}  ",
      f"Context {seq_len} tokens, {_PASSKEY_EXAMPLES.value} examples per distance, prefill chunks "
      f"of {_CHUNK.value}. A sink count k keeps positions 0..k-1 visible to every query of every "
      "windowed layer (swa/cache.py).",
      "",
      "| distance | inside RF (<= %s) | " % reach + " | ".join(columns) + " |",
      "|---:|:---:|" + "---:|" * len(columns),
  ]
  for d in distances:
    inside = "yes" if reach is None or d <= reach else "no"
    lines.append(f"| {d} | {inside} | " + " | ".join(f"{col[d]:.1%}" for col in columns.values())
                 + " |")
  table = "\n".join(lines)
  print(table)
  if _PASSKEY_OUTPUT.value:
    os.makedirs(os.path.dirname(_PASSKEY_OUTPUT.value) or ".", exist_ok=True)
    with open(_PASSKEY_OUTPUT.value, "w") as f:
      f.write(table + "\n")


# ---------------------------------------------------------------------------------------------
# Benchmark mode.


def full_length_cache(model_config, batch_size, length, max_len, num_sinks):
  """A full-length cache (every layer max_len slots) marked as holding positions 0..length-1.

  The keys and values are zeros: the decode step reads every slot whatever they hold, so its
  speed and memory are those of a cache filled by prefilling `length` tokens, without the
  O(length^2) prefill through a cache that attends to all of its slots.
  """
  cache = cache_lib.init_cache(model_config, batch_size, max_len, num_sinks=num_sinks,
                               rolling=False)
  slots = jnp.arange(max_len, dtype=jnp.int32)
  for layer in cache:  # below max_len every position sits in the slot of the same number
    layer["pos"] = jnp.where(slots < length, slots, -1)
    layer["end"] = jnp.asarray(length, jnp.int32)
  return cache


def time_decode(graphdef, params, cache, logits, steps, repeats=3):
  """Compiles and warms the decode step, then times `steps` greedy steps `repeats` times.

  Returns (median seconds per step, logits, cache); the cache moves on by 2 + repeats * steps.
  """
  _, logits, cache = cache_lib.generate(graphdef, params, cache, logits, 2)
  jax.block_until_ready(logits)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    _, logits, cache = cache_lib.generate(graphdef, params, cache, logits, steps)
    jax.block_until_ready(logits)
    times.append((time.perf_counter() - start) / steps)
  return float(np.median(times)), logits, cache


def run_benchmark(config, graphdef, params, source):
  model_config = train_lib.model_config(config)
  lengths = sorted(int(x) for x in _LENGTHS.value)
  steps, B, chunk = _DECODE_STEPS.value, _BATCH.value, _CHUNK.value
  slack = 2 + 3 * steps  # the warm-up and timed decode steps move the stream on
  total = lengths[-1] + len(lengths) * slack
  print(f"Model: {source}; {describe(model_config)}", file=sys.stderr)
  print(f"Device: {device_description()}; batch {B}; lengths {lengths}", file=sys.stderr)
  # One real stream for the rolling cache (filler text; the same row in every batch element).
  text, _ = data.create_passkey_dataset(total, 0, seed=_SEED.value)
  tokens_BT = np.broadcast_to(text, (B, total))

  rolling = cache_lib.init_cache(model_config, B, total, num_sinks=_SINKS.value)
  rows, full_failed = [], None
  logits = None
  for length in lengths:
    row = {"length": length}
    fed = int(rolling[0]["end"])
    row["prefill_tps"] = None
    if fed < length:  # else the decode steps of the previous length already went past it
      t0 = time.perf_counter()
      logits, rolling = cache_lib.prefill(graphdef, params, rolling, tokens_BT[:, fed:length],
                                          chunk, logits="last")
      jax.block_until_ready(logits)
      row["prefill_tps"] = B * (length - fed) / (time.perf_counter() - t0)
    seconds, logits, rolling = time_decode(graphdef, params, rolling, logits, steps)
    row["rolling"] = dict(tps=B / seconds, ms=1e3 * seconds, cache=cache_lib.cache_bytes(rolling),
                          device=device_bytes_in_use())
    print(f"  L={length:>9,}  rolling: {row['rolling']['tps']:>10,.0f} tok/s, cache "
          f"{fmt_mib(row['rolling']['cache'])} MiB, device {fmt_mib(row['rolling']['device'])} MiB",
          file=sys.stderr, flush=True)

    if full_failed is None:
      try:
        full = full_length_cache(model_config, B, length, length + slack, _SINKS.value)
        seconds, _, full = time_decode(graphdef, params, full, logits, steps)
        row["full"] = dict(tps=B / seconds, ms=1e3 * seconds, cache=cache_lib.cache_bytes(full),
                           device=device_bytes_in_use())
        del full
        print(f"  L={length:>9,}  full:    {row['full']['tps']:>10,.0f} tok/s, cache "
              f"{fmt_mib(row['full']['cache'])} MiB, device {fmt_mib(row['full']['device'])} MiB",
              file=sys.stderr, flush=True)
      except Exception as e:  # pylint: disable=broad-except
        if not profiling.is_oom(e):
          raise
        full = None
        full_failed = length
        print(f"  L={length:>9,}  full:    out of device memory", file=sys.stderr, flush=True)
    rows.append(row)
  write_benchmark(rows, full_failed, model_config, source, B, steps, chunk)


def _short(n):
  """1024 -> 1k, 1048576 -> 1M (binary multiples), else the number."""
  for unit, name in ((2 ** 20, "M"), (2 ** 10, "k")):
    if n >= unit and n % unit == 0:
      return f"{n // unit}{name}"
  return f"{n:,}"


def write_benchmark(rows, full_failed, model_config, source, batch_size, steps, chunk):
  os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
  md_path = os.path.join(_OUTPUT_DIR.value, "streaming.md")
  png_path = os.path.join(_OUTPUT_DIR.value, "streaming.png")

  def cell(row, kind, key, fmt):
    if kind not in row:
      return "OOM" if full_failed is not None and row["length"] >= full_failed else "-"
    value = row[kind][key]
    return "n/a" if value is None else fmt(value)

  tps, ms, mib = (lambda v: f"{v:,.0f}"), (lambda v: f"{v:.3f}"), fmt_mib
  lines = [
      "# Streaming decode: rolling KV cache vs full-length cache",
      "",
      f"Command: `{command_line()}`  ",
      f"Device: {device_description()}  ",
      f"Date: {datetime.datetime.now().isoformat(timespec='minutes')}  ",
      f"Model: {source}; {describe(model_config)}  ",
      f"Batch {batch_size} streams; {_SINKS.value} sinks; prefill chunks of {chunk}; "
      f"median of 3 timings of {steps} greedy decode steps per length.",
      "",
      "At each stream length L the rolling cache (windowed layers keep a ring of w slots; full "
      "layers, if any, keep every position) has really been prefilled with L tokens of text, in "
      "chunks, continuing the same stream from the previous L; then the decode step is warmed up "
      "(2 steps) and `decode_steps` greedy steps are timed, three times (median; one jitted call "
      "per token, so a small model is partly bound by the host). The full-length cache keeps L + "
      f"{2 + 3 * steps} slots in every layer and attends over all of them with the same window mask "
      "(same logits; what a cache that never drops anything costs); it is marked as holding L "
      "positions without being prefilled (its keys are zeros: decode reads every slot whatever "
      "they hold), and it is freed after each length. decode tok/s = batch / seconds per step; "
      "cache MiB = bytes of the cache arrays; device MiB = memory_stats()['bytes_in_use'] with "
      "the cache alive (parameters and the rolling cache included; n/a where the backend "
      "reports none). OOM: the full-length cache no longer fits.",
      "",
      "| stream length L | rolling decode tok/s | rolling ms/step | rolling cache MiB "
      "| rolling device MiB | full decode tok/s | full ms/step | full cache MiB "
      "| full device MiB | rolling prefill tok/s |",
      "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for row in rows:
    lines.append(
        f"| {row['length']:,} | {cell(row, 'rolling', 'tps', tps)} "
        f"| {cell(row, 'rolling', 'ms', ms)} | {cell(row, 'rolling', 'cache', mib)} "
        f"| {cell(row, 'rolling', 'device', mib)} | {cell(row, 'full', 'tps', tps)} "
        f"| {cell(row, 'full', 'ms', ms)} | {cell(row, 'full', 'cache', mib)} "
        f"| {cell(row, 'full', 'device', mib)} "
        f"| {'-' if row['prefill_tps'] is None else format(row['prefill_tps'], ',.0f')} |")
  lines.append("")
  lines.append("The first length's prefill rate includes compiling the prefill step.")
  with open(md_path, "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))

  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, (ax_speed, ax_mem) = plt.subplots(1, 2, figsize=(11, 4))
  for kind, style, color in (("rolling", "o-", "C0"), ("full", "s--", "C1")):
    got = [r for r in rows if kind in r]
    xs = [r["length"] for r in got]
    ax_speed.plot(xs, [r[kind]["tps"] for r in got], style, color=color, label=f"{kind} cache")
    ax_mem.plot(xs, [r[kind]["cache"] / MIB for r in got], style, color=color,
                label=f"{kind} cache (arrays)")
    used = [(r["length"], r[kind]["device"] / MIB) for r in got if r[kind]["device"] is not None]
    if used:
      ax_mem.plot(*zip(*used), ":", color=color, alpha=0.6, label=f"{kind}: device in use")
  if full_failed is not None:
    for ax in (ax_speed, ax_mem):
      ax.axvline(full_failed, color="red", lw=1, ls=":")
      ax.text(full_failed, 0.5, " full: OOM", color="red", transform=ax.get_xaxis_transform())
  ax_speed.set(xscale="log", yscale="log", xlabel="stream length L (tokens)",
               ylabel="decode tokens/s", title=f"Decode speed (batch {batch_size})")
  ax_mem.set(xscale="log", yscale="log", xlabel="stream length L (tokens)", ylabel="MiB",
             title="Memory")
  lengths = [r["length"] for r in rows]
  for ax in (ax_speed, ax_mem):
    ax.set_xticks(lengths, [_short(x) for x in lengths], minor=False)
    ax.set_xticks([], minor=True)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(f"{describe(model_config)} on {jax.devices()[0].device_kind}", fontsize=9)
  fig.tight_layout()
  fig.savefig(png_path, dpi=120)
  print(f"Wrote {md_path} and {png_path}.", file=sys.stderr)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _PASSKEY.value and _BENCHMARK.value:
    raise app.UsageError("Choose one of --passkey and --benchmark.")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every restore step at INFO.
  config, graphdef, params, source = load_model()
  if _BENCHMARK.value:
    run_benchmark(config, graphdef, params, source)
  elif _PASSKEY.value:
    run_passkey(config, graphdef, params, source)
  else:
    run_stream(config, graphdef, params, source)


if __name__ == "__main__":
  app.run(main)
