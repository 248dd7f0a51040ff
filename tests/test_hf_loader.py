"""swa/hf/ without torch: config.json fields -> ModelConfig (and one-line errors), safetensors read
and written with NumPy (one file, a sharded index, bfloat16), the export's refusals, and the
architecture options of swa/model.py (validation, tied head, learned sinks through the cache)."""

import copy
import dataclasses
import json

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
from flax import nnx

from swa import cache as cache_lib
from swa import hf, streaming, workdir
from swa.hf import weights
from swa.hf.checkpoint import abstract_model
from swa.model import ModelConfig, Transformer, config_of

# Mistral-7B-v0.1's config.json as published (the fields that shape the model).
MISTRAL_7B = {
  "architectures": ["MistralForCausalLM"],
  "bos_token_id": 1,
  "eos_token_id": 2,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 32768,
  "model_type": "mistral",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05,
  "rope_theta": 10000.0,
  "sliding_window": 4096,
  "tie_word_embeddings": False,
  "torch_dtype": "bfloat16",
  "use_cache": True,
  "vocab_size": 32000,
}

TINY = dict(
  vocab_size=32,
  hidden_size=16,
  intermediate_size=24,
  num_attention_heads=2,
  num_key_value_heads=1,
  num_hidden_layers=4,
  rms_norm_eps=1e-5,
)


def test_mistral_7b_config_slides_4096_keys_on_every_layer():
  config = hf.model_config_from_hf(MISTRAL_7B)
  assert config.layer_windows == (4096,) * 32
  assert (config.d_model, config.num_heads, config.num_kv_heads, config.head_dim) == (
    4096,
    32,
    8,
    128,
  )
  assert (config.mlp, config.mlp_dim, config.norm_eps, config.rope_base) == (
    "swiglu",
    14336,
    1e-5,
    10000.0,
  )
  assert not config.tie_embeddings and config.attention_head_dim is None
  assert hf.model_config_from_hf(MISTRAL_7B, attention="chunked").attention == "chunked"


def _qwen2(**fields):
  return {"model_type": "qwen2", **TINY, "sliding_window": 8, **fields}


@pytest.mark.parametrize(
  "fields, windows",
  [
    # use_sliding_window off (the default): no layer slides, whatever else is set.
    ({"max_window_layers": 1}, (None,) * 4),
    # Without layer_types, layers i >= max_window_layers slide (Qwen2Config's code).
    ({"use_sliding_window": True, "max_window_layers": 1}, (None, 8, 8, 8)),
    ({"use_sliding_window": True, "max_window_layers": 28}, (None,) * 4),
    # layer_types, when given, decide.
    (
      {
        "use_sliding_window": True,
        "max_window_layers": 0,
        "layer_types": ["sliding_attention", "full_attention"] * 2,
      },
      (8, None, 8, None),
    ),
  ],
)
def test_qwen2_layers_that_slide_follow_the_code(fields, windows):
  config = hf.model_config_from_hf(_qwen2(**fields))
  assert config.layer_windows == windows
  assert config.qkv_bias


def test_gemma2_defaults_alternate_and_set_the_extras():
  config = hf.model_config_from_hf(
    {"model_type": "gemma2", **TINY, "head_dim": 8, "sliding_window": 4}
  )
  assert config.layer_windows == (4, None, 4, None)
  assert config.tie_embeddings and config.norm_plus_one and config.embed_scale
  assert config.post_norms and config.mlp == "geglu" and config.head_dim == 8
  assert (config.attention_scale, config.attention_softcap, config.final_softcap) == (
    256**-0.5,
    50.0,
    30.0,
  )


def test_gemma3_defaults_five_local_to_one_global_with_a_rope_base_per_kind():
  gemma3 = {"model_type": "gemma3_text", **TINY, "num_hidden_layers": 12, "sliding_window": 512}
  config = hf.model_config_from_hf(gemma3)
  assert config.layer_windows == ((512,) * 5 + (None,)) * 2
  assert config.layer_rope_bases == ((1e4,) * 5 + (1e6,)) * 2  # local 10k, global 1M
  assert config.qk_norm and config.norm_plus_one and config.post_norms
  assert config.attention_softcap is None and config.final_softcap is None
  older = hf.model_config_from_hf({**gemma3, "rope_theta": 2e6, "rope_local_base_freq": 5e3})
  assert set(older.layer_rope_bases) == {5e3, 2e6}
  newer = {
    "sliding_attention": {"rope_type": "default", "rope_theta": 7e3},
    "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
  }
  with pytest.raises(ValueError, match=r"rope_parameters.full_attention.rope_type='linear' is not"):
    hf.model_config_from_hf({**gemma3, "rope_parameters": newer})
  with pytest.raises(ValueError, match=r"rope_scaling=\{'factor': 8.0, 'rope_type': 'linear'\}"):
    hf.model_config_from_hf({**gemma3, "rope_scaling": {"factor": 8.0, "rope_type": "linear"}})


