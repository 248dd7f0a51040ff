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


def reference_precision():
  """Float32 references on GPU use 3-pass TF32 (~1e-6 relative), "highest" elsewhere."""
  return "TF32_TF32_F32_X3" if jax.default_backend() == "gpu" else "highest"


@functools.partial(jax.jit, static_argnames=("w", "t0", "s0"))
def reference_f32(q, k, v, dout, w, t0=0, s0=0):
  """Float32 out, dq, dk, dv of the queries t0.. (keys s0..), one head at a time.

  dk and dv are returned for keys t0.. only: those are exact from the slice (every query that
  sees them is in it); so are out and dq of every query in it.

  Args:
    q, k, v, dout: [B, n, N, H] inputs and the output cotangent (any float dtype).
    w: the window.
    t0: first query row of the slice (0: every row, the dense reference).
    s0: first key of the slice, at most t0 - w + 1 (0 when t0 is 0).

  Returns:
    (out, dq, dk, dv), float32 [B, n - t0, N, H] each.
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
