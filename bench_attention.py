"""Times sliding-window attention: `chunked` and `reference` against cuDNN in the same run.

For each sequence length n and window w: the median forward and forward+backward time of
every implementation, its ratio to cuDNN's fused kernel, and the error of its output (and
gradients) against a float32 reference. Writes a markdown table with the command, the card
and the date; `--json` also keeps every raw number.

  python bench_attention.py    # default sweep: 167 s on one H100 (JAX 0.11.2, 2026-11-25)
  python bench_attention.py --lengths 64,128 --windows 8,32 --heads 2 --head_dim 16 \
      --dtype float32 --repeats 1 --out /tmp/bench.md    # CPU smoke run, a few seconds
"""

import argparse
import datetime
import functools
import gc
import json
import math
import os
import shlex
import statistics
import sys
import time
import traceback

# Let XLA take more of the card than its default 75%, so the dense reference fits at larger n.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.9")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from swa import attention, reports  # noqa: E402

INPUT_SETS = 2        # timed runs alternate between input sets so repeats don't only hit L2
TARGET_RATIO = 3.0    # chunked fwd+bwd should be <= 3x cuDNN ...
TARGET_MIN_LEN = 16384  # ... at n >= 16384
_START = time.perf_counter()


def reference_precision():
  """Matmul precision of the float32 references.

  On GPU, 3-pass TF32 (about 1e-6 relative to exact float32 on these shapes, far under bf16's
  2e-3) instead of "highest", whose autotuning cost ~15 s for every new shape on an H100.
  """
  return "TF32_TF32_F32_X3" if jax.default_backend() == "gpu" else "highest"


def log(msg):
  print(f"[{time.perf_counter() - _START:6.1f}s] {msg}", file=sys.stderr, flush=True)


def make_inputs(seed, n, args):
  """INPUT_SETS sets of random normal (q, k, v, dout), each [B, n, N, H] in args.dtype."""
  shape = (4 * INPUT_SETS, args.batch, n, args.heads, args.head_dim)
  arrays = list(jax.random.normal(jax.random.PRNGKey(seed), shape, args.dtype))
  return [tuple(arrays[i:i + 4]) for i in range(0, len(arrays), 4)]


def time_fn(fn, arg_sets, repeats):
  """Compiles + runs once, warms up twice, then times `repeats` runs rotating over arg_sets.

  Returns (median ms, every run's ms, seconds of the first call (compile included), the first
  call's output on arg_sets[0]).
  """
  start = time.perf_counter()
  first = jax.block_until_ready(fn(*arg_sets[0]))
  compile_s = time.perf_counter() - start
  for i in range(2):
    jax.block_until_ready(fn(*arg_sets[(i + 1) % len(arg_sets)]))
  times_ms = []
  for i in range(repeats):
    args = arg_sets[i % len(arg_sets)]
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times_ms.append(1e3 * (time.perf_counter() - start))
  return statistics.median(times_ms), times_ms, compile_s, first


def guarded(label, thunk):
  """Runs thunk(); returns (result, None), or (None, why) on out-of-memory or another failure."""
  try:
    return thunk(), None
  except Exception as e:  # pylint: disable=broad-except
    msg = str(e)
    if reports.is_oom(msg):
      log(f"  {label}: OOM")
      return None, "OOM"
    traceback.print_exc()
    return None, f"failed: {type(e).__name__}: {msg.splitlines()[0][:80] if msg else ''}"


@functools.partial(jax.jit, static_argnames="window_size")
def reference_f32(q, k, v, dout, window_size):
  """Float32 dense output and (dq, dk, dv) of sum(out * dout), one head at a time."""
  def one_head(qkvd):
    q1, k1, v1, d1 = (x[:, :, None] for x in qkvd)      # [B, n, 1, H]
    attend = functools.partial(attention.sliding_window_attention, window_size=window_size,
                               implementation="reference")
    out, vjp = jax.vjp(attend, q1, k1, v1)
    return (out,) + vjp(d1)
  heads_first = lambda x: jnp.moveaxis(x.astype(jnp.float32), 2, 0)   # [N, B, n, H]
  outs = jax.lax.map(one_head, tuple(heads_first(x) for x in (q, k, v, dout)))
  return tuple(jnp.moveaxis(o[:, :, :, 0], 0, 2) for o in outs)