def test_bad_overrides_are_named_as_themselves():
  with pytest.raises(ValueError, match=r"^model.attention must be one of .*, got 'fast'\.$"):
    hf.model_config_from_hf(MISTRAL_7B, attention="fast")
  gemma2 = {"model_type": "gemma2", **TINY}
  with pytest.raises(ValueError, match=r"^model.attention='pallas' does not support logit_softcap"):
    hf.model_config_from_hf(gemma2, attention="pallas")


def test_rope_parameters_of_transformers_5_give_the_base():
  fields = {"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}
  assert hf.model_config_from_hf({**MISTRAL_7B, **fields}).rope_base == 1e6


@pytest.mark.parametrize(
  "change, match",
  [
    ({"model_type": "llama"}, r"model_type='llama' .* is not supported; supported: \["),
    ({"architectures": ["MistralModel"]}, r"architectures=\['MistralModel'\] is not supported"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, r"rope_scaling=\{.*\} is not supported"),
    (
      {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}},
      r"rope_parameters.rope_type='yarn' is not supported",
    ),
    ({"hidden_act": "gelu"}, r"hidden_act='gelu' is not supported for mistral"),
    ({"sliding_window": 0}, r"sliding_window=0 must be an integer >= 1 or null"),
    ({"num_hidden_layers": "32"}, r"num_hidden_layers='32' must be an integer >= 1"),
    ({"vocab_size": 1}, r"vocab_size=1 must be an integer >= 2"),
    ({"mlp_bias": True}, r"mlp_bias=True is not supported"),
    ({"num_key_value_heads": 5}, r"must be a multiple of model.num_kv_heads \(5\)"),
    ({"rms_norm_eps": 0}, r"model.norm_eps must be a number > 0, got 0"),
  ],
)
def test_unsupported_config_fields_are_one_line_errors_naming_them(change, match):
  with pytest.raises(ValueError, match=match) as info:
    hf.model_config_from_hf({**MISTRAL_7B, **change})
  assert "\n" not in str(info.value)


@pytest.mark.parametrize(
  "config, match",
  [
    (
      _qwen2(use_sliding_window=True, layer_types=["chunked_attention"] * 4),
      r"layer_types has 'chunked_attention'",
    ),
    (_qwen2(layer_types=["full_attention"]), r"must list one type per layer \(4\)"),
    ({"model_type": "gemma2", **TINY, "attention_bias": True}, r"attention_bias=true"),
    (
      {"model_type": "gemma2", **TINY, "hidden_activation": "gelu"},
      r"hidden_activation='gelu' is not supported for gemma2",
    ),
  ],
)
def test_unsupported_layer_types_and_biases_are_one_line_errors(config, match):
  with pytest.raises(ValueError, match=match):
    hf.model_config_from_hf(config)


# --- Files ------------------------------------------------------------------------------------

MISTRAL_LIKE = ModelConfig(
  vocab_size=32,
  num_layers=2,
  d_model=16,
  num_heads=2,
  num_kv_heads=1,
  mlp_dim=24,
  window_size=4,
  mlp="swiglu",
  norm_eps=1e-5,
  dtype="float32",
)


def _random_model(config, seed=0):
  graphdef, state = nnx.split(Transformer(config, rngs=nnx.Rngs(seed)), nnx.Param)
  leaves, treedef = jax.tree.flatten(state.to_pure_dict())
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return graphdef, jax.tree.unflatten(
    treedef, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
  )


