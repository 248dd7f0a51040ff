"""The backward kernels of `implementation="mosaic"` (Pallas Mosaic GPU): dQ and dK/dV, pipelined as
the forward (swa/mosaic_forward.py; the pipeline they share is swa/mosaic_pipeline.py).

dQ        As the forward (2 * block_q queries a CTA, the key blocks their windows touch; one CTA a
          tile, or persistent: Static.dq_ctas), with the saved log-sum-exp and
          delta = rowsum(dO * O): S = Q K^T, dP = dO V^T, dQ += dS K.
dK/dV     A CTA owns 2 * block_k_dkv keys at a time (one CTA a tile, or persistent:
          Static.dkv_ctas), each computing warpgroup block_k_dkv of them; the producer streams
          the query blocks that see them (Q, dO, log-sum-exp, delta), on scores
          transposed so that no tile is ever transposed: S^T = K Q^T, dP^T = V dO^T, dV += P^T dO,
          dK += dS^T Q.
fused dQ  (Static.dq None) No dQ kernel: the dK/dV kernel also forms dQ's block dS K, as
          FlashAttention-3 and cuDNN do: dS^T goes to shared memory, dQ_block = (dS^T)^T K is a
          fifth product, and a TMA reduce-add puts it into a float32 buffer that every CTA whose
          keys the block sees adds into. 5 products a block pair instead of 7, for float32 traffic.
          Mosaic GPU's interpret mode has no TMA reductions: there each warpgroup writes its parts
          into a slice of its own and backward_dkv sums them (the same products and indices).
"""

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from swa import mosaic_pipeline as pipeline

_COMPUTE_WGS = pipeline.COMPUTE_WGS


