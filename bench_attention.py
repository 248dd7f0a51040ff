"""Times sliding-window attention against cuDNN in one run, after checking every path is right.

For each head dim H (--head_dim, a list), key/value head count K (--kv_heads, GQA), sequence
length n and window w, every implementation -- cudnn (the yardstick:
jax.nn.dot_product_attention with local_window_size=(w - 1, 0), is_causal=True), fa3
(FlashAttention-3, where flash-attn3-jax is installed: pip install swa[fa3]; else a "skipped" row),
mosaic (our warp-specialised Hopper kernels, one row per --mosaic_blocks tile setting; "skipped"
off Hopper), chunked, pallas (one row per --pallas_blocks tile setting), the dense reference where its scores
fit, and torch FlexAttention as a peer where torch and a CUDA GPU are there -- is
  - checked: output and gradients against a float32 reference at the benchmark's own shapes (the
    dense one where its scores fit, else the exact slice of the last --tail_rows query rows);
  - timed: fwd and fwd+bwd, the median of --repeats samples after compilation and warm-ups, each
    sample --calls_per_sample calls dispatched back to back and ended by one block_until_ready
    (torch: between two CUDA events), its time divided by that count; inputs alternate between
    two random sets;
  - reported in TFLOP/s of band FLOPs (forward 2·P·N·(H + D), P = the band's query-key pairs;
    fwd+bwd 3.5x that: bwd = 2.5x fwd), as a time ratio to cuDNN in the same run, and against a
    roofline: the band FLOPs at the card's bf16 matmul rate and the fewest bytes (q, k, v, o;
    fwd+bwd also dO, dq, dk, dv) at its copy rate, both measured at the start of the run.
A row that runs out of memory or fails is recorded and the run goes on; rows are skipped once
--deadline_minutes have passed. Three passes over the configurations: FlexAttention first (its
first compilation takes minutes; timed last, it was lost to the deadline twice), the core rows,
the extra tile settings (pallas, mosaic, chunked). --out (markdown), the same path with .json (every number) and
.csv (one line per row) are rewritten after every configuration. The work is swa/bench/ (report.run); this file parses the
flags.

  python bench_attention.py --out=results/attention_bench_h200/attention_bench.md   # one GPU, ~8-12 min
  python bench_attention.py --check_only   # correctness only, n = 4096 (exit 1 if a row is wrong,
                                           # crashed or unchecked)
  python bench_attention.py --head_dim=128,64,256 --kv_heads=16,4 --out=...   # H and GQA grid
  python bench_attention.py --document_length=2048 --impls=mosaic,pallas,chunked --out=...
      # packed documents (segment ids); rows that take none (cudnn, fa3, flex) say so
  python bench_attention.py --lengths=256 --windows=16,64 --heads=2 --head_dim=16 --dtype=float32
      --repeats=1 --out=/tmp/bench.md       # CPU smoke run (pallas interpreted), one command line
"""

import dataclasses
import os
import sys

# The run shares the card with torch (FlexAttention): allocate on demand, within 80%.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.8")

from absl import flags  # noqa: E402

from swa import cli, reports  # noqa: E402
from swa.bench import check, measure, report  # noqa: E402


