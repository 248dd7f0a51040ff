"""Hugging Face `config.json` <-> swa ModelConfig, for the sliding-window families (docs/hf.md).

A family is what transformers' own code does with the config, not what its docstring says. The
window means the same in both: `sliding_window` = w keys, the query itself included (transformers'
masking_utils: key j is visible to query i iff i - w < j <= i), which is swa's `window_size`.

Which layers slide (one window per layer, `ModelConfig.window_size`):
  mistral  every layer has `sliding_window` (None: full attention); `layer_types` is ignored,
           as MistralAttention ignores it.
  qwen2, qwen3  `layer_types[i] == "sliding_attention"` slides, the others are full; without
           `layer_types`, layers i >= max_window_layers slide (Qwen2Config's own rule); the window
           is `sliding_window` only if `use_sliding_window`, else no layer slides.
  gemma2   `layer_types` (default: even layers slide, odd layers are full).
  gemma3   `layer_types` (default: layer i is full iff (i + 1) % sliding_window_pattern == 0, the
           pattern 6 giving 5 local : 1 global); each kind has its own RoPE base
           (rope_parameters[kind].rope_theta; older files: rope_local_base_freq and rope_theta).

A field swa cannot honour (a RoPE scaling, a bias, another activation, ...) is a one-line
ValueError naming the field and its value; fields that do not change the forward (token ids,
dropout at inference, max_position_embeddings, dtype) are ignored.
"""

import dataclasses
import math
from typing import Optional

from swa.model import ModelConfig

SLIDING, FULL = "sliding_attention", "full_attention"
QWEN = ("qwen2", "qwen3")  # the same rule of which layers slide


@dataclasses.dataclass(frozen=True)
class Family:
  """One transformers architecture and the swa options that express it."""

  model_type: str
  architecture: str  # the *ForCausalLM class
  defaults: dict  # the config class's defaults for the fields read here (absent from a file)
  fixed: dict  # swa ModelConfig options every checkpoint of the family has
  activation_field: str  # "hidden_act" or "hidden_activation"
  mlp: dict  # activation name -> ModelConfig.mlp
  bias_field: Optional[str] = None  # a config field that must be false (no biases then)


FAMILIES = {
  "mistral": Family(
    model_type="mistral",
    architecture="MistralForCausalLM",
    defaults=dict(
      rms_norm_eps=1e-6,
      tie_word_embeddings=False,
      sliding_window=4096,
      rope_theta=10_000.0,
      hidden_act="silu",
    ),
    fixed=dict(),
    activation_field="hidden_act",
    mlp={"silu": "swiglu"},
  ),
  "qwen2": Family(
    model_type="qwen2",
    architecture="Qwen2ForCausalLM",
    defaults=dict(
      rms_norm_eps=1e-6,
      tie_word_embeddings=False,
      sliding_window=4096,
      use_sliding_window=False,
      max_window_layers=28,
      rope_theta=10_000.0,
      hidden_act="silu",
    ),
    fixed=dict(qkv_bias=True),
    activation_field="hidden_act",
    mlp={"silu": "swiglu"},
  ),
  "qwen3": Family(
    model_type="qwen3",
    architecture="Qwen3ForCausalLM",
    defaults=dict(
      rms_norm_eps=1e-6,
      tie_word_embeddings=False,
      sliding_window=4096,
      use_sliding_window=False,
      max_window_layers=28,
      rope_theta=10_000.0,
      hidden_act="silu",
      head_dim=128,
      attention_bias=False,
    ),
    fixed=dict(qk_norm=True),
    activation_field="hidden_act",
    mlp={"silu": "swiglu"},
    bias_field="attention_bias",
  ),
  "gemma2": Family(
    model_type="gemma2",
    architecture="Gemma2ForCausalLM",
    defaults=dict(
      rms_norm_eps=1e-6,
      tie_word_embeddings=True,
      sliding_window=4096,
      rope_theta=10_000.0,
      hidden_activation="gelu_pytorch_tanh",
      head_dim=256,
      query_pre_attn_scalar=256,
      attn_logit_softcapping=50.0,
      final_logit_softcapping=30.0,
      attention_bias=False,
    ),
    fixed=dict(norm_plus_one=True, embed_scale=True, post_norms=True),
    activation_field="hidden_activation",
    mlp={"gelu_pytorch_tanh": "geglu"},
    bias_field="attention_bias",
  ),
  "gemma3": Family(
    model_type="gemma3_text",
    architecture="Gemma3ForCausalLM",
    defaults=dict(
      rms_norm_eps=1e-6,
      tie_word_embeddings=True,
      sliding_window=4096,
      sliding_window_pattern=6,
      rope_theta=1_000_000.0,  # full_attention layers
      rope_local_base_freq=10_000.0,  # sliding_attention layers
      hidden_activation="gelu_pytorch_tanh",
      head_dim=256,
      query_pre_attn_scalar=256,
      attn_logit_softcapping=None,
      final_logit_softcapping=None,
      attention_bias=False,
    ),
    fixed=dict(norm_plus_one=True, embed_scale=True, post_norms=True, qk_norm=True),
    activation_field="hidden_activation",
    mlp={"gelu_pytorch_tanh": "geglu"},
    bias_field="attention_bias",
  ),
}

