"""Times sliding-window attention against cuDNN in one run, after checking every path is right.

For each sequence length n and window w, every implementation -- cudnn (the yardstick:
jax.nn.dot_product_attention with local_window_size=(w - 1, 0), is_causal=True), chunked, pallas
(one row per --pallas_blocks tile setting), the dense reference where its scores fit, and torch
FlexAttention as a peer where torch and a CUDA GPU are there -- is
  - checked: output and gradients against a float32 reference at the benchmark's own shapes (the
    dense one where its scores fit, else the exact slice of the last --tail_rows query rows);
  - timed: fwd and fwd+bwd, the median of --repeats runs after compilation and warm-ups, each run
    ended by block_until_ready (torch: CUDA events); inputs alternate between two random sets;
  - reported in TFLOP/s of band FLOPs (forward 2·P·N·(H + D), P = the band's query-key pairs;
    fwd+bwd 3.5x that) and as a time ratio to cuDNN in the same run.
The card's bf16 matmul rate and copy bandwidth are measured first. A row that runs out of memory
or fails is recorded and the run goes on; rows are skipped once --deadline_minutes have passed.
Three passes over the (n, w): the core rows, the extra pallas tile settings, FlexAttention (its
compilations are the slowest). --out (markdown) and the same path with .json (every number) are
rewritten after every configuration.

  python bench_attention.py --out=results/attention_bench_h200/attention_bench.md   # one H200, < 8 min
  python bench_attention.py --check_only          # correctness only, n = 4096 (exit 1 if wrong)
  python bench_attention.py --lengths=256 --windows=16,64 --heads=2 --head_dim=16 --dtype=float32
      --repeats=1 --out=/tmp/bench.md       # CPU smoke run (pallas interpreted), one command line
"""

import dataclasses
import functools
import gc
import json
import math
import os
import statistics
import sys
import time
import traceback

# The run shares the card with torch (FlexAttention): allocate on demand, within 80%.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import flags  # noqa: E402

from swa import attention, cli, pallas_attention, reports  # noqa: E402

CORE = ("cudnn", "pallas", "chunked", "flex", "reference")
INPUT_SETS = 2
TOLERANCE = {"bfloat16": (2e-2, 5e-2), "float16": (1e-2, 3e-2), "float32": (1e-3, 1e-3)}
_START = time.perf_counter()


def define_flags(fv):
  """Defines the benchmark's flags on a FlagValues (the entry point's, or a test's own)."""
  flags.DEFINE_list("lengths", ["16384", "65536"], "Sequence lengths n.", flag_values=fv)
  flags.DEFINE_list("windows", ["128", "512", "4096"], "Windows w.", flag_values=fv)
  flags.DEFINE_list("impls", list(CORE), f"Any of {', '.join(CORE)}.", flag_values=fv)
  flags.DEFINE_list(
    "pallas_blocks",
    ["default", "128x64/128x32/32x128/w4s3/w8s2"],
    "pallas tile settings (BlockSizes strings, e.g. 128x128/64x64/64x64/w8s2/w4s2); the first "
    "is a core row, the others run after every core row (before FlexAttention).",
    flag_values=fv,
  )
  flags.DEFINE_list(
    "chunked_blocks",
    ["default"],
    "chunked query blocks C ('default' = chunked.default_block_size); the first is a core row.",
    flag_values=fv,
  )
  flags.DEFINE_integer("batch", 1, "Batch B.", flag_values=fv)
  flags.DEFINE_integer("heads", 16, "Heads N (query and key/value).", flag_values=fv)
  flags.DEFINE_integer("head_dim", 128, "Head dim H = D.", flag_values=fv)
  flags.DEFINE_enum("dtype", "bfloat16", list(TOLERANCE), "Input dtype.", flag_values=fv)
  flags.DEFINE_integer("repeats", 20, "Timed runs; the median is reported.", flag_values=fv)
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
    "unless --lengths is given; exit status 1 if a row is wrong.",
    flag_values=fv,
  )
  flags.DEFINE_float(
    "deadline_minutes", 6.5, "Start no row after this (0: no limit).", flag_values=fv
  )
  flags.DEFINE_integer("seed", 0, "Input seed.", flag_values=fv)
  flags.DEFINE_string(
    "out",
    None,
    "Markdown report (the .json beside it); default profiles/<device>/attention_bench.md.",
    flag_values=fv,
  )