def _assert_same_params(a, b):
  flat_a, flat_b = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)
  assert len(flat_a) == len(flat_b)
  for (path, x), y in zip(flat_a, flat_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


def test_save_then_load_gives_the_same_model(tmp_path):
  graphdef, params = _random_model(MISTRAL_LIKE)
  hf.save_checkpoint(tmp_path, graphdef, params)
  hf_config = json.loads((tmp_path / "config.json").read_text())
  assert hf_config["architectures"] == ["MistralForCausalLM"] and hf_config["sliding_window"] == 4
  names = safetensors.numpy.load_file(tmp_path / "model.safetensors")
  # torch's [out, in] layout: q_proj is [N * H, D].
  assert names["model.layers.0.self_attn.q_proj.weight"].shape == (16, 16)
  assert names["model.layers.1.mlp.down_proj.weight"].shape == (16, 24)
  graphdef2, params2 = hf.load_checkpoint(tmp_path)
  assert config_of(graphdef2, params2) == MISTRAL_LIKE
  _assert_same_params(params, params2)


def test_sharded_index_loads_the_same_params(tmp_path):
  graphdef, params = _random_model(MISTRAL_LIKE)
  hf.save_checkpoint(tmp_path, graphdef, params, max_shard_bytes=4096)
  index = json.loads((tmp_path / weights.INDEX_FILE).read_text())
  shards = sorted(set(index["weight_map"].values()))
  assert len(shards) > 2 and not (tmp_path / weights.SINGLE_FILE).exists()
  _assert_same_params(params, hf.load_checkpoint(tmp_path)[1])
  (tmp_path / shards[-1]).unlink()
  with pytest.raises(ValueError, match=rf"lists {shards[-1]}, which is not in "):
    hf.load_checkpoint(tmp_path)


def test_bfloat16_files_load_without_torch(tmp_path):
  graphdef, params = _random_model(MISTRAL_LIKE)
  hf.save_checkpoint(tmp_path, graphdef, params)
  path = tmp_path / "model.safetensors"
  tensors = safetensors.numpy.load_file(path)
  bf16 = {k: v.astype(ml_dtypes.bfloat16) for k, v in tensors.items()}
  safetensors.numpy.save_file(bf16, path, metadata={"format": "pt"})
  loaded = hf.load_checkpoint(tmp_path)[1]
  want = jax.tree.map(lambda x: np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float32), params)
  _assert_same_params(want, loaded)
  halved = hf.load_checkpoint(tmp_path, param_dtype="bfloat16")[1]
  assert halved["embed"]["embedding"].dtype == jnp.bfloat16