# Fields that, when present, must have one of these values (else the forward would differ).
_MUST_BE = {
  "rope_scaling": (None,),
  "mlp_bias": (False,),
  "pretraining_tp": (1,),
  "use_bidirectional_attention": (None, False),
  "attention_chunk_size": (None,),
  "use_qk_norm": (None, False),
}


def _gemma(family):
  return family.model_type in ("gemma2", "gemma3_text")


def family_of(hf_config: dict) -> Family:
  """The Family of a config.json dict; one-line ValueError for any other architecture."""
  model_type = hf_config.get("model_type")
  by_type = {f.model_type: f for f in FAMILIES.values()}
  if model_type not in by_type:
    raise ValueError(
      f"config.json: model_type={model_type!r} (architectures={hf_config.get('architectures')}) "
      f"is not supported; supported: {sorted(by_type)}."
    )
  family = by_type[model_type]
  archs = hf_config.get("architectures") or [family.architecture]
  if archs != [family.architecture]:
    raise ValueError(
      f"config.json: architectures={archs} is not supported for model_type={model_type!r}; "
      f"expected [{family.architecture!r}]."
    )
  return family


def _get(hf_config, family, name):
  return hf_config.get(name, family.defaults.get(name))


def _int_field(hf_config, name, low=1):
  value = hf_config.get(name)
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    raise ValueError(f"config.json: {name}={value!r} must be an integer >= {low}.")
  return value


def _theta(params, default, where):
  """rope_theta of one rope_parameters dict (None: the default); only the default RoPE."""
  if params is None:
    theta = default
  else:
    if not isinstance(params, dict):
      raise ValueError(f"config.json: {where}={params!r} must be a dict.")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
      raise ValueError(
        f"config.json: {where}.rope_type={rope_type!r} is not supported (only 'default')."
      )
    theta = params.get("rope_theta", default)
  if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not theta > 1:
    raise ValueError(f"config.json: rope_theta={theta!r} ({where}) must be a number > 1.")
  return float(theta)


def rope_bases(hf_config: dict, family: Family, layer_types):
  """The RoPE base of each layer; Gemma 3 has one per layer kind."""
  params = hf_config.get("rope_parameters")
  if family.model_type != "gemma3_text":
    theta = _theta(params, _get(hf_config, family, "rope_theta"), "rope_parameters")
    return (theta,) * len(layer_types)
  if params is not None and not isinstance(params, dict):
    raise ValueError(f"config.json: rope_parameters={params!r} must be a dict.")
  legacy = {FULL: "rope_theta", SLIDING: "rope_local_base_freq"}
  theta = {
    kind: _theta(
      None if params is None else params.get(kind, {}),
      _get(hf_config, family, legacy[kind]),
      f"rope_parameters.{kind}",
    )
    for kind in (SLIDING, FULL)
  }
  return tuple(theta[kind] for kind in layer_types)


def sliding_window(hf_config: dict, family: Family):
  """The window w of the sliding layers, or None where none slides."""
  window = _get(hf_config, family, "sliding_window")
  if family.model_type in QWEN and not _get(hf_config, family, "use_sliding_window"):
    window = None
  if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
    raise ValueError(f"config.json: sliding_window={window!r} must be an integer >= 1 or null.")
  return window


