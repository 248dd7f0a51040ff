"""swa/fa3.py: FlashAttention-3 behind sliding_window_attention. On CPU (and without the package):
"fa3" is registered, an explicit request raises one line naming what is missing, and auto is what
it was without fa3. On a Hopper GPU with flash-attn3-jax (`pytest tests/test_fa3.py -k gpu`): out,
dq, dk, dv against the float32 reference (GQA, an odd length, tail offsets) and auto's choice."""

import jax
import jax.numpy as jnp
import pytest

from swa import attention, fa3, registry
from swa.attention import sliding_window_attention


def _qkv(B, T, N, K, H, dtype=jnp.float32, seed=0, S=None):
  S = T if S is None else S
  kq, kk, kv, kd = jax.random.split(jax.random.PRNGKey(seed), 4)
  return tuple(
    jax.random.normal(key, shape).astype(dtype)
    for key, shape in (
      (kq, (B, T, N, H)),
      (kk, (B, S, K, H)),
      (kv, (B, S, K, H)),
      (kd, (B, T, N, H)),
    )
  )


def _specs(B, T, N, K, H, dtype=jnp.float32):
  """Stand-ins of q, k, v (shape and dtype: all that check() and auto look at)."""
  return tuple(
    jax.ShapeDtypeStruct(shape, dtype) for shape in ((B, T, N, H), (B, T, K, H), (B, T, K, H))
  )


def _fa3_runs_here():
  q, k, v = _specs(1, 8, 2, 2, 128, jnp.bfloat16)
  return fa3.unsupported_reason(q, k, v, 4) is None


gpu = pytest.mark.skipif(
  not _fa3_runs_here(), reason="needs a Hopper GPU and flash-attn3-jax (pip install swa[fa3])"
)


def test_fa3_is_registered_with_tail_offsets_only():
  assert "fa3" in attention.implementations()
  assert attention.implementation_features("fa3") == {"tail_offsets"}


@pytest.mark.skipif(_fa3_runs_here(), reason="checks the error where fa3 cannot run")
def test_an_explicit_request_raises_one_line_naming_what_is_missing():
  q = k = v = jnp.zeros((1, 8, 2, 128), jnp.bfloat16)
  missing = "pip install flash-attn3-jax==0.2.3" if not fa3._installed() else "Hopper GPU"
  with pytest.raises(ValueError, match="implementation='fa3' is not available") as error:
    sliding_window_attention(q, k, v, 4, implementation="fa3")
  assert missing in str(error.value) and "\n" not in str(error.value)


def test_check_names_dtype_and_head_dims_once_the_package_and_gpu_are_there(monkeypatch):
  monkeypatch.setattr(fa3, "_installed", lambda: True)
  monkeypatch.setattr(fa3, "_hopper_reason", lambda: None)
  monkeypatch.setattr(fa3, "_import_error", lambda: None)
  reason = lambda *shapes_dtype: fa3.unsupported_reason(*_specs(*shapes_dtype), 4)
  assert reason(1, 8, 4, 2, 128, jnp.bfloat16) is None  # GQA is native
  assert "bfloat16 or float16" in reason(1, 8, 2, 2, 128, jnp.float32)
  assert "(64, 64)" in reason(1, 8, 2, 2, 64, jnp.bfloat16)
  q, k, _ = _specs(1, 8, 2, 2, 128, jnp.bfloat16)
  v64 = jax.ShapeDtypeStruct((1, 8, 2, 64), jnp.bfloat16)
  assert "(128, 64)" in fa3.unsupported_reason(q, k, v64, 4)


def test_auto_never_resolves_to_fa3_without_the_package_or_a_gpu():
  for dtype in (jnp.float32, jnp.bfloat16):
    q, k, v = _specs(1, 16, 2, 2, 128, dtype)
    for w in (4, 16, None):
      got = attention.resolve_implementation("auto", q, k, v, w)
      assert got != "fa3" or _fa3_runs_here()


