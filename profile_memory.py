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

import os
import sys
import time

# This process only starts others; it must not open the accelerator (nor preallocate it).
os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from swa import cli  # noqa: E402
from swa.profiling import report, rows  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "base.py"),
    "Experiment config whose LM the train steps use (window and length are set per run).",
    lock_config=True)
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
_VARIANTS = flags.DEFINE_list("variants", list(rows.VARIANTS), "Any of full_reference, "
                              "full_cudnn, sliding_chunked, sliding_cudnn (cuDNN: GPU only).")
_METHOD = flags.DEFINE_enum("method", "auto", rows.METHODS, "Memory: peak (GPU allocator), "
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
_OUT = flags.DEFINE_string("out", None, "Folder for memory.md, memory.csv and memory.png; "
                           "default profiles/<device>.")
_FROM_CSV = flags.DEFINE_list("from_csv", [], "Measure nothing: rebuild memory.md, .csv and "
                              ".png in --out from these memory.csv files of one device (a later "
                              "file fills only what the earlier ones skipped).")

_START = time.perf_counter()


def log(msg):
  print(f"[{time.perf_counter() - _START:6.1f}s] {msg}", file=sys.stderr, flush=True)


def main(argv):
  if len(argv) > 1:
    raise cli.UserError(f"Unexpected arguments: {argv[1:]}")
  if _FROM_CSV.value:
    if not _OUT.value:
      raise cli.UserError("--from_csv needs --out=<folder> for the rebuilt report.")
    print(report.rebuild(_FROM_CSV.value, _OUT.value, window=_WINDOW.value), flush=True)
    return
  for name, allowed, given in (("kinds", rows.KINDS, _KINDS.value),
                               ("variants", tuple(rows.VARIANTS), _VARIANTS.value)):
    bad = [v for v in given if v not in allowed]
    if bad:
      raise cli.UserError(f"--{name}: {bad} not among {list(allowed)}.")
  out, text = report.profile(
      _OUT.value, base_config=_CONFIG.value.to_dict(), window=_WINDOW.value,
      seq_lengths=_SEQ_LENGTHS.value, train_seq_lengths=_TRAIN_SEQ_LENGTHS.value,
      kinds=_KINDS.value, variants=_VARIANTS.value, method=_METHOD.value, dtype=_DTYPE.value,
      batch=_BATCH.value, heads=_HEADS.value, head_dim=_HEAD_DIM.value,
      long_from=_LONG_FROM.value, group_queries=_GROUP_QUERIES.value, repeats=_REPEATS.value,
      time_budget_s=_TIME_BUDGET.value, max_run_seconds=_MAX_RUN.value,
      timeout_per_config=_TIMEOUT.value, mem_fraction=_MEM_FRACTION.value,
      deadline_minutes=_DEADLINE.value, log=log)
  log(f"wrote memory.md, memory.csv and memory.png under {out}")
  print(text, flush=True)


if __name__ == "__main__":
  cli.run(main)
