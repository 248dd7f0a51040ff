"""swa's logits equal transformers' on tiny random checkpoints of every supported family.

Each family is built in torch on the CPU (`MistralForCausalLM(config)`, ...), saved with
`save_pretrained` and loaded by swa/hf/. The logits must agree (float32, relative error <= 1e-4:
max |swa - hf| / max |hf|) on the full forward, on chunked prefill through the rolling cache with
chunks 1, w-1, w, w+1 and 3w, and on token-by-token decoding past the window; a swa model written
by save_checkpoint opens in transformers with the same logits. T = 40 > w = 8 everywhere, so a
window off by one (w vs w + 1 keys) or a wrong layer map changes the logits.

These need torch and transformers (the `hf-test` extra; CI's second venv, .ci/run); without them
the whole module is skipped.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch", reason="needs torch (pip install '.[hf-test]')")
transformers = pytest.importorskip(
  "transformers", reason="needs transformers (pip install '.[hf-test]')"
)

from swa import cache as cache_lib  # noqa: E402
from swa import hf, streaming  # noqa: E402
from swa.model import ModelConfig, Transformer, config_of  # noqa: E402

W, T, B, VOCAB = 8, 40, 2, 64
TOLERANCE = 1e-4

COMMON = dict(
  vocab_size=VOCAB,
  hidden_size=32,
  intermediate_size=48,
  num_attention_heads=4,
  num_key_value_heads=2,
  head_dim=8,
  max_position_embeddings=128,
  rms_norm_eps=1e-5,
  rope_theta=500.0,  # a low base turns the phases fast: a RoPE layout error shows at once
  attn_implementation="eager",
)


def _family_config(family, **changes):
  """The tiny transformers config of a family (windows: mistral all, qwen2 mixed, gemma2 odd)."""
  kwargs = {
    "mistral": dict(num_hidden_layers=2, sliding_window=W, **COMMON),
    "qwen2": dict(
      num_hidden_layers=4,
      use_sliding_window=True,
      sliding_window=W,
      layer_types=["full_attention", "sliding_attention", "sliding_attention", "full_attention"],
      **COMMON,
    ),
    "gemma2": dict(
      num_hidden_layers=3,
      sliding_window=W,
      query_pre_attn_scalar=12,
      attn_logit_softcapping=2.0,  # small caps, so that tanh bends the logits
      final_logit_softcapping=3.0,
      **COMMON,
    ),
    # No layer_types: layers i >= max_window_layers slide; q/k norms, no biases.
    "qwen3": dict(
      num_hidden_layers=3, use_sliding_window=True, sliding_window=W, max_window_layers=1, **COMMON
    ),
    # The default layer pattern (5 local : 1 global), a RoPE base per kind, q/k norms.
    "gemma3": dict(
      num_hidden_layers=7,
      sliding_window=W,
      query_pre_attn_scalar=12,
      rope_parameters={
        "sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
        "full_attention": {"rope_type": "default", "rope_theta": 5000.0},
      },
      **{k: v for k, v in COMMON.items() if k != "rope_theta"},
    ),
  }[family]
  kwargs.update(changes)
  cls = {
    "mistral": transformers.MistralConfig,
    "qwen2": transformers.Qwen2Config,
    "gemma2": transformers.Gemma2Config,
    "gemma3": transformers.Gemma3TextConfig,
    "qwen3": transformers.Qwen3Config,
  }[family]
  return cls(**kwargs)


def _randomize(model, seed=0):
  """Weights large enough that every part of the forward moves the logits."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if "norm" in name:
        p.copy_((0.0 if "gemma" in type(model).__name__.lower() else 1.0) + 0.2 * noise)
      else:
        p.copy_(0.3 * noise)
  return model


