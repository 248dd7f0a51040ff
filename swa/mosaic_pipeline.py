"""The pipeline that the three Hopper kernels of `implementation="mosaic"` share (Pallas Mosaic
GPU): the forward (swa/mosaic_forward.py), dQ and dK/dV (swa/mosaic_backward.py), and `Static`,
everything they take that is not an array.

Each kernel is warp-specialised in the manner of FlashAttention-3: a CTA runs three warpgroups,
two that compute (COMPUTE_WGS) and one, the producer, that only issues TMA copies into a ring of
`stages` shared-memory slots (`fill`, `produce_keys`); a slot is refilled once both computing
warpgroups have arrived on its "used" barrier, and the producer's last act is to wait out each
slot's last use (`drain`). A computing warpgroup walks the CTA's pipeline steps in the loop
regions of `regions` (`consume`): steps none of its rows see are waited out, the window's edge and
the causal diagonal masked (`mask`), the interior not, so every loop visits only the blocks the
window touches. Products are wgmma with float32 accumulators (`product`; `accumulate` adds a
register operand's product into one); softmax statistics are float32, with log2(e) folded into the
scale (exp2).

The window has the project's one meaning (swa/mask.py): query t sees keys t - w + 1 ... t. The
inputs arrive padded (swa/mosaic_attention.py): T a multiple of 2 * block, head dims of 64 or 128,
16-bit dtype. GQA: query head n reads key/value head n // G; the backward writes dK and dV per
query head and its caller sums each group. Off a GPU every kernel runs in Mosaic GPU's interpret
mode (`launch`, JAX >= 0.11), which simulates the warpgroups, shared memory, barriers and TMA on
the CPU.
"""

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

MASKED = -1e30  # a masked logit: finite, so a row whose first blocks are all masked stays NaN-free
COMPUTE_WGS = 2
LOG2E = math.log2(math.e)  # the kernels' scores are base 2 (exp2)


@dataclasses.dataclass(frozen=True)
class Static:
  """Everything the kernels need that is not an array (hashable: a custom_vjp static)."""

  window: int  # >= 1; the padded length for full causal attention
  scale: float
  groups: int  # G = N // K
  # Each kernel's (rows per computing warpgroup, columns per pipeline step, ring slots): the
  # forward and dQ kernels' rows are queries and their steps key blocks; the dK/dV kernel's rows
  # are keys and its steps query blocks. dq None: dQ accumulates in the dK/dV kernel (fused).
  fwd: tuple
  # The forward's CTAs: None, one a tile of 2 * block_q queries; else at most that many
  # persistent CTAs (one an SM), each looping over tiles cta, cta + ctas, ... while its producer
  # loads the next tile's key blocks and each warpgroup the next tile's queries.
  fwd_ctas: int | None
  dq: tuple | None
  dq_ctas: int | None  # the dQ kernel's CTAs, as fwd_ctas
  dkv: tuple
  dkv_ctas: int | None  # the dK/dV kernel's CTAs, as fwd_ctas (tiles of 2 * block_k_dkv keys)
  interpret: bool
  # Learned sinks: the forward takes each head's sink logit and starts every row's running max
  # at it (with 1 in the running sum); its log-sum-exp then holds the sink, so the backward
  # kernels are unchanged (the sinks' gradient comes from it, outside them).
  sinks: bool = False
  # Packed sequences: the kernels take the queries' and keys' segment ids ([B, T] int32) and
  # mask every step, the window's interior too, to pairs of one segment.
  segments: bool = False
  # The logit soft-cap c (Gemma 2): scaled logits s become c * tanh(s / c) (`logits`), and the
  # backward's dS takes the tanh's slope (`softcap_slope`); None: none.
  softcap: float | None = None


def smem(shape, dtype):
  """A shared-memory buffer laid out for wgmma (8 x 64 tiles, 128-byte swizzle) when 16-bit."""
  if jnp.dtype(dtype).itemsize == 2:
    return plgpu.SMEM(
      shape, dtype, transforms=(plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))
    )
  return plgpu.SMEM(shape, dtype)


def interpret_params(st):
  return plgpu.InterpretGPUParams() if st.interpret else None


def zeros(shape):
  return plgpu.layout_cast(jnp.full(shape, 0, jnp.float32), plgpu.Layout.WGMMA)


def product(a, b, shape):
  """a @ b as a float32 wgmma (a: registers or shared memory, b: shared memory)."""

  def body(acc_ref):
    plgpu.wgmma(acc_ref, a, b)
    return acc_ref[...]

  return pl.run_scoped(body, plgpu.ACC(shape, jnp.float32))


