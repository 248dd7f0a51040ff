"""A run's Orbax checkpoints: saved with the train state and the data state, restored with fallback.

What this module promises (docs/reliability.md lists the test that holds each):
  * `save` stores a crc32 of every leaf of the train state beside it (in the JSON data item);
    `restore_newest` verifies them, and checks that the data state is at the train state's step,
    so flipped bytes or a mismatched data state make a checkpoint unreadable, never restored.
  * `restore_newest` falls back from a checkpoint that cannot be restored to the newest one that
    can, says so in one line (the last one: Orbax's and asyncio's noise is silenced while it
    tries), and moves the unreadable one aside (it is never deleted).
"""

import contextlib
import gc
import logging
import os
import shutil
import sys
import zlib

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from swa.workdir import disk_error, log_event

CHECKSUMS = "leaf_checksums"  # key of the data item that holds them

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


def _host(x):
  """The value of a (replicated) leaf as numpy, in one process or several."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    x = x.addressable_data(0)
  return np.asarray(x)


def leaf_checksums(state):
  """{leaf path: crc32 of its bytes} of a train state."""
  leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  return {
    jax.tree_util.keystr(path): zlib.crc32(np.ascontiguousarray(_host(x)).tobytes())
    for path, x in leaves
  }


def save(manager, step, state, data_state):
  """Saves the train state and the data stream's state (JSON, with the leaf checksums)."""
  data = {**data_state, CHECKSUMS: leaf_checksums(state)}
  try:
    manager.save(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data)),
    )
  except OSError as error:
    raise disk_error(os.path.join(str(manager.directory), str(step)), error) from error


def restore_args(target):
  """step -> the restore arguments of a checkpoint (the state as `target`, and the data state)."""
  return lambda step: ocp.args.Composite(
    state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()
  )


def check_restored(restored):
  """Raises ValueError unless a restored checkpoint is whole; returns its data state.

  The leaves must match the checksums saved with them (a checkpoint older than checksums has
  none to check), and the data state must have a "step" equal to the train state's.
  """
  data = dict(restored["data"])
  saved = data.pop(CHECKSUMS, None)
  if saved is not None:
    bad = [k for k, v in leaf_checksums(restored["state"]).items() if saved.get(k) != v]
    if bad:
      raise ValueError(f"checksum mismatch in {len(bad)} arrays, e.g. {bad[0]}")
  step = int(_host(restored["state"]["step"]))
  if "step" not in data:
    raise ValueError("the data state has no step")
  if data["step"] != step:
    raise ValueError(f"the data state is at step {data['step']}, the train state at {step}")
  return data


@contextlib.contextmanager
def _quiet():
  """Silences what Orbax, absl and asyncio print about a checkpoint that fails to restore."""
  loggers = [logging.getLogger(n) for n in ("absl", "asyncio", "orbax", "jax")] + [logging.root]
  levels = [x.level for x in loggers]
  hook = sys.unraisablehook
  for x in loggers:
    x.setLevel(logging.CRITICAL)
  sys.unraisablehook = lambda unraisable: None  # "Exception ignored in <coroutine ...>"
  try:
    yield
  finally:
    gc.collect()  # Finalise the failed attempts' coroutines while their noise is silenced.
    sys.unraisablehook = hook
    for x, level in zip(loggers, levels):
      x.setLevel(level)


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


def restore_newest(manager, restore_args, workdir, read_only=False, accept=None):
  """Restores the newest checkpoint that can be restored; returns (step, restored) or (None, None).

  A fallback is reported in one line on stderr and in events.log; the checkpoints that failed
  are moved to <workdir>/unreadable_checkpoints/ so the next save of their step does not collide
  with them (nothing is deleted). Raises ValueError if checkpoints exist and none restores.

  Args:
    manager: an orbax CheckpointManager over <workdir>/checkpoints.
    restore_args: step -> the `args` for `manager.restore`.
    workdir: the run's workdir (messages, events.log, where unreadable checkpoints go).
    read_only: only report a fallback (commands that read a workdir change nothing in it).
    accept: restored -> None, raising for a checkpoint to treat as unreadable (default
      `check_restored`; the trainer also resumes its data stream there).
  """
  accept = accept or check_restored
  failures, restored = [], None
  with _quiet():
    for step in sorted(manager.all_steps(), reverse=True):
      try:
        restored = manager.restore(step, args=restore_args(step))
        accept(restored)
        break
      except Exception as error:  # pylint: disable=broad-except  # any corruption: try the next
        step_dir = os.path.join(str(manager.directory), str(step))
        failures.append((step, _diagnose(step_dir, error)))
        restored = None
  if restored is not None:
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
