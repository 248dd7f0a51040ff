"""Load a Hugging Face checkpoint folder as a swa model, and write a swa model as one.

  graphdef, params = load_checkpoint("Mistral-7B-v0.1")      # config.json + *.safetensors
  save_checkpoint("out", graphdef, params, family="mistral")  # opens in MistralForCausalLM

The model is swa's one Transformer (swa/model.py) with the architecture options the family needs
(swa/hf/config.py), so every swa path runs it: the batch forward with any attention
implementation, and the rolling cache of swa/cache.py through swa/streaming.py.
"""

import json
import os

import jax
import numpy as np
from flax import nnx

from swa.hf import config as config_lib
from swa.hf import weights
from swa.model import ModelConfig, Transformer, config_of

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"


def read_config(folder):
  """The parsed config.json of a checkpoint folder; one-line errors for a missing or bad file."""
  if not os.path.isdir(folder):
    raise ValueError(f"{folder}: no such folder.")
  path = os.path.join(folder, CONFIG_FILE)
  if not os.path.isfile(path):
    raise ValueError(f"{folder} has no {CONFIG_FILE}: not a Hugging Face checkpoint.")
  try:
    with open(path) as f:
      hf_config = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON: {e}.") from None
  if not isinstance(hf_config, dict):
    raise ValueError(f"{path} must hold a JSON object.")
  return hf_config


def abstract_model(model_config: ModelConfig):
  """(graphdef, params as shape/dtype structs) of the model, without allocating its weights."""
  model = nnx.eval_shape(lambda: Transformer(model_config, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model, nnx.Param)
  return graphdef, state.to_pure_dict()


def load_checkpoint(folder, *, param_dtype="float32", **overrides):
  """(graphdef, params) of a transformers checkpoint folder (swa/hf/config.py's families).

  Args:
    folder: holds config.json and model.safetensors (or model.safetensors.index.json + shards).
    param_dtype: dtype of the loaded params (float32 as swa trains; bfloat16 halves memory).
    **overrides: ModelConfig fields outside the checkpoint: attention (implementation), dtype
      (activations), block_size, ...

  Returns:
    (graphdef, params): nnx.merge(graphdef, params) is the model; config_of gives its
    ModelConfig.
  """
  hf_config = read_config(folder)
  model_config = config_lib.model_config_from_hf(hf_config, **overrides)
  graphdef, abstract = abstract_model(model_config)
  names = weights.name_map(
    hf_config["model_type"], model_config.num_layers, tied=model_config.tie_embeddings
  )
  tensors = weights.read_tensors(folder)
  if model_config.tie_embeddings:
    tensors.pop("lm_head.weight", None)  # some tied checkpoints store the copy too
  params = weights.params_from_tensors(tensors, names, abstract, dtype=np.dtype(param_dtype))
  return graphdef, jax.tree.map(jax.numpy.asarray, params)


def save_checkpoint(folder, graphdef, params, *, family="mistral", max_shard_bytes=None):
  """Writes config.json and model.safetensors (sharded past max_shard_bytes) for transformers.

  Args:
    folder: created if needed; existing files of the same names are replaced.
    graphdef, params: a swa model whose ModelConfig the family can express (swa/hf/config.py's
      `hf_config_from_model` names the first field it cannot).
    family: "mistral", "qwen2", "qwen3", "gemma2" or "gemma3".
    max_shard_bytes: None = one file; else shards of at most this size and their index.
  """
  model_config = config_of(graphdef, params)
  hf_config = config_lib.hf_config_from_model(model_config, family)
  names = weights.name_map(
    hf_config["model_type"], model_config.num_layers, tied=model_config.tie_embeddings
  )
  tensors = weights.tensors_from_params(params, names)
  weights.write_tensors(folder, tensors, max_shard_bytes)
  with open(os.path.join(folder, CONFIG_FILE), "w") as f:
    json.dump(hf_config, f, indent=2)


def load_tokenizer(folder):
  """The folder's tokenizer.json as a `tokenizers.Tokenizer`; one-line error if it is missing."""
  path = os.path.join(folder, TOKENIZER_FILE)
  if not os.path.isfile(path):
    raise ValueError(f"{folder} has no {TOKENIZER_FILE} (the tokenizers package reads that file).")
  try:
    import tokenizers  # noqa: PLC0415 (the `hf` extra: only text generation needs it)
  except ImportError:
    raise ValueError(
      "Reading tokenizer.json needs the tokenizers package: pip install '.[hf]'."
    ) from None
  return tokenizers.Tokenizer.from_file(path)
