"""Training and evaluation of the passkey LM: loss, jitted steps, checkpoints, the loop.

The train state is a plain pytree {"params", "opt_state", "step"}; the model's
structure (an NNX GraphDef) stays outside it, so `train_step` is one pure,
jitted function with its state buffers donated.
"""

import functools
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm
from flax import nnx

from swa import curriculum, data, evaluate, sharding
from swa import workdir as workdir_lib
from swa.model import ModelConfig, Transformer


def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
  """The model's architecture from the `model` section of an experiment config."""
  return ModelConfig(**config.model.to_dict())


def create_model(config: ml_collections.ConfigDict, mesh=None):
  """Returns (graphdef, params): the model's structure and its float32 parameters.

  A `mesh` whose "seq" axis is larger than 1 makes attention sequence-parallel (its per-shard
  implementation is model.attention).
  """
  attention_fn = sharding.sequence_parallel(mesh, local_implementation=config.model.attention)
  model = Transformer(model_config(config), rngs=nnx.Rngs(config.seed), attention_fn=attention_fn)
  graphdef, params = nnx.split(model, nnx.Param)
  return graphdef, params.to_pure_dict()


def init_state(params, optimizer):
  """The train state at step 0: {"params", "opt_state", "step"} (the module docstring)."""
  return {"params": params, "opt_state": optimizer.init(params), "step": jnp.int32(0)}


def learning_rate_schedule(config: ml_collections.ConfigDict):
  o = config.optim
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=o.learning_rate,
    warmup_steps=o.warmup_steps,
    decay_steps=max(config.num_steps, o.warmup_steps + 1),
    end_value=o.learning_rate * o.end_lr_fraction,
  )


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  o = config.optim
  return optax.chain(
    optax.clip_by_global_norm(o.grad_clip),
    optax.adamw(learning_rate_schedule(config), b1=o.b1, b2=o.b2, weight_decay=o.weight_decay),
  )


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


@functools.partial(
  jax.jit, static_argnames=("graphdef", "optimizer", "lm_weight"), donate_argnames="state"
)
def train_step(state, batch, *, graphdef, optimizer, lm_weight):
  """One optimiser step. Returns (new_state, metrics)."""

  def loss_fn(params):
    logits_BTV = nnx.merge(graphdef, params)(batch["inputs"])
    return passkey_loss(logits_BTV, batch, lm_weight)

  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
  updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  metrics.update(
    loss=loss,
    grad_norm=optax.global_norm(grads),
    param_norm=optax.global_norm(params),
    update_norm=optax.global_norm(updates),
  )
  return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics


def training_max_distance(config):
  """Largest key-to-question distance trained on (data.max_distance, data.cap_at_reach)."""
  d = config.data
  top = data.context_max_distance(d.seq_len) if d.max_distance < 0 else d.max_distance
  reach = model_config(config).reach
  if d.cap_at_reach and reach is not None and reach < top:
    if reach < data.MIN_DISTANCE:
      raise ValueError(
        f"The model's receptive reach {reach} is below the shortest passkey distance "
        f"{data.MIN_DISTANCE}, so no training example can be answered; widen the "
        f"window, add layers or set data.cap_at_reach=False."
      )
    top = reach
  return top


def _checkpoint_manager(workdir, config, read_only=False):
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  if read_only:  # Reading a workdir creates nothing in it.
    options = ocp.CheckpointManagerOptions(create=False)
  else:
    options = ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True)
  return ocp.CheckpointManager(directory, options=options)