def backward_dq(q_BTNH, k_BTKH, v_BTKH, do_BTNH, lse_BNT, delta_BNT, q_seg_BT, k_seg_BT, st):
  """dQ [B, T, N, H] (q's dtype): a CTA owns 2 * block_q queries at a time and streams the key
  blocks their windows touch; three products a block (S = Q K^T, dP = dO V^T, dQ += dS K).
  Persistent (st.dq_ctas) as the forward: the next tile's rows (Q, dO, log-sum-exp, delta) load
  into a second buffer under the current tile's work. The segment ids int32 [B, T] (st.segments)
  or None; learned sinks are in lse (the forward's)."""
  B, T, N, H = q_BTNH.shape
  bq, bk, stages = st.dq
  dtype = q_BTNH.dtype
  rows = _COMPUTE_WGS * bq  # a tile: the queries a CTA owns at a time
  q_tiles = T // rows
  tiles = q_tiles * N * B
  ctas, q_bufs = pipeline.grid_size(tiles, st.dq_ctas)

  def kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs):
    q_seg_ref, k_seg_ref, (dq_ref, scratch) = pipeline.optional_refs(refs, *[st.segments] * 2)
    (q_smem3, do_smem3, lse_smem3, delta_smem3, k_smem, v_smem, ds_smem2) = scratch[0][:7]
    q_seg_smem3, k_seg_smem = scratch[0][7:]
    bars, used = scratch[1:]
    k_bar, v_bar, row_bar = bars
    wg = lax.axis_index("wg")
    count, tile_of = pipeline.cta_tiles(tiles, ctas, q_tiles, N, rows)

    def steps_of(q0):
      return pipeline.key_blocks(q0, rows, bk, st.window, T)

    @pl.when(wg < _COMPUTE_WGS)
    def _compute():
      plgpu.set_max_registers(232, action="increase")
      rows_of = lambda x: lax.broadcast_in_dim(x, (bq, bk), [0])

      def load_rows(i, buf):  # tile i's Q, dO, log-sum-exp and delta of this warpgroup
        b, n, q0 = tile_of(i)
        first = q0 + wg * bq
        queries, bar = (b, pl.ds(first, bq), n), row_bar.at[buf * _COMPUTE_WGS + wg]
        plgpu.copy_gmem_to_smem(q_ref.at[queries], q_smem3.at[buf, wg], bar)
        plgpu.copy_gmem_to_smem(do_ref.at[queries], do_smem3.at[buf, wg], bar)
        plgpu.copy_gmem_to_smem(lse_ref.at[b, n, pl.ds(first, bq)], lse_smem3.at[buf, wg], bar)
        plgpu.copy_gmem_to_smem(delta_ref.at[b, n, pl.ds(first, bq)], delta_smem3.at[buf, wg], bar)
        if st.segments:
          plgpu.copy_gmem_to_smem(q_seg_ref.at[b, pl.ds(first, bq)], q_seg_smem3.at[buf, wg], bar)

      def tile(i, g0):
        t = pipeline.tile(tile_of, steps_of, i, g0, q_bufs, wg, bq, bk, st.window, stages)
        q_smem, do_smem = q_smem3.at[t.buf, wg], do_smem3.at[t.buf, wg]
        plgpu.barrier_wait(row_bar.at[t.buf * _COMPUTE_WGS + wg])
        lse, delta = (pipeline.row_vector(x.at[t.buf, wg]) for x in (lse_smem3, delta_smem3))
        q_ids = pipeline.row_vector(q_seg_smem3.at[t.buf, wg]) if st.segments else None

        def skip(step):
          slot = t.slot(step)
          plgpu.barrier_wait(k_bar.at[slot])
          plgpu.barrier_wait(v_bar.at[slot])
          plgpu.barrier_arrive(used.at[slot])

        def step_fn(step, dq, masked):
          slot = t.slot(step)
          plgpu.barrier_wait(k_bar.at[slot])
          qk = pipeline.product(q_smem, k_smem.at[slot].transpose((1, 0)), (bq, bk))
          s = pipeline.logits(qk, st)
          capped = s
          ids = dict(row_ids=q_ids, col_ids=(k_seg_smem, slot))
          s = pipeline.mask_step(s, masked, t.first, step * bk, st, **ids)
          p = jnp.exp2(s - rows_of(lse))
          plgpu.barrier_wait(v_bar.at[slot])
          dp = pipeline.product(do_smem, v_smem.at[slot].transpose((1, 0)), (bq, bk))
          ds = p * (dp - rows_of(delta))
          if st.softcap is not None:
            ds = ds * pipeline.softcap_slope(capped, st)
          ds = ds.astype(dtype)
          dq = pipeline.accumulate(dq, ds, k_smem.at[slot], ds_smem2, wg, st)
          plgpu.barrier_arrive(used.at[slot])
          pipeline.prefetch(load_rows, i, count, q_bufs, step == t.regions[0])  # as the forward
          return dq

        dq = pipeline.consume(t.lo, t.hi, t.regions, step_fn, skip, pipeline.zeros((bq, H)))
        q_smem[...] = (dq * st.scale).astype(dtype)
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(q_smem, dq_ref.at[t.b, pl.ds(t.first, bq), t.n])
        return t.steps_after()

      pipeline.walk_tiles(count, load_rows, tile)

    @pl.when(wg == _COMPUTE_WGS)
    def _produce_kv():
      plgpu.set_max_registers(40, action="decrease")
      kv = (k_ref, v_ref), (k_smem, v_smem), (k_bar, v_bar)
      segments = (k_seg_ref, k_seg_smem) if st.segments else None
      tiles_of = (count, tile_of, steps_of)
      pipeline.produce_keys(*kv, used, *tiles_of, bk, stages, st.groups, segments)

  def entry(*refs):
    smem = (
      pipeline.smem((q_bufs, _COMPUTE_WGS, bq, H), dtype),  # Q, then dQ
      pipeline.smem((q_bufs, _COMPUTE_WGS, bq, H), dtype),
      plgpu.SMEM((q_bufs, _COMPUTE_WGS, bq), jnp.float32),
      plgpu.SMEM((q_bufs, _COMPUTE_WGS, bq), jnp.float32),
      pipeline.smem((stages, bk, H), dtype),
      pipeline.smem((stages, bk, H), dtype),
      # dS, in interpret mode
      pipeline.smem((_COMPUTE_WGS, bq, bk), dtype) if st.interpret else None,
      # the queries' and the keys' segment ids
      plgpu.SMEM((q_bufs, _COMPUTE_WGS, bq), jnp.int32) if st.segments else None,
      plgpu.SMEM((stages, bk), jnp.int32) if st.segments else None,
    )
    bars = (  # one arrival per TMA copy
      plgpu.Barrier(num_arrivals=1 + st.segments, num_barriers=stages),
      plgpu.Barrier(num_barriers=stages),
      plgpu.Barrier(num_arrivals=4 + st.segments, num_barriers=q_bufs * _COMPUTE_WGS),
    )
    pl.run_scoped(
      lambda *scratch: kernel(*refs, scratch),
      smem,
      bars,
      plgpu.Barrier(num_arrivals=_COMPUTE_WGS, num_barriers=stages),
      collective_axes="wg",
    )

  out_type = jax.ShapeDtypeStruct((B, T, N, H), dtype)
  segments = (q_seg_BT, k_seg_BT) if st.segments else ()
  return pipeline.launch(entry, "swa_mosaic_dq", out_type, (ctas,), ("ctas",), st)(
    q_BTNH, k_BTKH, v_BTKH, do_BTNH, lse_BNT, delta_BNT, *segments
  )


