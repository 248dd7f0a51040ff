"""Where each layer has carried the key: a patching probe of the passkey relay.

Two prompts that differ only in their five key digits go through a trained model side by side.
After layer l the residual stream at position p changes by

    change_l(p) = |h_l(p) - h'_l(p)| / |h_l(p)|        (mean over prompts),

which says how much of the key had reached p by then. The mask bounds it: after layers 1..l
nothing past the last key digit + sum_{i<=l} (w_i - 1) can change (`bound`; `relay_profile`
reports the largest change found beyond it, 0 by construction). Learned is everything inside:
a model that relays every hop carries the key to the answer position through its last layer,
one that lost a hop stops short of it, or carries it there too faintly to read the digits.

`relay_profile` returns rows of (layer, offset from the first key digit, change) binned over
offsets, and the change at the answer position (the token whose logits give the first digit).
`probe_hops.py` runs it over trained workdirs; swa/analysis/hops.py draws the figures.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from swa import data
from swa.checks import check_int

# Prompt stream of the probe (apart from the evaluation's, so no scored prompt is reused).
PROBE_STREAM = 7


@functools.partial(jax.jit, static_argnames="graphdef")
def residuals(params, tokens_BT, *, graphdef):
  """float32 [L + 1, B, T, D]: the residual stream after the embedding and after each layer."""
  model = nnx.merge(graphdef, params)
  B, T = tokens_BT.shape
  positions_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
  x_BTD = model.embed_tokens(tokens_BT)
  stream = [x_BTD.astype(jnp.float32)]
  for block in model.blocks:
    x_BTD, _ = block(x_BTD, positions_BT)
    stream.append(x_BTD.astype(jnp.float32))
  return jnp.stack(stream)


def key_swapped_pairs(seed, distance, num, seq_len):
  """Prompts at one distance and their twins with other key digits: (a_BT, b_BT, first_digit).

  first_digit is the position of the key's first digit; the answer position (whose logits
  give the first answer digit) is seq_len - ANSWER_LEN, `distance` tokens later.
  """
  rng = np.random.default_rng([seed, PROBE_STREAM, int(distance)])
  a_BT = data.passkey_batch(rng, num, seq_len, np.full(num, int(distance)))["inputs"]
  first = seq_len - data.ANSWER_LEN - int(distance)
  digits = a_BT[:, first : first + data.ANSWER_LEN]
  b_BT = a_BT.copy()
  # Other digits: each of the five moves to the next digit; the first stays nonzero (1..9).
  zero, nine = data.encode("0")[0], data.encode("9")[0]
  shifted = np.where(digits == nine, zero, digits + 1)
  shifted[:, 0] = np.where(digits[:, 0] == nine, zero + 1, shifted[:, 0])
  b_BT[:, first : first + data.ANSWER_LEN] = shifted
  assert (b_BT != a_BT).sum() == num * data.ANSWER_LEN
  return a_BT, b_BT, first


def bound(windows, layer):
  """Largest offset from the first key digit that layers 1..layer can change: 4 + sum (w-1)."""
  if None in windows[:layer]:
    return None
  return data.ANSWER_LEN - 1 + sum(w - 1 for w in windows[:layer])


def relay_profile(graphdef, params, distance, *, num=32, seq_len, seed=0, bin_width=16):
  """The key's change per layer and offset, binned; see the module docstring.

  Returns:
    (rows, answer): rows are dicts {layer, offset, change} for layer 1..L and offset the start
    of each bin of bin_width tokens from the first key digit to the answer position;
    answer is a list of dicts {layer, change, beyond_bound} with the change at the answer
    position and the largest change anywhere past the mask's bound (0 by construction).
  """
  check_int("num", num, 1)
  check_int("bin_width", bin_width, 1)
  a_BT, b_BT, first = key_swapped_pairs(seed, distance, num, seq_len)
  answer_pos = seq_len - data.ANSWER_LEN
  tokens_BT = jnp.asarray(np.concatenate([a_BT, b_BT]))
  stream_LBTD = np.asarray(residuals(params, tokens_BT, graphdef=graphdef))
  h_LBTD, g_LBTD = stream_LBTD[:, :num], stream_LBTD[:, num:]
  change_LBT = np.linalg.norm(h_LBTD - g_LBTD, axis=-1) / np.maximum(
    np.linalg.norm(h_LBTD, axis=-1), 1e-30
  )
  change_LT = change_LBT.mean(axis=1)
  windows = nnx.merge(graphdef, params).config.layer_windows
  rows, answer = [], []
  offsets_T = np.arange(seq_len) - first
  for layer in range(1, len(windows) + 1):
    top = bound(windows, layer)
    beyond = 0.0 if top is None else float(change_LT[layer][offsets_T > top].max(initial=0.0))
    answer.append(
      {"layer": layer, "change": float(change_LT[layer, answer_pos]), "beyond_bound": beyond}
    )
    for lo in range(0, int(distance) + 1, bin_width):
      span = change_LT[layer, first + lo : first + min(lo + bin_width, int(distance) + 1)]
      rows.append({"layer": layer, "offset": lo, "change": float(span.mean())})
  return rows, answer


def probe_workdir(workdir, fractions=(0.5, 0.9), *, num=32, bin_width=16):
  """relay_profile of a trained workdir at fractions of its reach (windowed models only).

  Returns (profile rows, answer rows), each row also holding the distance and its fraction.
  """
  from swa import train_lib  # The Trainer's restore; imported here to keep this module light.
  from swa.model import ModelConfig

  config, graphdef, params = train_lib.restore_params(workdir)
  model_config = ModelConfig.from_config(config)
  if model_config.reach is None:
    raise ValueError(f"{workdir} has full-attention layers: the probe follows windowed hops.")
  profile, answers = [], []
  for fraction in fractions:
    distance = int(fraction * model_config.reach)
    seq_len = data.context_len(distance, config.data.seq_len)
    rows, answer = relay_profile(
      graphdef,
      params,
      distance,
      num=num,
      seq_len=seq_len,
      seed=config.seed,
      bin_width=bin_width,
    )
    extra = {"distance": distance, "fraction": fraction}
    profile += [{**extra, **r} for r in rows]
    answers += [{**extra, **r} for r in answer]
  return config, profile, answers
