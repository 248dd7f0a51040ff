"""Peak device memory and time of full against sliding-window attention, over sequence length.

For each n: the attention op alone (forward, and forward + backward) and one training step of
the --config LM (default configs/base.py), with full attention (dense `reference`, cuDNN full
causal) against sliding windows (`chunked`, cuDNN with a window). Every configuration runs in
its own fresh process (a device's peak counter cannot be reset) with preallocation off, and its
memory is net of the inputs: the allocator's peak on a GPU, XLA's compiled memory plan elsewhere
(the report says which). A variant stops at its first out-of-memory; the others go on.

  python profile_memory.py                 # one GPU: n = 1k ... 1M, at most ~6 min (deadline)
  python profile_memory.py --out=/tmp/mem  # CPU: n = 512 ... 4096, compiled plans, ~2 min on 2 cores

The GPU sweep: train steps at n = 4k, 16k, 64k, 256k, 1M (batch 1, w = 512; from n = 128k with
model.remat and chunked blocks_per_step, which is how the 1M-token step fits on one card), and
the attention op (16 heads of 128, bfloat16) at n = 1k, 2k, ..., 1M. About 95 processes of a few
seconds each; every other n runs first, so if --deadline_minutes cuts the sweep short, the gaps
are between measured points. Full attention too slow to time (over --max_run_seconds a run)
still gets its compiled memory plan.

Writes <out>/memory.md (tables, slopes, reach, command, card, date; rewritten after every
configuration), memory.csv (every number) and memory.png; --out defaults to profiles/<device>
(git-ignored), never results/. `--from_csv=a/memory.csv,b/memory.csv --out=...` redraws them from
earlier sweeps of one device, a later file filling what an earlier one skipped.
"""

import dataclasses
import os
import sys
import time

# This process only starts others; it must not open the accelerator (nor preallocate it).
os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from configs import base  # noqa: E402
from swa import cli  # noqa: E402
from swa.profiling import report, rows  # noqa: E402


def define_flags():
  """The command's flags; defined only when it runs as a program (importing this file defines
  none)."""
  config_flags.DEFINE_config_file(
    "config",
    None,
    "Experiment config whose LM the train steps use (window and length are "
    "set per run); default configs/base.py. Overrides (--config.model.d_model=...) need it "
    "named.",
    lock_config=True,
  )
  flags.DEFINE_list(
    "seq_lengths",
    None,
    "n for the attention kinds; default 1024 ... 1048576 (x2) on a GPU, "
    "512,1024,2048,4096 elsewhere.",
  )
  flags.DEFINE_list(
    "train_seq_lengths",
    None,
    "n for train_step; default 4096,16384,65536,262144,1048576 on a GPU, --seq_lengths elsewhere.",
  )
  flags.DEFINE_integer("window_size", 512, "Window w of the sliding variants.")
  flags.DEFINE_list(
    "kinds",
    ["train_step", "attention_fwdbwd", "attention_fwd"],
    "Any of attention_fwd, attention_fwdbwd, train_step, run in this "
    "order (the training step first: it is the headline).",
  )
  flags.DEFINE_list(
    "variants",
    list(rows.VARIANTS),
    "Any of full_reference, full_cudnn, sliding_chunked, sliding_cudnn (cuDNN: GPU only).",
  )
  flags.DEFINE_enum(
    "method",
    "auto",
    rows.METHODS,
    "Memory: peak (GPU allocator), compiled (XLA memory_analysis), auto = peak where available.",
  )
  flags.DEFINE_enum(
    "dtype",
    None,
    ["bfloat16", "float16", "float32"],
    "Activations; default bfloat16 on a GPU, float32 elsewhere.",
  )
  flags.DEFINE_integer("batch", 1, "Batch size B (attention inputs and train steps).")
  flags.DEFINE_integer("heads", 16, "Attention kinds: heads N.")
  flags.DEFINE_integer("head_dim", 128, "Attention kinds: head dim H.")
  flags.DEFINE_integer(
    "long_from",
    131072,
    "From this n on, chunked attention loops over query-block groups "
    "(blocks_per_step) and train steps use model.remat; 0 = never.",
  )
  flags.DEFINE_integer(
    "group_queries", 32768, "Queries per loop step of chunked attention from --long_from on."
  )
  flags.DEFINE_integer("repeats", 5, "Timed runs after a warm-up; the median is kept.")
  flags.DEFINE_float(
    "time_budget_s",
    1.0,
    "Stop timing a configuration once its "
    "timed runs add up to this many seconds (at least one run).",
  )
  flags.DEFINE_float(
    "max_run_seconds",
    5.0,
    "Full attention: where one run, "
    "extrapolated from smaller n, would take longer than this, take "
    "only the compiled memory plan (no run, no time).",
  )
  flags.DEFINE_integer(
    "timeout_per_config",
    180,
    "Seconds before a configuration's process is killed (recorded as timeout).",
  )
  flags.DEFINE_float(
    "mem_fraction",
    0.95,
    "XLA_PYTHON_CLIENT_MEM_FRACTION of "
    "each configuration's process: the share of the card it may "
    "use.",
  )
  flags.DEFINE_float(
    "deadline_minutes",
    6,
    "Start no new configuration after this "
    "many minutes (the rest are marked skipped); 0 = no limit.",
  )
  flags.DEFINE_string(
    "out", None, "Folder for memory.md, memory.csv and memory.png; default profiles/<device>."
  )
  flags.DEFINE_list(
    "from_csv",
    [],
    "Measure nothing: rebuild memory.md, .csv and "
    ".png in --out from these memory.csv files of one device (a later "
    "file fills only what the earlier ones skipped).",
  )


_START = time.perf_counter()


def log(msg):
  print(f"[{time.perf_counter() - _START:6.1f}s] {msg}", file=sys.stderr, flush=True)


def main(argv):
  if len(argv) > 1:
    raise cli.UserError(f"Unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  if f.from_csv:
    if not f.out:
      raise cli.UserError("--from_csv needs --out=<folder> for the rebuilt report.")
    print(report.rebuild(f.from_csv, f.out, window=f.window_size), flush=True)
    return
  settings = report.Settings(
    out=f.out,
    window=f.window_size,
    seq_lengths=None if f.seq_lengths is None else tuple(f.seq_lengths),
    train_seq_lengths=None if f.train_seq_lengths is None else tuple(f.train_seq_lengths),
    kinds=tuple(f.kinds),
    variants=tuple(f.variants),
    method=f.method,
    dtype=f.dtype,
    batch=f.batch,
    heads=f.heads,
    head_dim=f.head_dim,
    long_from=f.long_from,
    group_queries=f.group_queries,
    repeats=f.repeats,
    time_budget_s=f.time_budget_s,
    max_run_seconds=f.max_run_seconds,
    timeout_per_config=f.timeout_per_config,
    mem_fraction=f.mem_fraction,
    deadline_minutes=f.deadline_minutes,
  ).check()
  fields = dataclasses.asdict(settings)
  out, text = report.profile(
    fields.pop("out"),
    base_config=(f.config or base.get_config()).to_dict(),
    config_name=(
      config_flags.get_config_filename(flags.FLAGS["config"]) if f.config else "configs/base.py"
    ),
    log=log,
    **fields,
  )
  log(f"wrote memory.md, memory.csv and memory.png under {out}")
  print(text, flush=True)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
