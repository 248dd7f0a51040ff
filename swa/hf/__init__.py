"""Hugging Face checkpoints in swa: Mistral, Qwen2/3, Gemma 2/3 as swa models, and back.

  config.py      config.json <-> ModelConfig: the families, which layers slide, supported fields
  weights.py     safetensors <-> params: tensor names and layouts; one file or a sharded index
  checkpoint.py  load_checkpoint / save_checkpoint / load_tokenizer for a folder

A wing: it imports the core (swa/model.py), never the reverse. docs/hf.md maps every field.
"""

from swa.hf.checkpoint import load_checkpoint, load_tokenizer, read_config, save_checkpoint
from swa.hf.config import FAMILIES, hf_config_from_model, model_config_from_hf

__all__ = [
  "FAMILIES",
  "hf_config_from_model",
  "load_checkpoint",
  "load_tokenizer",
  "model_config_from_hf",
  "read_config",
  "save_checkpoint",
]
