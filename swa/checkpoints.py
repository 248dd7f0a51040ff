"""A run's Orbax checkpoints: saved with the train state and the data state, restored with fallback.

What this module promises (docs/reliability.md lists the test that holds each):
  * `restore_newest` falls back from a checkpoint that cannot be restored to the newest one that
    can, says so in one line, and moves the unreadable one aside (it is never deleted).
"""

import os
import shutil
import sys

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from swa.workdir import log_event

UNREADABLE_DIR = "unreadable_checkpoints"


def manager(workdir, keep=None, read_only=False):
  """An Orbax CheckpointManager over <workdir>/checkpoints keeping the newest `keep`.

  read_only: for commands that only read a workdir (it creates nothing).
  """
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  if read_only:
    options = ocp.CheckpointManagerOptions(create=False)
  else:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
  return ocp.CheckpointManager(directory, options=options)


def save(manager, step, state, data_state):
  """Saves the train state and the data stream's state (JSON) as checkpoint `step`."""
  manager.save(
    step,
    args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)),
  )


def restore_args(target, with_data=True):
  """step -> the restore arguments of a checkpoint (the state as `target`, and the data state)."""
  items = {"state": ocp.args.StandardRestore(target)}
  if with_data:
    items["data"] = ocp.args.JsonRestore()
  return lambda step: ocp.args.Composite(**items)


# Files every complete checkpoint of train_lib holds (Orbax's layout), checked to name what is
# missing rather than show Orbax's error for it (a missing _METADATA reads "pytree structure error").
_EXPECTED = ("_CHECKPOINT_METADATA", "state/_METADATA", "state/manifest.ocdbt", "data")


def _diagnose(step_dir, error):
  """A short reason a checkpoint did not restore: the missing file, else the error's start."""
  missing = [p for p in _EXPECTED if not os.path.exists(os.path.join(step_dir, p))]
  if missing:
    return "missing " + ", ".join(missing)
  text = " ".join(str(error).split()).split(" See full TensorStore details")[0]
  return f"{type(error).__name__}: {text[:150]}"


def restore_newest(manager, restore_args, workdir, read_only=False):
  """Restores the newest checkpoint that can be restored; returns (step, restored) or (None, None).

  A fallback is reported in one line on stderr and in events.log; the checkpoints that failed
  are moved to <workdir>/unreadable_checkpoints/ so the next save of their step does not collide
  with them (nothing is deleted). Raises ValueError if checkpoints exist and none restores.

  Args:
    manager: an orbax CheckpointManager over <workdir>/checkpoints.
    restore_args: step -> the `args` for `manager.restore`.
    workdir: the run's workdir (messages, events.log, where unreadable checkpoints go).
    read_only: only report a fallback (commands that read a workdir change nothing in it).
  """
  failures = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      restored = manager.restore(step, args=restore_args(step))
    except Exception as error:  # pylint: disable=broad-except  # any corruption: try the next
      failures.append((step, _diagnose(os.path.join(str(manager.directory), str(step)), error)))
      continue
    if failures:
      message = "warning: " + "; ".join(
        f"the checkpoint at step {s} in {workdir} cannot be restored ({e})" for s, e in failures
      )
      if read_only:
        print(f"{message}; using step {step} instead.", file=sys.stderr, flush=True)
      else:
        moved = move_unreadable(manager, [s for s, _ in failures], workdir)
        message += f"; resumed from step {step} instead and moved the unreadable one to {moved}."
        print(message, file=sys.stderr, flush=True)
        log_event(workdir, message)
    return step, restored
  if failures:
    raise ValueError(
      f"No checkpoint in {manager.directory} can be restored (step {failures[0][0]}: "
      f"{failures[0][1]}); use a new --workdir."
    )
  return None, None


def move_unreadable(manager, steps, workdir):
  """Moves the checkpoint folders of `steps` into <workdir>/unreadable_checkpoints; returns it."""
  target_dir = os.path.join(workdir, UNREADABLE_DIR)
  if jax.process_index() == 0:
    os.makedirs(target_dir, exist_ok=True)
    for step in steps:
      source = os.path.join(str(manager.directory), str(step))
      target, n = os.path.join(target_dir, str(step)), 1
      while os.path.exists(target):
        target, n = os.path.join(target_dir, f"{step}.{n}"), n + 1
      shutil.move(source, target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("swa.checkpoints.move_unreadable")
  manager.reload()
  return target_dir