def log(msg):
  print(f"[{time.perf_counter() - _START:6.1f}s] {msg}", file=sys.stderr, flush=True)


def band_pairs(n, w):
  """Query-key pairs (i, j) with i - w < j <= i over 0 <= i < n."""
  w = n if w is None else min(w, n)
  return n * w - w * (w - 1) // 2


def reference_precision():
  """Float32 references on GPU use 3-pass TF32 (~1e-6 relative), "highest" elsewhere."""
  return "TF32_TF32_F32_X3" if jax.default_backend() == "gpu" else "highest"


@functools.partial(jax.jit, static_argnames=("w", "t0", "s0"))
def reference_f32(q, k, v, dout, w, t0=0, s0=0):
  """Float32 out, dq, dk, dv of the queries t0.. (keys s0..), one head at a time.

  dk and dv are returned for keys t0.. only: those are exact from the slice (every query that
  sees them is in it); so are out and dq of every query in it.
  """
  placed = dict(q_offset=t0, k_offset=s0) if t0 else {}
  attend = functools.partial(
    attention.sliding_window_attention, window_size=w, implementation="reference", **placed
  )

  def one_head(x):
    q1, k1, v1, d1 = (y[:, :, None] for y in x)  # [B, rows, 1, H]
    out, vjp = jax.vjp(attend, q1, k1, v1)
    return (out,) + vjp(d1)

  heads_first = lambda x: jnp.moveaxis(x.astype(jnp.float32), 2, 0)
  outs = jax.lax.map(
    one_head, tuple(heads_first(x) for x in (q[:, t0:], k[:, s0:], v[:, s0:], dout[:, t0:]))
  )
  out, dq, dk, dv = (jnp.moveaxis(o[:, :, :, 0], 0, 2) for o in outs)
  return out, dq, dk[:, t0 - s0 :], dv[:, t0 - s0 :]


@functools.partial(jax.jit, static_argnames="t0")
def _rel_err(x, ref, t0):
  diff = x[:, t0:].astype(jnp.float32) - ref
  return jnp.max(jnp.abs(diff)), jnp.linalg.norm(diff) / jnp.linalg.norm(ref)


def check(row, out, grads, ref, t0, dtype):
  """Adds the errors of out (and grads) against ref = (out, dq, dk, dv) rows t0.. to row."""
  if out is not None:
    row["out_max_abs_err"], row["out_rel_err"] = map(float, _rel_err(out, ref[0], t0))
  if grads is not None:
    row["grad_rel_errs"] = [float(_rel_err(g, r, t0)[1]) for g, r in zip(grads, ref[1:])]
    row["grad_rel_err"] = max(row["grad_rel_errs"])
  out_tol, grad_tol = TOLERANCE[dtype]
  row["ok"] = row.get("out_rel_err", 0.0) <= out_tol and row.get("grad_rel_err", 0.0) <= grad_tol


def guarded(row, key, thunk):
  """Runs thunk(); on an exception records 'OOM' or the error under row[key + '_note']."""
  try:
    return thunk()
  except Exception as e:  # pylint: disable=broad-except
    if reports.is_oom(e):
      row[f"{key}_note"] = "OOM"
    else:
      traceback.print_exc()
      row[f"{key}_note"] = f"failed: {type(e).__name__}: {cli.one_line(str(e))[:120]}"
    log(f"  {key}: {row[f'{key}_note']}")
    return None