@functools.partial(jax.jit, static_argnames=("window_size", "t0"))
def tail_reference_f32(q, k, v, window_size, t0):
  """Float32 output [B, n - t0, N, D] of the queries at t0 ... n-1, from the keys they can see."""
  n, w = q.shape[1], window_size
  s0 = max(0, t0 - w + 1)                    # the first key the first tail query sees
  i = jnp.arange(t0, n)[:, None]             # absolute query positions
  j = jnp.arange(s0, n)[None, :]             # absolute key positions
  mask_TS = attention.visible(i, j, w)        # the one mask rule
  q, k, v = (x.astype(jnp.float32) for x in (q[:, t0:], k[:, s0:], v[:, s0:]))
  logits_BNTS = jnp.einsum("BTNH,BSNH->BNTS", q, k) / math.sqrt(q.shape[-1])
  probs_BNTS = jax.nn.softmax(jnp.where(mask_TS, logits_BNTS, -jnp.inf), axis=-1)
  return jnp.einsum("BNTS,BSND->BTND", probs_BNTS, v)


def errors(out, ref, t0=0):
  """(max abs error, ||out - ref|| / ||ref||) of out[:, t0:] against a float32 reference."""
  return tuple(map(float, _errors(out, ref, t0)))


@functools.partial(jax.jit, static_argnames="t0")
def _errors(out, ref, t0):
  diff = out[:, t0:].astype(jnp.float32) - ref
  return jnp.max(jnp.abs(diff)), jnp.linalg.norm(diff) / jnp.linalg.norm(ref)


def chunked_variants(block_sizes, n, w):
  """[(block_size or None, label)] with 'default' resolved; duplicates of the default dropped."""
  default = attention.default_block_size(w, n)
  explicit = [int(b) for b in block_sizes if b != "default"]
  variants = [(None, f"C={default}, default")] if "default" in block_sizes else []
  return variants + [(b, f"C={b}") for b in explicit if not (variants and b == default)]


def measure_config(n, w, args):
  """Times every implementation at one (n, w) and measures its errors; returns plain numbers."""
  sets = make_inputs(args.seed + 1000 * n + w, n, args)
  q, k, v, dout = sets[0]
  scores_gb = args.batch * args.heads * n * n * 4 / 1e9
  ref_fits = scores_gb <= args.reference_max_gb
  ref, ref_note = None, f"skipped: n² scores = {scores_gb:.3g} GB"
  with jax.default_matmul_precision(reference_precision()):
    if ref_fits:
      log(f"n={n} w={w}: float32 dense reference")
      ref, ref_note = guarded("float32 reference", lambda: reference_f32(q, k, v, dout, w))
    if ref is not None:
      t0, ref_out, ref_grads, ref_name = 0, ref[0], ref[1:], "float32 dense reference"
    else:
      log(f"n={n} w={w}: float32 tail reference (dense one {ref_note})")
      t0 = max(0, n - args.tail_rows)
      ref_out = tail_reference_f32(q, k, v, w, t0)
      ref_grads = None
      ref_name = f"float32 reference on the last {n - t0} query rows (dense one {ref_note})"

  variants = [("chunked", b, label) for b, label in chunked_variants(args.block_sizes, n, w)]
  variants += [("reference", None, ""), ("cudnn", None, "")]
  rows = []
  for impl, block, label in variants:
    row = dict(impl=impl, block=block, label=label)
    rows.append(row)
    if impl == "reference" and not ref_fits:
      row["note"] = f"skipped (n² scores = {scores_gb:.3g} GB)"
      continue
    if impl == "cudnn" and not attention.cudnn_available():
      row["note"] = f"skipped (no cuDNN on {jax.default_backend()})"
      continue
    attend = functools.partial(
        attention.sliding_window_attention, window_size=w, implementation=impl,
        block_size=block, blocks_per_step=args.blocks_per_step if impl == "chunked" else None)
    loss = lambda q, k, v, dout: jnp.sum(attend(q, k, v).astype(jnp.float32)
                                         * dout.astype(jnp.float32))
    fns = {"fwd": jax.jit(lambda q, k, v, dout: attend(q, k, v)),
           "fwd_bwd": jax.jit(jax.grad(loss, argnums=(0, 1, 2)))}
    for key, fn in fns.items():
      if "fwd_note" in row:          # fwd+bwd would fail the same way
        row[f"{key}_note"] = row["fwd_note"]
        continue
      log(f"n={n} w={w}: {impl} {label} {key}".replace("  ", " "))
      result, note = guarded(f"{impl} {key}", lambda: time_fn(fn, sets, args.repeats))
      if result is None:
        row[f"{key}_note"] = note
        continue
      row[f"{key}_ms"], row[f"{key}_times_ms"], row[f"{key}_first_call_s"], out = result
      if key == "fwd":
        row["max_abs_err"], row["rel_err"] = errors(out, ref_out, t0)
      elif ref_grads is not None:
        row["grad_rel_errs"] = [errors(g, r)[1] for g, r in zip(out, ref_grads)]
        row["grad_rel_err"] = max(row["grad_rel_errs"])
      del out, result
      log(f"  {row[f'{key}_ms']:.3f} ms (first call {row[f'{key}_first_call_s']:.1f} s)")
  return dict(n=n, w=w, reference=ref_name, rows=rows)