def define_flags(fv):
  """Defines the benchmark's flags on a FlagValues (the entry point's, or a test's own)."""
  flags.DEFINE_list("lengths", ["16384", "65536"], "Sequence lengths n.", flag_values=fv)
  flags.DEFINE_list("windows", ["128", "512", "4096"], "Windows w.", flag_values=fv)
  flags.DEFINE_list(
    "impls", list(measure.CORE), f"Any of {', '.join(measure.CORE)}.", flag_values=fv
  )
  flags.DEFINE_list(
    "pallas_blocks",
    ["default", "128x64/128x32/32x128/w4s3/w8s2"],
    "pallas tile settings (BlockSizes strings, e.g. 128x128/64x64/64x64/w8s2/w4s2); the first "
    "is a core row, the others run after every core row (before FlexAttention).",
    flag_values=fv,
  )
  flags.DEFINE_list(
    "mosaic_blocks",
    ["default"],
    "mosaic tile settings (BlockSizes strings: forward / dQ or 'fused' / dK-dV, each kernel "
    "<rows>x<columns>s<stages>, e.g. 64x128s2/fused/64x64s2; a 'p' after a kernel's, as in "
    "64x128s2p/64x64s3p/64x64s3p, makes it persistent); the first is a core row, the "
    "others run after every core row.",
    flag_values=fv,
  )
  flags.DEFINE_list(
    "chunked_blocks",
    ["default"],
    "chunked query blocks C ('default' = chunked.default_block_size); the first is a core row.",
    flag_values=fv,
  )
  flags.DEFINE_integer("batch", 1, "Batch B.", flag_values=fv)
  flags.DEFINE_integer("heads", 16, "Query heads N.", flag_values=fv)
  flags.DEFINE_list(
    "kv_heads",
    [],
    "Key/value head counts K (a grid axis; each divides --heads; GQA where K < N); "
    "default: --heads (no GQA).",
    flag_values=fv,
  )
  flags.DEFINE_list(
    "head_dim",
    ["128"],
    "Head dims H = D (a grid axis; the summary covers the first with the first K).",
    flag_values=fv,
  )
  flags.DEFINE_enum("dtype", "bfloat16", list(check.TOLERANCE), "Input dtype.", flag_values=fv)
  flags.DEFINE_integer("repeats", 20, "Timed samples; the median is reported.", flag_values=fv)
  flags.DEFINE_integer(
    "calls_per_sample",
    10,
    "Calls dispatched back to back per timed sample, ended by one block_until_ready (torch: "
    "between two CUDA events); the sample's time is divided by it. 1 adds one dispatch latency "
    "to every time.",
    flag_values=fv,
  )
  flags.DEFINE_integer("warmup", 3, "Untimed runs, the compiling one included.", flag_values=fv)
  flags.DEFINE_float(
    "reference_max_gb",
    20.0,
    "Time `reference` and check against the dense "
    "float32 reference only while B·N·n²·4 bytes of scores stay under this.",
    flag_values=fv,
  )
  flags.DEFINE_integer(
    "tail_rows",
    4096,
    "Past reference_max_gb: check the last max(this, 2w) "
    "query rows (their outputs and dq, dk, dv are exact).",
    flag_values=fv,
  )
  flags.DEFINE_bool(
    "check_only",
    False,
    "Check outputs and gradients, time nothing; n = 4096 "
    "unless --lengths is given; exit status 1 if a row is wrong, crashed or unchecked.",
    flag_values=fv,
  )
  flags.DEFINE_float(
    "deadline_minutes",
    0.0,
    "Start no row after this many minutes from the start (0: no limit). FlexAttention runs "
    "first and its first compilation counts: 3-4 min on a fresh GPU machine (2026-12-07: 244 s "
    "on an H100); leave room for it or run --impls=flex apart.",
    flag_values=fv,
  )
  flags.DEFINE_integer(
    "document_length",
    0,
    "Packed documents of this many tokens: every row gets segment ids (queries see only their "
    "own document's keys, the window still applies); rows whose implementation takes none say "
    "so. 0: one sequence.",
    flag_values=fv,
  )
  flags.DEFINE_integer("seed", 0, "Input seed.", flag_values=fv)
  flags.DEFINE_string(
    "out",
    None,
    "Markdown report (the .json beside it); default profiles/<device>/attention_bench.md.",
    flag_values=fv,
  )


def settings_from_flags(fv):
  """measure.Settings from parsed flags; one-line ValueError for a bad value."""

  def ints(name):
    try:
      return [int(x) for x in fv[name].value]
    except ValueError:
      raise ValueError(f"--{name} takes integers, got {','.join(fv[name].value)!r}.") from None

  names = [f.name for f in dataclasses.fields(measure.Settings)]
  values = {name: fv[name].value for name in names}
  values.update(
    lengths=[4096] if fv.check_only and not fv["lengths"].present else ints("lengths"),
    windows=ints("windows"),
    head_dim=ints("head_dim"),
    kv_heads=ints("kv_heads"),
    repeats=max(1, fv.repeats),
    calls_per_sample=max(1, fv.calls_per_sample),
    warmup=max(1, fv.warmup),
  )
  return measure.Settings(**values)


def main(argv, fv=flags.FLAGS):
  """Runs with the flags in fv (parsed from argv unless they are); with --check_only, exits 1 when
  a row is wrong, crashed or went unchecked."""
  if not fv.is_parsed():
    fv(argv)
  given = sys.argv if fv is flags.FLAGS else argv
  command = reports.command_line(given[1:], program=given[0])
  rows = report.run(settings_from_flags(fv), command)
  failed = report.problems(rows)
  if failed:
    measure.log(
      f"CHECK FAILED: {len(failed)} rows wrong, crashed or unchecked: {'; '.join(failed)}"
    )
    if fv.check_only:
      sys.exit(1)


if __name__ == "__main__":
  define_flags(flags.FLAGS)  # here only: tests define them on a FlagValues of their own
  cli.run(main)
