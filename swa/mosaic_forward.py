"""The forward kernel of `implementation="mosaic"` (Pallas Mosaic GPU); the backward's two are in
swa/mosaic_backward.py, the pipeline all three share (and their Static) in swa/mosaic_pipeline.py.

A CTA owns 2 * block_q queries, each computing warpgroup block_q of them (a 64-row wgmma). The
producer streams the key/value blocks the CTA's window touches, and only those: keys
max(0, q0 - w + 1) ... q0 + 2 block_q - 1. Each warpgroup computes the blocks its own rows see, in
three loops (window edge masked, interior unmasked, causal diagonal masked), and waits out the
other blocks. The two warpgroups take turns at the tensor cores through a schedule barrier
(ping-pong), so one's softmax hides under the other's products. Outputs: O and the base-2
log-sum-exp per row. Persistent (Static.fwd_ctas): one CTA an SM loops over tiles of 2 * block_q
queries; its ring turns on across tiles, so the producer loads the next tile's first key blocks
under the current one's last, and each warpgroup loads its next queries into a second buffer
under its current work.
"""

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from swa import mosaic_pipeline as pipeline

_COMPUTE_WGS = pipeline.COMPUTE_WGS


def forward(q_BTNH, k_BTKH, v_BTKH, sink_N, q_seg_BT, k_seg_BT, st):
  """(out [B, T, N, H], lse2 [B, N, T] float32, the sink in it): the forward kernel on padded
  inputs; sink_N float32 [N] (st.sinks) and the segment ids int32 [B, T] (st.segments), or None."""
  B, T, N, H = q_BTNH.shape
  bq, bk, stages = st.fwd
  dtype = q_BTNH.dtype
  rows = _COMPUTE_WGS * bq  # a tile: the queries a CTA owns at a time
  q_tiles = T // rows
  tiles = q_tiles * N * B
  ctas, q_bufs = pipeline.grid_size(tiles, st.fwd_ctas)

  def kernel(q_ref, k_ref, v_ref, *refs):
    sink_ref, q_seg_ref, k_seg_ref, (o_ref, lse_ref, scratch) = pipeline.optional_refs(
      refs, st.sinks, st.segments, st.segments
    )
    (qo_smem3, k_smem, v_smem, lse_smem3, p_smem2, sink_smem3, q_seg_smem3, k_seg_smem) = scratch[0]
    (k_bar, v_bar, q_bar), used, sched = scratch[1:]
    wg = lax.axis_index("wg")
    count, tile_of = pipeline.cta_tiles(tiles, ctas, q_tiles, N, rows)

    def steps_of(q0):
      return pipeline.key_blocks(q0, rows, bk, st.window, T)

    def rendezvous():  # the ping-pong: each call meets the other warpgroup's matching call
      plgpu.barrier_arrive(sched)
      plgpu.barrier_wait(sched)

    @pl.when(wg < _COMPUTE_WGS)
    def _compute():
      plgpu.set_max_registers(232, action="increase")

      def load_q(i, buf):  # tile i's queries of this warpgroup (and their sinks, segment ids)
        b, n, q0 = tile_of(i)
        first, bar = q0 + wg * bq, q_bar.at[buf * _COMPUTE_WGS + wg]
        plgpu.copy_gmem_to_smem(q_ref.at[b, pl.ds(first, bq), n], qo_smem3.at[buf, wg], bar)
        if st.sinks:
          plgpu.copy_gmem_to_smem(sink_ref.at[n], sink_smem3.at[buf, wg], bar)
        if st.segments:
          plgpu.copy_gmem_to_smem(q_seg_ref.at[b, pl.ds(first, bq)], q_seg_smem3.at[buf, wg], bar)

      def tile(i, g0):
        t = pipeline.tile(tile_of, steps_of, i, g0, q_bufs, wg, bq, bk, st.window, stages)
        qo_smem, lse_smem = qo_smem3.at[t.buf, wg], lse_smem3.at[t.buf, wg]
        plgpu.barrier_wait(q_bar.at[t.buf * _COMPUTE_WGS + wg])
        q_ids = pipeline.row_vector(q_seg_smem3.at[t.buf, wg]) if st.segments else None

        def skip(step):  # a block none of this warpgroup's rows see
          slot = t.slot(step)
          plgpu.barrier_wait(k_bar.at[slot])
          plgpu.barrier_wait(v_bar.at[slot])
          plgpu.barrier_arrive(used.at[slot])
          rendezvous()
          rendezvous()

        def step_fn(step, carry, masked):
          acc, m_i, l_i = carry
          slot = t.slot(step)
          plgpu.barrier_wait(k_bar.at[slot])

          def qk(acc_ref):
            plgpu.wgmma(acc_ref, qo_smem, k_smem.at[slot].transpose((1, 0)))
            rendezvous()
            return acc_ref[...]

          s = pipeline.logits(pl.run_scoped(qk, plgpu.ACC((bq, bk), jnp.float32)), st)
          ids = dict(row_ids=q_ids, col_ids=(k_seg_smem, slot))
          s = pipeline.mask_step(s, masked, t.first, step * bk, st, **ids)
          m_new = jnp.maximum(m_i, s.max(axis=1))
          alpha = jnp.exp2(m_i - m_new)
          p = jnp.exp2(s - lax.broadcast_in_dim(m_new, s.shape, [0]))
          l_i = l_i * alpha + p.sum(axis=1)
          acc = acc * lax.broadcast_in_dim(alpha, acc.shape, [0])
          p16 = p.astype(dtype)
          plgpu.barrier_arrive(sched)  # softmax done
          plgpu.barrier_wait(v_bar.at[slot])
          plgpu.barrier_wait(sched)  # the tensor cores are ours
          acc = pipeline.accumulate(acc, p16, v_smem.at[slot], p_smem2, wg, st)
          plgpu.barrier_arrive(used.at[slot])
          # After its first block, the next tile's queries go into the other buffer (the last
          # tile's output, copied out of it at that tile's end, has had a block's time to leave).
          pipeline.prefetch(load_q, i, count, q_bufs, step == t.regions[0])
          return acc, m_new, l_i

        rows_of = lambda x: plgpu.layout_cast(
          jnp.full((bq,), x, jnp.float32), plgpu.Layout.WGMMA.reduce(1)
        )
        # a learned sink: the running max starts at it, and its exp2(0) = 1 is in the sum
        if st.sinks:
          carry = (
            pipeline.zeros((bq, H)),
            pipeline.row_vector(sink_smem3.at[t.buf, wg]),
            rows_of(1),
          )
        else:
          carry = (pipeline.zeros((bq, H)), rows_of(-jnp.inf), rows_of(0))
        pl.when(wg == 1)(rendezvous)  # start half a step behind warpgroup 0
        acc, m_i, l_i = pipeline.consume(t.lo, t.hi, t.regions, step_fn, skip, carry)
        pl.when(wg == 0)(rendezvous)
        qo_smem[...] = (acc / lax.broadcast_in_dim(l_i, acc.shape, [0])).astype(dtype)
        lse_smem[...] = m_i + jnp.log2(l_i)
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(qo_smem, o_ref.at[t.b, pl.ds(t.first, bq), t.n])
        plgpu.copy_smem_to_gmem(lse_smem, lse_ref.at[t.b, t.n, pl.ds(t.first, bq)])
        return t.steps_after()

      pipeline.walk_tiles(count, load_q, tile)

    @pl.when(wg == _COMPUTE_WGS)
    def _produce_kv():
      plgpu.set_max_registers(40, action="decrease")
      kv = (k_ref, v_ref), (k_smem, v_smem), (k_bar, v_bar)
      segments = (k_seg_ref, k_seg_smem) if st.segments else None
      tiles_of = (count, tile_of, steps_of)
      pipeline.produce_keys(*kv, used, *tiles_of, bk, stages, st.groups, segments)

  def entry(*refs):
    row_smem = lambda present, dtype: (
      plgpu.SMEM((q_bufs, _COMPUTE_WGS, bq), dtype) if present else None
    )
    smem = (
      pipeline.smem((q_bufs, _COMPUTE_WGS, bq, H), dtype),  # Q, then O
      pipeline.smem((stages, bk, H), dtype),
      pipeline.smem((stages, bk, H), dtype),
      plgpu.SMEM((q_bufs, _COMPUTE_WGS, bq), jnp.float32),
      # P, in interpret mode
      pipeline.smem((_COMPUTE_WGS, bq, bk), dtype) if st.interpret else None,
      row_smem(st.sinks, jnp.float32),  # each row's sink logit (base 2)
      row_smem(st.segments, jnp.int32),  # the queries' segment ids
      plgpu.SMEM((stages, bk), jnp.int32) if st.segments else None,  # the keys'
    )
    loaded = (  # one arrival per TMA copy
      plgpu.Barrier(num_arrivals=1 + st.segments, num_barriers=stages),
      plgpu.Barrier(num_barriers=stages),
      plgpu.Barrier(num_arrivals=1 + st.sinks + st.segments, num_barriers=q_bufs * _COMPUTE_WGS),
    )
    pl.run_scoped(
      lambda *scratch: kernel(*refs, scratch),
      smem,
      loaded,
      plgpu.Barrier(num_arrivals=_COMPUTE_WGS, num_barriers=stages),
      plgpu.Barrier(num_arrivals=_COMPUTE_WGS),
      collective_axes="wg",
    )

  out_type = (
    jax.ShapeDtypeStruct((B, T, N, H), dtype),
    jax.ShapeDtypeStruct((B, N, T), jnp.float32),
  )
  extra = []
  if st.sinks:  # each head's sink logit, base 2, once a row of a warpgroup (a TMA copy's shape)
    extra.append(jnp.broadcast_to((sink_N * pipeline.LOG2E)[:, None], (N, bq)))
  if st.segments:
    extra += [q_seg_BT, k_seg_BT]
  return pipeline.launch(entry, "swa_mosaic_fwd", out_type, (ctas,), ("ctas",), st)(
    q_BTNH, k_BTKH, v_BTKH, *extra
  )