def layer_types_of(hf_config: dict, family: Family, num_layers: int):
  """Each layer's kind, "sliding_attention" or "full_attention", as transformers' code decides."""
  window = sliding_window(hf_config, family)
  if family.model_type == "mistral":
    return [FULL if window is None else SLIDING] * num_layers
  layer_types = hf_config.get("layer_types")
  if layer_types is None:
    if family.model_type in QWEN:
      first = _get(hf_config, family, "max_window_layers")
      layer_types = [
        SLIDING if window is not None and i >= first else FULL for i in range(num_layers)
      ]
    elif family.model_type == "gemma3_text":
      pattern = _get(hf_config, family, "sliding_window_pattern")
      if isinstance(pattern, bool) or not isinstance(pattern, int) or pattern < 1:
        raise ValueError(
          f"config.json: sliding_window_pattern={pattern!r} must be an integer >= 1."
        )
      layer_types = [SLIDING if (i + 1) % pattern else FULL for i in range(num_layers)]
    else:  # gemma2
      layer_types = [SLIDING if (i + 1) % 2 else FULL for i in range(num_layers)]
  if not isinstance(layer_types, list) or len(layer_types) != num_layers:
    raise ValueError(
      f"config.json: layer_types={layer_types!r} must list one type per layer ({num_layers})."
    )
  for kind in layer_types:
    if kind not in (SLIDING, FULL):
      raise ValueError(f"config.json: layer_types has {kind!r}; supported: {SLIDING!r}, {FULL!r}.")
  return list(layer_types)


def layer_windows(hf_config: dict, family: Family, num_layers: int):
  """The window of each layer (None = full attention)."""
  window = sliding_window(hf_config, family)
  kinds = layer_types_of(hf_config, family, num_layers)
  return tuple(window if kind == SLIDING else None for kind in kinds)


