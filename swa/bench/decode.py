"""The decode benchmark of stream.py: speed and memory against stream length, rolling KV cache vs
a full-length cache, as a table and a figure. Plain arguments in, rows and text out.
"""

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from swa import cache as cache_lib
from swa import data, reports, streaming
from swa.reports import MIB, format_mib


def full_length_cache(model_config, batch_size, length, max_len, num_sinks=0):
  """A full-length cache (every layer max_len slots) marked as holding positions 0..length-1.

  The keys and values are zeros: the decode step reads every slot whatever they hold, so its
  speed and memory are those of a cache filled by prefilling `length` tokens, without the
  O(length^2) prefill through a cache that attends to all of its slots.
  """
  cache = cache_lib.init_cache(
    model_config, batch_size, max_len, num_sinks=num_sinks, rolling=False
  )
  slots = jnp.arange(max_len, dtype=jnp.int32)
  # Below max_len every position sits in the slot of the same number.
  return [
    {**layer, "pos": jnp.where(slots < length, slots, -1), "end": jnp.asarray(length, jnp.int32)}
    for layer in cache
  ]


def time_decode(graphdef, params, cache, logits, steps, repeats=3):
  """Compiles and warms `steps` greedy steps (one jitted loop), then times them `repeats` times.

  Returns (median seconds per step, logits, cache); the cache moves on by (1 + repeats) * steps.
  """
  _, logits, cache = streaming.generate(graphdef, params, cache, logits, steps)
  jax.block_until_ready(logits)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    _, logits, cache = streaming.generate(graphdef, params, cache, logits, steps)
    jax.block_until_ready(logits)
    times.append((time.perf_counter() - start) / steps)
  return float(np.median(times)), logits, cache


def decode_benchmark(
  graphdef,
  params,
  model_config,
  *,
  lengths,
  steps,
  batch_size,
  chunk_size,
  num_sinks=0,
  seed=0,
  log=None,
):
  """Decode speed and memory at each stream length, rolling cache vs full-length cache.

  The rolling cache is really prefilled (one stream of filler text, continued from one length
  to the next); the full-length cache is `full_length_cache`, freed after each length, and
  skipped from the first length at which it runs out of device memory.

  Returns:
    (rows, full_failed): one dict per length {length, prefill_tps, rolling: {tps, ms, cache,
    device}, full: {...} where it fitted}; the first length whose full cache ran out of memory,
    or None.
  """
  log = log or (lambda line: print(line, file=sys.stderr, flush=True))
  lengths, B = sorted(lengths), batch_size
  slack = 4 * steps  # the warm-up and timed decode steps move the stream on
  total = lengths[-1] + len(lengths) * slack
  text, _ = data.create_passkey_dataset(total, 0, seed=seed)
  tokens_BT = np.broadcast_to(text, (B, total))
  rolling = cache_lib.init_cache(model_config, B, total, num_sinks=num_sinks)
  rows, full_failed, logits = [], None, None

  def measure(seconds, cache):
    return dict(
      tps=B / seconds,
      ms=1e3 * seconds,
      cache=cache_lib.cache_bytes(cache),
      device=cache_lib.device_bytes_in_use(),
    )

  for length in lengths:
    row = {"length": length, "prefill_tps": None}
    fed = int(rolling[0]["end"])
    if fed < length:  # else the decode steps of the previous length already went past it
      t0 = time.perf_counter()
      logits, rolling = streaming.prefill(
        graphdef, params, rolling, tokens_BT[:, fed:length], chunk_size, logits="last"
      )
      jax.block_until_ready(logits)
      row["prefill_tps"] = B * (length - fed) / (time.perf_counter() - t0)
    seconds, logits, rolling = time_decode(graphdef, params, rolling, logits, steps)
    row["rolling"] = measure(seconds, rolling)
    log(
      f"  L={length:>9,}  rolling: {row['rolling']['tps']:>10,.0f} tok/s, cache "
      f"{format_mib(row['rolling']['cache'])} MiB, device {format_mib(row['rolling']['device'])} MiB"
    )
    if full_failed is None:
      try:
        full = full_length_cache(model_config, B, length, length + slack, num_sinks)
        seconds, _, full = time_decode(graphdef, params, full, logits, steps)
        row["full"] = measure(seconds, full)
        del full
        log(
          f"  L={length:>9,}  full:    {row['full']['tps']:>10,.0f} tok/s, cache "
          f"{format_mib(row['full']['cache'])} MiB, device {format_mib(row['full']['device'])} MiB"
        )
      except Exception as e:  # pylint: disable=broad-except
        if not reports.is_oom(e):
          raise
        full, full_failed = None, length
        log(f"  L={length:>9,}  full:    out of device memory")
    rows.append(row)
  return rows, full_failed


