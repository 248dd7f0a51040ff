"""Tasks: what a run learns, plugged into the task-agnostic Trainer of swa/train_lib.py.

A task is a data source (resumable host batches), a loss (pure, traced inside the jitted train
step) and an evaluator (host side). The Trainer owns everything else: the step, its shardings,
the optimiser, checkpoints, metrics and the input pipeline. `config.task` names the task;
`get_task(config.task, config)` builds it.

Registered by name and imported on first use (so a missing module is a one-line error):
  "passkey"  swa/tasks/passkey.py  PasskeyTask: passkey retrieval over a distance curriculum.
  "text"     swa/tasks/text.py     TextTask: language modelling on real text.

A task module defines its class with the one constructor argument `config` (the experiment
config, or None for the task's defaults) and every member of `Task` below.
"""

import importlib
from typing import Any, Protocol

import jax
import numpy as np


class Batches(Protocol):
  """The resumable host iterator of a task's training batches (swa/curriculum.py is one)."""

  def __next__(self) -> dict[str, np.ndarray]:
    """The next batch: numpy arrays, at least "inputs" and "targets" (int32 [B, T]).

    A task may add more (e.g. "answer_mask", "weights", "segment_ids", or host-only keys the
    task's `observe` reads); only `Task.batch_keys` travel to the device.
    """

  def get_state(self) -> dict:
    """JSON-able state after the last batch drawn; "step" is the index of the next batch."""

  def set_state(self, state: dict) -> None:
    """Resumes so that the next batch is the one a run saved with `state` would draw next."""


class Task(Protocol):
  """The contract between the Trainer and a task (swa/tasks/passkey.py is the model)."""

  # "passkey" | "text": the value of config.task that selects this task.
  name: str
  # The batch keys the loss reads; only these are put on the device each step (the rest of a
  # host batch stays on the host, for `observe`).
  batch_keys: tuple[str, ...]
  # True when `observe` changes the batches to come (passkey's adaptive curriculum): the
  # Trainer then draws each batch after the previous step's results are observed, on its own
  # thread, instead of drawing ahead on a background thread. Either way a run is deterministic.
  feedback: bool

  def validate(self, config) -> None:
    """One-line ValueErrors, naming the value given, for config.data / config.eval values."""

  def batches(self, config) -> Batches:
    """The training stream at step 0 (the Trainer calls set_state on a resume)."""

  def loss(self, logits_BTV: jax.Array, batch: dict) -> tuple[jax.Array, dict]:
    """Pure and jittable: (scalar loss, metrics) of one batch (`batch_keys` only).

    Scalar metrics are logged; arrays with a batch axis (e.g. per-example results) are not,
    and reach `observe` on the host.
    """

  def observe(self, batch: dict, metrics: dict) -> dict[str, Any]:
    """Host side of a step, one step late: the host batch as drawn and the step's metrics
    (device arrays; fetch only what is needed). Returns extra scalars to log with the step."""

  def evaluate(self, graphdef, params, config) -> dict[str, float]:
    """Host-side evaluation every eval.every_steps and at the end; logged as eval/<key>."""

  def final_summary(self, config, graphdef, params, eval_metrics) -> tuple[dict, str]:
    """(eval.json's content, the table train.py prints) from the final evaluation."""


# name -> "module:class"; imported only when asked for.
TASKS = {"passkey": "swa.tasks.passkey:PasskeyTask", "text": "swa.tasks.text:TextTask"}


def get_task(name, config=None) -> Task:
  """The task registered as `name`, built for `config` (None: the task's defaults).

  One-line ValueErrors for a name that is not registered or whose module is not there.
  """
  if name not in TASKS:
    raise ValueError(f"task={name!r} is not a task; choose one of {', '.join(sorted(TASKS))}.")
  module_name, _, class_name = TASKS[name].partition(":")
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as error:
    if error.name != module_name:  # the task's module is there but one of its imports is not
      raise
    raise ValueError(
      f"task={name!r} needs {module_name.replace('.', '/')}.py, which this checkout lacks."
    ) from error
  return getattr(module, class_name)(config)