def model_config_from_hf(hf_config: dict, **overrides) -> ModelConfig:
  """The swa ModelConfig of a transformers config.json dict (see the module docstring).

  Args:
    hf_config: the parsed config.json.
    **overrides: ModelConfig fields that are not part of the checkpoint (attention, dtype,
      block_size, ...).
  """
  family = family_of(hf_config)
  for name, allowed in _MUST_BE.items():
    if name in hf_config and hf_config[name] not in allowed:
      raise ValueError(
        f"config.json: {name}={hf_config[name]!r} is not supported (swa needs "
        f"{' or '.join(repr(a) for a in allowed)})."
      )
  if family.bias_field and _get(hf_config, family, family.bias_field):
    raise ValueError(f"config.json: {family.bias_field}=true is not supported (no biases).")
  activation = _get(hf_config, family, family.activation_field)
  if activation not in family.mlp:
    raise ValueError(
      f"config.json: {family.activation_field}={activation!r} is not supported for "
      f"{family.model_type}; supported: {sorted(family.mlp)}."
    )
  num_layers = _int_field(hf_config, "num_hidden_layers")
  num_heads = _int_field(hf_config, "num_attention_heads")
  num_kv_heads = hf_config.get("num_key_value_heads") or num_heads
  d_model = _int_field(hf_config, "hidden_size")
  head_dim = _get(hf_config, family, "head_dim")
  if head_dim == d_model // num_heads and d_model % num_heads == 0:
    head_dim = None  # swa's own rule gives it
  eps = _get(hf_config, family, "rms_norm_eps")
  windows = layer_windows(hf_config, family, num_layers)
  bases = rope_bases(hf_config, family, layer_types_of(hf_config, family, num_layers))
  fields = dict(
    vocab_size=_int_field(hf_config, "vocab_size", 2),
    num_layers=num_layers,
    d_model=d_model,
    num_heads=num_heads,
    num_kv_heads=num_kv_heads,
    mlp_dim=_int_field(hf_config, "intermediate_size"),
    window_size=windows[0] if len(set(windows)) == 1 else windows,
    rope_base=bases[0] if len(set(bases)) == 1 else bases,
    mlp=family.mlp[activation],
    norm_eps=float(eps) if isinstance(eps, (int, float)) and not isinstance(eps, bool) else eps,
    attention_head_dim=head_dim,
    tie_embeddings=bool(_get(hf_config, family, "tie_word_embeddings")),
    dtype="float32",
    **family.fixed,
  )
  if _gemma(family):
    scalar = _get(hf_config, family, "query_pre_attn_scalar")
    if isinstance(scalar, bool) or not isinstance(scalar, (int, float)) or not scalar > 0:
      raise ValueError(f"config.json: query_pre_attn_scalar={scalar!r} must be a number > 0.")
    fields.update(
      # None where it is swa's own 1 / sqrt(head dim).
      attention_scale=None if scalar == (head_dim or d_model // num_heads) else scalar**-0.5,
      attention_softcap=_get(hf_config, family, "attn_logit_softcapping"),
      final_softcap=_get(hf_config, family, "final_logit_softcapping"),
    )
  try:
    model_config = ModelConfig(**fields)
  except ValueError as e:  # a field out of range: say it comes from the file
    raise ValueError(f"config.json gives an unusable model: {e}") from None
  return dataclasses.replace(model_config, **overrides) if overrides else model_config


def _fits(model_config: ModelConfig, family: Family):
  """Why model_config cannot be written as this family (a one-line reason), or None."""
  c = model_config
  wanted = dict(
    mlp=list(family.mlp.values())[0],
    norm_plus_one=False,
    qkv_bias=False,
    qk_norm=False,
    embed_scale=False,
    post_norms=False,
    attention_scale=None,
    attention_softcap=None,
    final_softcap=None,
    learned_sinks=False,
    num_sinks=0,
    position_encoding="rope",
    rope_scale=1.0,
  )
  wanted.update(family.fixed)
  if _gemma(family):
    for name in ("attention_scale", "attention_softcap", "final_softcap"):
      wanted.pop(name)
  for name, value in wanted.items():
    if getattr(c, name) != value:
      return f"model.{name}={getattr(c, name)!r} (a {family.architecture} has {value!r})"
  if family.model_type == "gemma3_text":
    for full in (True, False):
      bases = {b for b, w in zip(c.layer_rope_bases, c.layer_windows) if (w is None) == full}
      if len(bases) > 1:
        return (
          f"model.rope_base={c.rope_base!r} (one base for the sliding layers, one for the full)"
        )
  elif len(set(c.layer_rope_bases)) != 1:
    return f"model.rope_base={c.rope_base!r} (one base for every layer)"
  windows = set(c.layer_windows)
  if family.model_type == "mistral" and len(windows) != 1:
    return f"model.window_size={c.window_size!r} (MistralForCausalLM: one window for every layer)"
  if family.model_type != "mistral" and len(windows - {None}) > 1:
    return f"model.window_size={c.window_size!r} (one sliding window size)"
  if _gemma(family) and c.attention_scale is not None:
    scalar = c.attention_scale**-2
    if not math.isclose(scalar, round(scalar), rel_tol=1e-9):
      return f"model.attention_scale={c.attention_scale!r} (query_pre_attn_scalar ** -0.5)"
  return None


def hf_config_from_model(model_config: ModelConfig, family: str = "mistral") -> dict:
  """The config.json dict of a swa model written as `family` (mistral, qwen2, qwen3, gemma2, gemma3).

  One-line ValueError naming the first ModelConfig field the family cannot express.
  """
  if family not in FAMILIES:
    raise ValueError(f"family={family!r} is not one of {sorted(FAMILIES)}.")
  fam, c = FAMILIES[family], model_config
  reason = _fits(c, fam)
  if reason:
    raise ValueError(f"This model cannot be written as {fam.architecture}: {reason}.")
  windows = c.layer_windows
  sliding = next((w for w in windows if w is not None), None)
  theta = float(c.layer_rope_bases[0])
  out = {
    "architectures": [fam.architecture],
    "model_type": fam.model_type,
    "vocab_size": c.vocab_size,
    "hidden_size": c.d_model,
    "intermediate_size": c.mlp_dim,
    "num_hidden_layers": c.num_layers,
    "num_attention_heads": c.num_heads,
    "num_key_value_heads": c.num_kv_heads,
    "head_dim": c.head_dim,
    fam.activation_field: list(fam.mlp)[0],
    "rms_norm_eps": c.norm_eps,
    "rope_theta": theta,
    "rope_parameters": {"rope_type": "default", "rope_theta": theta},
    "tie_word_embeddings": c.tie_embeddings,
    "sliding_window": sliding,
    "torch_dtype": "float32",
  }
  if family != "mistral":
    out["layer_types"] = [FULL if w is None else SLIDING for w in windows]
  if fam.model_type in QWEN:
    out.update(use_sliding_window=sliding is not None, max_window_layers=0)
  if family == "gemma3":
    base = {SLIDING: theta, FULL: theta}
    for b, w in zip(c.layer_rope_bases, windows):
      base[FULL if w is None else SLIDING] = float(b)
    del out["rope_theta"]
    out["rope_parameters"] = {k: {"rope_type": "default", "rope_theta": b} for k, b in base.items()}
  if _gemma(fam):
    out.update(
      query_pre_attn_scalar=round(c.attention_scale**-2) if c.attention_scale else c.head_dim,
      attn_logit_softcapping=c.attention_softcap,
      final_logit_softcapping=c.final_softcap,
      attention_bias=False,
    )
  return out
