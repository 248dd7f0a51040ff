"""One (n, w) of the attention benchmark: its inputs, its reference, every row checked and timed.

A row is one implementation (and tile setting) at one (H, K, n, w): a dict with H (head dim), K
(key/value heads), n, w, impl, variant, tiles, reference, fwd_ms / fwd_bwd_ms (median), their
times and TFLOP/s, the roofline columns (`check.roofline`: <key>_roofline_ms, <key>_x_roofline =
the time over it, <key>_bytes_ms) where the card's rates were measured, the errors and "ok"
(swa/bench/check.py), or a "note" (skipped) or "<key>_note" (OOM or failed).
"""

import dataclasses
import functools
import gc
import os
import sys
import time
import traceback
from typing import Optional

import jax
import jax.numpy as jnp

from swa import attention, cli, mosaic_attention, pallas_attention, reports
from swa.bench import check as check_lib
from swa.bench.flex import Flex
from swa.checks import check_int

CORE = ("cudnn", "fa3", "mosaic", "pallas", "chunked", "flex", "reference")
INPUT_SETS = 2  # timed calls alternate between this many random input sets
_CLOCK = [time.perf_counter()]  # the run's start: log times and --deadline_minutes count from it


@dataclasses.dataclass
class Settings:
  """The benchmark's options as plain values (bench_attention.py's flags, which describe each).

  Raises ValueError (one line, before any work) for an unknown implementation, a length, window,
  head count or size below 1, or a tile setting the kernels would refuse.
  """

  lengths: list
  windows: list
  impls: list = CORE
  pallas_blocks: list = ("default",)
  mosaic_blocks: list = ("default",)
  chunked_blocks: list = ("default",)
  batch: int = 1
  heads: int = 16
  head_dim: list = (128,)  # head dims H = D: one grid axis (an int is one value)
  kv_heads: list = ()  # key/value head counts K (GQA), each dividing heads; () = [heads]
  dtype: str = "bfloat16"
  repeats: int = 20
  warmup: int = 3
  calls_per_sample: int = 10
  reference_max_gb: float = 20.0
  tail_rows: int = 4096
  document_length: int = 0  # > 0: packed documents of this many tokens (segment ids); 0: none
  check_only: bool = False
  deadline_minutes: float = 0.0  # 0: no limit
  seed: int = 0
  out: Optional[str] = None  # None: default_out_path()

  def __post_init__(self):
    unknown = sorted(set(self.impls) - set(CORE))
    if unknown:
      raise ValueError(f"--impls: unknown {unknown}; choose from {list(CORE)}.")
    if not self.lengths or not self.windows:
      raise ValueError(
        f"--lengths and --windows need a value each, got {self.lengths}, {self.windows}."
      )
    self.lengths = [check_int("--lengths", n) for n in self.lengths]
    self.windows = [check_int("--windows", w) for w in self.windows]
    for name in ("batch", "heads", "tail_rows"):
      setattr(self, name, check_int(f"--{name}", getattr(self, name)))
    if self.document_length:
      self.document_length = check_int("--document_length", self.document_length)
    dims = [self.head_dim] if isinstance(self.head_dim, int) else list(self.head_dim)
    self.head_dim = [check_int("--head_dim", h) for h in dims]
    if not self.head_dim:
      raise ValueError("--head_dim needs a value.")
    self.kv_heads = [check_int("--kv_heads", k) for k in self.kv_heads] or [self.heads]
    for k in self.kv_heads:
      if self.heads % k:
        raise ValueError(f"--kv_heads={k} must divide --heads={self.heads}.")
    for text in self.pallas_blocks:
      if text != "default":
        pallas_attention.BlockSizes.parse(text).validate()
    for text in self.mosaic_blocks:
      if text != "default":
        mosaic_attention.BlockSizes.parse(text).validate()
    for text in self.chunked_blocks:
      if text != "default":
        check_int("--chunked_blocks", int(text) if text.strip().isdigit() else text)
    if self.dtype not in check_lib.TOLERANCE:
      raise ValueError(f"dtype={self.dtype!r}: choose from {list(check_lib.TOLERANCE)}.")
    if self.out is None:
      self.out = default_out_path()