def _save_hf(family, folder, **config_changes):
  config = _family_config(family, **config_changes)
  cls = {
    "mistral": transformers.MistralForCausalLM,
    "qwen2": transformers.Qwen2ForCausalLM,
    "gemma2": transformers.Gemma2ForCausalLM,
    "gemma3": transformers.Gemma3ForCausalLM,
    "qwen3": transformers.Qwen3ForCausalLM,
  }[family]
  torch.manual_seed(0)
  model = _randomize(cls(config).eval())
  model.save_pretrained(folder)
  return model


def _hf_logits(model, tokens_BT):
  with torch.no_grad():
    out = model(torch.tensor(np.asarray(tokens_BT), dtype=torch.long), use_cache=False)
  return out.logits.float().numpy()


def _tokens(seed=1):
  return np.random.default_rng(seed).integers(0, VOCAB, (B, T)).astype(np.int32)


def _assert_close(got, want, what):
  err = float(np.max(np.abs(np.asarray(got) - want)) / np.max(np.abs(want)))
  assert err <= TOLERANCE, f"{what}: relative error {err:.2e}"


FAMILIES = ["mistral", "qwen2", "qwen3", "gemma2", "gemma3"]


@pytest.fixture(scope="module", params=FAMILIES)
def family_checkpoint(request, tmp_path_factory):
  """(family, folder, transformers model, tokens, transformers logits)."""
  folder = tmp_path_factory.mktemp(request.param)
  model = _save_hf(request.param, folder)
  tokens = _tokens()
  return request.param, folder, model, tokens, _hf_logits(model, tokens)


EXPECTED_WINDOWS = {
  "mistral": (W, W),
  "qwen2": (None, W, W, None),
  "gemma2": (W, None, W),
  "gemma3": (W,) * 5 + (None, W),
  "qwen3": (None, W, W),
}


@pytest.mark.parametrize("implementation", ["reference", "chunked", "auto"])
def test_full_forward_equals_transformers(family_checkpoint, implementation):
  family, folder, _, tokens, want = family_checkpoint
  graphdef, params = hf.load_checkpoint(folder, attention=implementation)
  assert config_of(graphdef, params).layer_windows == EXPECTED_WINDOWS[family]
  got = nnx.merge(graphdef, params)(jnp.asarray(tokens))
  _assert_close(got, want, f"{family} full forward ({implementation})")


@pytest.mark.parametrize("chunk", [1, W - 1, W, W + 1, 3 * W])
def test_chunked_prefill_through_the_rolling_cache_equals_transformers(family_checkpoint, chunk):
  family, folder, _, tokens, want = family_checkpoint
  graphdef, params = hf.load_checkpoint(folder)
  model_config = config_of(graphdef, params)
  cache = cache_lib.init_cache(model_config, B, max_len=T)
  # The rolling cache holds w slots for each windowed layer, whatever the stream's length.
  for window, layer in zip(model_config.layer_windows, cache):
    assert layer["pos"].shape[0] == (T if window is None else window)
  got, _ = streaming.prefill(graphdef, params, cache, tokens, chunk)
  _assert_close(got, want, f"{family} prefill in chunks of {chunk}")


def test_token_by_token_decode_past_the_window_equals_transformers(family_checkpoint):
  """Prefill w - 1 tokens, then decode one at a time: the cache fills exactly at the window."""
  family, folder, _, tokens, want = family_checkpoint
  graphdef, params = hf.load_checkpoint(folder)
  cache = cache_lib.init_cache(config_of(graphdef, params), B, max_len=T)
  logits, cache = streaming.prefill(graphdef, params, cache, tokens[:, : W - 1], W - 1)
  steps = [np.asarray(logits)]
  for t in range(W - 1, T):
    logits_BV, cache = streaming.decode_step(graphdef, params, cache, tokens[:, t])
    steps.append(np.asarray(logits_BV)[:, None])
  _assert_close(np.concatenate(steps, axis=1), want, f"{family} decode")


