"""Checking a benchmark row: the float32 reference, the error against it, the tolerances."""

import functools

import jax
import jax.numpy as jnp

from swa import attention

# ok when out rel err <= the first and grad rel err <= the second, per input dtype.
TOLERANCE = {"bfloat16": (2e-2, 5e-2), "float16": (1e-2, 3e-2), "float32": (1e-3, 1e-3)}


def band_pairs(n, w):
  """Query-key pairs (i, j) with i - w < j <= i over 0 <= i < n (w None: the causal triangle)."""
  w = n if w is None else min(w, n)
  return n * w - w * (w - 1) // 2


# fwd+bwd FLOPs = (1 + BACKWARD_FACTOR) x the forward's: the forward has two band matmuls (Q·Kᵀ,
# P·V), a flash backward five (Q·Kᵀ recomputed, dO·Vᵀ, Pᵀ·dO, dS·K, dSᵀ·Q): 2.5x the forward.
BACKWARD_FACTOR = 2.5
FWD_BWD_FACTOR = 1 + BACKWARD_FACTOR


def band_flops(n, w, batch, heads, head_dim):
  """The forward's useful FLOPs: 4·P·H per query head (Q·Kᵀ and P·V over the P band pairs, H = D),
  i.e. 4·n·w_eff·H with w_eff = P / n the mean number of visible keys per query."""
  return 4 * band_pairs(n, w) * head_dim * batch * heads


def roofline(n, w, batch, heads, kv_heads, head_dim, itemsize, flop_s, byte_s):
  """The bounds of one (n, w) on a card: band FLOPs at its matmul rate and the fewest bytes at its
  copy rate, for the forward and fwd+bwd.

  Args:
    n, w: the length and window.
    batch, heads, kv_heads, head_dim: B, N, K, H (= D).
    itemsize: bytes per element of the inputs.
    flop_s: the card's matmul rate (FLOP/s), byte_s: its copy rate (bytes read + written / s).

  Returns:
    {"fwd_roofline_ms", "fwd_bytes_ms", "fwd_bwd_roofline_ms", "fwd_bwd_bytes_ms"}: the band's
    FLOPs over flop_s; the bytes of q, k, v, o (fwd) and also dO, dq, dk, dv (fwd+bwd), each read
    or written once, over byte_s.
  """
  flops = band_flops(n, w, batch, heads, head_dim)
  q_bytes = batch * n * heads * head_dim * itemsize  # each of q, o, dO, dq
  kv_bytes = batch * n * kv_heads * head_dim * itemsize  # each of k, v, dk, dv
  fwd_bytes = 2 * q_bytes + 2 * kv_bytes
  return {
    "fwd_roofline_ms": 1e3 * flops / flop_s,
    "fwd_bytes_ms": 1e3 * fwd_bytes / byte_s,
    "fwd_bwd_roofline_ms": 1e3 * FWD_BWD_FACTOR * flops / flop_s,
    "fwd_bwd_bytes_ms": 1e3 * 2 * fwd_bytes / byte_s,
  }


def reference_precision():
  """Float32 references on GPU use 3-pass TF32 (~1e-6 relative), "highest" elsewhere."""
  return "TF32_TF32_F32_X3" if jax.default_backend() == "gpu" else "highest"


@functools.partial(jax.jit, static_argnames=("w", "t0", "s0"))
def reference_f32(q, k, v, dout, w, t0=0, s0=0, segment_ids=None):
  """Float32 out, dq, dk, dv of the queries t0.. (keys s0..), one key/value head at a time.

  dk and dv are returned for keys t0.. only: those are exact from the slice (every query that
  sees them is in it); so are out and dq of every query in it.

  Args:
    q, k, v, dout: q, dout [B, n, N, H], k, v [B, n, K, H] (N % K == 0): the inputs and the
      output cotangent (any float dtype).
    w: the window.
    t0: first query row of the slice (0: every row, the dense reference).
    s0: first key of the slice, at most t0 - w + 1 (0 when t0 is 0).
    segment_ids: int [B, n] (packed documents: a query sees only its own document's keys), or
      None.

  Returns:
    (out, dq, dk, dv), float32 [B, n - t0, N or K, H] each.
  """
  placed = dict(q_offset=t0, k_offset=s0) if t0 else {}
  if segment_ids is not None:
    placed.update(segment_ids=segment_ids[:, t0:], k_segment_ids=segment_ids[:, s0:])
  attend = functools.partial(
    attention.sliding_window_attention, window_size=w, implementation="reference", **placed
  )

  K = k.shape[2]

  def one_head(x):  # one key/value head and its G query heads
    q1, k1, v1, d1 = x  # q1, d1 [B, rows, G, H]; k1, v1 [B, keys, H]
    out, vjp = jax.vjp(attend, q1, k1[:, :, None], v1[:, :, None])
    return (out,) + vjp(d1)

  f32 = lambda x: x.astype(jnp.float32)
  groups_first = lambda x: jnp.moveaxis(f32(x).reshape(x.shape[:2] + (K, -1, x.shape[3])), 2, 0)
  heads_first = lambda x: jnp.moveaxis(f32(x), 2, 0)
  outs = jax.lax.map(
    one_head,
    (
      groups_first(q[:, t0:]),
      heads_first(k[:, s0:]),
      heads_first(v[:, s0:]),
      groups_first(dout[:, t0:]),
    ),
  )
  merge = lambda o: jnp.moveaxis(o, 0, 2).reshape(
    o.shape[1:3] + (-1, o.shape[-1])
  )  # [B, rows, N, H]
  out, dq, dk, dv = (merge(o) for o in outs)
  return out, dq, dk[:, t0 - s0 :], dv[:, t0 - s0 :]


@functools.partial(jax.jit, static_argnames="t0")
def _rel_err(x, ref, t0):
  diff = x[:, t0:].astype(jnp.float32) - ref
  return jnp.max(jnp.abs(diff)), jnp.linalg.norm(diff) / jnp.linalg.norm(ref)


def check(row, out, grads, ref, t0, dtype):
  """Adds the errors of out (and grads) against the reference's rows t0.. to row, and "ok".

  Args:
    row: the row's dict, updated in place (out_max_abs_err, out_rel_err, grad_rel_errs,
      grad_rel_err, ok).
    out: [B, n, N, H] output, or None.
    grads: (dq, dk, dv), each [B, n, N, H], or None.
    ref: (out, dq, dk, dv) of reference_f32, rows t0.. only.
    t0: the reference's first query row.
    dtype: the input dtype's name, a key of TOLERANCE.
  """
  if out is not None:
    row["out_max_abs_err"], row["out_rel_err"] = map(float, _rel_err(out, ref[0], t0))
  if grads is not None:
    row["grad_rel_errs"] = [float(_rel_err(g, r, t0)[1]) for g, r in zip(grads, ref[1:])]
    row["grad_rel_err"] = max(row["grad_rel_errs"])
  out_tol, grad_tol = TOLERANCE[dtype]
  row["ok"] = row.get("out_rel_err", 0.0) <= out_tol and row.get("grad_rel_err", 0.0) <= grad_tol