def default_out_path():
  """profiles/<device kind>/attention_bench.md, e.g. profiles/nvidia_h200/attention_bench.md."""
  device = jax.devices()[0].device_kind.lower()
  folder = "".join(c if c.isalnum() else "_" for c in device).strip("_")
  return os.path.join("profiles", folder, "attention_bench.md")


def restart_clock():
  """Starts the run's clock (log times, --deadline_minutes) now."""
  _CLOCK[0] = time.perf_counter()


def past_deadline(s):
  """Whether s.deadline_minutes (0: no limit) have passed since restart_clock()."""
  return bool(s.deadline_minutes) and time.perf_counter() - _CLOCK[0] > 60 * s.deadline_minutes


def log(msg):
  """msg on stderr, after the seconds since the run started."""
  print(f"[{time.perf_counter() - _CLOCK[0]:6.1f}s] {msg}", file=sys.stderr, flush=True)


def fmt(x, spec):
  """format(x, spec), or "—" for None."""
  return "—" if x is None else format(x, spec)


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


def jax_row(impl, variant, w, n, segment_ids=None):
  """(fwd, fwd_bwd) jitted functions of one JAX implementation row, and its tile description.

  Args:
    impl: "cudnn", "fa3", "mosaic", "pallas", "chunked" or "reference".
    variant: "default", or the tile setting (pallas, mosaic: a BlockSizes string; chunked: C).
    w: the window.
    n: the sequence length.
    segment_ids: int32 [B, n] (packed documents), or None.
  """
  tiles = {
    "cudnn": "local_window_size=(w-1, 0)",
    "fa3": "flash_mha window_size=(w-1, 0)",
    "reference": "dense",
  }.get(impl)
  options = {}
  if impl == "chunked":
    block = attention.default_block_size(w, n) if variant == "default" else int(variant)
    options, tiles = dict(block_size=block), f"C={block}"
  elif impl == "pallas":
    blocks = (
      pallas_attention.default_block_sizes(w)
      if variant == "default"
      else pallas_attention.BlockSizes.parse(variant)
    )
    options, tiles = dict(block_sizes=blocks), str(blocks)
  elif impl == "mosaic":
    blocks = mosaic_attention.BlockSizes.parse(variant) if variant != "default" else None
    options = dict(block_sizes=blocks)
    tiles = str(blocks or mosaic_attention.default_block_sizes(w))
  if segment_ids is not None:
    options.update(segment_ids=segment_ids)
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
    fn,
    sets[0],
    repeats=s.repeats,
    warmup=s.warmup,
    arg_sets=sets,
    keep_first_output=True,
    calls_per_sample=s.calls_per_sample,
  )
  return t.median_ms, t.times_ms, t.first_s, t.first_output


def _flex(state):
  """The run's Flex (made once, in state), or None with state["flex_note"] saying why."""
  if "flex" not in state:
    try:
      state["flex"] = Flex()
    except Exception as e:  # pylint: disable=broad-except
      state["flex"] = None
      state["flex_note"] = f"{type(e).__name__}: {cli.one_line(str(e))[:80]}"
  return state["flex"]


def _inputs(s, n, w, H, K):
  """INPUT_SETS random (q, k, v, dout) sets: q, dout [B, n, N, H], k, v [B, n, K, H]."""
  dtype, seed = jnp.dtype(s.dtype), jax.random.PRNGKey(s.seed + 7919 * n + w + 104729 * (H + K))
  q_shape, kv_shape = (s.batch, n, s.heads, H), (s.batch, n, K, H)
  sets = []
  for key in jax.random.split(seed, INPUT_SETS):
    keys = jax.random.split(key, 4)
    shapes = (q_shape, kv_shape, kv_shape, q_shape)
    sets.append(tuple(jax.random.normal(k, shape, dtype) for k, shape in zip(keys, shapes)))
  return sets