def backward_dkv(q_BTNH, k_BTKH, v_BTKH, do_BTNH, lse_BNT, delta_BNT, q_seg_BT, k_seg_BT, st):
  """(dK, dV), each [B, T, N, H] per query head (q's dtype): a CTA owns 2 * block_k_dkv keys and
  streams the query blocks that see them; four products a block (S^T = K Q^T, dP^T = V dO^T,
  dV += P^T dO, dK += dS^T Q), on scores transposed so that no tile is ever transposed.

  Fused (st.dq None): (dK, dV, dQ), dQ [B, T, N, H] in q's dtype as backward_dq's. A fifth
  product, the query block's dQ part dS K (dS^T read transposed from shared memory), is added into
  a float32 [P, B, T, N, H] Ref of zeros by a TMA reduce-add (P = 1: the two warpgroups and every
  CTA whose keys the block sees add into the same rows). In interpret mode, which has no TMA
  reductions, P = 2 * CTAs and each warpgroup copies into its own slice (it writes each query
  block at most once); the slices are summed here. Segment ids as backward_dq's."""
  B, T, N, H = q_BTNH.shape
  bq, bk, stages = st.dkv
  fused = st.dq is None
  dtype = q_BTNH.dtype
  rows = _COMPUTE_WGS * bk  # a tile: the keys a CTA owns at a time
  k_tiles = T // rows
  tiles = k_tiles * N * B
  ctas, kv_bufs = pipeline.grid_size(tiles, st.dkv_ctas)

  def kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs):
    q_seg_ref, k_seg_ref, refs = pipeline.optional_refs(refs, *[st.segments] * 2)
    *dq_acc_ref, dk_ref, dv_ref, scratch = refs
    (k_smem3, v_smem3, q_smem, do_smem, lse_smem, delta_smem) = scratch[0][:6]
    pt_smem2, dst_smem2, dq_smem2, k_seg_smem3, q_seg_smem = scratch[0][6:]
    (q_bar, kv_bar), used = scratch[1], scratch[2]
    wg = lax.axis_index("wg")
    count, tile_of = pipeline.cta_tiles(tiles, ctas, k_tiles, N, rows)

    def steps_of(k0):  # the query blocks that see keys k0 ... k0 + rows - 1
      hi = lax.div(k0 + rows - 1 + st.window + bq - 1, jnp.int32(bq))
      return lax.div(k0, jnp.int32(bq)), jnp.minimum(hi, T // bq)

    @pl.when(wg < _COMPUTE_WGS)
    def _compute():
      plgpu.set_max_registers(232, action="increase")

      def load_kv(i, buf):  # tile i's keys and values (and segment ids) of this warpgroup
        b, n, k0 = tile_of(i)
        first, bar = k0 + wg * bk, kv_bar.at[buf * _COMPUTE_WGS + wg]
        keys = (b, pl.ds(first, bk), lax.div(n, jnp.int32(st.groups)))
        plgpu.copy_gmem_to_smem(k_ref.at[keys], k_smem3.at[buf, wg], bar)
        plgpu.copy_gmem_to_smem(v_ref.at[keys], v_smem3.at[buf, wg], bar)
        if st.segments:
          plgpu.copy_gmem_to_smem(k_seg_ref.at[b, pl.ds(first, bk)], k_seg_smem3.at[buf, wg], bar)

      def tile(i, g0):
        # rows are keys, steps query blocks (keys_are_blocked False)
        t = pipeline.tile(tile_of, steps_of, i, g0, kv_bufs, wg, bk, bq, st.window, stages, False)
        k_smem, v_smem = k_smem3.at[t.buf, wg], v_smem3.at[t.buf, wg]
        plgpu.barrier_wait(kv_bar.at[t.buf * _COMPUTE_WGS + wg])
        k_ids = pipeline.row_vector(k_seg_smem3.at[t.buf, wg]) if st.segments else None

        def skip(step):
          slot = t.slot(step)
          plgpu.barrier_wait(q_bar.at[slot])
          plgpu.barrier_arrive(used.at[slot])

        def add_dq(step, dst16):  # dQ[queries of step] += dS K, through shared memory
          dst_smem, dq_smem = dst_smem2.at[wg], dq_smem2.at[wg]
          plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # the last block's dQ has left dq_smem
          dst_smem[...] = dst16
          plgpu.commit_smem()
          dq_smem[...] = pipeline.product(dst_smem.transpose((1, 0)), k_smem, (bq, H))
          plgpu.commit_smem()
          # interpret mode: a slice per (key tile, warpgroup); t.first // rows is the key tile
          part = 0 if not st.interpret else lax.div(t.first, jnp.int32(rows)) * _COMPUTE_WGS + wg
          queries = (part, t.b, pl.ds(step * bq, bq), t.n)
          reduction = None if st.interpret else "add"
          plgpu.copy_smem_to_gmem(dq_smem, dq_acc_ref[0].at[queries], reduction_op=reduction)

        def step_fn(step, carry, masked):
          dk, dv = carry
          slot = t.slot(step)
          plgpu.barrier_wait(q_bar.at[slot])  # Q, dO, log-sum-exp and delta
          lse, delta = (pipeline.row_vector(x.at[slot], False) for x in (lse_smem, delta_smem))
          kq = pipeline.product(k_smem, q_smem.at[slot].transpose((1, 0)), (bk, bq))
          s_t = pipeline.logits(kq, st)
          capped = s_t
          ids = dict(row_ids=k_ids, col_ids=(q_seg_smem, slot))
          s_t = pipeline.mask_step(s_t, masked, step * bq, t.first, st, False, **ids)
          pt = jnp.exp2(s_t - lax.broadcast_in_dim(lse, (bk, bq), [1]))
          dpt = pipeline.product(v_smem, do_smem.at[slot].transpose((1, 0)), (bk, bq))
          dst = pt * (dpt - lax.broadcast_in_dim(delta, (bk, bq), [1]))
          if st.softcap is not None:
            dst = dst * pipeline.softcap_slope(capped, st)
          dst16 = dst.astype(dtype)
          dv = pipeline.accumulate(dv, pt.astype(dtype), do_smem.at[slot], pt_smem2, wg, st)
          dk = pipeline.accumulate(dk, dst16, q_smem.at[slot], dst_smem2, wg, st)
          plgpu.barrier_arrive(used.at[slot])
          if fused:
            add_dq(step, dst16)
          pipeline.prefetch(load_kv, i, count, kv_bufs, step == t.regions[0])  # as the forward
          return dk, dv

        zeros = (pipeline.zeros((bk, H)), pipeline.zeros((bk, H)))
        dk, dv = pipeline.consume(t.lo, t.hi, t.regions, step_fn, skip, zeros)
        k_smem[...] = (dk * st.scale).astype(dtype)
        v_smem[...] = dv.astype(dtype)
        plgpu.commit_smem()
        out_rows = (t.b, pl.ds(t.first, bk), t.n)
        plgpu.copy_smem_to_gmem(k_smem, dk_ref.at[out_rows])
        plgpu.copy_smem_to_gmem(v_smem, dv_ref.at[out_rows])
        return t.steps_after()

      pipeline.walk_tiles(count, load_kv, tile)

    @pl.when(wg == _COMPUTE_WGS)
    def _produce_q():
      plgpu.set_max_registers(40, action="decrease")

      def tile(i, g0):
        b, n, k0 = tile_of(i)

        def copies(step, slot):
          queries, cols = (b, pl.ds(step * bq, bq), n), (b, n, pl.ds(step * bq, bq))
          plgpu.copy_gmem_to_smem(q_ref.at[queries], q_smem.at[slot], q_bar.at[slot])
          plgpu.copy_gmem_to_smem(do_ref.at[queries], do_smem.at[slot], q_bar.at[slot])
          plgpu.copy_gmem_to_smem(lse_ref.at[cols], lse_smem.at[slot], q_bar.at[slot])
          plgpu.copy_gmem_to_smem(delta_ref.at[cols], delta_smem.at[slot], q_bar.at[slot])
          if st.segments:
            ids = q_seg_ref.at[b, pl.ds(step * bq, bq)]
            plgpu.copy_gmem_to_smem(ids, q_seg_smem.at[slot], q_bar.at[slot])

        return pipeline.fill(copies, *steps_of(k0), g0, stages, used)

      pipeline.produce_tiles(count, tile, stages, used)

  def entry(*refs):
    # P^T and dS^T go through shared memory only in interpret mode, but dS^T always when fused.
    interpret_only = lambda shape: pipeline.smem(shape, dtype) if st.interpret else None
    smem = (
      pipeline.smem((kv_bufs, _COMPUTE_WGS, bk, H), dtype),  # K, then dK
      pipeline.smem((kv_bufs, _COMPUTE_WGS, bk, H), dtype),  # V, then dV
      pipeline.smem((stages, bq, H), dtype),
      pipeline.smem((stages, bq, H), dtype),
      plgpu.SMEM((stages, bq), jnp.float32),
      plgpu.SMEM((stages, bq), jnp.float32),
      interpret_only((_COMPUTE_WGS, bk, bq)),  # P^T
      pipeline.smem((_COMPUTE_WGS, bk, bq), dtype)
      if fused
      else interpret_only((_COMPUTE_WGS, bk, bq)),
      plgpu.SMEM((_COMPUTE_WGS, bq, H), jnp.float32) if fused else None,  # a block's dQ
      # the keys' and the queries' segment ids
      plgpu.SMEM((kv_bufs, _COMPUTE_WGS, bk), jnp.int32) if st.segments else None,
      plgpu.SMEM((stages, bq), jnp.int32) if st.segments else None,
    )
    bars = (  # one arrival per TMA copy
      plgpu.Barrier(num_arrivals=4 + st.segments, num_barriers=stages),
      plgpu.Barrier(num_arrivals=2 + st.segments, num_barriers=kv_bufs * _COMPUTE_WGS),
    )
    pl.run_scoped(
      lambda *scratch: kernel(*refs, scratch),
      smem,
      bars,
      plgpu.Barrier(num_arrivals=_COMPUTE_WGS, num_barriers=stages),
      collective_axes="wg",
    )

  out_type = (jax.ShapeDtypeStruct((B, T, N, H), dtype),) * 2
  kernel_dkv = pipeline.launch(entry, "swa_mosaic_dkv", out_type, (ctas,), ("ctas",), st)
  args = (q_BTNH, k_BTKH, v_BTKH, do_BTNH, lse_BNT, delta_BNT)
  args += (q_seg_BT, k_seg_BT) if st.segments else ()
  if not fused:
    return kernel_dkv(*args)
  parts = _COMPUTE_WGS * k_tiles if st.interpret else 1
  dq_acc_PBTNH = jax.new_ref(jnp.zeros((parts, B, T, N, H), jnp.float32))
  dk_BTNH, dv_BTNH = kernel_dkv(*args, dq_acc_PBTNH)
  dq_BTNH = (jax.freeze(dq_acc_PBTNH).sum(0) * st.scale).astype(dtype)
  return dk_BTNH, dv_BTNH, dq_BTNH