def jax_row(s, impl, variant, w, sets):
  """(fwd, fwd_bwd) jitted functions of one JAX implementation row, and its tile description."""
  options, tiles = {}, {"cudnn": "local_window_size=(w-1, 0)", "reference": "dense"}.get(impl)
  if impl == "chunked":
    n = sets[0][0].shape[1]
    block = attention.default_block_size(w, n) if variant == "default" else int(variant)
    options, tiles = dict(block_size=block), f"C={block}"
  elif impl == "pallas":
    blocks = (
      pallas_attention.default_block_sizes(w)
      if variant == "default"
      else pallas_attention.BlockSizes.parse(variant)
    )
    options, tiles = dict(block_sizes=blocks), str(blocks)
  attend = functools.partial(
    attention.sliding_window_attention, window_size=w, implementation=impl, **options
  )
  loss = lambda q, k, v, dout: jnp.sum(
    attend(q, k, v).astype(jnp.float32) * dout.astype(jnp.float32)
  )
  return (
    jax.jit(lambda q, k, v, dout: attend(q, k, v)),
    jax.jit(jax.grad(loss, argnums=(0, 1, 2))),
    tiles,
  )


def time_jax(s, fn, sets):
  """(median ms, all ms, first call s, first output); one untimed call in check_only mode."""
  if s.check_only:
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*sets[0]))
    return None, [], time.perf_counter() - start, out
  t = reports.time_fn(
    fn, sets[0], repeats=s.repeats, warmup=s.warmup, arg_sets=sets, keep_first_output=True
  )
  return t.median_ms, t.times_ms, t.first_s, t.first_output


class Flex:
  """torch FlexAttention on the same card, inputs shared with JAX through DLPack."""

  def __init__(self):
    import torch  # pylint: disable=g-import-not-at-top
    from torch.nn.attention import flex_attention as fa  # pylint: disable=g-import-not-at-top

    if not torch.cuda.is_available():
      raise RuntimeError("torch sees no CUDA device")
    self.torch, self.fa = torch, fa
    self.attend = torch.compile(fa.flex_attention, dynamic=False)
    # Compiled, so the mask is built block by block (eager would materialize n x n at 64k).
    self.create_block_mask = torch.compile(fa.create_block_mask)
    # The window is a captured tensor, so a new w changes neither mask_mod nor the kernel: no
    # recompilation per window.
    self.window = torch.zeros((), dtype=torch.int32, device="cuda")
    self.mask_mod = lambda b, h, qi, ki: (qi >= ki) & (qi - ki < self.window)

  def functions(self, q, k, v, dout, w):
    torch, n = self.torch, q.shape[1]
    self.window.fill_(w)
    block_mask = self.create_block_mask(
      self.mask_mod,
      B=None,
      H=None,
      Q_LEN=n,
      KV_LEN=n,
      device="cuda",
    )
    to_t = lambda x: torch.from_dlpack(x).permute(0, 2, 1, 3).contiguous()  # [B, N, n, H]
    qt, kt, vt, dt = map(to_t, (q, k, v, dout))
    scale = 1.0 / math.sqrt(q.shape[-1])
    fwd = lambda: self.attend(qt, kt, vt, block_mask=block_mask, scale=scale)

    def fwd_bwd():
      leaves = [x.detach().requires_grad_() for x in (qt, kt, vt)]
      out = self.attend(*leaves, block_mask=block_mask, scale=scale)
      return torch.autograd.grad(out, leaves, dt)

    return fwd, fwd_bwd

  def time(self, s, fn):
    torch = self.torch
    start = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    first_s = time.perf_counter() - start
    if s.check_only:
      return None, [], first_s, out
    for _ in range(s.warmup - 1):
      fn()
    times = []
    for _ in range(s.repeats):
      begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
      begin.record()
      fn()
      end.record()
      end.synchronize()
      times.append(begin.elapsed_time(end))
    return statistics.median(times), times, first_s, out

  def to_jax(self, x):
    return jnp.from_dlpack(x.detach().permute(0, 2, 1, 3).contiguous())


