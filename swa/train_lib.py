"""Training of any task (swa/tasks/): the Trainer, its jitted step, checkpoints and metrics.

The train state is a plain pytree {"params", "opt_state", "step"}; the model's structure (an NNX
GraphDef) stays outside it, so the step is one pure function, jitted once per Trainer with the
state replicated over the mesh, each batch split over it, and the state's buffers donated.

A task (config.task, swa/tasks/__init__.py) brings the data, the loss and the evaluation; the
Trainer owns the rest: the step, the optimiser and its schedule, the Orbax checkpoints, the
metrics (workdir.MetricWriter) and an input pipeline that puts batch k+1 on the device while
step k runs. Metrics are read one step late, so the device always has the next step queued.
"""

import contextlib
import functools
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import optax
import orbax.checkpoint as ocp
import tqdm
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from swa import checkpoints, sharding, tasks
from swa import workdir as workdir_lib
from swa.input_pipeline import InputPipeline
from swa.model import ModelConfig, Transformer
from swa.tasks import passkey

# The passkey task's pieces under their old names (scripts/collectives.py, tests).
passkey_loss = passkey.passkey_loss
training_max_distance = passkey.training_max_distance


def create_model(config: ml_collections.ConfigDict, mesh=None):
  """Returns (graphdef, params): the model's structure and its float32 parameters.

  A `mesh` whose "seq" axis is larger than 1 makes attention sequence-parallel (its per-shard
  implementation is model.attention).
  """
  attention_fn = sharding.sequence_parallel(mesh, local_implementation=config.model.attention)
  model = Transformer(
    ModelConfig.from_config(config), rngs=nnx.Rngs(config.seed), attention_fn=attention_fn
  )
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


def apply_step(state, batch, graphdef, optimizer, loss_fn):
  """One optimiser step of loss_fn(logits_BTV, batch) -> (loss, metrics); pure.

  The model reads batch["inputs"], and batch["positions"] and batch["segment_ids"] where present.

  Returns (new_state, metrics): the loss's metrics plus loss and the grad/param/update norms.
  """

  def loss_of(params):
    # A batch of packed documents (text with data.segment_ids) also brings their ids and
    # per-document positions.
    model = nnx.merge(graphdef, params)
    logits = model(batch["inputs"], batch.get("positions"), segment_ids_BT=batch.get("segment_ids"))
    return loss_fn(logits, batch)

  (loss, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(state["params"])
  updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  metrics = {
    **metrics,
    "loss": loss,
    "grad_norm": optax.global_norm(grads),
    "param_norm": optax.global_norm(params),
    "update_norm": optax.global_norm(updates),
  }
  return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics


@functools.partial(
  jax.jit, static_argnames=("graphdef", "optimizer", "lm_weight"), donate_argnames="state"
)
def train_step(state, batch, *, graphdef, optimizer, lm_weight):
  """The passkey task's step, as the profiling tools and scripts compile it: (new_state, metrics).

  The Trainer runs the same `apply_step` for its task, jitted with explicit shardings.
  """
  loss_fn = functools.partial(passkey.passkey_loss, lm_weight=lm_weight)
  return apply_step(state, batch, graphdef, optimizer, loss_fn)


def check_training_workdir(workdir, what=None):
  """A one-line ValueError unless `workdir` holds a training run's config.json (`what` names the
  setting that gave it)."""
  if not os.path.isfile(os.path.join(workdir, "config.json")):
    name = f"{what}={workdir}" if what else workdir
    raise ValueError(f"{name} is not a training workdir: it has no config.json.")


def restore_params(workdir):
  """(config, graphdef, params) of the newest checkpoint of a training workdir that restores.

  Reads only: nothing is created or moved in the workdir. One-line ValueErrors for a folder that
  is not a training workdir or has no checkpoint.
  """
  check_training_workdir(workdir)
  config = ml_collections.ConfigDict(workdir_lib.read_json(os.path.join(workdir, "config.json")))
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise ValueError(f"No checkpoint under {workdir}/checkpoints.")
  graphdef, params = create_model(config)
  target = jax.tree.map(
    ocp.utils.to_shape_dtype_struct, init_state(params, create_optimizer(config))
  )
  step, restored = checkpoints.restore_newest(
    checkpoints.manager(workdir, read_only=True),
    checkpoints.restore_args(target),
    workdir,
    read_only=True,
  )
  if step is None:
    raise ValueError(f"No checkpoint under {workdir}/checkpoints.")
  return config, graphdef, restored["state"]["params"]


def initial_params(init_from, params):
  """The newest parameters of the training workdir `init_from`, checked against `params` (this
  run's fresh ones): same names and shapes, else a one-line ValueError."""
  _, _, found = restore_params(init_from)

  def shapes(tree):
    return {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(tree)}

  ours, theirs = shapes(params), shapes(found)
  for name in sorted(set(ours) | set(theirs)):
    if ours.get(name) != theirs.get(name):
      raise ValueError(
        f"init_from={init_from}: its parameter {name} has shape {theirs.get(name)}, this model's "
        f"{ours.get(name)}; fine-tuning needs the same architecture."
      )
  return jax.tree.map(lambda ref, x: jnp.asarray(x, ref.dtype), params, found)


def validate_config(config: ml_collections.ConfigDict, task=None):
  """One-line ValueErrors, naming the value given, for config values a run cannot use.

  The task's own fields (config.data, config.eval) are checked by `task.validate` (default: the
  task config.task names).
  """
  (task or tasks.get_task(config.task, config)).validate(config)
  for name, value in {
    "data.batch_size": config.data.batch_size,
    "log_every_steps": config.log_every_steps,
    "checkpoint_every_steps": config.checkpoint_every_steps,
    "keep_checkpoints": config.keep_checkpoints,
    "num_steps": config.num_steps,
  }.items():
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
  ]
  for name, value, ok, allowed in checks:
    if not ok:
      raise ValueError(f"{name}={value!r} is not allowed; it must be {allowed}.")


