"""swa/pallas_attention.py: the kernels equal the reference (Pallas interpret mode on CPU; sinks, one
loop, GQA) and lower to Triton for a CUDA GPU at the benchmark's shapes (lowering only: no GPU
compiles them on CPU); on a GPU, the compiled kernels and cudnn_pallas against the reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swa import attention, pallas_attention

TINY = pallas_attention.BlockSizes.parse("16x16/16x16/16x16/w4s3/w4s2")


@pytest.fixture(autouse=True)
def _float32_matmuls():
  """Exact float32 products on any backend (a GPU would use TF32), so 2e-5 tolerances hold."""
  with jax.default_matmul_precision("highest"):
    yield


def _qkv(B, T, N, K, H, D, seed=0):
  kq, kk, kv, kd = jax.random.split(jax.random.PRNGKey(seed), 4)
  return (
    jax.random.normal(kq, (B, T, N, H)),
    jax.random.normal(kk, (B, T, K, H)),
    jax.random.normal(kv, (B, T, K, D)),
    jax.random.normal(kd, (B, T, N, D)),
  )


def _out_and_grads(fn, q, k, v, dout):
  out, vjp = jax.vjp(fn, q, k, v)
  return (out,) + vjp(dout)


# (B, T, N, K, H, D, window, blocks): 16-blocks so that every loop part runs (lower edge, interior,
# diagonal); GQA with an odd length and D != H (padded head dims); window 1; full attention;
# unequal forward/backward tiles with the window >= T; one masked loop per program (GQA); the
# default tiles shrunk to a short T.
CASES = [
  (1, 100, 4, 2, 8, 24, 40, TINY),
  (2, 48, 2, 2, 16, 16, 1, TINY),
  pytest.param((1, 40, 2, 1, 16, 16, None, TINY), marks=pytest.mark.slow),
  (1, 64, 2, 2, 16, 16, 70, pallas_attention.BlockSizes.parse("32x16/16x32/32x16/w4s3/w4s2")),
  (1, 80, 2, 1, 16, 16, 21, pallas_attention.BlockSizes.parse("16x16/16x16/16x32/w4s3/w4s2/1loop")),
  pytest.param((1, 37, 2, 2, 16, 16, 9, None), marks=pytest.mark.slow),
]


@pytest.mark.parametrize("case", CASES)
def test_matches_reference_forward_and_gradients(case):
  B, T, N, K, H, D, window, blocks = case
  q, k, v, dout = _qkv(B, T, N, K, H, D, seed=T)
  fast = lambda q, k, v: attention.sliding_window_attention(
    q, k, v, window, implementation="pallas", block_sizes=blocks, interpret=True
  )
  slow = jax.jit(
    lambda q, k, v: attention.sliding_window_attention(q, k, v, window, implementation="reference")
  )
  for got, want in zip(_out_and_grads(fast, q, k, v, dout), _out_and_grads(slow, q, k, v, dout)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=2e-5)


# (B, T, N, K, window, num_sinks, q_offset, S, blocks): sinks in one block and across three (with
# the window's first block among them), GQA, one loop, a window wider than the sequence, and two
# shards' calls (S - T halo keys, static offsets): halo keys at negative positions, and a first key at
# position 4, past four of the ten sinks.
SINK_CASES = [
  (1, 70, 2, 2, 9, 3, None, None, TINY),
  pytest.param((1, 96, 4, 2, 20, 40, None, None, TINY), marks=pytest.mark.slow),
  (
    1,
    64,
    2,
    1,
    12,
    5,
    None,
    None,
    pallas_attention.BlockSizes.parse("16x16/16x16/16x16/w4s3/w4s2/1loop"),
  ),
  pytest.param((1, 20, 2, 2, 30, 4, None, None, TINY), marks=pytest.mark.slow),  # w > T
  (1, 40, 2, 2, 10, 6, 3, 47, TINY),
  (1, 24, 2, 2, 6, 10, 10, 30, TINY),
]


@pytest.mark.parametrize("case", SINK_CASES)
def test_sinks_match_reference_forward_and_gradients(case):
  B, T, N, K, window, sinks, q_offset, S, blocks = case
  S = S or T
  q = _qkv(B, T, N, K, 16, 16, seed=T)[0]
  _, k, v, _ = _qkv(B, S, N, K, 16, 16, seed=S + 1)
  dout = _qkv(B, T, N, K, 16, 16, seed=2)[3]
  where = {} if q_offset is None else dict(q_offset=q_offset)
  fast = lambda q, k, v: attention.sliding_window_attention(
    q,
    k,
    v,
    window,
    implementation="pallas",
    num_sinks=sinks,
    block_sizes=blocks,
    interpret=True,
    **where,
  )
  slow = lambda q, k, v: attention.sliding_window_attention(
    q, k, v, window, implementation="reference", num_sinks=sinks, **where
  )
  for got, want in zip(_out_and_grads(fast, q, k, v, dout), _out_and_grads(slow, q, k, v, dout)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=2e-5)


def test_sinks_need_python_ints():
  q, k, v, _ = _qkv(1, 32, 1, 1, 16, 16)
  with pytest.raises(ValueError, match="num_sinks as a Python int"):
    pallas_attention.pallas_attention(q, k, v, 4, 0.25, num_sinks=jnp.int32(2))
  traced = jax.jit(
    lambda q, k, v, s: attention.sliding_window_attention(
      q, k, v, 4, implementation="pallas", num_sinks=s, interpret=True
    )
  )
  with pytest.raises(ValueError, match="need num_sinks and q_offset as Python ints"):
    traced(q, k, v, 2)


def test_block_sizes_round_trip_and_bad_values():
  blocks = pallas_attention.BlockSizes.parse("128x64/128x32/32x128/w4s3/w8s2")
  assert blocks == pallas_attention.BlockSizes()
  assert pallas_attention.BlockSizes.parse(str(TINY)) == TINY
  with pytest.raises(ValueError, match="look like"):
    pallas_attention.BlockSizes.parse("128x64")
  q, k, v, _ = _qkv(1, 32, 1, 1, 16, 16)
  with pytest.raises(ValueError, match="powers of two >= 16"):
    pallas_attention.pallas_attention(q, k, v, 4, 0.25, block_sizes="24x16/16x16/16x16/w4s3/w4s2")
  with pytest.raises(ValueError, match=r"does not support \['offsets'\]"):
    attention.sliding_window_attention(
      q, k[:, :16], v[:, :16], 4, implementation="pallas", q_offset=16
    )
  with pytest.raises(ValueError, match="self-attention"):
    pallas_attention.pallas_attention(q, k[:, :16], v[:, :16], 4, 0.25)


def test_auto_picks_pallas_only_on_a_gpu_for_16_bit_inputs_below_the_measured_window():
  q, k, v, _ = (x.astype(jnp.bfloat16) for x in _qkv(1, 64, 2, 2, 16, 16))
  chosen = attention.resolve_implementation("auto", q, k, v, 8)
  if jax.default_backend() != "gpu" or pallas_attention.AUTO_MAX_WINDOW < 8:
    assert chosen != "pallas"
  else:
    assert chosen == "pallas"
  f32 = [x.astype(jnp.float32) for x in (q, k, v)]
  assert attention.resolve_implementation("auto", *f32, 8) != "pallas"


def test_forward_and_training_runs_each_functions_pass():
  ref = attention.reference_attention
  marked = lambda *args: ref(*args) + 1.0  # a forward that can be told apart
  both = attention.forward_and_training(marked, ref)
  q, k, v, _ = _qkv(1, 16, 2, 1, 8, 8)
  np.testing.assert_allclose(both(q, k, v, 4, 0.3), marked(q, k, v, 4, 0.3), rtol=1e-5, atol=1e-6)
  loss = lambda fn: lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v, 4, 0.3)))
  got = jax.jit(jax.value_and_grad(loss(both), argnums=(0, 1, 2)))(q, k, v)
  want = jax.value_and_grad(loss(ref), argnums=(0, 1, 2))(q, k, v)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)  # jit against eager rounding


def test_auto_takes_cudnn_pallas_for_gpu_training_windows(monkeypatch):
  q, k, v, _ = (x.astype(jnp.bfloat16) for x in _qkv(1, 64, 2, 2, 16, 16))
  if jax.default_backend() != "gpu":
    assert attention.resolve_implementation("auto", q, k, v, 8) != "cudnn_pallas"
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  w = pallas_attention.AUTO_TRAIN_MAX_WINDOW
  assert pallas_attention.auto_train_when(q, k, v, w) == (w > 0)
  assert not pallas_attention.auto_train_when(q, k, v, w + 1)
  assert not pallas_attention.auto_train_when(q.astype(jnp.float32), k, v, w)
  assert "cudnn_pallas" in attention.implementations()


def _lower_for_cuda(T, window, heads, kv_heads, blocks=None, num_sinks=0):
  """The fwd+bwd program lowered for an H200 (Triton IR built in Python; no GPU needed)."""
  q = jax.ShapeDtypeStruct((1, T, heads, 128), jnp.bfloat16)
  kv = jax.ShapeDtypeStruct((1, T, kv_heads, 128), jnp.bfloat16)
  attend = lambda q, k, v: pallas_attention.pallas_attention(
    q, k, v, window, 128**-0.5, num_sinks=num_sinks, block_sizes=blocks, interpret=False
  )
  loss = lambda q, k, v: attend(q, k, v).astype(jnp.float32).sum()
  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
  return grads.trace(q, kv, kv).lower(lowering_platforms=("cuda",)).as_text()


@pytest.mark.parametrize(
  "T, window, kv_heads, blocks, sinks",
  [
    (16384, 128, 16, None, 0),
    (16384, 4096, 16, None, 0),
    (1000, 100, 4, "64x64/64x64/64x64/w4s3/w4s3", 0),
    (4096, 512, 16, None, 4),
  ],
)
def test_kernels_lower_to_triton_for_a_cuda_gpu(monkeypatch, T, window, kv_heads, blocks, sinks):
  gpu_info = pytest.importorskip("jax._src.pallas.triton.gpu_info")  # JAX >= 0.11
  monkeypatch.setattr(
    gpu_info, "get_gpu_info", lambda: gpu_info.get_gpu_info_from_version(gpu_info.GpuVersion.H200)
  )
  text = _lower_for_cuda(T, window, 16, kv_heads, blocks, sinks)
  assert text.count("__gpu$xla.gpu.triton") == 3  # forward, dQ, dK/dV


@pytest.mark.skipif(
  jax.default_backend() != "gpu", reason="compiles the Triton kernels: needs a GPU"
)
@pytest.mark.parametrize(
  "T, window, sinks, blocks",
  [(4096, 512, 0, None), (4096, 128, 4, None), (3000, 1000, 0, None), (4096, 512, 0, "split")],
)
def test_compiled_kernels_match_the_reference_on_a_gpu(T, window, sinks, blocks):
  """bf16 kernels as the GPU compiles them (GQA, an odd length, sinks, both loop forms) against
  the float32 reference, with the benchmark's tolerances."""
  if blocks == "split":
    blocks = pallas_attention.BlockSizes.parse("64x64/64x32/32x64/w4s3/w4s3")
  q, k, v, dout = _qkv(1, T, 4, 2, 128, 128)
  fast = lambda q, k, v: attention.sliding_window_attention(
    q, k, v, window, implementation="pallas", num_sinks=sinks, block_sizes=blocks
  )
  slow = lambda q, k, v: attention.sliding_window_attention(
    q, k, v, window, implementation="reference", num_sinks=sinks
  )
  bf16 = [x.astype(jnp.bfloat16) for x in (q, k, v, dout)]
  got = _out_and_grads(jax.jit(fast), *bf16)
  want = _out_and_grads(slow, *(x.astype(jnp.float32) for x in bf16))
  for i, (g, w) in enumerate(zip(got, want)):
    err = jnp.linalg.norm(g.astype(jnp.float32) - w) / jnp.linalg.norm(w)
    assert err < (2e-2 if i == 0 else 5e-2), (i, float(err))