def measure_config(s, n, w, jobs, state):
  """Checks and times the rows `jobs` [(impl, variant)] at one (n, w); returns their dicts."""
  if s.deadline_minutes and time.perf_counter() - _START > 60 * s.deadline_minutes:
    note = "skipped: past --deadline_minutes"
    return [dict(n=n, w=w, impl=i, variant=v, note=note) for i, v in jobs]
  dtype = jnp.dtype(s.dtype)
  shape = (4 * INPUT_SETS, s.batch, n, s.heads, s.head_dim)
  arrays = list(jax.random.normal(jax.random.PRNGKey(s.seed + 7919 * n + w), shape, dtype))
  sets = [tuple(arrays[i : i + 4]) for i in range(0, len(arrays), 4)]
  del arrays
  dense = s.batch * s.heads * n * n * 4 / 1e9 <= s.reference_max_gb
  t0 = 0 if dense else max(0, n - max(s.tail_rows, 2 * w))
  s0 = max(0, t0 - w + 1) if t0 else 0
  with jax.default_matmul_precision(reference_precision()):
    failure = {}
    ref = guarded(
      failure, "reference", lambda: jax.block_until_ready(reference_f32(*sets[0], w, t0, s0))
    )
  ref_name = "dense float32" if dense else f"float32, last {n - t0} query rows"
  if ref is None:  # time the rows anyway; they go unchecked
    ref_name = f"none ({ref_name} reference: {failure['reference_note']})"
  log(f"n={n} w={w}: reference {ref_name}")
  flops = 2 * band_pairs(n, w) * s.batch * s.heads * 2 * s.head_dim
  rows = []
  for impl, variant in jobs:
    row = dict(n=n, w=w, impl=impl, variant=variant, reference=ref_name)
    rows.append(row)
    if s.deadline_minutes and time.perf_counter() - _START > 60 * s.deadline_minutes:
      row["note"] = "skipped: past --deadline_minutes"
      continue
    if impl == "cudnn" and not attention.cudnn_available():
      row["note"] = f"skipped: no cuDNN on {jax.default_backend()}"
      continue
    if impl == "reference" and not dense:
      row["note"] = f"skipped: n² scores {s.batch * s.heads * n * n * 4 / 1e9:.3g} GB"
      continue
    if impl == "flex":
      if "flex" not in state:
        try:
          state["flex"] = Flex()
        except Exception as e:  # pylint: disable=broad-except
          state["flex"] = None
          state["flex_note"] = f"{type(e).__name__}: {cli.one_line(str(e))[:80]}"
      if state["flex"] is None:
        row["note"] = f"skipped: no torch FlexAttention ({state['flex_note']})"
        continue
      flex = state["flex"]
      fns = guarded(row, "fwd", lambda: flex.functions(*sets[0], w))
      if fns is None:
        continue
      timer = lambda fn: flex.time(s, fn)
      to_jax = flex.to_jax
      row["tiles"] = f"torch {flex.torch.__version__}: compiled flex_attention, block mask"
    else:
      fwd, fwd_bwd, row["tiles"] = jax_row(s, impl, variant, w, sets)
      fns = (fwd, fwd_bwd)
      timer = lambda fn: time_jax(s, fn, sets)
      to_jax = lambda x: x
    for key, fn, mult in (("fwd", fns[0], 1.0), ("fwd_bwd", fns[1], 3.5)):
      log(f"n={n} w={w}: {impl} {variant} {key}")
      result = guarded(row, key, lambda: timer(fn))
      if result is None:
        break  # fwd+bwd would fail the same way
      ms, times, first_s, out = result
      row.update({f"{key}_ms": ms, f"{key}_times_ms": times, f"{key}_first_s": first_s})
      if ms:
        row[f"{key}_tflops"] = mult * flops / (ms * 1e9)
      if ref is not None:
        pair = lambda: (to_jax(out), None) if key == "fwd" else (None, [to_jax(g) for g in out])
        guarded(row, f"{key}_check", lambda: check(row, *pair(), ref, t0, s.dtype))
      out = result = None  # free the outputs before the next row
      log(f"  {_fmt(ms, '.3f')} ms, first call {first_s:.1f} s, ok={row.get('ok')}")
  gc.collect()
  if "flex" in state and state["flex"] is not None:
    state["flex"].torch.cuda.empty_cache()
  return rows