def accumulate(acc, a, b, a_smem2, wg, st):
  """acc + a @ b for a float32 accumulator acc and a 16-bit left operand a in registers.

  On a GPU the wgmma adds into acc itself (`pl.run_state` on a pre-filled accumulator: a in
  registers, no second accumulator). Mosaic GPU's interpret mode has neither `run_state` nor
  register operands, so there a is stored into a_smem2.at[wg] (allocated in interpret mode only)
  and its product added: the one difference between the two modes, the same arithmetic.
  """
  if not st.interpret:

    def body(acc_ref):
      plgpu.wgmma(acc_ref, a, b)

    return pl.run_state(body)(plgpu.ACC.init(acc))
  a_smem = a_smem2.at[wg]
  a_smem[...] = a
  plgpu.commit_smem()
  return acc + product(a_smem, b, acc.shape)


def logits(qk, st):
  """A block's base-2 logits from its float32 products Q K^T (or K Q^T): scaled, and soft-capped
  where st.softcap (c * tanh(scale * qk / c)), times log2(e)."""
  if st.softcap is None:
    return qk * (st.scale * LOG2E)
  return (st.softcap * LOG2E) * jnp.tanh(qk * (st.scale / st.softcap))


def softcap_slope(capped, st):
  """d(c * tanh(x / c)) / dx = 1 - tanh(x / c)^2, from `logits`' capped base-2 logits (taken
  before the mask: a masked logit would overflow the square)."""
  return 1.0 - jnp.square(capped * (1.0 / (st.softcap * LOG2E)))


def mask(s, q_start, k_start, window, rows_are_queries=True, segments=None):
  """s with the logits of invisible pairs set to MASKED (swa/mask.py's rule: 0 <= q - k < w, and
  with segments = (the rows' ids, the columns' ids), int32 vectors from `row_vector`, one
  segment).

  s is [rows, cols] in the wgmma layout; rows are queries (forward) or keys (backward)."""
  rows = plgpu.broadcasted_iota(jnp.int32, s.shape, 0, layout=plgpu.Layout.WGMMA)
  cols = plgpu.broadcasted_iota(jnp.int32, s.shape, 1, layout=plgpu.Layout.WGMMA)
  if rows_are_queries:
    diff = (rows + q_start) - (cols + k_start)
  else:
    diff = (cols + q_start) - (rows + k_start)
  keep = (diff >= 0) & (diff < window)
  if segments is not None:
    row_ids, col_ids = segments
    keep &= lax.broadcast_in_dim(row_ids, s.shape, [0]) == lax.broadcast_in_dim(
      col_ids, s.shape, [1]
    )
  return jnp.where(keep, s, MASKED)


def mask_step(s, masked, q_start, k_start, st, rows_are_queries=True, row_ids=None, col_ids=None):
  """`mask` where a pipeline step needs it: in a masked loop region (`consume`'s `masked`), and
  with segment ids (st.segments) at every step, the window's interior too. row_ids: the rows'
  ids (`row_vector`); col_ids: (the columns' ring of ids, the step's slot)."""
  if not (masked or st.segments):
    return s
  segments = None
  if st.segments:
    ring, slot = col_ids
    segments = (row_ids, row_vector(ring.at[slot], of_rows=False))
  return mask(s, q_start, k_start, st.window, rows_are_queries, segments)


def row_vector(smem_ref, of_rows=True):
  """A float32 or int32 vector in shared memory as registers laid out for the scores' rows (or,
  of_rows False, columns): the log-sum-exp and delta of dQ's rows or dK/dV's columns, the sinks,
  segment ids."""
  return plgpu.load(smem_ref, layout=plgpu.Layout.WGMMA.reduce(1 if of_rows else 0))


def regions(lo, hi, first_row, last_row, block, window, keys_are_blocked=True):
  """Splits the CTA's pipeline steps [lo, hi) (in units of `block`) for one warpgroup.

  keys_are_blocked (forward): the steps are key blocks, the warpgroup's rows are queries
  first_row ... last_row. Otherwise (backward) the steps are query blocks, the rows keys.
  Returns (a, b, c, d): steps [lo, a) and [d, hi) hold no visible pair (waited out), [a, b) and
  [c, d) are masked, [b, c) are wholly visible (no mask).
  """
  div = lambda x: lax.div(x, jnp.int32(block))
  cdiv = lambda x: lax.div(x + (block - 1), jnp.int32(block))
  if keys_are_blocked:  # keys k with first_row - w + 1 <= k <= last_row
    a = div(jnp.maximum(first_row - window + 1, 0))
    d = cdiv(last_row + 1)
    b = cdiv(jnp.maximum(last_row - window + 1, 0))  # first block wholly inside every row's window
    c = div(first_row + 1)  # first block that reaches past the first row (causal edge)
  else:  # queries q with first_row <= q <= last_row + w - 1
    a = div(first_row)
    d = cdiv(last_row + window)
    b = cdiv(last_row)  # first block whose queries are all at or after every row
    c = div(first_row + window)  # first block with a query past some row's window
  a, d = jnp.clip(a, lo, hi), jnp.clip(d, lo, hi)
  b = jnp.clip(b, a, d)
  c = jnp.clip(c, b, d)
  return a, b, c, d


