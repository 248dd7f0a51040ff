"""Peak device memory and time of full against sliding-window attention, over sequence length.

For each n: the attention op alone (forward, and forward + backward) and one training step of
the configs/base.py LM, with full attention (dense `reference`, cuDNN full causal) against
sliding windows (`chunked`, cuDNN with a window). Every configuration runs in its own fresh
process (a device's peak counter cannot be reset) with preallocation off, and its memory is net
of the inputs: the allocator's peak on a GPU, XLA's compiled memory plan elsewhere (the report
says which). A variant stops at its first out-of-memory; the others go on.

  python profile_memory.py                 # one GPU: n = 1k ... 1M, at most ~6 min (deadline)
  python profile_memory.py --out=/tmp/mem  # CPU: n = 512 ... 4096, compiled plans, ~2 min on 2 cores

The GPU sweep: train steps at n = 4k, 16k, 64k, 256k, 1M (batch 1, w = 512; from n = 128k with
model.remat and chunked blocks_per_step, which is how the 1M-token step fits on one card), and
the attention op (16 heads of 128, bfloat16) at n = 1k, 2k, ..., 1M. About 95 processes of a few
seconds each (start-up, compilation, a second of timed runs); every other n runs first, so if
--deadline_minutes cuts the sweep short, the gaps are between measured points. Full attention
too slow to time (over --max_run_seconds a run) still gets its compiled memory plan.

Writes <out>/memory.md (tables, slopes, reach, command, card, date; rewritten after every
configuration), memory.csv (every number) and memory.png (log-log memory and time against n,
fitted slopes in the legends). `--from_csv=a/memory.csv,b/memory.csv` redraws them from earlier
sweeps of one device, a later file filling what an earlier one skipped.
"""

import datetime
import os
import shlex
import sys
import time

# This process only starts others; it must not open the accelerator (nor preallocate it).
os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"

from absl import app, flags  # pylint: disable=g-import-not-at-top

from swa import profiling, profiling_report, profiling_sweep  # pylint: disable=g-import-not-at-top

GPU_SEQ_LENGTHS = [2**k for k in range(10, 21)]          # 1,024 ... 1,048,576
GPU_TRAIN_SEQ_LENGTHS = [4096, 16384, 65536, 262144, 1048576]
CPU_SEQ_LENGTHS = [512, 1024, 2048, 4096]

_SEQ_LENGTHS = flags.DEFINE_list(
    "seq_lengths", None, "n for the attention kinds; default 1024 ... 1048576 (x2) on a GPU, "
    "512,1024,2048,4096 elsewhere.")
_TRAIN_SEQ_LENGTHS = flags.DEFINE_list(
    "train_seq_lengths", None, "n for train_step; default 4096,16384,65536,262144,1048576 on a "
    "GPU, --seq_lengths elsewhere.")
_WINDOW = flags.DEFINE_integer("window_size", 512, "Window w of the sliding variants.")
_KINDS = flags.DEFINE_list("kinds", ["train_step", "attention_fwdbwd", "attention_fwd"],
                           "Any of attention_fwd, attention_fwdbwd, train_step, run in this "
                           "order (the training step first: it is the headline).")
_VARIANTS = flags.DEFINE_list("variants", list(profiling.VARIANTS), "Any of full_reference, "
                              "full_cudnn, sliding_chunked, sliding_cudnn (cuDNN: GPU only).")
_METHOD = flags.DEFINE_enum("method", "auto", profiling.METHODS, "Memory: peak (GPU allocator), "
                            "compiled (XLA memory_analysis), auto = peak where available.")
_DTYPE = flags.DEFINE_enum("dtype", None, ["bfloat16", "float16", "float32"],
                           "Activations; default bfloat16 on a GPU, float32 elsewhere.")
_BATCH = flags.DEFINE_integer("batch", 1, "Batch size B (attention inputs and train steps).")
_HEADS = flags.DEFINE_integer("heads", 16, "Attention kinds: heads N.")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 128, "Attention kinds: head dim H.")
_LONG_FROM = flags.DEFINE_integer(
    "long_from", 131072, "From this n on, chunked attention loops over query-block groups "
    "(blocks_per_step) and train steps use model.remat; 0 = never.")
_GROUP_QUERIES = flags.DEFINE_integer(
    "group_queries", 32768, "Queries per loop step of chunked attention from --long_from on.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs after a warm-up; the median is kept.")
_TIME_BUDGET = flags.DEFINE_float("time_budget_s", 1.0, "Stop timing a configuration once its "
                                  "timed runs add up to this many seconds (at least one run).")
_MAX_RUN = flags.DEFINE_float("max_run_seconds", 5.0, "Full attention: where one run, "
                              "extrapolated from smaller n, would take longer than this, take "
                              "only the compiled memory plan (no run, no time).")
_TIMEOUT = flags.DEFINE_integer("timeout_per_config", 180, "Seconds before a configuration's "
                                "process is killed (recorded as timeout).")
_MEM_FRACTION = flags.DEFINE_float("mem_fraction", 0.95, "XLA_PYTHON_CLIENT_MEM_FRACTION of "
                                   "each configuration's process: the share of the card it may "
                                   "use.")
