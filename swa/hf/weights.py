"""Hugging Face safetensors <-> swa params: the tensor names, their layout, and the files.

Names (layer i; transformers' torch Linear weight is [out, in], swa's kernel [in, out], so every
projection is transposed; norms, embeddings and biases are not):

  model.embed_tokens.weight                      embed.embedding
  model.layers.i.input_layernorm.weight          blocks.i.attention_norm.scale
  model.layers.i.self_attn.{q,k,v,o}_proj.*      blocks.i.attention.{query,key,value,out}.*
  model.layers.i.mlp.{gate,up,down}_proj.weight  blocks.i.{mlp_gate,mlp_in,mlp_out}.kernel
  mistral, qwen2:
    model.layers.i.post_attention_layernorm      blocks.i.mlp_norm.scale (the norm before the MLP)
  gemma2, gemma3:
    model.layers.i.post_attention_layernorm      blocks.i.post_attention_norm.scale
    model.layers.i.pre_feedforward_layernorm     blocks.i.mlp_norm.scale
    model.layers.i.post_feedforward_layernorm    blocks.i.post_mlp_norm.scale
  gemma3, qwen3:
    model.layers.i.self_attn.{q,k}_norm.weight   blocks.i.attention.{query,key}_norm.scale
  model.norm.weight                              final_norm.scale
  lm_head.weight                                 head.kernel (absent when the embeddings are tied)

RoPE needs no permutation: transformers' rotate_half pairs x[:H/2] with x[H/2:], as swa's
`model.apply_rope` does (tests/test_hf.py checks the logits).

Files are read with `safetensors.numpy` (no torch); bfloat16 tensors, which NumPy cannot hold,
come through safetensors' flax reader as JAX arrays. A sharded checkpoint is the files listed in
`model.safetensors.index.json`'s weight_map.
"""

import json
import os

import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

_BLOCK_NAMES = {
  "input_layernorm.weight": ("attention_norm", "scale"),
  "self_attn.q_proj.weight": ("attention", "query", "kernel"),
  "self_attn.k_proj.weight": ("attention", "key", "kernel"),
  "self_attn.v_proj.weight": ("attention", "value", "kernel"),
  "self_attn.o_proj.weight": ("attention", "out", "kernel"),
  "self_attn.q_proj.bias": ("attention", "query", "bias"),
  "self_attn.k_proj.bias": ("attention", "key", "bias"),
  "self_attn.v_proj.bias": ("attention", "value", "bias"),
  "mlp.gate_proj.weight": ("mlp_gate", "kernel"),
  "mlp.up_proj.weight": ("mlp_in", "kernel"),
  "mlp.down_proj.weight": ("mlp_out", "kernel"),
}
_GEMMA2_NORMS = {
  "post_attention_layernorm.weight": ("post_attention_norm", "scale"),
  "pre_feedforward_layernorm.weight": ("mlp_norm", "scale"),
  "post_feedforward_layernorm.weight": ("post_mlp_norm", "scale"),
}
_GEMMA3_NORMS = {
  **_GEMMA2_NORMS,
  "self_attn.q_norm.weight": ("attention", "query_norm", "scale"),
  "self_attn.k_norm.weight": ("attention", "key_norm", "scale"),
}
_PLAIN_NORMS = {"post_attention_layernorm.weight": ("mlp_norm", "scale")}
_QWEN3_NORMS = {
  **_PLAIN_NORMS,
  "self_attn.q_norm.weight": ("attention", "query_norm", "scale"),
  "self_attn.k_norm.weight": ("attention", "key_norm", "scale"),
}


def name_map(model_type, num_layers, *, tied):
  """{transformers tensor name: swa param path (a tuple of keys)} for one architecture.

  Every name a checkpoint of that config may hold (biases included); `load_params` requires
  exactly those the swa model has.
  """
  names = {
    "model.embed_tokens.weight": ("embed", "embedding"),
    "model.norm.weight": ("final_norm", "scale"),
  }
  if not tied:
    names["lm_head.weight"] = ("head", "kernel")
  norms = {"gemma2": _GEMMA2_NORMS, "gemma3_text": _GEMMA3_NORMS, "qwen3": _QWEN3_NORMS}.get(
    model_type, _PLAIN_NORMS
  )
  for i in range(num_layers):
    for hf_name, path in {**_BLOCK_NAMES, **norms}.items():
      names[f"model.layers.{i}.{hf_name}"] = ("blocks", i) + path
  return names


def transposed(path):
  """True for projection kernels: torch stores [out, in], swa [in, out]."""
  return path[-1] == "kernel"