def test_checkpoint_tensors_must_match_the_config(tmp_path):
  graphdef, params = _random_model(MISTRAL_LIKE)
  hf.save_checkpoint(tmp_path, graphdef, params)
  path = tmp_path / "model.safetensors"
  tensors = safetensors.numpy.load_file(path)
  good = copy.deepcopy(tensors)
  tensors["model.layers.0.mlp.extra.weight"] = np.zeros(3, np.float32)
  safetensors.numpy.save_file(tensors, path)
  with pytest.raises(ValueError, match=r"has no place for: model.layers.0.mlp.extra.weight\.$"):
    hf.load_checkpoint(tmp_path)
  del good["lm_head.weight"]
  safetensors.numpy.save_file(good, path)
  with pytest.raises(ValueError, match=r"lacks lm_head.weight \(swa param head.kernel\)\.$"):
    hf.load_checkpoint(tmp_path)
  config = json.loads((tmp_path / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps({**config, "intermediate_size": 20}))
  good["lm_head.weight"] = tensors["lm_head.weight"]
  safetensors.numpy.save_file(good, path)
  with pytest.raises(ValueError, match=r"gate_proj.weight has shape \(24, 16\); the config gives"):
    hf.load_checkpoint(tmp_path)


def test_folders_that_are_not_checkpoints_are_one_line_errors(tmp_path):
  with pytest.raises(ValueError, match=r"no such folder\.$"):
    hf.load_checkpoint(tmp_path / "absent")
  with pytest.raises(ValueError, match=r"has no config.json: not a Hugging Face checkpoint\.$"):
    hf.load_checkpoint(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps(MISTRAL_7B | TINY))
  with pytest.raises(ValueError, match=r"has neither model.safetensors nor "):
    hf.load_checkpoint(tmp_path)
  with pytest.raises(ValueError, match=r"has no tokenizer.json"):
    hf.load_tokenizer(tmp_path)


def test_export_refuses_what_the_family_cannot_express(tmp_path):
  graphdef, params = _random_model(ModelConfig(vocab_size=32, num_layers=1, d_model=16))
  with pytest.raises(
    ValueError, match=r"cannot be written as MistralForCausalLM: model.mlp='gelu'"
  ):
    hf.save_checkpoint(tmp_path, graphdef, params)
  mixed = ModelConfig(**{**vars(MISTRAL_LIKE), "window_size": (4, None)})
  with pytest.raises(ValueError, match=r"one window for every layer"):
    hf.hf_config_from_model(mixed, "mistral")
  mixed = ModelConfig(**{**vars(mixed), "qkv_bias": True})
  assert hf.hf_config_from_model(mixed, "qwen2")["layer_types"] == [
    "sliding_attention",
    "full_attention",
  ]
  with pytest.raises(ValueError, match=r"family='llama' is not one of"):
    hf.hf_config_from_model(MISTRAL_LIKE, "llama")


# --- The architecture options of swa/model.py ----------------------------------------------------


@pytest.mark.parametrize(
  "field, value, match",
  [
    ("vocab_size", 1, r"model.vocab_size must be >= 2"),
    ("mlp", "relu", r"model.mlp must be one of \('gelu', 'swiglu', 'geglu'\), got 'relu'"),
    ("norm_eps", 0.0, r"model.norm_eps must be a number > 0, got 0.0"),
    ("attention_softcap", -1.0, r"model.attention_softcap must be a number > 0 or None"),
    ("final_softcap", float("inf"), r"model.final_softcap must be a number > 0 or None"),
    ("attention_head_dim", 7, r"model.attention_head_dim must be an even integer >= 2"),
    ("rope_base", (1e4, 1e4, 1e4), r"model.rope_base lists 3 bases for 2 layers"),
    ("rope_base", (1e4, 0.5), r"model.rope_base must be a number > 1"),
    ("tie_embeddings", 1, r"model.tie_embeddings must be true or false, got 1"),
    ("attention", "pallas", r"model.attention='pallas' does not support logit_softcap"),
  ],
)
def test_bad_architecture_options_are_one_line_errors(field, value, match):
  capped = {**vars(MISTRAL_LIKE), "attention_softcap": 5.0}
  with pytest.raises(ValueError, match=match):
    ModelConfig(**{**capped, field: value})


def test_tied_head_is_the_embedding_table():
  """A tied model equals the untied one whose head kernel is the embedding table transposed."""
  config = ModelConfig(**{**vars(MISTRAL_LIKE), "tie_embeddings": True})
  graphdef, params = _random_model(config)
  assert "head" not in params
  untied_graphdef, untied = _random_model(MISTRAL_LIKE)
  untied = {**params, "head": {"kernel": params["embed"]["embedding"].T}}
  tokens = jnp.arange(6)[None] % 32
  np.testing.assert_allclose(
    nnx.merge(graphdef, params)(tokens),
    nnx.merge(untied_graphdef, untied)(tokens),
    rtol=1e-6,
    atol=1e-6,
  )


def test_per_layer_rope_bases_reach_each_layer():
  config = ModelConfig(**{**vars(MISTRAL_LIKE), "rope_base": (1e4, 1e6)})
  model = Transformer(config, rngs=nnx.Rngs(0))
  assert [b.attention.rope_base for b in model.blocks] == [1e4, 1e6]


def test_learned_sinks_and_softcaps_stream_as_the_batch_forward():
  """Options that reach the cached path (sinks, scale, caps) give the batch logits there too."""
  config = ModelConfig(
    **{
      **vars(MISTRAL_LIKE),
      "learned_sinks": True,
      "attention_softcap": 2.0,
      "final_softcap": 3.0,
      "attention_scale": 0.3,
      "post_norms": True,
      "norm_plus_one": True,
      "embed_scale": True,
      "mlp": "geglu",
    }
  )
  graphdef, params = _random_model(config, seed=1)
  assert params["blocks"][0]["attention"]["sinks"].shape == (2,)
  tokens = np.random.default_rng(0).integers(0, 32, (2, 11)).astype(np.int32)
  reference = abstract_model(dataclasses.replace(config, attention="reference"))[0]
  want = nnx.merge(reference, params)(jnp.asarray(tokens))
  chunked = abstract_model(dataclasses.replace(config, attention="chunked"))[0]
  np.testing.assert_allclose(nnx.merge(chunked, params)(tokens), want, rtol=1e-5, atol=1e-5)
  for chunk in (1, 3, 5):
    cache = cache_lib.init_cache(config, 2)
    got, _ = streaming.prefill(graphdef, params, cache, tokens, chunk)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"chunk {chunk}")


def test_workdirs_saved_before_the_options_resume():
  """An older config.json lacks the new fields: it resumes when they keep their defaults."""
  current = workdir.flatten({"model": {"d_model": 32, "mlp": "gelu", "norm_eps": 1e-6}})
  saved = workdir.flatten({"model": {"d_model": 32}})
  assert (
    workdir.check_config({**saved, "task": "passkey"}, {**current, "task": "passkey"}, "w") == []
  )
  with pytest.raises(workdir.ConfigMismatchError, match=r"model.mlp"):
    workdir.check_config(saved, {**current, "model.mlp": "swiglu"}, "w")