def test_transformers_own_cached_decode_agrees_with_its_full_forward(family_checkpoint):
  """The peer's incremental decoding past the window, as the reference above assumes."""
  family, _, model, tokens, want = family_checkpoint
  ids = torch.tensor(tokens, dtype=torch.long)
  with torch.no_grad():
    out = model(ids[:, :1], use_cache=True)
    steps, past = [out.logits.numpy()], out.past_key_values
    for t in range(1, T):
      out = model(ids[:, t : t + 1], past_key_values=past, use_cache=True)
      steps.append(out.logits.numpy())
      past = out.past_key_values
  _assert_close(np.concatenate(steps, axis=1), want, f"{family} transformers' own decode")


def test_qwen2_without_layer_types_slides_from_max_window_layers(tmp_path):
  """Qwen2Config's rule: layers i >= max_window_layers slide (not the first ones)."""
  model = _save_hf("qwen2", tmp_path, layer_types=None, max_window_layers=3)
  path = tmp_path / "config.json"
  config = json.loads(path.read_text())
  config.pop("layer_types")
  path.write_text(json.dumps(config))
  reloaded = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path, attn_implementation="eager")
  assert reloaded.config.layer_types == ["full_attention"] * 3 + ["sliding_attention"]
  graphdef, params = hf.load_checkpoint(tmp_path)
  assert config_of(graphdef, params).layer_windows == (None, None, None, W)
  tokens = _tokens(2)
  want = _hf_logits(reloaded.eval(), tokens)
  _assert_close(nnx.merge(graphdef, params)(jnp.asarray(tokens)), want, "qwen2 max_window_layers")
  del model


SWA_MODELS = {
  "mistral": dict(num_layers=2, window_size=W, mlp="swiglu"),
  "qwen2": dict(num_layers=3, window_size=(W, None, W), mlp="swiglu", qkv_bias=True),
  "gemma2": dict(
    num_layers=2,
    window_size=(W, None),
    mlp="geglu",
    norm_plus_one=True,
    embed_scale=True,
    post_norms=True,
    tie_embeddings=True,
    attention_scale=12**-0.5,
    attention_softcap=2.0,
    final_softcap=3.0,
  ),
  "qwen3": dict(num_layers=2, window_size=(None, W), mlp="swiglu", qk_norm=True),
  "gemma3": dict(
    num_layers=3,
    window_size=(W, W, None),
    rope_base=(100.0, 100.0, 5000.0),
    mlp="geglu",
    norm_plus_one=True,
    embed_scale=True,
    post_norms=True,
    qk_norm=True,
    tie_embeddings=True,
  ),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_swa_model_saved_opens_in_transformers_with_the_same_logits(family, tmp_path):
  shape = dict(vocab_size=VOCAB, d_model=32, num_heads=4, num_kv_heads=2, mlp_dim=48)
  config = ModelConfig(
    **{**shape, "rope_base": 500.0, "norm_eps": 1e-5, "dtype": "float32", **SWA_MODELS[family]}
  )
  model = Transformer(config, rngs=nnx.Rngs(3))
  graphdef, state = nnx.split(model, nnx.Param)
  # Random norm scales and biases too (they start at 1 / 0).
  leaves, treedef = jax.tree.flatten(state.to_pure_dict())
  keys = jax.random.split(jax.random.PRNGKey(4), len(leaves))
  leaves = [x + 0.2 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
  params = jax.tree.unflatten(treedef, leaves)
  hf.save_checkpoint(tmp_path, graphdef, params, family=family)
  loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager")
  assert type(loaded).__name__ == hf.FAMILIES[family].architecture
  tokens = _tokens(5)
  want = _hf_logits(loaded.eval(), tokens)
  _assert_close(nnx.merge(graphdef, params)(jnp.asarray(tokens)), want, f"{family} export")
  # And back: the written folder loads into the same swa model.
  graphdef2, params2 = hf.load_checkpoint(tmp_path)
  assert config_of(graphdef2, params2) == config
  _assert_close(nnx.merge(graphdef2, params2)(jnp.asarray(tokens)), want, f"{family} reload")