def machine_rates(s):
  """(bf16 matmul FLOP/s, copy bytes/s) of this card; (None, None) off GPU or in check_only."""
  if jax.default_backend() != "gpu" or s.check_only:
    return None, None
  a, b = jax.random.normal(jax.random.PRNGKey(1), (2, 8192, 8192), jnp.bfloat16)
  matmul = reports.time_fn(jax.jit(jnp.matmul), (a, b), repeats=30, warmup=3)
  x = jax.random.normal(jax.random.PRNGKey(2), (2**29,), jnp.bfloat16)  # 1 GiB
  copy = reports.time_fn(jax.jit(lambda x: x + 1), (x,), repeats=30, warmup=3)
  return 2 * 8192**3 / (matmul.median_ms / 1e3), 2 * x.nbytes / (copy.median_ms / 1e3)


def _fmt(x, spec):
  return "—" if x is None else format(x, spec)


def _cell(row, key, spec):
  return row.get(f"{key}_note") or _fmt(row.get(f"{key}_ms"), spec)


def _ratio(row, cudnn, key):
  have = cudnn and row.get(f"{key}_ms") and cudnn.get(f"{key}_ms")
  return row[f"{key}_ms"] / cudnn[f"{key}_ms"] if have else None


def _speed_of_pallas(rows, n, w, default_only=False):
  """The fastest correct pallas row at (n, w) and cuDNN's; (None, cudnn) if none."""
  at = [r for r in rows if r["n"] == n and r["w"] == w]
  cudnn = next((r for r in at if r["impl"] == "cudnn" and r.get("fwd_bwd_ms")), None)
  pallas = [
    r
    for r in at
    if r["impl"] == "pallas"
    and r.get("fwd_bwd_ms")
    and r.get("ok")
    and (r["variant"] == "default" or not default_only)
  ]
  return min(pallas, key=lambda r: r["fwd_bwd_ms"], default=None), cudnn


def summary_lines(rows, lengths, windows):
  """Per (n, w): targets met or missed; then the auto rule the run supports."""
  lines = []
  for n in lengths:
    for w in windows:
      at = [r for r in rows if r["n"] == n and r["w"] == w]
      wrong = [f"{r['impl']} {r['variant']}" for r in at if r.get("ok") is False]
      best, cudnn = _speed_of_pallas(rows, n, w)
      chunked = next((r for r in at if r["impl"] == "chunked" and r.get("fwd_bwd_ms")), None)
      parts = []
      if best and cudnn:
        speed, goal = cudnn["fwd_bwd_ms"] / best["fwd_bwd_ms"], 1.3 if w <= 512 else 1.0
        parts.append(
          f"best pallas ({best['tiles']}) fwd+bwd at {speed:.2f}× cuDNN's speed "
          f"({'meets' if speed >= goal else 'misses'} ≥ {goal:g}×)"
        )
      if chunked and cudnn:
        ratio = chunked["fwd_bwd_ms"] / cudnn["fwd_bwd_ms"]
        parts.append(
          f"chunked fwd+bwd {ratio:.2f}× cuDNN's time ({'meets' if ratio <= 3 else 'misses'} ≤ 3×)"
        )
      parts.append(
        "every checked row within tolerance" if not wrong else f"WRONG: {', '.join(wrong)}"
      )
      lines.append(f"- n={n}, w={w}: " + "; ".join(parts) + ".")
  auto_max = 0
  for w in sorted(windows):
    if all(
      (lambda b, c: b and c and b["fwd_bwd_ms"] <= c["fwd_bwd_ms"])(
        *_speed_of_pallas(rows, n, w, default_only=True)
      )
      for n in lengths
    ):
      auto_max = w
    else:
      break
  lines.append(
    f"- auto rule this run supports: pallas_attention.AUTO_MAX_WINDOW = {auto_max} "
    "(the largest w up to which pallas with its default tiles beat cuDNN's fwd+bwd "
    "at every n measured; 0 = keep cuDNN)."
  )
  return lines