def document_ids(s, n):
  """int32 [B, n] segment ids of documents of s.document_length tokens each (the last one
  shorter), or None where s.document_length is 0."""
  if not s.document_length:
    return None
  return jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32) // s.document_length, (s.batch, n))


def measure_config(s, n, w, jobs, state, head_dim=None, kv_heads=None):
  """Checks and times the rows `jobs` at one (H, K, n, w).

  Args:
    s: the Settings.
    n: the sequence length.
    w: the window.
    jobs: [(impl, variant)], in the order to run them.
    state: a dict kept across calls (the torch FlexAttention peer, made once; "rates": the card's
      (matmul FLOP/s, copy bytes/s) or absent).
    head_dim: H = D (default s.head_dim[0]).
    kv_heads: K (default s.kv_heads[0]).

  Returns:
    the rows' dicts, in the order of jobs.
  """
  H = s.head_dim[0] if head_dim is None else head_dim
  K = s.kv_heads[0] if kv_heads is None else kv_heads
  if past_deadline(s):
    note = "skipped: past --deadline_minutes"
    return [dict(H=H, K=K, n=n, w=w, impl=i, variant=v, note=note) for i, v in jobs]
  sets = _inputs(s, n, w, H, K)
  seg = document_ids(s, n)
  dense = s.batch * s.heads * n * n * 4 / 1e9 <= s.reference_max_gb
  t0 = 0 if dense else max(0, n - max(s.tail_rows, 2 * w))
  s0 = max(0, t0 - w + 1) if t0 else 0
  with jax.default_matmul_precision(check_lib.reference_precision()):
    failure = {}
    ref = guarded(
      failure,
      "reference",
      lambda: jax.block_until_ready(check_lib.reference_f32(*sets[0], w, t0, s0, seg)),
    )
  ref_name = "dense float32" if dense else f"float32, last {n - t0} query rows"
  if ref is None:  # time the rows anyway; they go unchecked
    ref_name = f"none ({ref_name} reference: {failure['reference_note']})"
  log(f"n={n} w={w}: reference {ref_name}")
  flops = check_lib.band_flops(n, w, s.batch, s.heads, H)
  bounds = {}
  if state.get("rates"):
    itemsize = jnp.dtype(s.dtype).itemsize
    bounds = check_lib.roofline(n, w, s.batch, s.heads, K, H, itemsize, *state["rates"])
  rows = []
  for impl, variant in jobs:
    row = dict(H=H, K=K, n=n, w=w, impl=impl, variant=variant, reference=ref_name)
    rows.append(row)
    if past_deadline(s):
      row["note"] = "skipped: past --deadline_minutes"
      continue
    if seg is not None and impl == "flex":
      row["note"] = "skipped: the FlexAttention peer here has no document mask"
      continue
    if seg is not None and "segment_ids" not in attention.implementation_features(impl):
      row["note"] = f"skipped: {impl} takes no segment ids (--document_length)"
      continue
    if impl == "cudnn" and not attention.cudnn_available():
      row["note"] = f"skipped: no cuDNN on {jax.default_backend()}"
      continue
    if impl in ("fa3", "mosaic"):
      reason = attention.lookup(impl).check(*sets[0][:3], w)
      if reason:
        row["note"] = f"skipped: {reason}"
        continue
    if impl == "reference" and not dense:
      row["note"] = f"skipped: n² scores {s.batch * s.heads * n * n * 4 / 1e9:.3g} GB"
      continue
    if impl == "flex":
      flex = _flex(state)
      if flex is None:
        row["note"] = f"skipped: no torch FlexAttention ({state['flex_note']})"
        continue
      fns = guarded(row, "fwd", lambda: flex.functions(*sets[0], w))
      if fns is None:
        continue
      timer = lambda fn: flex.time(
        fn,
        repeats=s.repeats,
        warmup=s.warmup,
        calls_per_sample=s.calls_per_sample,
        check_only=s.check_only,
      )
      to_jax = flex.to_jax
      row["tiles"] = f"torch {flex.torch.__version__}: compiled flex_attention, block mask"
    else:
      fwd, fwd_bwd, row["tiles"] = jax_row(impl, variant, w, n, seg)
      fns = (fwd, fwd_bwd)
      timer = lambda fn: time_jax(s, fn, sets)
      to_jax = lambda x: x
    for key, fn, mult in (("fwd", fns[0], 1.0), ("fwd_bwd", fns[1], check_lib.FWD_BWD_FACTOR)):
      log(f"n={n} w={w}: {impl} {variant} {key}")
      result = guarded(row, key, lambda: timer(fn))
      if result is None:
        break  # fwd+bwd would fail the same way
      ms, times, first_s, out = result
      row.update({f"{key}_ms": ms, f"{key}_times_ms": times, f"{key}_first_s": first_s})
      if ms:
        row[f"{key}_tflops"] = mult * flops / (ms * 1e9)
        if bounds:
          row[f"{key}_roofline_ms"] = bounds[f"{key}_roofline_ms"]
          row[f"{key}_x_roofline"] = ms / bounds[f"{key}_roofline_ms"]
          row[f"{key}_bytes_ms"] = bounds[f"{key}_bytes_ms"]
      if ref is not None:
        pair = lambda: (to_jax(out), None) if key == "fwd" else (None, [to_jax(g) for g in out])
        guarded(row, f"{key}_check", lambda: check_lib.check(row, *pair(), ref, t0, s.dtype))
      out = result = None  # free the outputs before the next row
      log(f"  {fmt(ms, '.3f')} ms, first call {first_s:.1f} s, ok={row.get('ok')}")
  gc.collect()
  if state.get("flex") is not None:
    state["flex"].torch.cuda.empty_cache()
  return rows