def restore_params(workdir):
  """(config, graphdef, params) of the newest checkpoint of a training workdir that restores.

  Reads only: nothing is created or moved in the workdir. One-line ValueErrors for a folder that
  is not a training workdir or has no checkpoint.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise ValueError(f"{workdir} is not a training workdir: it has no config.json.")
  config = ml_collections.ConfigDict(workdir_lib.read_json(path))
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise ValueError(f"No checkpoint under {workdir}/checkpoints.")
  graphdef, params = create_model(config)
  target = jax.tree.map(
    ocp.utils.to_shape_dtype_struct, init_state(params, create_optimizer(config))
  )
  step, restored = workdir_lib.restore_newest(
    _checkpoint_manager(workdir, config, read_only=True),
    lambda step: ocp.args.Composite(state=ocp.args.StandardRestore(target)),
    workdir,
    read_only=True,
  )
  if step is None:
    raise ValueError(f"No checkpoint under {workdir}/checkpoints.")
  return config, graphdef, restored["state"]["params"]


def validate_config(config: ml_collections.ConfigDict):
  """One-line ValueErrors, naming the value given, for config values a run cannot use."""
  d = config.data
  if d.seq_len < data.MIN_CONTEXT_LEN:
    raise ValueError(
      f"data.seq_len={d.seq_len} is too short; a passkey context needs at least "
      f"{data.MIN_CONTEXT_LEN} tokens."
    )
  positive = {
    "data.batch_size": d.batch_size,
    "log_every_steps": config.log_every_steps,
    "checkpoint_every_steps": config.checkpoint_every_steps,
    "keep_checkpoints": config.keep_checkpoints,
    "eval.examples_per_distance": config.eval.examples_per_distance,
    "eval.num_distances": config.eval.num_distances,
  }
  positive["num_steps"] = config.num_steps
  for name, value in positive.items():
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"{name}={value!r} must be a positive integer.")
  for name, value in {
    "eval.every_steps": config.eval.every_steps,
    "optim.warmup_steps": config.optim.warmup_steps,
  }.items():
    if not isinstance(value, int) or value < 0:
      raise ValueError(f"{name}={value!r} must be an integer >= 0.")
  o = config.optim
  # A NaN learning rate passes on purpose: the NaN-stop test uses it.
  checks = [
    ("optim.learning_rate", o.learning_rate, not o.learning_rate < 0, ">= 0"),
    ("optim.end_lr_fraction", o.end_lr_fraction, o.end_lr_fraction >= 0, ">= 0"),
    ("optim.weight_decay", o.weight_decay, o.weight_decay >= 0, ">= 0"),
    ("optim.grad_clip", o.grad_clip, o.grad_clip > 0, "> 0"),
    ("optim.b1", o.b1, 0 <= o.b1 < 1, "in [0, 1)"),
    ("optim.b2", o.b2, 0 <= o.b2 < 1, "in [0, 1)"),
    ("data.lm_weight", d.lm_weight, d.lm_weight >= 0, ">= 0"),
  ]
  for name, value, ok, allowed in checks:
    if not ok:
      raise ValueError(f"{name}={value!r} is not allowed; it must be {allowed}.")


def _config_fields(record):
  """Flat {field: value} of a config record (config.json), windows in their per-layer form."""
  flat = workdir_lib.flatten(record)
  try:  # "none" and "full", 32 and "32,32,32" are the same windows.
    flat["model.window_size"] = list(model_config(ml_collections.ConfigDict(record)).layer_windows)
  except Exception:  # pylint: disable=broad-except  # an older record: compare as written
    pass
  return flat


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, allow_changes=()):
  """Trains (resuming from the newest checkpoint in workdir) and evaluates; returns final metrics.

  Args:
    config: the experiment config (configs/base.py).
    workdir: the run's folder; a workdir belongs to one config (swa/workdir.py).
    allow_changes: fields of workdir.FLAG_FIELDS (num_steps) that may differ from the saved run.
  """
  validate_config(config)
  mesh = sharding.make_mesh(config.mesh)
  graphdef, params = create_model(config, mesh)
  optimizer = create_optimizer(config)
  state = init_state(params, optimizer)
  d = config.data
  batches = curriculum.PasskeyBatches(
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

  if d.curriculum == "adaptive" and jax.process_count() > 1:
    raise ValueError(
      "data.curriculum='adaptive' runs in one process only (it reads every "
      "example's result on the host); use 'linear' with several processes."
    )

  # Refuses a workdir of another run; nothing is written in it before this.
  record = workdir_lib.claim(workdir, json.loads(config.to_json()), _config_fields, allow_changes)
  manager = _checkpoint_manager(workdir, config)
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  _, restored = workdir_lib.restore_newest(
    manager,
    lambda step: ocp.args.Composite(
      state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()
    ),
    workdir,
  )
  if restored is not None:
    state = restored["state"]
    batches.set_state(restored["data"])
    print(f"Resumed from step {int(state['step'])} in {workdir}.", file=sys.stderr)
  start = int(state["step"])
  if start > config.num_steps:
    raise ValueError(
      f"num_steps={config.num_steps} is below the step {start} that {workdir} already reached."
    )
  if jax.process_index() == 0:
    workdir_lib.write_json_atomic(os.path.join(workdir, "config.json"), record)
    workdir_lib.truncate_metrics(os.path.join(workdir, "metrics.jsonl"), start, config.num_steps)
    workdir_lib.log_event(workdir, f"resumed at step {start}" if start else "started at step 0")
  if mesh.size > 1:  # One device: no placement at all, exactly as before.
    state = sharding.shard_train_state(state, mesh)

  num_params = sum(x.size for x in jax.tree.leaves(state["params"]))
  print(
    f"Model: {num_params:,} parameters; windows {model_config(config).layer_windows}; "
    f"mesh {dict(mesh.shape)} over {jax.devices()}",
    file=sys.stderr,
  )
  writer = workdir_lib.MetricWriter(workdir, enabled=jax.process_index() == 0)
  schedule = learning_rate_schedule(config)
  step_fn = functools.partial(
    train_step, graphdef=graphdef, optimizer=optimizer, lm_weight=float(d.lm_weight)
  )
  if mesh.size > 1:  # Split each host batch over the mesh before the jitted step.
    step_on_mesh = step_fn
    step_fn = lambda state, batch: step_on_mesh(state, sharding.shard_batch(batch, mesh))
  distances = data.even_distances(d.seq_len, config.eval.num_distances)

  def run_eval(step, params):
    # The one evaluation path (eval_passkey.py scores the same prompts); batches are capped
    # by tokens, so a long trained context is evaluated one prompt at a time.
    accuracy = evaluate.passkey_accuracy(
      graphdef,
      params,
      distances,
      train_seq_len=d.seq_len,
      examples_per_distance=config.eval.examples_per_distance,
      seed=config.seed,
    )
    writer.write(step, {f"eval/exact_match_d{k:05d}": v for k, v in accuracy.items()})
    return accuracy

  progress = tqdm.tqdm(
    range(start, config.num_steps),
    initial=start,
    total=config.num_steps,
    mininterval=1 if sys.stderr.isatty() else 30,
    file=sys.stderr,
  )
  try:
    state = _train_loop(
      progress, state, batches, step_fn, writer, schedule, manager, config, run_eval
    )
  except BaseException:
    writer.close()  # Before the error is shown: nothing of the writer's prints after it.
    raise
  finally:
    # Also on an interrupt: let the last checkpoint finish so the next run resumes from it.
    manager.wait_until_finished()
    progress.close()

  accuracy = run_eval(config.num_steps, state["params"])
  reach = model_config(config).reach
  summary = {
    "step": config.num_steps,
    "receptive_reach": reach,
    "exact_match_by_distance": accuracy,
  }
  if jax.process_index() == 0:
    workdir_lib.write_json_atomic(os.path.join(workdir, "eval.json"), summary)
  writer.close()
  print(evaluate.format_accuracy_table(accuracy, reach))
  return summary


def _train_loop(progress, state, batches, step_fn, writer, schedule, manager, config, run_eval):
  """Steps from the restored state to config.num_steps, logging, evaluating and checkpointing."""
  pending, window_start, window_tokens = None, time.perf_counter(), 0

  def finish(step, metrics, distances, top, force=False):
    """Host side of a step: NaN check, logging, and the curriculum's view of the results."""
    correct_B = metrics.pop("example_exact_match")
    if batches.curriculum == "adaptive":  # Only then fetch the per-example results.
      batches.observe(distances, np.asarray(correct_B))
    _log_step(step, {**metrics, "curriculum_top": top}, writer, progress, schedule, config, force)

  for step in progress:
    top = batches.top_at(step)  # The curriculum's largest distance for this step's batch.
    batch = next(batches)
    distances = batch["distance"]
    batch = {k: batch[k] for k in ("inputs", "targets", "answer_mask")}
    state, metrics = step_fn(state, batch)
    window_tokens += batch["inputs"].size
    # Finish the previous step now, so the device always has the next step queued.
    if pending is not None:
      finish(*pending)
    pending = (step, metrics, distances, top)
    if (step + 1) % config.log_every_steps == 0:
      jax.block_until_ready(metrics)
      elapsed = time.perf_counter() - window_start
      writer.write(step + 1, {"tokens_per_second": window_tokens / elapsed})
      progress.set_postfix(
        loss=f"{float(metrics['loss']):.3f}", tok_s=f"{window_tokens / elapsed:,.0f}"
      )
      window_start, window_tokens = time.perf_counter(), 0
    last = step + 1 == config.num_steps
    if config.eval.every_steps and (step + 1) % config.eval.every_steps == 0 and not last:
      accuracy = run_eval(step + 1, state["params"])
      progress.write(
        f"step {step + 1}: exact match by distance "
        + " ".join(f"{k}:{v:.0%}" for k, v in accuracy.items())
      )
    if (step + 1) % config.checkpoint_every_steps == 0 or last:
      # The saved data state must include this step's results, as a resumed run will.
      finish(*pending, force=last)
      pending = None
      manager.save(
        step + 1,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(batches.get_state())
        ),
      )
  return state


def _log_step(step, metrics, writer, progress, schedule, config, force=False):
  """Checks the loss for NaN every step; writes the metrics every log_every_steps."""
  loss = float(metrics["loss"])
  if not math.isfinite(loss):
    progress.close()
    raise FloatingPointError(
      f"Loss became {loss} at step {step + 1}; stopping. Try a lower optim.learning_rate or "
      "optim.grad_clip, or model.dtype=float32."
    )
  if force or (step + 1) % config.log_every_steps == 0:
    writer.write(step + 1, {**jax.device_get(metrics), "learning_rate": schedule(step)})