def write_report(path, header, rows, lengths, windows):
  """Writes the markdown report and its .json; returns the markdown."""
  cols = [
    "w",
    "impl",
    "tiles",
    "fwd ms",
    "fwd TFLOP/s",
    "fwd+bwd ms",
    "fwd+bwd TFLOP/s",
    "fwd ÷ cuDNN",
    "fwd+bwd ÷ cuDNN",
    "out rel err",
    "grad rel err",
    "check",
  ]
  text = reports.markdown_header("Sliding-window attention benchmark", header)
  for n in sorted({r["n"] for r in rows}):
    table = []
    for r in (r for r in rows if r["n"] == n):
      cudnn = next(
        (c for c in rows if c["n"] == n and c["w"] == r["w"] and c["impl"] == "cudnn"), None
      )
      if "note" in r:
        table.append([r["w"], r["impl"], r["variant"], r["note"]] + ["—"] * 8)
        continue
      check = "—" if "ok" not in r else ("ok" if r["ok"] else "**WRONG**")
      table.append(
        [
          r["w"],
          r["impl"],
          r.get("tiles", r["variant"]),
          _cell(r, "fwd", ".3f"),
          _fmt(r.get("fwd_tflops"), ".3g"),
          _cell(r, "fwd_bwd", ".3f"),
          _fmt(r.get("fwd_bwd_tflops"), ".3g"),
          _fmt(_ratio(r, cudnn, "fwd"), ".2f"),
          _fmt(_ratio(r, cudnn, "fwd_bwd"), ".2f"),
          _fmt(r.get("out_rel_err"), ".2e"),
          _fmt(r.get("grad_rel_err"), ".2e"),
          check,
        ]
      )
    text += f"## n = {n}\n\n" + reports.markdown_table(cols, table, align="rll" + "r" * 9) + "\n"
  text += "## Summary\n\n" + "\n".join(summary_lines(rows, lengths, windows)) + "\n"
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    f.write(text)
  with open(os.path.splitext(path)[0] + ".json", "w") as f:
    json.dump(dict(header=header, rows=rows), f, indent=1)
  return text


@dataclasses.dataclass
class Settings:
  """The flags as plain values."""

  lengths: list
  windows: list
  impls: list
  pallas_blocks: list
  chunked_blocks: list
  batch: int
  heads: int
  head_dim: int
  dtype: str
  repeats: int
  warmup: int
  reference_max_gb: float
  tail_rows: int
  check_only: bool
  deadline_minutes: float
  seed: int
  out: str


def settings_from_flags(fv):
  """Settings from parsed flags; one-line ValueError for a bad value."""
  unknown = sorted(set(fv.impls) - set(CORE))
  if unknown:
    raise ValueError(f"--impls: unknown {unknown}; choose from {list(CORE)}.")
  for text in fv.pallas_blocks:
    if text != "default":
      pallas_attention.BlockSizes.parse(text)
  ints = lambda name: [int(x) for x in fv[name].value]
  lengths = [4096] if fv.check_only and not fv["lengths"].present else ints("lengths")
  device = jax.devices()[0].device_kind.lower()
  out = fv.out or os.path.join(
    "profiles", "".join(c if c.isalnum() else "_" for c in device).strip("_"), "attention_bench.md"
  )
  names = [f.name for f in dataclasses.fields(Settings)]
  values = {name: fv[name].value for name in names}
  values.update(
    lengths=lengths,
    windows=ints("windows"),
    out=out,
    repeats=max(1, fv.repeats),
    warmup=max(1, fv.warmup),
  )
  return Settings(**values)