def roofline_line(args, itemsize):
  """One-line estimate of the floor for the largest (n, w): FLOPs and minimal bytes."""
  n = max(args.lengths)
  w = min(max(args.windows), n)
  pairs = n * w - w * (w - 1) // 2           # allowed (query, key) pairs, i - w < j <= i
  fwd_flops = 2 * 2 * pairs * args.batch * args.heads * args.head_dim   # QKᵀ and PV
  tensor_bytes = args.batch * n * args.heads * args.head_dim * itemsize
  line = (f"Roofline estimate (n={n}, w={w}): fwd {fwd_flops / 1e12:.3g} TFLOP (2 matmuls × "
          f"2·P·N·D, P = {pairs:,} band pairs), fwd+bwd ≈ 3.5× that (7 matmuls, QKᵀ recomputed); "
          f"minimal I/O fwd {4 * tensor_bytes / 1e6:.4g} MB (q, k, v, out), fwd+bwd "
          f"{7 * tensor_bytes / 1e6:.4g} MB (q, k, v, dout, dq, dk, dv)")
  if jax.default_backend() != "gpu":
    return line + "; floor times not measured off GPU."
  a, b = jax.random.normal(jax.random.PRNGKey(1), (2, 8192, 8192), jnp.bfloat16)
  flop_s = 2 * 8192**3 / (time_fn(jax.jit(jnp.matmul), [(a, b)], 50)[0] / 1e3)
  x = jax.random.normal(jax.random.PRNGKey(2), (2**29,), jnp.bfloat16)     # 1 GiB
  byte_s = 2 * x.nbytes / (time_fn(jax.jit(lambda x: x + 1), [(x,)], 50)[0] / 1e3)
  floor = lambda flops, nbytes: 1e3 * max(flops / flop_s, nbytes / byte_s)
  return line + (f"; at this card's measured {flop_s / 1e12:.0f} TFLOP/s (8192³ bf16 matmul) "
                 f"and {byte_s / 1e12:.2f} TB/s (copy), floors fwd "
                 f"{floor(fwd_flops, 4 * tensor_bytes):.2f} ms, fwd+bwd "
                 f"{floor(3.5 * fwd_flops, 7 * tensor_bytes):.2f} ms.")


def _fmt(x, spec):
  return "—" if x is None else format(x, spec)


