"""swa/mosaic_attention.py: the warp-specialised Mosaic GPU kernels equal the float32 reference,
forward and gradients, in Mosaic GPU's interpret mode on the CPU (JAX >= 0.11: it simulates the
three warpgroups, shared memory, barriers and TMA copies) and, on a Hopper GPU, compiled.

Interpret mode checks the arithmetic, the indexing, the window's loop bounds and that the barrier
protocol neither deadlocks nor mismatches arrivals; it runs TMA copies at once, so it cannot show a
missing wait on a copy (a GPU run can)."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swa import attention, chunked, kernel_adapters, mosaic_attention

needs_mosaic = pytest.mark.skipif(
  mosaic_attention._import_reason() is not None,
  reason=f"Mosaic GPU kernels unavailable here: {mosaic_attention._import_reason()}",
)
on_hopper = pytest.mark.skipif(
  jax.default_backend() != "gpu"
  or not str(getattr(jax.devices()[0], "compute_capability", "")).startswith("9."),
  reason="compiles the Mosaic GPU kernels: needs a Hopper GPU",
)


def _qkv(B, T, N, K, H, dtype, seed=0, S=None):
  kq, kk, kv, kd = jax.random.split(jax.random.PRNGKey(seed), 4)
  S = T if S is None else S
  shapes = ((B, T, N, H), (B, S, K, H), (B, S, K, H), (B, T, N, H))
  return tuple(jax.random.normal(key, shape, dtype) for key, shape in zip((kq, kk, kv, kd), shapes))


def _out_and_grads(fn, q, k, v, dout):
  out, vjp = jax.vjp(fn, q, k, v)
  return (out,) + vjp(dout)


def _assert_close(fast, q, k, v, dout, slow=None, tol=(5e-3, 1e-2)):
  """fast's output and gradients against the float32 reference on the same (rounded) inputs: the
  error's norm relative to the reference's, under tol (output, gradients). The reference's norm
  counts as at least 1e-3 per entry (w = 1: dQ is a difference of two equal products, ~0)."""
  slow = slow or (lambda q, k, v: attention.sliding_window_attention(q, k, v, None))
  got = _out_and_grads(fast, q, k, v, dout)
  want = _out_and_grads(slow, *(x.astype(jnp.float32) for x in (q, k, v, dout)))
  for i, (g, w) in enumerate(zip(got, want)):
    assert g.dtype == q.dtype and g.shape == w.shape, (i, g.dtype, g.shape)
  _assert_errors_under(got, want, tol)


def _assert_errors_under(got, want, tol):
  """Each array of got against want's (the output, then gradients): the error's norm relative to
  the reference's, under tol (output, gradients); the reference's norm counts as at least 1e-3
  per entry."""
  for i, (g, w) in enumerate(zip(got, want)):
    norm = max(float(jnp.linalg.norm(w)), 1e-3 * w.size**0.5)
    err = float(jnp.linalg.norm(g.astype(jnp.float32) - w)) / norm
    assert err < tol[min(i, 1)], (i, err)


def _contract(window, impl="mosaic", **options):
  return lambda q, k, v: attention.sliding_window_attention(
    q, k, v, window, implementation=impl, **options
  )


FUSED = "64x128s2/fused/64x64s2"  # dQ added into float32 by the dK/dV kernel (5 products)

# (B, T, N, K, H, window, block sizes): GQA over an odd length with a window that starts inside a
# block (every loop region: waited-out, masked, interior); a window shorter than a block (each
# warpgroup waits out blocks the other needs); full attention at H = 128 (T padded to 256);
# window 1; larger tiles with per-kernel rings; the fused dQ (interpret mode sums per-warpgroup
# slices where a GPU reduces into one buffer), GQA and full attention at H = 128; every kernel
# persistent ("p": 3 CTAs in interpret mode, so the first case's 8 tiles of 128 rows, 2 a head,
# fall to CTAs of 3, 3 and 2 tiles across heads), a window shorter than a block, and with the
# fused dQ, full attention. (The default tiles have a persistent forward for w <= 512.)
PERSISTENT = "64x64s2p/64x64s3p/64x64s3p"
CASES = [
  (1, 200, 4, 2, 64, 100, None),
  (1, 200, 4, 2, 64, 100, "64x64s2/fused/64x64s2"),
  (1, 200, 4, 2, 64, 100, PERSISTENT),
  pytest.param((1, 256, 2, 1, 64, 16, PERSISTENT), marks=pytest.mark.slow),
  pytest.param((2, 130, 2, 2, 128, None, "64x128s2p/fused/64x64s2p"), marks=pytest.mark.slow),
  pytest.param((1, 130, 2, 1, 128, None, FUSED), marks=pytest.mark.slow),
  pytest.param((1, 256, 2, 1, 64, 16, None), marks=pytest.mark.slow),
  pytest.param((2, 130, 2, 2, 128, None, None), marks=pytest.mark.slow),
  pytest.param((1, 256, 2, 2, 64, 1, None), marks=pytest.mark.slow),
  pytest.param((1, 384, 2, 1, 64, 200, "128x64s3/64x128s2/64x128s3"), marks=pytest.mark.slow),
]


@needs_mosaic
@pytest.mark.parametrize("case", CASES)
def test_interpreted_kernels_match_the_reference_forward_and_gradients(case):
  B, T, N, K, H, window, blocks = case
  q, k, v, dout = _qkv(B, T, N, K, H, jnp.float16, seed=T + H)
  slow = _contract(window, "reference")
  _assert_close(_contract(window, block_sizes=blocks), q, k, v, dout, slow)


def _segments(B, T, seed):
  """int32 [B, T] segment ids: per row, segments of random lengths (1 ... T // 2 tokens), so that
  they start inside blocks and some are a single token."""
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(B):
    lengths = []
    while sum(lengths) < T:
      lengths.append(int(rng.integers(1, T // 2)))
    rows.append(np.repeat(np.arange(len(lengths)), lengths)[:T] + 10 * len(rows))
  return jnp.asarray(np.stack(rows), jnp.int32)


def _assert_sinks_and_segments_close(case, tol=(5e-3, 1e-2), **options):
  """The kernels' output and gradients, d/dsink_logits included, against the float32 reference
  with the same learned sinks and segment ids (case: B, T, N, K, H, window, blocks, sinks,
  segments) and options (q_offset, logit_softcap), by _assert_errors_under."""
  B, T, N, K, H, window, blocks, sinks, segments = case
  S = T + options.get("q_offset", 0)
  q, k, v, dout = _qkv(B, T, N, K, H, jnp.float16, seed=T + H, S=S)
  sink = 2.0 * jax.random.normal(jax.random.PRNGKey(T), (N,)) if sinks else jnp.zeros((N,))
  if segments:
    k_seg = _segments(B, S, seed=T)
    options.update(segment_ids=k_seg[:, S - T :], k_segment_ids=k_seg)

  def outputs(impl, q, k, v, dout, **extra):
    def attend(q, k, v, sink):
      with_sink = dict(sink_logits=sink) if sinks else {}
      return attention.sliding_window_attention(
        q, k, v, window, implementation=impl, **with_sink, **options, **extra
      )

    out, vjp = jax.vjp(attend, q, k, v, sink)
    return (out,) + vjp(dout)

  got = outputs("mosaic", q, k, v, dout, block_sizes=blocks)
  want = outputs("reference", *(x.astype(jnp.float32) for x in (q, k, v, dout)))
  _assert_errors_under(got, want, tol)


# (B, T, N, K, H, window, block sizes, learned sinks, segment ids): GQA over an odd length with
# both, a window that starts inside a block and is wide enough for interior (unmasked) steps in
# every kernel, whose segments must still be masked; each alone; every kernel persistent; the
# fused dQ; full attention at H = 128 over two rows of segments; window 1 (each row sees only
# itself: with a sink, out = v * p_self).
FEATURE_CASES = [
  (1, 300, 4, 2, 64, 200, None, True, True),
  pytest.param((1, 200, 4, 2, 64, 100, None, True, False), marks=pytest.mark.slow),
  pytest.param((1, 200, 4, 2, 64, 100, None, False, True), marks=pytest.mark.slow),
  pytest.param((1, 200, 4, 2, 64, 30, PERSISTENT, True, True), marks=pytest.mark.slow),
  pytest.param((1, 200, 4, 2, 64, 100, FUSED, True, True), marks=pytest.mark.slow),
  pytest.param((2, 130, 2, 1, 128, None, None, True, True), marks=pytest.mark.slow),
  pytest.param((1, 130, 2, 2, 64, 1, None, True, True), marks=pytest.mark.slow),
]


@needs_mosaic
@pytest.mark.parametrize("case", FEATURE_CASES)
def test_interpreted_kernels_with_learned_sinks_and_segments_match_the_reference(case):
  _assert_sinks_and_segments_close(case)


@needs_mosaic
@pytest.mark.slow  # 10-20 s a case in interpret mode
@pytest.mark.parametrize(
  "case",
  [(1, 200, 4, 2, 64, 100, None, True, True), (1, 130, 2, 1, 128, None, FUSED, False, False)],
)
def test_interpreted_kernels_with_a_logit_softcap_match_the_reference(case):
  """Logits scaled, then capped at 1.5 (c * tanh(s / c), bending most of them), with sinks and
  segments, and alone with the fused dQ: the tanh in the forward, its slope in dS."""
  _assert_sinks_and_segments_close(case, logit_softcap=1.5)


@needs_mosaic
@pytest.mark.slow  # 15 s in interpret mode
def test_sinks_and_segments_of_a_sequence_shard_over_its_halo():
  """A shard's call (tail_aligned): 96 queries at 160.. over keys from 0, their segment ids and
  the halo's (k_segment_ids)."""
  _assert_sinks_and_segments_close((1, 96, 2, 1, 64, 70, None, True, True), q_offset=160)


@needs_mosaic
def test_bfloat16_and_a_sequence_shard_over_its_halo():
  """bf16 inputs, and a shard's call: 96 queries at positions 160.. over 256 keys from 0 (tail
  offsets, through kernel_adapters.tail_aligned)."""
  q, k, v, dout = _qkv(1, 96, 2, 1, 64, jnp.bfloat16, seed=5, S=256)
  fast = _contract(70, q_offset=160)
  slow = _contract(70, "reference", q_offset=160)
  _assert_close(fast, q, k, v, dout, slow, tol=(2e-2, 4e-2))


@needs_mosaic
@pytest.mark.slow  # 15 s in interpret mode
def test_a_pair_is_its_forward_plain_and_the_mosaic_kernels_under_vjp():
  """The glue of cudnn_mosaic and fa3_mosaic (forward_and_training inside tail_aligned, an odd
  length padded by one slot) around the interpreted kernels; chunked's forward stands in for
  cuDNN's or FA3's, which need a GPU (test_pairs_..._on_hopper runs the real pairs)."""
  mosaic = functools.partial(mosaic_attention.mosaic_attention, interpret=True)
  pair = kernel_adapters.forward_and_training(chunked.chunked_attention, mosaic)
  pair, mosaic = (kernel_adapters.tail_aligned(f, even_length=True) for f in (pair, mosaic))
  q, k, v, dout = _qkv(1, 67, 2, 1, 64, jnp.float16, seed=3)
  call = lambda fn: lambda q, k, v: fn(q, k, v, 20, 0.125)
  assert (
    call(pair)(q, k, v) == call(kernel_adapters.tail_aligned(chunked.chunked_attention))(q, k, v)
  ).all()
  for got, want in zip(
    _out_and_grads(call(pair), q, k, v, dout), _out_and_grads(call(mosaic), q, k, v, dout)
  ):
    assert (got == want).all()


def test_bad_inputs_get_one_line_errors():
  q, k, v, _ = _qkv(1, 128, 2, 1, 64, jnp.float32)
  with pytest.raises(ValueError, match="not available: .*bfloat16 or float16") as e:
    attention.sliding_window_attention(q, k, v, 16, implementation="mosaic")
  assert "\n" not in str(e.value)
  h32 = [x.astype(jnp.float16)[..., :32] for x in (q, k, v)]
  with pytest.raises(ValueError, match=r"head dims in \(64, 128\), got \(32, 32\)"):
    attention.sliding_window_attention(*h32, 16, implementation="mosaic")
  with pytest.raises(ValueError, match="does not support .*sinks"):
    attention.sliding_window_attention(*h32, 16, implementation="mosaic", num_sinks=2)
  with pytest.raises(ValueError, match="multiples of 64 and stages >= 2"):
    mosaic_attention.BlockSizes(block_q=32).validate()
  with pytest.raises(ValueError, match="look like '64x64s2/64x64s3/64x64s3'"):
    mosaic_attention.BlockSizes.parse("64x64/64x64/s2")
  blocks = mosaic_attention.BlockSizes(128, 64, 2, 64, 128, 3, 64, 192, 4)
  assert str(blocks) == "128x64s2/64x128s3/64x192s4" and not blocks.persistent
  assert mosaic_attention.BlockSizes.parse(str(blocks)) == blocks
  persistent = mosaic_attention.BlockSizes.parse("128x64s2p/64x128s3/64x192s4")
  assert persistent == dataclasses.replace(blocks, persistent=True)
  every = mosaic_attention.BlockSizes.parse("128x64s2p/64x128s3p/64x192s4p")
  assert every == dataclasses.replace(persistent, persistent_dq=True, persistent_dkv=True)
  assert str(every) == "128x64s2p/64x128s3p/64x192s4p"
  with pytest.raises(ValueError, match="a fused dQ has no dQ kernel to make persistent"):
    mosaic_attention.BlockSizes(fused_dq=True, persistent_dq=True).validate()
  fused = mosaic_attention.BlockSizes.parse("64x128s2/fused/64x64s2")
  assert fused.fused_dq and fused.kernels()[1] is None and str(fused) == "64x128s2/fused/64x64s2"


def test_without_interpret_mode_off_gpu_the_check_says_so(monkeypatch):
  """JAX 0.10 has Mosaic GPU but not its interpret mode: off a GPU, a one-line reason."""
  from jax.experimental.pallas import mosaic_gpu as plgpu

  mosaic_attention._import_reason.cache_clear()
  monkeypatch.delattr(plgpu, "InterpretGPUParams")
  try:
    q = jax.ShapeDtypeStruct((1, 128, 2, 64), jnp.float16)
    reason = mosaic_attention.unsupported_reason(q, q, q, 16)
    assert jax.default_backend() == "gpu" or "interpret mode" in reason
  finally:
    monkeypatch.undo()
    mosaic_attention._import_reason.cache_clear()


def test_auto_runs_mosaic_and_its_pairs_by_the_measured_rules(monkeypatch):
  """auto runs "fa3_mosaic" ahead of fa3, "mosaic" behind fa3 and "cudnn_mosaic" behind mosaic,
  all ahead of cudnn_pallas, on a GPU, for w up to the measured limits; elsewhere none."""
  rank = lambda name: attention.lookup(name).auto_rank
  assert rank("fa3_mosaic") < rank("fa3") < rank("mosaic") < rank("cudnn_mosaic")
  assert rank("cudnn_mosaic") < rank("cudnn_pallas")
  q = jax.ShapeDtypeStruct((1, 256, 2, 64), jnp.bfloat16)
  if jax.default_backend() != "gpu":
    picked = attention.resolve_implementation("auto", q, q, q, 16)
    assert "mosaic" not in picked
    for name in ("cudnn_mosaic", "fa3_mosaic"):  # an explicit request names the missing kernel
      with pytest.raises(ValueError, match=f"implementation='{name}' is not available: "):
        attention.resolve_implementation(name, q, q, q, 16)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  over_fa3, alone, over_cudnn = (
    mosaic_attention.AUTO_TRAIN_OVER_FA3_MAX_WINDOW,
    mosaic_attention.AUTO_MAX_WINDOW,
    mosaic_attention.AUTO_TRAIN_MAX_WINDOW,
  )
  # FA3 is faster than cuDNN wherever it was measured; fwd+bwd wins wherever fwd and fwd+bwd do
  assert 0 < over_fa3 <= over_cudnn and alone <= over_cudnn
  for when, limit in (
    (mosaic_attention.auto_train_over_fa3_when, over_fa3),
    (mosaic_attention.auto_when, alone),
    (mosaic_attention.auto_train_when, over_cudnn),
  ):
    assert when(q, q, q, limit) and when(q, q, q, 1)
    assert not when(q, q, q, limit + 1) and not when(q, q, q, None)


def test_default_tiles_are_persistent_up_to_w_512():
  """The forward is persistent with 128-key steps for w <= 512 and one CTA a tile above (and for
  full attention); the backward tiles are the same at every w."""
  string = lambda w: str(mosaic_attention.default_block_sizes(w))
  assert string(1) == string(512) == "64x128s2p/64x64s3/64x64s3"
  assert string(513) == string(None) == "64x128s2/64x64s3/64x64s3"


@needs_mosaic
@pytest.mark.parametrize(
  "T, window, H, kv_heads, blocks, features",
  [
    (16384, 128, 128, 16, None, False),
    (16384, 4096, 128, 16, None, False),
    (1000, 100, 64, 4, "128x64s3/64x128s2/64x128s3", False),
    (16384, 512, 128, 16, FUSED, False),
    (16384, 512, 128, 16, "64x128s2p/64x64s3p/64x64s3p", False),
    (16384, 512, 128, 16, None, True),
    pytest.param(16384, 512, 128, 16, FUSED, True, marks=pytest.mark.slow),
    pytest.param(16384, 512, 64, 16, PERSISTENT, True, marks=pytest.mark.slow),
  ],
)
def test_kernels_lower_to_mosaic_gpu_for_a_cuda_gpu(T, window, H, kv_heads, blocks, features):
  """The forward, dQ and dK/dV kernels go through Pallas's Mosaic GPU lowering (wgmma operand
  layouts, register arrays, TMA slices, shared memory within an H100's) at the benchmark's shapes,
  on the CPU, with learned sinks, soft-cap and segment ids where `features`: no GPU compiles them
  here, so this is lowering only."""
  q = jax.ShapeDtypeStruct((1, T, 16, H), jnp.bfloat16)
  kv = jax.ShapeDtypeStruct((1, T, kv_heads, H), jnp.bfloat16)
  sink = jax.ShapeDtypeStruct((16,), jnp.float32) if features else None
  ids = jax.ShapeDtypeStruct((1, T), jnp.int32) if features else None
  cap = 30.0 if features else None
  attend = lambda q, k, v, sink, ids: mosaic_attention.mosaic_attention(
    q,
    k,
    v,
    window,
    H**-0.5,
    sink_logits=sink,
    segment_ids=ids,
    logit_softcap=cap,
    block_sizes=blocks,
    interpret=False,
  )
  loss = lambda *args: attend(*args).astype(jnp.float32).sum()
  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
  text = grads.trace(q, kv, kv, sink, ids).lower(lowering_platforms=("cuda",)).as_text()
  kernels = 2 if blocks == FUSED else 3  # forward, dQ (unless fused), dK/dV
  assert text.count("stablehlo.custom_call @mosaic_gpu") == kernels


@on_hopper
@pytest.mark.parametrize("T, window", [(4096, 128), (4096, 512), (3000, 1000), (2048, None)])
@pytest.mark.parametrize("H", [64, 128])
@pytest.mark.parametrize("blocks", [None, FUSED, PERSISTENT])
def test_compiled_kernels_match_the_reference_on_hopper(T, window, H, blocks):
  """bf16 kernels as the GPU compiles them (GQA, an odd length, full attention; the default tiles,
  the fused dQ, whose TMA reduce-add only a GPU runs, and every kernel persistent, whose copies
  into reused buffers only a GPU can race) against the float32 reference, with the benchmark's
  tolerances (tests/test_pallas.py's GPU test)."""
  q, k, v, dout = _qkv(1, T, 4, 2, H, jnp.bfloat16, seed=T + H)
  fast = jax.jit(_contract(window, block_sizes=blocks))
  _assert_close(fast, q, k, v, dout, _contract(window, "reference"), tol=(2e-2, 5e-2))


@on_hopper
@pytest.mark.parametrize("T, window", [(4096, 512), (3000, 1000)])
@pytest.mark.parametrize("H", [64, 128])
@pytest.mark.parametrize("blocks", [None, FUSED])
def test_compiled_kernels_with_sinks_and_segments_match_the_reference_on_hopper(
  T, window, H, blocks
):
  """Learned sinks and segment ids (with GQA, an odd length) as the GPU compiles the kernels, with
  the benchmark's tolerances; sinks' gradient included."""
  case = (1, T, 4, 2, H, window, blocks, True, True)
  _assert_sinks_and_segments_close(case, tol=(2e-2, 5e-2))


@on_hopper
@pytest.mark.parametrize("H", [64, 128])
def test_compiled_kernels_with_a_logit_softcap_match_the_reference_on_hopper(H):
  _assert_sinks_and_segments_close(
    (1, 3000, 4, 2, H, 1000, None, False, False), (2e-2, 5e-2), logit_softcap=1.5
  )


@on_hopper
@pytest.mark.parametrize("pair, forward", [("cudnn_mosaic", "cudnn"), ("fa3_mosaic", "fa3")])
def test_pairs_are_one_forward_and_mosaic_gradients_on_hopper(pair, forward):
  """A pair's plain call is its forward kernel's output, bit for bit; under jax.vjp, output and
  gradients are the mosaic kernels' (an odd length: cudnn_mosaic pads one slot for cuDNN)."""
  q, k, v, dout = _qkv(1, 2047, 4, 2, 128, jnp.bfloat16, seed=7)
  reason = attention.lookup(pair).check(q, k, v, 128)
  if reason:
    pytest.skip(reason)
  assert (jax.jit(_contract(128, pair))(q, k, v) == _contract(128, forward)(q, k, v)).all()
  got = _out_and_grads(jax.jit(_contract(128, pair)), q, k, v, dout)
  want = _out_and_grads(jax.jit(_contract(128)), q, k, v, dout)
  for g, w in zip(got, want):
    assert (g == w).all()