def jobs_in_order(s):
  """[(n, w, [(impl, variant)])] in three passes over the configurations: the core rows, then the
  extra tile settings, then torch FlexAttention (its compilations are the slowest part: a run cut
  short by --deadline_minutes loses peer rows first)."""
  core, extra = [], []
  for impl in s.impls:
    variants = {"pallas": s.pallas_blocks, "chunked": s.chunked_blocks}.get(impl, ["default"])
    (extra if impl == "flex" else core).append((impl, variants[0]))
    if not s.check_only:
      extra[:0] = [(impl, v) for v in variants[1:]]  # before flex
  configs = [(n, w) for n in s.lengths for w in s.windows]
  passes = [core, [j for j in extra if j[0] != "flex"], [j for j in extra if j[0] == "flex"]]
  return [(n, w, jobs) for jobs in passes if jobs for n, w in configs]


def run(s, command):
  """The whole benchmark; returns the rows (also written to s.out and its .json)."""
  log(reports.device_description())
  flop_s, byte_s = machine_rates(s)
  rates = (
    "Card: not measured (check_only or not a GPU)."
    if flop_s is None
    else f"Card: {flop_s / 1e12:.0f} TFLOP/s (8192³ bf16 matmul), {byte_s / 1e12:.2f} TB/s "
    "(1 GiB copy, read + write), measured at the start of this run."
  )
  header = reports.header_lines(
    command,
    extra=[
      f"Shapes: B={s.batch}, N={s.heads} heads, H=D={s.head_dim}, {s.dtype}. "
      + (
        "Check only: one call each, nothing timed."
        if s.check_only
        else f"Times: median of {s.repeats} runs after {s.warmup} untimed (compiling) ones, each "
        f"ended by block_until_ready (torch: CUDA events), inputs alternating between "
        f"{INPUT_SETS} random sets; fwd+bwd = grads of sum(out · dout) w.r.t. q, k, v."
      ),
      "TFLOP/s: band FLOPs (fwd 2·P·N·(H + D), P = query-key pairs in the window; fwd+bwd "
      "3.5× that) over the time. ÷ cuDNN: time ratio to cuDNN in this run (< 1 = faster).",
      f"Check: out rel err = ‖out − ref‖/‖ref‖, grad rel err = max over dq, dk, dv, against the "
      f"float32 reference (matmul precision {reference_precision()}) on the inputs upcast; ok "
      f"within {TOLERANCE[s.dtype]} (out, grads).",
      rates,
    ],
  )
  rows, state = [], {}
  for n, w, jobs in jobs_in_order(s):
    rows += measure_config(s, n, w, jobs, state)
    rows.sort(key=lambda r: (r["n"], r["w"]))
    write_report(s.out, header, rows, s.lengths, s.windows)
    jax.clear_caches()
  text = write_report(s.out, header, rows, s.lengths, s.windows)
  print(text, flush=True)
  log(f"wrote {s.out} and its .json")
  return rows


def main(argv, fv=flags.FLAGS):
  """Runs with the flags in fv (parsed from argv unless they are); exits 1 on a wrong check."""
  if not fv.is_parsed():
    fv(argv)
  given = sys.argv if fv is flags.FLAGS else argv
  command = reports.command_line(given[1:], program=given[0])
  rows = run(settings_from_flags(fv), command)
  if any(r.get("ok") is False for r in rows):
    log("CHECK FAILED: some rows differ from the float32 reference (see the check column).")
    if fv.check_only:
      sys.exit(1)


if __name__ == "__main__":
  define_flags(flags.FLAGS)  # here only: tests define them on a FlagValues of their own
  cli.run(main)