def machine_rates(s):
  """(bf16 matmul FLOP/s, copy bytes/s) of this card; (None, None) off GPU or in check_only."""
  if jax.default_backend() != "gpu" or s.check_only:
    return None, None
  # Timed like the rows: samples of calls_per_sample calls dispatched back to back.
  timing = dict(repeats=30, warmup=3, calls_per_sample=s.calls_per_sample)
  a, b = jax.random.normal(jax.random.PRNGKey(1), (2, 8192, 8192), jnp.bfloat16)
  matmul = reports.time_fn(jax.jit(jnp.matmul), (a, b), **timing)
  x = jax.random.normal(jax.random.PRNGKey(2), (2**29,), jnp.bfloat16)  # 1 GiB
  copy = reports.time_fn(jax.jit(lambda x: x + 1), (x,), **timing)
  return 2 * 8192**3 / (matmul.median_ms / 1e3), 2 * x.nbytes / (copy.median_ms / 1e3)


def jobs_in_order(s):
  """[(H, K, n, w, [(impl, variant)])] in three passes over the configurations: torch
  FlexAttention first (its first compilation took 3-4 minutes on the H200, and two runs that
  timed it last lost it to --deadline_minutes), then the core rows, then the extra tile
  settings. The report lists flex after the JAX rows of its (n, w) all the same."""
  core, extra = [], []
  for impl in s.impls:
    variants = {"pallas": s.pallas_blocks, "mosaic": s.mosaic_blocks, "chunked": s.chunked_blocks}
    variants = variants.get(impl, ["default"])
    (extra if impl == "flex" else core).append((impl, variants[0]))
    extra[:0] = [(impl, v) for v in variants[1:]]  # before flex; --check_only checks them too
  configs = [
    (h, k, n, w) for h in s.head_dim for k in s.kv_heads for n in s.lengths for w in s.windows
  ]
  passes = [[j for j in extra if j[0] == "flex"], core, [j for j in extra if j[0] != "flex"]]
  return [(h, k, n, w, jobs) for jobs in passes if jobs for h, k, n, w in configs]