@pytest.mark.skipif(
  jax.default_backend() != "gpu", reason="cuDNN and compiled kernels: needs a GPU"
)
def test_cudnn_pallas_is_cudnn_forward_and_pallas_gradients_on_a_gpu():
  q, k, v, dout = (x.astype(jnp.bfloat16) for x in _qkv(1, 2048, 4, 2, 128, 128))
  call = lambda impl: (
    lambda q, k, v: attention.sliding_window_attention(q, k, v, 128, implementation=impl)
  )
  np.testing.assert_array_equal(jax.jit(call("cudnn_pallas"))(q, k, v), call("cudnn")(q, k, v))
  got = _out_and_grads(jax.jit(call("cudnn_pallas")), q, k, v, dout)
  want = _out_and_grads(jax.jit(call("pallas")), q, k, v, dout)
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g, w)


def _dense_with_segments(q, k, v, window, seg_BT):
  """float32 softmax attention under mask.visible with segment ids (GQA by repeating heads)."""
  from swa.mask import visible

  T, N, K = q.shape[1], q.shape[2], k.shape[2]
  pos = jnp.arange(T)
  mask_BTS = visible(
    pos[None, :, None], pos[None, None, :], window, 0, seg_BT[:, :, None], seg_BT[:, None, :]
  )
  k = jnp.repeat(k, N // K, axis=2)
  v = jnp.repeat(v, N // K, axis=2)
  s = jnp.einsum("BTNH,BSNH->BNTS", q, k).astype(jnp.float32) * q.shape[-1] ** -0.5
  p = jax.nn.softmax(jnp.where(mask_BTS[:, None], s, -jnp.inf), axis=-1)
  return jnp.einsum("BNTS,BSNH->BTNH", p, v.astype(jnp.float32))


def test_segment_ids_match_a_dense_segment_mask_forward_and_gradients():
  """Packed sequences in the Pallas kernel (interpret mode): a query sees only its own
  segment's keys inside the window; forward and gradients equal the dense form."""
  from swa.pallas_attention import pallas_attention as pallas_fn

  B, T, N, K, H, w = 2, 40, 4, 2, 8, 8
  keys = jax.random.split(jax.random.PRNGKey(3), 3)
  q = jax.random.normal(keys[0], (B, T, N, H))
  k = jax.random.normal(keys[1], (B, T, K, H))
  v = jax.random.normal(keys[2], (B, T, K, H))
  seg = jnp.asarray(np.repeat([[0, 1, 2, 3], [0, 0, 1, 1]], [7, 13, 3, 17], axis=1), jnp.int32)

  def loss(fn):
    return lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v)))

  got = lambda q, k, v: pallas_fn(
    q, k, v, w, H**-0.5, segment_ids=seg, block_sizes="16x16/16x16/16x16/w1s1/w1s1", interpret=True
  )
  want = lambda q, k, v: _dense_with_segments(q, k, v, w, seg)
  np.testing.assert_allclose(got(q, k, v), want(q, k, v), atol=2e-5, rtol=2e-5)
  g_got = jax.grad(loss(got), argnums=(0, 1, 2))(q, k, v)
  g_want = jax.grad(loss(want), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(g_got, g_want):
    np.testing.assert_allclose(a, b, atol=5e-5, rtol=5e-5)
  # The segments matter: without them the output differs at the segment starts.
  plain = _dense_with_segments(q, k, v, w, jnp.zeros_like(seg))
  assert np.abs(np.asarray(got(q, k, v)) - np.asarray(plain)).max() > 1e-2