def benchmark_markdown(rows, full_failed, *, header, batch_size, steps, chunk_size, num_sinks):
  """The benchmark table with its provenance lines and what each column means."""

  def cell(row, kind, key, fmt):
    if kind not in row:
      return "OOM" if full_failed is not None and row["length"] >= full_failed else "-"
    value = row[kind][key]
    return "n/a" if value is None else fmt(value)

  tps, ms, mib = (lambda v: f"{v:,.0f}"), (lambda v: f"{v:.3f}"), format_mib
  intro = (
    f"Batch {batch_size} streams; {num_sinks} sinks; prefill chunks of {chunk_size}; median of "
    f"3 timings of {steps} greedy decode steps per length.\n\n"
    "At each stream length L the rolling cache (windowed layers keep a ring of w slots; full "
    "layers, if any, keep every position) has really been prefilled with L tokens of text, in "
    "chunks, continuing the same stream from the previous L; then `decode_steps` greedy steps "
    "are run once to compile and warm up and timed three times (median; each run is one jitted "
    "loop over the steps, with no host round trip per token). The full-length cache keeps L + "
    f"{4 * steps} slots in every layer and attends over all of them with the same window mask "
    "(same logits; what a cache that never drops anything costs); it is marked as holding L "
    "positions without being prefilled (its keys are zeros: decode reads every slot whatever "
    "they hold), and it is freed after each length. decode tok/s = batch / seconds per step; "
    "cache MiB = bytes of the cache arrays; device MiB = memory_stats()['bytes_in_use'] with "
    "the cache alive (parameters and the rolling cache included; n/a where the backend "
    "reports none). OOM: the full-length cache no longer fits.\n\n"
  )
  columns = [
    "stream length L",
    "rolling decode tok/s",
    "rolling ms/step",
    "rolling cache MiB",
    "rolling device MiB",
    "full decode tok/s",
    "full ms/step",
    "full cache MiB",
    "full device MiB",
    "rolling prefill tok/s",
  ]
  table_rows = [
    [f"{row['length']:,}"]
    + [
      cell(row, kind, key, fmt)
      for kind in ("rolling", "full")
      for key, fmt in (("tps", tps), ("ms", ms), ("cache", mib), ("device", mib))
    ]
    + ["-" if row["prefill_tps"] is None else f"{row['prefill_tps']:,.0f}"]
    for row in rows
  ]
  return (
    reports.markdown_header("Streaming decode: rolling KV cache vs full-length cache", header)
    + intro
    + reports.markdown_table(columns, table_rows, align="r" * len(columns))
    + "\nThe first length's prefill rate includes compiling the prefill step.\n"
  )


def _short(n):
  """1024 -> 1k, 1048576 -> 1M (binary multiples), else the number."""
  for unit, name in ((2**20, "M"), (2**10, "k")):
    if n >= unit and n % unit == 0:
      return f"{n // unit}{name}"
  return f"{n:,}"


def plot_benchmark(rows, full_failed, path, *, title, batch_size):
  """Decode speed and memory against stream length (two panels) saved to `path`."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, (ax_speed, ax_mem) = plt.subplots(1, 2, figsize=(11, 4))
  for kind, style, color in (("rolling", "o-", "C0"), ("full", "s--", "C1")):
    got = [r for r in rows if kind in r]
    xs = [r["length"] for r in got]
    ax_speed.plot(xs, [r[kind]["tps"] for r in got], style, color=color, label=f"{kind} cache")
    ax_mem.plot(
      xs, [r[kind]["cache"] / MIB for r in got], style, color=color, label=f"{kind} cache (arrays)"
    )
    used = [(r["length"], r[kind]["device"] / MIB) for r in got if r[kind]["device"] is not None]
    if used:
      ax_mem.plot(*zip(*used), ":", color=color, alpha=0.6, label=f"{kind}: device in use")
  if full_failed is not None:
    for ax in (ax_speed, ax_mem):
      ax.axvline(full_failed, color="red", lw=1, ls=":")
      ax.text(full_failed, 0.5, " full: OOM", color="red", transform=ax.get_xaxis_transform())
  ax_speed.set(
    xscale="log",
    yscale="log",
    xlabel="stream length L (tokens)",
    ylabel="decode tokens/s",
    title=f"Decode speed (batch {batch_size})",
  )
  ax_mem.set(
    xscale="log", yscale="log", xlabel="stream length L (tokens)", ylabel="MiB", title="Memory"
  )
  lengths = [r["length"] for r in rows]
  for ax in (ax_speed, ax_mem):
    ax.set_xticks(lengths, [_short(x) for x in lengths], minor=False)
    ax.set_xticks([], minor=True)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)
