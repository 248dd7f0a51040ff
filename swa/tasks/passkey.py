"""The passkey task: find a 5-digit key hidden at a chosen distance before the question.

Data: swa/curriculum.py's PasskeyBatches (a linear or adaptive curriculum over distance).
Loss: cross-entropy on the answer digits plus lm_weight times next-token cross-entropy
(`passkey_loss`). Evaluation: swa/evaluate.py's exact match by distance on the one prompt stream,
the same numbers eval_passkey.py reports. The Task contract is in swa/tasks/__init__.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from swa import curriculum, data, evaluate
from swa.model import ModelConfig

_EVAL_PREFIX = "exact_match_d"  # eval/exact_match_d00042: exact match at distance 42


def passkey_loss(logits_BTV, batch, lm_weight):
  """Answer-digit cross-entropy + lm_weight * next-token cross-entropy on every position.

  Returns (loss, metrics); `exact_match` is the batch mean of `evaluate.exact_match`, whose
  per-example values are `example_exact_match` (bool [B], for the adaptive curriculum; not a
  logged scalar).
  """
  answer_BT = batch["answer_mask"]
  token_loss_BT = optax.softmax_cross_entropy_with_integer_labels(logits_BTV, batch["targets"])
  answer_loss = jnp.sum(token_loss_BT * answer_BT) / jnp.sum(answer_BT)
  lm_loss = jnp.mean(token_loss_BT)
  correct_BT = jnp.argmax(logits_BTV, axis=-1) == batch["targets"]
  exact_match_B = evaluate.exact_match(logits_BTV, batch)
  metrics = {
    "answer_loss": answer_loss,
    "lm_loss": lm_loss,
    "digit_accuracy": jnp.sum(correct_BT * answer_BT) / jnp.sum(answer_BT),
    "exact_match": jnp.mean(exact_match_B),
    "example_exact_match": exact_match_B,
  }
  return answer_loss + lm_weight * lm_loss, metrics


def training_max_distance(config):
  """Largest key-to-question distance trained on (data.max_distance, data.cap_at_reach)."""
  d = config.data
  top = data.context_max_distance(d.seq_len) if d.max_distance < 0 else d.max_distance
  reach = ModelConfig.from_config(config).reach
  if d.cap_at_reach and reach is not None and reach < top:
    if reach < data.MIN_DISTANCE:
      raise ValueError(
        f"The model's receptive reach {reach} is below the shortest passkey distance "
        f"{data.MIN_DISTANCE}, so no training example can be answered; widen the "
        f"window, add layers or set data.cap_at_reach=False."
      )
    top = reach
  return top


class PasskeyTask:
  """Passkey retrieval (swa/tasks/__init__.py's Task).

  Args:
    config: the experiment config; None gives the defaults of configs/base.py (lm_weight 1.0,
      the linear curriculum).
  """

  name = "passkey"
  batch_keys = ("inputs", "targets", "answer_mask")

  def __init__(self, config=None):
    self.lm_weight = 1.0 if config is None else float(config.data.lm_weight)
    # The adaptive curriculum moves with the model's results (`observe`).
    self.feedback = config is not None and config.data.curriculum == "adaptive"
    self._batches = None

  def validate(self, config):
    d = config.data
    if config.model.vocab_size < data.VOCAB_SIZE:
      raise ValueError(
        f"model.vocab_size={config.model.vocab_size} is below the passkey tokenizer's "
        f"{data.VOCAB_SIZE} ids (swa/data.py)."
      )
    if d.seq_len < data.MIN_CONTEXT_LEN:
      raise ValueError(
        f"data.seq_len={d.seq_len} is too short; a passkey context needs at least "
        f"{data.MIN_CONTEXT_LEN} tokens."
      )
    for name, value in {
      "eval.examples_per_distance": config.eval.examples_per_distance,
      "eval.num_distances": config.eval.num_distances,
    }.items():
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer.")
    if not isinstance(config.eval.get("hop_distances", False), bool):
      raise ValueError(f"eval.hop_distances={config.eval.hop_distances!r} must be True or False.")
    if not d.lm_weight >= 0:
      raise ValueError(f"data.lm_weight={d.lm_weight!r} is not allowed; it must be >= 0.")
    if d.curriculum == "adaptive" and jax.process_count() > 1:
      raise ValueError(
        "data.curriculum='adaptive' runs in one process only (it reads every "
        "example's result on the host); use 'linear' with several processes."
      )

  def batches(self, config):
    d = config.data
    self._batches = curriculum.PasskeyBatches(
      seq_len=d.seq_len,
      batch_size=d.batch_size,
      seed=config.seed,
      total_steps=config.num_steps,
      curriculum_start=d.curriculum_start,
      curriculum_fraction=d.curriculum_fraction,
      max_distance=training_max_distance(config),
      uniform_fraction=d.uniform_fraction,
      curriculum=d.curriculum,
      stage=d.curriculum_stage or None,
      target=d.curriculum_target,
      stage_examples=d.curriculum_examples,
    )
    return self._batches

  def loss(self, logits_BTV, batch):
    return passkey_loss(logits_BTV, batch, self.lm_weight)

  def observe(self, batch, metrics):
    """Feeds each example's exact match to the adaptive curriculum; logs the batch's top."""
    if self.feedback:  # Only then fetch the per-example results.
      self._batches.observe(batch["distance"], np.asarray(metrics["example_exact_match"]))
    return {"curriculum_top": batch["curriculum_top"]}

  def evaluate(self, graphdef, params, config):
    """Exact match at eval.num_distances even distances (eval/exact_match_d00042, ...), and at
    each hop's distance with eval.hop_distances."""
    # The one evaluation path (eval_passkey.py scores the same prompts); batches are capped by
    # tokens, so a long trained context is evaluated one prompt at a time.
    distances = data.even_distances(config.data.seq_len, config.eval.num_distances)
    if config.eval.get("hop_distances", False):
      windows = ModelConfig.from_config(config).layer_windows
      hops = data.hop_distances(windows, config.data.seq_len)
      distances = sorted(set(distances) | set(hops or ()))
    accuracy = evaluate.passkey_accuracy(
      graphdef,
      params,
      distances,
      train_seq_len=config.data.seq_len,
      examples_per_distance=config.eval.examples_per_distance,
      seed=config.seed,
    )
    return {f"{_EVAL_PREFIX}{d:05d}": acc for d, acc in accuracy.items()}

  def final_summary(self, config, graphdef, params, eval_metrics):
    """eval.json {step, receptive_reach, exact_match_by_distance} and the accuracy table."""
    del graphdef, params  # The final evaluation already holds every number.
    accuracy = {int(k.removeprefix(_EVAL_PREFIX)): v for k, v in eval_metrics.items()}
    reach = ModelConfig.from_config(config).reach
    summary = {
      "step": config.num_steps,
      "receptive_reach": reach,
      "exact_match_by_distance": accuracy,
    }
    return summary, evaluate.format_accuracy_table(accuracy, reach)
