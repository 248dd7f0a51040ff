"""Adapters that extend a self-attention kernel to more of the attention contract.

`tail_aligned` gives a kernel that only knows self-attention from position 0 the feature
"tail_offsets" (a sequence shard's queries over a halo of earlier keys), odd lengths, and the key
segment ids of that halo; `forward_and_training` joins two implementations of one function, one for
plain calls and one for differentiated ones. swa/attention.py registers cudnn, pallas and
cudnn_pallas through them. `sixteen_bit_reason` is the dtype and head-dim check of the Hopper
kernels (fa3, mosaic).
"""

import jax
import jax.numpy as jnp
import numpy as np


def static_int(x):
  """Whether x is a Python or NumPy integer (known at trace time), not a bool."""
  return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def sixteen_bit_reason(q_BTNH, k_BSKH, v_BSKD, head_dims):
  """Why a Hopper kernel (fa3, mosaic) cannot take these inputs' dtypes or head dims, or None:
  it takes 16-bit inputs of one dtype and equal query and value head dims in head_dims."""
  if q_BTNH.dtype not in (jnp.bfloat16, jnp.float16) or not (
    q_BTNH.dtype == k_BSKH.dtype == v_BSKD.dtype
  ):
    return f"it takes bfloat16 or float16 inputs of one dtype, got {q_BTNH.dtype}"
  got = (q_BTNH.shape[-1], v_BSKD.shape[-1])
  if got[0] != got[1] or got[0] not in head_dims:
    return f"it takes equal query and value head dims in {head_dims}, got {got}"
  return None


def tail_aligned(fn, *, even_length=False):
  """Extends a self-attention-only `fn` to the feature "tail_offsets" (and to odd lengths).

  The T queries are the last T of the S key positions, query 0 at q_offset (traced or not). The
  queries are front-padded with zeros to S slots (one slot more on all three arrays for an odd S
  when even_length, as cuDNN's backward needs), then all three are rolled left by the number of
  slots that hold no real key (that extra slot, and keys at negative positions), so that the first
  real key sits in slot 0. Causal windowed self-attention over the slots is then the window over
  the positions: the rolled-away slots land after every real query, where causality hides them,
  and the padded queries' outputs are dropped (their zero cotangents add nothing to dk, dv).

  Sinks (an option num_sinks, for an fn that declares "sinks") are absolute positions: they are
  passed on as the number of slots that hold a position below num_sinks, which needs num_sinks and
  q_offset known at trace time. Segment ids (options segment_ids [B, T] and k_segment_ids [B, S],
  for an fn that declares "segment_ids") travel with their slots: a padded query slot takes the
  segment of the key in the same slot, so that it sees itself (no empty row, no NaN). Learned
  sinks (sink_logits, per head) need no placement.

  Args:
    fn: `fn(q_BTNH, k_BTKH, v_BTKD, window_size, scale, **options)`, self-attention from 0.
    even_length: also pad odd lengths to even ones (plain self-attention included).

  Returns:
    `call(q_BTNH, k_BSKH, v_BSKD, window_size, scale, *, q_offset=None, k_offset=None, **options)`.
  """

  def call(q_BTNH, k_BSKH, v_BSKD, window_size, scale, *, q_offset=None, k_offset=None, **options):
    if k_offset is not None:
      raise ValueError("tail_aligned takes keys that end where the queries end (k_offset=None).")
    T, S = q_BTNH.shape[1], k_BSKH.shape[1]
    extra = S % 2 if even_length else 0
    q0 = 0 if q_offset is None else q_offset
    if "num_sinks" in options:
      if not (static_int(options["num_sinks"]) and static_int(q0)):
        raise ValueError(
          "Sinks with a self-attention kernel need num_sinks and q_offset as Python ints."
        )
      first = max(int(q0) + T - S, 0)  # the position of the first real key
      options["num_sinks"] = max(0, options["num_sinks"] - first)
    if static_int(q0):
      rolled = extra + min(max(S - T - int(q0), 0), S)
    else:  # Keys at negative positions, counted at run time (a shard's index is traced).
      rolled = extra + jnp.clip(S - T - q0, 0, S)
    front = lambda x, n: jnp.pad(x, ((0, 0), (n, 0)) + ((0, 0),) * (x.ndim - 2)) if n else x
    roll = (lambda x, shift, axis: x) if static_int(rolled) and rolled == 0 else jnp.roll
    if options.get("segment_ids") is not None:
      k_seg_BS = options.pop("k_segment_ids", None)
      k_seg_BS = options["segment_ids"] if k_seg_BS is None else k_seg_BS
      k_seg_BS = front(k_seg_BS, extra)
      q_seg_BS = jnp.concatenate([k_seg_BS[:, : S - T + extra], options["segment_ids"]], axis=1)
      options["segment_ids"] = roll(q_seg_BS, -rolled, axis=1)
      options["k_segment_ids"] = roll(k_seg_BS, -rolled, axis=1)
    q_BSNH, k_BSKH, v_BSKD = (
      front(q_BTNH, S - T + extra),
      front(k_BSKH, extra),
      front(v_BSKD, extra),
    )
    out_BSND = fn(
      *(roll(x, -rolled, axis=1) for x in (q_BSNH, k_BSKH, v_BSKD)), window_size, scale, **options
    )
    return roll(out_BSND, rolled, axis=1)[:, S + extra - T :]

  return call


def forward_and_training(forward_fn, training_fn):
  """One attention function from two: forward_fn's output where the call is not differentiated,
  training_fn's forward and backward where it is.

  A `jax.custom_vjp` whose plain call is forward_fn and whose forward rule is training_fn's VJP:
  under jax.grad (or value_and_grad, vjp) both passes are training_fn's, output included. Both
  must compute the same function; they differ in speed (e.g. cuDNN's forward is faster, the Pallas
  kernels' fwd+bwd at small windows).

  Args:
    forward_fn, training_fn: `fn(q_BTNH, k_BSKH, v_BSKD, window_size, scale, **options)`; the
      options must be static (Python values), as the VJP closes over them.

  Returns:
    `call(q_BTNH, k_BSKH, v_BSKD, window_size, scale, **options)`.
  """

  def call(q_BTNH, k_BSKH, v_BSKD, window_size, scale, **options):
    args = (window_size, scale)

    @jax.custom_vjp
    def attend(q, k, v):
      return forward_fn(q, k, v, *args, **options)

    def attend_fwd(q, k, v):
      return jax.vjp(lambda q, k, v: training_fn(q, k, v, *args, **options), q, k, v)

    attend.defvjp(attend_fwd, lambda vjp, dout: vjp(dout))
    return attend(q_BTNH, k_BSKH, v_BSKD)

  return call