class Trainer:
  """Trains one task's model: owns the jitted step, its shardings, the optimiser and schedule.

  `train_and_evaluate(workdir)` is a whole run: it claims the workdir (swa/workdir.py), resumes
  from its newest checkpoint, trains with checkpoints and metrics, evaluates and writes
  eval.json. `train` is the loop alone (scripts/step_rate.py times it without a workdir).

  Args:
    config: the experiment config (configs/base.py); validated here.
    task: the task; default tasks.get_task(config.task, config).
  """

  def __init__(self, config: ml_collections.ConfigDict, task=None):
    self.task = task or tasks.get_task(config.task, config)
    validate_config(config, self.task)
    self.config = config
    self.mesh = sharding.make_mesh(config.mesh)
    self.graphdef, params = create_model(config, self.mesh)
    self.optimizer = create_optimizer(config)
    self.schedule = learning_rate_schedule(config)
    self.initial_state = init_state(params, self.optimizer)
    self._replicated = NamedSharding(self.mesh, PartitionSpec())
    self._jitted = None

  def update(self, state, batch):
    """One optimiser step on the task's loss, not jitted: (new_state, metrics)."""
    return apply_step(state, batch, self.graphdef, self.optimizer, self.task.loss)

  def step(self, state, batch):
    """The jitted `update`: state replicated, batch split over the mesh, state donated."""
    if self._jitted is None:  # Built from the first batch: its arrays' ranks give the layout.
      batch_shardings = {
        k: NamedSharding(self.mesh, sharding.batch_spec(v.ndim)) for k, v in batch.items()
      }
      self._jitted = jax.jit(
        self.update,
        in_shardings=(self._replicated, batch_shardings),
        out_shardings=(self._replicated, self._replicated),
        donate_argnums=0,
      )
    return self._jitted(state, batch)

  def place(self, state):
    """The train state on the mesh, as `step` takes it."""
    return sharding.shard_train_state(state, self.mesh)

  def input_pipeline(self, batches, limit=None):
    """An InputPipeline of `batches` for this mesh (background unless the task has feedback)."""
    put = functools.partial(sharding.shard_batch, mesh=self.mesh)
    return InputPipeline(
      batches, put, self.task.batch_keys, limit, background=not self.task.feedback
    )

  def evaluate(self, step, params, writer):
    """The task's evaluation, logged as eval/<key> at `step`; returns its metrics."""
    metrics = self.task.evaluate(self.graphdef, params, self.config)
    writer.write(step, {f"eval/{k}": v for k, v in metrics.items()})
    return metrics

  def train(
    self,
    state,
    pipeline,
    steps,
    *,
    writer=None,
    manager=None,
    progress=None,
    evaluate=True,
    should_stop=None,
  ):
    """Runs the steps of range `steps` on batches of `pipeline`; returns (state, steps run).

    Logs to `writer` every config.log_every_steps and at the last step, evaluates every
    eval.every_steps (with `evaluate`), checkpoints every checkpoint_every_steps and at the
    last step (with a `manager`), shows a tqdm `progress` bar, and stops early once
    should_stop() is true. A NaN loss stops with a one-line FloatingPointError.
    """
    config = self.config
    every = config.eval.every_steps if evaluate else 0
    writer = writer or workdir_lib.MetricWriter(None, enabled=False)
    progress = progress or tqdm.tqdm(disable=True)
    pending, done, window_start, window_tokens = None, 0, time.perf_counter(), 0
    for step in steps:
      host, batch = next(pipeline)
      state, metrics = self.step(state, batch)
      done += 1
      window_tokens += host["inputs"].size
      # Finish the previous step now, so the device always has the next step queued.
      if pending is not None:
        self._finish(*pending, writer, progress)
      pending = (step, host, metrics)
      if (step + 1) % config.log_every_steps == 0:
        jax.block_until_ready(metrics)
        rate = window_tokens / (time.perf_counter() - window_start)
        writer.write(step + 1, {"tokens_per_second": rate})
        progress.set_postfix(loss=f"{float(metrics['loss']):.3f}", tok_s=f"{rate:,.0f}")
        window_start, window_tokens = time.perf_counter(), 0
      last = step + 1 == steps.stop or (should_stop is not None and should_stop())
      if every and (step + 1) % every == 0 and step + 1 != steps.stop:
        accuracy = self.evaluate(step + 1, state["params"], writer)
        progress.write(f"step {step + 1}: " + " ".join(f"{k}={v:.3g}" for k, v in accuracy.items()))
      if (step + 1) % config.checkpoint_every_steps == 0 or last:
        # The saved data state must include this step's results, as a resumed run will.
        self._finish(*pending, writer, progress, force=last)
        pending = None
        if manager is not None:
          checkpoints.save(manager, step + 1, state, pipeline.data_state())
      progress.update(1)
      if last:
        break
    return state, done

  def _finish(self, step, host, metrics, writer, progress, force=False):
    """Host side of a step: the task's observe, the NaN check, logging every log_every_steps."""
    extra = self.task.observe(host, metrics)
    scalars = {k: v for k, v in metrics.items() if jnp.ndim(v) == 0}
    loss = float(scalars["loss"])
    if not math.isfinite(loss):
      progress.close()
      raise FloatingPointError(
        f"Loss became {loss} at step {step + 1}; stopping. Try a lower optim.learning_rate or "
        "optim.grad_clip, or model.dtype=float32."
      )
    if writer.enabled and (force or (step + 1) % self.config.log_every_steps == 0):
      row = {**jax.device_get(scalars), **extra, "learning_rate": self.schedule(step)}
      writer.write(step + 1, row)

  def _resume(self, workdir, allow_changes, batches):
    """Claims workdir and restores its newest checkpoint into the state and `batches`."""
    config, state = self.config, self.initial_state
    # Refuses a workdir of another run; nothing is written in it before this.
    record = json.loads(config.to_json())
    changes = workdir_lib.claim(workdir, record, workdir_lib.config_fields, allow_changes)
    manager = checkpoints.manager(workdir, keep=config.keep_checkpoints)
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    # A data state the stream refuses makes the checkpoint unreadable, as bad bytes do.
    accept = lambda restored: batches.set_state(checkpoints.check_restored(restored))
    _, restored = checkpoints.restore_newest(
      manager, checkpoints.restore_args(target), workdir, accept=accept
    )
    if restored is not None:
      state = restored["state"]
      print(f"Resumed from step {int(state['step'])} in {workdir}.", file=sys.stderr)
    elif config.get("init_from"):
      state = init_state(initial_params(config.init_from, state["params"]), self.optimizer)
      print(f"Parameters from {config.init_from}.", file=sys.stderr)
    start = int(state["step"])
    if start > config.num_steps:
      raise ValueError(
        f"num_steps={config.num_steps} is below the step {start} that {workdir} already reached."
      )
    if changes:  # Reported only for a resume that happens.
      print(changes, file=sys.stderr)
      workdir_lib.log_event(workdir, changes)
    if jax.process_index() == 0:
      workdir_lib.write_json_atomic(os.path.join(workdir, "config.json"), record)
      workdir_lib.truncate_metrics(os.path.join(workdir, "metrics.jsonl"), start, config.num_steps)
      workdir_lib.log_event(workdir, f"resumed at step {start}" if start else "started at step 0")
    return manager, self.place(state)

  def train_and_evaluate(self, workdir: str, allow_changes=()):
    """The whole run in workdir (resumed if it has checkpoints), holding its lock; returns the
    final summary."""
    batches = self.task.batches(self.config)  # Its errors come before the workdir is touched.
    if self.config.get("init_from"):
      check_training_workdir(self.config.init_from, "init_from")
    workdir_lib.prepare(workdir)
    # The run's first process holds the lock for all of them.
    with workdir_lib.Lock(workdir) if jax.process_index() == 0 else contextlib.nullcontext():
      return self._run(workdir, allow_changes, batches)

  def _run(self, workdir, allow_changes, batches):
    config = self.config
    manager, state = self._resume(workdir, allow_changes, batches)
    start = int(state["step"])
    num_params = sum(x.size for x in jax.tree.leaves(state["params"]))
    print(
      f"Model: {num_params:,} parameters; windows {ModelConfig.from_config(config).layer_windows}; "
      f"mesh {dict(self.mesh.shape)} over {jax.devices()}",
      file=sys.stderr,
    )
    writer = workdir_lib.MetricWriter(workdir, enabled=jax.process_index() == 0)
    pipeline = self.input_pipeline(batches, limit=config.num_steps - start)
    progress = tqdm.tqdm(
      initial=start,
      total=config.num_steps,
      mininterval=1 if sys.stderr.isatty() else 30,
      file=sys.stderr,
    )
    try:
      steps = range(start, config.num_steps)
      kw = dict(writer=writer, manager=manager, progress=progress)
      state, _ = self.train(state, pipeline, steps, **kw)
    except BaseException:
      writer.close()  # Before the error is shown: nothing of the writer's prints after it.
      raise
    finally:
      pipeline.close()
      # Also on an interrupt: let the last checkpoint finish so the next run resumes from it.
      manager.wait_until_finished()
      progress.close()

    eval_metrics = self.evaluate(config.num_steps, state["params"], writer)
    summary, table = self.task.final_summary(config, self.graphdef, state["params"], eval_metrics)
    if jax.process_index() == 0:
      workdir_lib.write_json_atomic(os.path.join(workdir, "eval.json"), summary)
    writer.close()
    print(table)
    return summary


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, allow_changes=()):
  """Trains config.task (resuming from the newest checkpoint in workdir) and evaluates.

  Args:
    config: the experiment config (configs/base.py).
    workdir: the run's folder; a workdir belongs to one config (swa/workdir.py).
    allow_changes: fields of workdir.FLAG_FIELDS (num_steps) that may differ from the saved run.

  Returns:
    The task's final summary (what eval.json holds).
  """
  return Trainer(config).train_and_evaluate(workdir, allow_changes)