def slot(step, lo, g0, stages):
  """The ring slot of pipeline step `step` of a tile whose steps start at lo, after g0 steps of
  the CTA's earlier tiles: `fill`'s numbering, which the computing warpgroups must share."""
  return lax.rem(g0 + step - lo, jnp.int32(stages))


def fill(copies, lo, hi, g0, stages, used):
  """The producer warpgroup's TMA loads for pipeline steps lo ... hi - 1: `copies(step, slot)`
  issues a step's copies, each on its own "loaded" barrier of that slot. g0 counts the steps this
  CTA loaded before (earlier tiles of a persistent CTA), so the ring turns on across tiles: global
  step g goes into slot g % stages once both computing warpgroups have arrived on that slot's `used`
  barrier for step g - stages. Returns the count after these steps."""

  @pl.loop(lo, hi)
  def _load(step):
    pl.when(g0 + step - lo >= stages)(
      lambda: plgpu.barrier_wait(used.at[slot(step, lo, g0, stages)])
    )
    copies(step, slot(step, lo, g0, stages))

  return g0 + hi - lo


def drain(g, stages, used):
  """The producer's last wait: each slot's last use (global steps g - stages ... g - 1), so that
  every phase of every barrier is observed before the CTA's barriers go away."""

  @pl.loop(jnp.maximum(g - stages, 0), g)
  def _wait(step):
    plgpu.barrier_wait(used.at[lax.rem(step, jnp.int32(stages))])


def produce_keys(refs, smems, bars, used, count, tile_of, steps_of, bk, stages, groups, segments):
  """The producer of the forward and dQ kernels: for each of the CTA's `count` tiles (tile_of from
  `cta_tiles`; steps_of(first query) -> (lo, hi)), key blocks lo ... hi - 1 (bk keys each) of
  query head n's key/value head, K and V (refs) into their rings of `stages` slots (smems), each
  on its own "loaded" barrier (bars); with segments = (the keys' [B, T] segment ids, their ring),
  each block's ids too, on K's barrier (`fill`); then `drain`."""

  def tile(i, g0):
    b, n, q0 = tile_of(i)
    kv_head = lax.div(n, jnp.int32(groups))

    def copies(step, slot):
      keys = (b, pl.ds(step * bk, bk), kv_head)
      for ref, smem, bar in zip(refs, smems, bars):
        plgpu.copy_gmem_to_smem(ref.at[keys], smem.at[slot], bar.at[slot])
      if segments is not None:
        ids_ref, ids_smem = segments
        ids = ids_ref.at[b, pl.ds(step * bk, bk)]
        plgpu.copy_gmem_to_smem(ids, ids_smem.at[slot], bars[0].at[slot])

    return fill(copies, *steps_of(q0), g0, stages, used)

  produce_tiles(count, tile, stages, used)


def consume(lo, hi, regions, step_fn, skip_fn, carry):
  """A computing warpgroup's loop over the CTA's steps lo ... hi - 1: `regions` = (a, b, c, d) from
  `regions`; step_fn(step, carry, masked) computes a step, skip_fn(step) waits one out."""
  a, b, c, d = regions
  skip = lambda step, carry: (skip_fn(step), carry)[1]
  lax.fori_loop(lo, a, skip, None)
  carry = lax.fori_loop(a, b, functools.partial(step_fn, masked=True), carry)
  carry = lax.fori_loop(b, c, functools.partial(step_fn, masked=False), carry)
  carry = lax.fori_loop(c, d, functools.partial(step_fn, masked=True), carry)
  lax.fori_loop(d, hi, skip, None)
  return carry


def launch(entry, name, out_type, grid, grid_names, st):
  """The kernel `entry` over `grid`, three warpgroups a CTA, named `name` in profiles."""
  return plgpu.kernel(
    entry,
    out_type=out_type,
    grid=grid,
    grid_names=grid_names,
    num_threads=COMPUTE_WGS + 1,
    thread_name="wg",
    kernel_name=name,
    compiler_params=plgpu.CompilerParams(approx_math=True),
    interpret=interpret_params(st),
  )


def optional_refs(refs, *present):
  """Splits a kernel's refs: for each flag of `present`, the next ref (or None where False), then
  a list of the rest."""
  refs = list(refs)
  return (*(refs.pop(0) if p else None for p in present), refs)