def _read_file(path, names=None):
  """{name: array} of one .safetensors file (only `names` if given)."""
  out = {}
  with safetensors.safe_open(path, framework="numpy") as f:
    keys = f.keys() if names is None else [n for n in f.keys() if n in names]
    bf16 = [n for n in keys if f.get_slice(n).get_dtype() == "BF16"]
    for name in keys:
      if name not in bf16:
        out[name] = f.get_tensor(name)
  if bf16:  # NumPy has no bfloat16: read these as JAX arrays.
    with safetensors.safe_open(path, framework="flax") as f:
      for name in bf16:
        out[name] = f.get_tensor(name)
  return out


def read_tensors(folder):
  """{name: array} of every tensor of a checkpoint folder (one file or a sharded index)."""
  index_path = os.path.join(folder, INDEX_FILE)
  single_path = os.path.join(folder, SINGLE_FILE)
  if os.path.isfile(index_path):
    with open(index_path) as f:
      index = json.load(f)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
      raise ValueError(f"{index_path} has no weight_map.")
    tensors = {}
    for shard in sorted(set(weight_map.values())):
      shard_path = os.path.join(folder, shard)
      if not os.path.isfile(shard_path):
        raise ValueError(f"{index_path} lists {shard}, which is not in {folder}.")
      wanted = {n for n, s in weight_map.items() if s == shard}
      tensors.update(_read_file(shard_path, wanted))
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
      raise ValueError(f"{index_path}: {missing[0]} is not in {weight_map[missing[0]]}.")
    return tensors
  if os.path.isfile(single_path):
    return _read_file(single_path)
  raise ValueError(f"{folder} has neither {SINGLE_FILE} nor {INDEX_FILE}.")


def params_from_tensors(tensors, names, abstract_params, dtype=np.float32):
  """The swa params dict from transformers' tensors, checked against the model's shapes.

  Args:
    tensors: {name: array} (read_tensors).
    names: name_map(...) of the architecture.
    abstract_params: the model's params as shape/dtype structs (nested dict, int layer keys).
    dtype: the dtype the params are cast to (swa trains in float32).

  Returns:
    nested dict like abstract_params, of numpy (or JAX, for bfloat16 files) arrays.
  """
  params = {}
  needed = {}
  for name, path in names.items():
    node = abstract_params
    try:
      for key in path:
        node = node[key]
    except KeyError:
      continue  # e.g. a bias the architecture does not have
    needed[name] = (path, node)
  extra = sorted(set(tensors) - set(needed))
  extra = [n for n in extra if not n.endswith("rotary_emb.inv_freq")]  # a buffer, not a weight
  if extra:
    raise ValueError(f"The checkpoint has a tensor swa's model has no place for: {extra[0]}.")
  for name, (path, struct) in needed.items():
    if name not in tensors:
      raise ValueError(f"The checkpoint lacks {name} (swa param {'.'.join(map(str, path))}).")
    array = tensors[name]
    if transposed(path):
      array = array.T
    if tuple(array.shape) != tuple(struct.shape):
      raise ValueError(
        f"{name} has shape {tuple(tensors[name].shape)}; the config gives "
        f"{tuple(struct.shape)}{' (transposed)' if transposed(path) else ''}."
      )
    array = (
      np.asarray(array, dtype)
      if isinstance(array, np.ndarray)
      else jnp.asarray(array, jnp.dtype(dtype))
    )
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = array
  return params


def tensors_from_params(params, names):
  """{transformers name: contiguous float32 numpy array} of a swa params dict."""
  out = {}
  for name, path in names.items():
    node = params
    try:
      for key in path:
        node = node[key]
    except KeyError:
      continue
    array = np.asarray(node, np.float32)
    out[name] = np.ascontiguousarray(array.T if transposed(path) else array)
  return out


def write_tensors(folder, tensors, max_shard_bytes=None):
  """Writes model.safetensors, or shards and their index when larger than max_shard_bytes."""
  os.makedirs(folder, exist_ok=True)
  metadata = {"format": "pt"}  # what transformers expects of a torch-loadable file
  total = sum(a.nbytes for a in tensors.values())
  if max_shard_bytes is None or total <= max_shard_bytes:
    safetensors.numpy.save_file(tensors, os.path.join(folder, SINGLE_FILE), metadata=metadata)
    return
  shards, current, size = [], {}, 0
  for name, array in tensors.items():
    if current and size + array.nbytes > max_shard_bytes:
      shards.append(current)
      current, size = {}, 0
    current[name], size = array, size + array.nbytes
  shards.append(current)
  weight_map = {}
  for i, shard in enumerate(shards):
    file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    safetensors.numpy.save_file(shard, os.path.join(folder, file), metadata=metadata)
    weight_map.update({name: file for name in shard})
  with open(os.path.join(folder, INDEX_FILE), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