def write_markdown(path, header, configs):
  """Writes (and returns) the report: the header lines, then one table per n and a summary."""
  lines = ["# Sliding-window attention benchmark", ""] + [f"- {h}" for h in header]
  for n in sorted({c["n"] for c in configs}):
    lines += ["", f"## n = {n}", "",
              "| w | impl (block) | fwd ms | fwd+bwd ms | fwd ratio vs cuDNN | fwd+bwd ratio vs cuDNN "
              "| max abs err | rel err | grad rel err |",
              "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    summary = []
    for c in (c for c in configs if c["n"] == n):
      cudnn = next(r for r in c["rows"] if r["impl"] == "cudnn")
      ratio = lambda r, key: (r[f"{key}_ms"] / cudnn[f"{key}_ms"]
                              if f"{key}_ms" in r and f"{key}_ms" in cudnn else None)
      chunked = [r for r in c["rows"] if r["impl"] == "chunked" and "fwd_bwd_ms" in r]
      best = min(chunked, key=lambda r: r["fwd_bwd_ms"]) if chunked else None
      for r in c["rows"]:
        name = (r["impl"] + (f" ({r['label']})" if r["label"] else "")
                + (" **best**" if r is best else ""))
        cells = [_fmt(r.get("fwd_ms"), ".3f") if "fwd_note" not in r else r["fwd_note"],
                 _fmt(r.get("fwd_bwd_ms"), ".3f") if "fwd_bwd_note" not in r else r["fwd_bwd_note"],
                 _fmt(ratio(r, "fwd"), ".2f"), _fmt(ratio(r, "fwd_bwd"), ".2f"),
                 _fmt(r.get("max_abs_err"), ".2e"), _fmt(r.get("rel_err"), ".2e"),
                 _fmt(r.get("grad_rel_err"), ".2e")]
        if "note" in r:
          cells = [r["note"]] + ["—"] * 6
        lines.append(f"| {c['w']} | {name} | " + " | ".join(cells) + " |")
      best_ratio = ratio(best, "fwd_bwd") if best else None
      if best_ratio is None:
        verdict = "no fwd+bwd ratio (no cuDNN or chunked time)"
      else:
        verdict = f"best chunked ({best['label']}) fwd+bwd = {best_ratio:.2f}× cuDNN"
        target = f"the ≤{TARGET_RATIO:g}× target"
        verdict += (f": {'meets' if best_ratio <= TARGET_RATIO else 'misses'} {target}"
                    if n >= TARGET_MIN_LEN else f" ({target} applies at n ≥ {TARGET_MIN_LEN})")
      summary.append(f"- w={c['w']}: {verdict}. Errors against the {c['reference']}.")
    lines += [""] + summary
  text = "\n".join(lines) + "\n"
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    f.write(text)
  return text


def parse_args(argv):
  ints = lambda s: [int(x) for x in s.split(",")]
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--lengths", type=ints, default=[4096, 16384, 65536], help="sequence lengths n")
  p.add_argument("--windows", type=ints, default=[128, 512, 4096], help="window sizes w")
  p.add_argument("--block_sizes", type=lambda s: s.split(","), default=["default", "256"],
                 help="chunked query blocks to time; 'default' = default_block_size(w, n)")
  p.add_argument("--blocks_per_step", type=int, default=None, help="chunked only; default: all")
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--heads", type=int, default=16)
  p.add_argument("--head_dim", type=int, default=128)
  p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
  p.add_argument("--repeats", type=int, default=20, help="timed runs; the median is reported")
  p.add_argument("--reference_max_gb", type=float, default=40.0,
                 help="skip `reference` when its float32 scores B·N·n²·4 bytes exceed this")
  p.add_argument("--tail_rows", type=int, default=2048,
                 help="query rows of the float32 reference when the dense one is skipped")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default="results/attention_bench.md")
  p.add_argument("--json", default=None, help="also write every raw number here")
  return p.parse_args(argv)


def main(argv=None):
  """Runs the sweep; returns the configs' rows (also written to --out and --json)."""
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  args.dtype = jnp.dtype(args.dtype)
  device = jax.devices()[0]
  log(f"{device.device_kind} ({jax.default_backend()}), JAX {jax.__version__}")
  header = [f"Command: `{shlex.join(['python', 'bench_attention.py', *argv])}`",
            f"Device: {device.device_kind} ({jax.default_backend()}); JAX {jax.__version__}",
            f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d} (UTC)",
            f"Shapes: B={args.batch}, N={args.heads} heads, D={args.head_dim}, {args.dtype.name}. "
            f"Times: median of {args.repeats} runs (after compile + 2 warm-ups), each ended by "
            f"`block_until_ready`, inputs alternating between {INPUT_SETS} random normal sets; "
            "fwd+bwd = `jax.grad` of sum(out · dout) w.r.t. q, k, v.",
            f"Errors: forward output against a float32 reference on the upcast inputs (matmul "
            f"precision {reference_precision()}); grad rel err = max over dq, dk, dv of "
            "‖g − g_ref‖/‖g_ref‖ (dense reference only). The summary under each table names the "
            "reference used."]
  configs = []
  for n in args.lengths:
    for w in args.windows:
      configs.append(measure_config(n, w, args))
      write_markdown(args.out, header, configs)   # partial results survive a killed run
      gc.collect()
      jax.clear_caches()       # free the compiled programs and their buffers before the next size
  log("roofline: measuring this card's matmul rate and copy bandwidth")
  header.append(roofline_line(args, args.dtype.itemsize))   # last, on a warmed-up card
  text = write_markdown(args.out, header, configs)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(dict(header=header, configs=configs), f, indent=1)
  log(f"wrote {args.out}" + (f" and {args.json}" if args.json else ""))
  print(text, flush=True)
  return configs


if __name__ == "__main__":
  main()
