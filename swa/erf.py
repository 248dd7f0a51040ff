"""The effective receptive field of a trained passkey model, measured at the key digits.

For prompts whose key sits at a controlled distance d (the evaluation prompts of
swa/evaluate.py), the ERF at d is the mean, over the prompts and the ANSWER_LEN digits j, of
|| d logit(true answer digit j) / d embedding of key digit j ||: answer digit j is predicted
d tokens after key digit j, so every term is a gradient across exactly d positions. It shows
how strongly the answer still depends on the key as the key moves away, averaged over many
prompts per distance. For any weights it is exactly zero for d > reach: no path of attention
carries gradient further (swa/receptive_field.py measures the same locality on the mask).
"""

import collections
import functools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from swa import data, evaluate


@functools.partial(jax.jit, static_argnames="graphdef")
def key_digit_gradients(params, batch, first_key_digit_B, *, graphdef):
  """float32 [B, ANSWER_LEN]: entry j is ||d logit(answer digit j) / d embedding of key digit j||.

  Answer digit j is predicted at p_last + j (p_last = T - ANSWER_LEN) and copies key digit j at
  first_key_digit + j, so every pair sits at the same distance d = p_last - first_key_digit.

  Args:
    params, graphdef: the model (a float32 graphdef keeps small far-away gradients).
    batch: inputs, targets (int [B, T]).
    first_key_digit_B: int [B], the input position of each prompt's first key digit.
  """
  model = nnx.merge(graphdef, params)
  p_last = batch["inputs"].shape[1] - data.ANSWER_LEN
  x_BTD = model.embed_tokens(batch["inputs"])

  def digit_gradient_norms(j):
    def answer_logit(x_BTD):
      logits_BV = model.from_embeddings(x_BTD)[:, p_last + j, :]
      answer_B = batch["targets"][:, p_last + j]
      return jnp.take_along_axis(logits_BV, answer_B[:, None], axis=1).sum()

    grad_BTD = jax.grad(answer_logit)(x_BTD)
    at_key_BD = jnp.take_along_axis(grad_BTD, (first_key_digit_B + j)[:, None, None], axis=1)[:, 0]
    return jnp.linalg.norm(at_key_BD.astype(jnp.float32), axis=-1)

  return jax.vmap(digit_gradient_norms, out_axes=1)(jnp.arange(data.ANSWER_LEN))


def effective_receptive_field(
  graphdef,
  params,
  distances,
  *,
  train_seq_len: int,
  examples_per_distance: int = 64,
  seed: int = 0,
  max_batch_tokens: int = evaluate.MAX_BATCH_TOKENS,
  label: str = "",
) -> dict:
  """Mean gradient of the answer at the key digits, for keys at each distance.

  Args:
    graphdef, params: the model (evaluate.graphdef_for(config, dtype="float32") gives float32
      gradients for a bfloat16-trained model).
    distances: key distances d (>= data.MIN_DISTANCE), e.g. the accuracy sweep's.
    train_seq_len: prompt length while d fits (data.context_len, as in the accuracy sweep).
    examples_per_distance: prompts averaged per distance (evaluate.prompts: the same prompts
      the accuracy is scored on).
    seed: seeds the prompts.
    max_batch_tokens: cap on ANSWER_LEN * B * T of one batch of backward passes (at least one
      prompt).
    label: name shown in the progress lines (stderr).

  Returns:
    {distance: mean over prompts and key digits of the gradient norm}, float.
  """
  if examples_per_distance < 1:
    raise ValueError(f"examples_per_distance must be >= 1, got {examples_per_distance}.")
  groups = collections.defaultdict(list)
  for d in sorted(set(int(d) for d in distances)):
    if d < data.MIN_DISTANCE:
      raise ValueError(f"distance {d} is below data.MIN_DISTANCE={data.MIN_DISTANCE}.")
    groups[data.context_len(d, train_seq_len)].append(d)
  n, out = examples_per_distance, {}
  for T, ds in sorted(groups.items()):
    start = time.perf_counter()
    p_last = T - data.ANSWER_LEN
    batches = [evaluate.prompts(seed, d, n, T) for d in ds]
    arrays = {k: np.concatenate([b[k] for b in batches]) for k in ("inputs", "targets")}
    first_digit = np.repeat(p_last - np.asarray(ds), n).astype(np.int32)
    total = len(ds) * n
    # One backward pass per answer digit (vmapped): the cap counts each prompt ANSWER_LEN times.
    batch_size = min(total, evaluate.batch_size_for(T, max(1, max_batch_tokens // data.ANSWER_LEN)))
    padded = -(-total // batch_size) * batch_size
    rows = np.arange(padded) % total  # padding repeats the first rows; they are dropped
    norms = np.concatenate(
      [
        np.asarray(
          key_digit_gradients(
            params,
            {k: v[rows[i : i + batch_size]] for k, v in arrays.items()},
            first_digit[rows[i : i + batch_size]],
            graphdef=graphdef,
          )
        )
        for i in range(0, padded, batch_size)
      ]
    )[:total]
    for d, value in zip(ds, norms.astype(np.float64).reshape(len(ds), -1).mean(axis=1)):
      out[d] = float(value)
    print(
      f"[{label} ERF] T={T}: {len(ds)} distances x {n} prompts, {time.perf_counter() - start:.1f}s",
      file=sys.stderr,
      flush=True,
    )
  return out