_DEADLINE = flags.DEFINE_float("deadline_minutes", 6, "Start no new configuration after this "
                               "many minutes (the rest are marked skipped); 0 = no limit.")
_OUT = flags.DEFINE_string("out", "results", "Folder for memory.md, memory.csv and memory.png.")
_FROM_CSV = flags.DEFINE_list("from_csv", [], "Measure nothing: rebuild memory.md, .csv and "
                              ".png in --out from these memory.csv files of one device (a later "
                              "file fills only what the earlier ones skipped).")


_START = time.perf_counter()


def log(msg):
  print(f"[{time.perf_counter() - _START:6.1f}s] {msg}", file=sys.stderr, flush=True)


def write_reports(rows, header, window, final=True):
  """memory.csv and memory.md (and memory.png when final) under --out; returns the markdown."""
  os.makedirs(_OUT.value, exist_ok=True)
  path = lambda ext: os.path.join(_OUT.value, f"memory.{ext}")
  profiling_report.write_csv(path("csv"), rows)
  if final:
    device = next((r for r in rows if r.get("device")), {})
    profiling_report.plot_memory(
        path("png"), rows, title=f"Memory and time against n, window {window}, "
        f"on {device.get('device', '?')} ({device.get('backend', '?')})")
  else:
    header = header + [f"Partial: {len(rows)} configurations so far; the sweep is still running "
                       "or was stopped."]
  return profiling_report.write_markdown(path("md"), rows, header)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  command = f"Command: `{shlex.join(['python', 'profile_memory.py', *sys.argv[1:]])}`"
  if _FROM_CSV.value:
    rows = profiling_report.merge_rows([profiling_report.read_csv(p) for p in _FROM_CSV.value])
    device = next((r for r in rows if r.get("device")), {})
    window = next((r["window"] for r in rows if r.get("window")), _WINDOW.value)
    sources = ", ".join(_FROM_CSV.value)
    text = write_reports(rows, [command + f" (rebuilt from {sources}; the measurements' "
                                "own commands and dates are in the markdown that came with each)",
                                f"Device: {device.get('device')} ({device.get('backend')}); "
                                f"JAX {device.get('jax_version')}",
                                f"Date: rebuilt {datetime.date.today()}; measured on the dates "
                                "in the markdown of each source"], window)
    print(text, flush=True)
    return
  device = profiling_sweep.probe_device(_MEM_FRACTION.value)
  gpu = device["backend"] == "gpu"
  log(f"{device['device']} ({device['backend']}), JAX {device['jax_version']}")
  ints = lambda values: [int(v) for v in values]
  seq_lengths = ints(_SEQ_LENGTHS.value or (GPU_SEQ_LENGTHS if gpu else CPU_SEQ_LENGTHS))
  train_lengths = ints(_TRAIN_SEQ_LENGTHS.value or (GPU_TRAIN_SEQ_LENGTHS if gpu else seq_lengths))
  limit = device.get("bytes_limit")
  date = f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d} (UTC)"
  header = [
      command,
      f"Device: {device['device']} ({device['backend']}); JAX {device['jax_version']}"
      + (f"; allocator limit {profiling.format_bytes(limit)} per process" if limit else ""),
      f"Date: {date}",
      f"Times: median of up to {_REPEATS.value} runs after a warm-up (compilation excluded; "
      f"timing stops once the runs add up to {_TIME_BUDGET.value:g} s), each ended by "
      "`block_until_ready`; one set of random inputs.",
      f"Long sequences: from n = {_LONG_FROM.value:,} chunked attention runs "
      f"{_GROUP_QUERIES.value:,} queries a loop step (`blocks_per_step`, recomputed in the "
      "backward pass) and train steps recompute each block (`model.remat`); the settings column "
      "says where.",
  ]
  rows = profiling_sweep.compare_memory_usage(
      seq_lengths, _WINDOW.value, kinds=_KINDS.value, variants=_VARIANTS.value,
      train_seq_lengths=train_lengths, method=_METHOD.value, dtype=_DTYPE.value,
      batch=_BATCH.value, heads=_HEADS.value, head_dim=_HEAD_DIM.value,
      long_from=_LONG_FROM.value, group_queries=_GROUP_QUERIES.value, repeats=_REPEATS.value,
      time_budget_s=_TIME_BUDGET.value, max_run_seconds=_MAX_RUN.value,
      timeout_per_config=_TIMEOUT.value, mem_fraction=_MEM_FRACTION.value,
      deadline_s=60 * _DEADLINE.value if _DEADLINE.value else None, gpu=gpu, log=log,
      on_row=lambda rows: write_reports(rows, header, _WINDOW.value, final=False))
  wall_s = time.perf_counter() - _START
  header[2] = (f"Date: {date}; sweep wall time {wall_s / 60:.1f} min, "
               f"{sum(r.get('process_s') is not None for r in rows)} processes")
  text = write_reports(rows, header, _WINDOW.value)
  log(f"wrote memory.md, memory.csv and memory.png under {_OUT.value}")
  print(text, flush=True)


if __name__ == "__main__":
  app.run(main)