def _auto_without_fa3(monkeypatch, *args):
  """auto's choice with fa3 taken out of the registry (as before it was added)."""
  with monkeypatch.context() as m:
    m.setattr(registry, "_REGISTRY", {k: v for k, v in registry._REGISTRY.items() if k != "fa3"})
    return attention.resolve_implementation("auto", *args)


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_without_the_package_auto_is_as_before(monkeypatch, backend):
  """On a CPU and on a (pretend) GPU: auto's choice is the one it made before fa3 existed."""
  monkeypatch.setattr(fa3, "_installed", lambda: False)
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  for dtype in (jnp.float32, jnp.bfloat16):
    q, k, v = _specs(1, 64, 4, 2, 128, dtype)
    for w in (8, 128, 512, None):
      want = _auto_without_fa3(monkeypatch, q, k, v, w)
      assert attention.resolve_implementation("auto", q, k, v, w) == want != "fa3"


def test_with_the_package_on_hopper_auto_takes_fa3_for_16_bit_inputs(monkeypatch):
  monkeypatch.setattr(fa3, "_installed", lambda: True)
  monkeypatch.setattr(fa3, "_hopper_reason", lambda: None)
  monkeypatch.setattr(fa3, "_import_error", lambda: None)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  q, k, v = _specs(1, 64, 4, 2, 128, jnp.bfloat16)
  for w in (8, 128, 4096, None):
    assert attention.resolve_implementation("auto", q, k, v, w) == "fa3"
  q32, k32, v32 = _specs(1, 64, 4, 2, 128)
  assert attention.resolve_implementation("auto", q32, k32, v32, 8) != "fa3"
  q64, k64, v64 = _specs(1, 64, 4, 2, 64, jnp.bfloat16)  # the wheels' head dim is 128 only
  assert attention.resolve_implementation("auto", q64, k64, v64, 8) != "fa3"
  # Features it lacks (sinks) go elsewhere.
  assert attention.resolve_implementation("auto", q, k, v, 8, {"sinks"}) != "fa3"


def _out_and_grads(fn, q, k, v, dout):
  out, vjp = jax.vjp(fn, q, k, v)
  return (out,) + vjp(dout)


@gpu
@pytest.mark.parametrize("window", [16, 128, None])
@pytest.mark.parametrize("T, N, K", [(999, 8, 2), (1024, 4, 4)])
def test_fa3_matches_the_reference_on_a_gpu(T, N, K, window):
  """bf16 FA3 (GQA and MHA, an odd length) against the float32 reference: out, dq, dk, dv, with
  the benchmark's tolerances (tests/test_pallas.py's GPU test)."""
  bf16 = _qkv(1, T, N, K, 128, jnp.bfloat16, seed=T + N)
  call = lambda impl: lambda q, k, v: sliding_window_attention(q, k, v, window, implementation=impl)
  got = _out_and_grads(jax.jit(call("fa3")), *bf16)
  want = _out_and_grads(call("reference"), *(x.astype(jnp.float32) for x in bf16))
  for i, (g, w) in enumerate(zip(got, want)):
    assert g.dtype == jnp.bfloat16 and g.shape == w.shape
    err = jnp.linalg.norm(g.astype(jnp.float32) - w) / jnp.linalg.norm(w)
    assert err < (2e-2 if i == 0 else 5e-2), (i, float(err))


@gpu
def test_fa3_tail_offsets_match_the_reference_on_a_gpu():
  """A sequence shard: 300 queries at positions 200.. over 501 keys from -1 (-1 is padding)."""
  q, k, v, dout = _qkv(1, 300, 8, 2, 128, jnp.bfloat16, S=501)
  call = lambda impl: (
    lambda q, k, v: sliding_window_attention(q, k, v, 128, implementation=impl, q_offset=200)
  )
  got = _out_and_grads(jax.jit(call("fa3")), q, k, v, dout)
  want = _out_and_grads(call("reference"), *(x.astype(jnp.float32) for x in (q, k, v, dout)))
  for i, (g, w) in enumerate(zip(got, want)):
    err = jnp.linalg.norm(g.astype(jnp.float32) - w) / jnp.linalg.norm(w)
    assert err < (2e-2 if i == 0 else 5e-2), (i, float(err))


@gpu
def test_auto_takes_fa3_on_a_gpu_with_the_package():
  q, k, v = _specs(1, 64, 4, 2, 128, jnp.bfloat16)
  assert attention.resolve_implementation("auto", q, k, v, 128) == "fa3"
