"""stream.py --hf_checkpoint: a Hugging Face folder (config.json, safetensors, tokenizer.json)
streamed through the rolling cache with its tokenizer; greedy generation equals the model's own
argmax continuation; flag mistakes are one-line errors. Needs the tokenizers package (`hf` extra)."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

tokenizers = pytest.importorskip("tokenizers", reason="needs tokenizers (pip install '.[hf]')")

from swa import hf, stream_modes  # noqa: E402
from swa.model import ModelConfig, Transformer  # noqa: E402

WORDS = [f"w{i}" for i in range(31)]  # 31 words and [UNK]: the model's 32 ids
CONFIG = ModelConfig(
  vocab_size=32,
  num_layers=2,
  d_model=16,
  num_heads=2,
  num_kv_heads=1,
  mlp_dim=24,
  window_size=3,
  mlp="swiglu",
  dtype="float32",
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """A tiny Mistral-shaped checkpoint with a word-level tokenizer."""
  path = tmp_path_factory.mktemp("hf_stream")
  graphdef, state = nnx.split(Transformer(CONFIG, rngs=nnx.Rngs(0)), nnx.Param)
  leaves, treedef = jax.tree.flatten(state.to_pure_dict())
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  params = jax.tree.unflatten(
    treedef, [x + 0.5 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
  )
  hf.save_checkpoint(path, graphdef, params)
  vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(WORDS)}}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tok.decoder = tokenizers.decoders.WordPiece()  # joins words with spaces
  tok.save(str(path / "tokenizer.json"))
  return path


PROMPT = " ".join(WORDS[i % 31] for i in range(0, 70, 7))  # 10 tokens > the window of 3


def _greedy(folder, prompt_ids, n):
  """The loaded model's own argmax continuation, one full forward per token (no cache)."""
  graphdef, params = hf.load_checkpoint(folder, attention="reference")
  model, ids = nnx.merge(graphdef, params), list(prompt_ids)
  for _ in range(n):
    ids.append(int(jnp.argmax(model(jnp.asarray([ids]))[0, -1])))
  return ids[len(prompt_ids) :]


@pytest.mark.parametrize("attention", ["auto", "reference", "chunked"])
def test_hf_stream_generates_the_models_own_continuation(folder, attention, capsys):
  settings = stream_modes.StreamSettings(
    hf_checkpoint=str(folder), prompt=PROMPT, generate=6, chunk_size=4, attention=attention
  )
  result = stream_modes.run(settings)
  tok = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
  prompt_ids = tok.encode(PROMPT).ids
  assert result["fed"] == len(prompt_ids) == 10
  want = _greedy(folder, prompt_ids, 6)
  np.testing.assert_array_equal(result["generated"], want)
  assert repr(tok.decode(want)) in capsys.readouterr().out


def test_hf_stream_in_bfloat16_runs(folder):
  settings = stream_modes.StreamSettings(
    hf_checkpoint=str(folder), prompt=PROMPT, generate=4, chunk_size=16, hf_dtype="bfloat16"
  )
  result = stream_modes.run(settings)
  assert result["fed"] == 10 and result["generated"].shape == (4,)
  # The rolling cache holds the window (3 slots) per layer, in bfloat16: 2 layers x k, v x 1 x 3
  # slots x 1 head x 8 dims x 2 bytes, plus the int32 positions, ends and sink counts.
  assert result["cache_bytes"] == 2 * (2 * 3 * 8 * 2 + 3 * 4 + 4 + 4)


@pytest.mark.parametrize(
  "changes, match",
  [
    ({}, r"^With --hf_checkpoint pass one of --prompt and --text_file\.$"),
    ({"prompt": "w1", "mode": "passkey"}, r"--passkey and --benchmark do not apply"),
    ({"prompt": "w1", "attention": "fast"}, r"^--attention=fast must be one of \("),
    ({"prompt": "w1", "hf_checkpoint": "/nonexistent"}, r"^--hf_checkpoint=/nonexistent: no such"),
  ],
)
def test_hf_stream_flag_mistakes_are_one_line_errors(folder, changes, match):
  settings = stream_modes.StreamSettings(**{"hf_checkpoint": str(folder), **changes})
  with pytest.raises(ValueError, match=match):
    settings.check()


def test_prompt_without_hf_checkpoint_is_refused():
  with pytest.raises(ValueError, match=r"^--prompt needs --hf_checkpoint"):
    stream_modes.StreamSettings(workdir="/tmp", prompt="hi").check()


@pytest.mark.slow
def test_stream_py_with_hf_checkpoint(folder):
  out = subprocess.run(
    [
      sys.executable,
      "stream.py",
      f"--hf_checkpoint={folder}",
      f"--prompt={PROMPT}",
      "--generate=3",
      "--chunk_size=5",
    ],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 0, out.stderr
  assert "Prefill: 10 tokens" in out.stdout and "Generated 3 tokens" in out.stdout