def grid_size(tiles, persistent_ctas):
  """(CTAs, row buffers) of a kernel over `tiles` tiles: one CTA a tile with one buffer for its
  own rows (persistent_ctas None), or at most persistent_ctas persistent CTAs (one an SM) with two,
  the next tile's rows loading into the other under the current tile's work."""
  if persistent_ctas is None:
    return tiles, 1
  return min(persistent_ctas, tiles), 2


def cta_tiles(tiles, ctas, row_tiles, N, rows):
  """The tiles of `rows` rows (queries in the forward and dQ kernels, keys in dK/dV) that this CTA
  (grid axis "ctas") owns in a kernel over `tiles` (B * N * row_tiles) tiles with `ctas` CTAs:
  tiles cta, cta + ctas, ... (row tiles fastest, then heads, then batch). Returns (count, tile_of):
  how many, and tile_of(i) = (b, n, first row) of the i-th. One CTA a tile is ctas == tiles (count
  1); a persistent kernel has fewer, one an SM."""
  cta = lax.axis_index("ctas")
  count = lax.div(tiles - 1 - cta, jnp.int32(ctas)) + 1

  def tile_of(i):
    t = cta + i * ctas
    row0 = lax.rem(t, jnp.int32(row_tiles)) * rows
    n = lax.rem(lax.div(t, jnp.int32(row_tiles)), jnp.int32(N))
    return lax.div(t, jnp.int32(row_tiles * N)), n, row0

  return count, tile_of


class Tile(NamedTuple):
  """A computing warpgroup's view of its CTA's i-th tile (`tile`)."""

  b: jax.Array  # batch
  n: jax.Array  # query head
  first: jax.Array  # the warpgroup's first row
  lo: jax.Array  # the tile's pipeline steps [lo, hi)
  hi: jax.Array
  regions: tuple  # `regions` of [lo, hi) for the warpgroup's rows
  buf: jax.Array  # the tile's row buffer
  g0: jax.Array  # the CTA's steps before this tile (`fill`'s count)
  stages: int

  def slot(self, step):
    return slot(step, self.lo, self.g0, self.stages)

  def steps_after(self):
    """The CTA's step count after this tile (what `fill` returns for it)."""
    return self.g0 + self.hi - self.lo


def tile(tile_of, steps_of, i, g0, bufs, wg, rows, block, window, stages, keys_are_blocked=True):
  """The Tile of the CTA's i-th tile (tile_of from `cta_tiles`; steps_of(first row of the tile) ->
  (lo, hi)) for warpgroup wg, which owns `rows` of its rows; steps are `block` wide (key blocks,
  or query blocks where not keys_are_blocked), after g0 earlier steps, in a ring of `stages`."""
  b, n, row0 = tile_of(i)
  lo, hi = steps_of(row0)
  first = row0 + wg * rows
  steps = regions(lo, hi, first, first + rows - 1, block, window, keys_are_blocked)
  return Tile(b, n, first, lo, hi, steps, lax.rem(i, jnp.int32(bufs)), g0, stages)


def walk_tiles(count, load, tile):
  """A computing warpgroup's walk over its CTA's `count` tiles (`cta_tiles`): load(i, buf) issues
  tile i's own rows into buffer buf; the first tile's go first, then tile(i, g0) -> g0 runs each
  tile (g0: the ring steps before it, as `fill` counts), then its last stores are waited out."""
  load(0, 0)
  lax.fori_loop(0, count, tile, jnp.int32(0))
  plgpu.wait_smem_to_gmem(0)


def prefetch(load, i, count, bufs, when):
  """Where `when` holds and tile i + 1 exists: load(i + 1, its buffer of `bufs`), once this
  warpgroup's stores have read their shared memory (that buffer's last tile wrote its output from
  it). Called after a tile's first computed step, so the load hides under the rest of its work."""

  def load_next():
    plgpu.wait_smem_to_gmem(0, wait_read_only=True)
    load(i + 1, lax.rem(i + 1, jnp.int32(bufs)))

  pl.when(when & (i + 1 < count))(load_next)


def produce_tiles(count, tile, stages, used):
  """The producer's walk over its CTA's tiles (`produce_keys`; the dK/dV kernel's own): tile(i, g0)
  -> g0 issues tile i's steps (`fill`), then `drain`."""
  drain(lax.fori_loop(0, count, tile, jnp.int32(0)), stages, used)


def key_blocks(q0, rows, bk, window, T):
  """The CTA's key-block steps [lo, hi) (blocks of bk keys) for queries q0 ... q0 + rows - 1."""
  lo = lax.div(jnp.maximum(q0 - window + 1, 0), jnp.int32(bk))
  hi = lax.div(q0 + rows + bk - 1, jnp.int32(bk))
  return lo, jnp.minimum(hi, T // bk)
