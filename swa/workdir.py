"""A training workdir belongs to one run: its config, its checkpoints, its metrics.

What this module promises (docs/reliability.md lists the test that holds each):
  * `lock` holds a workdir for one process for the whole run: a second trainer is refused in one
    line naming the holder; the kernel drops the lock of a dead process, so it never goes stale.
  * `check_config` refuses to resume a workdir whose saved config.json differs from the new config
    in anything that shapes the model, data or optimiser (a shaping field missing on either side
    included, unless `ADDED_FIELDS` says what older runs implied); `FREE_FIELDS` may change freely
    and `FLAG_FIELDS` with an explicit `allow_changes`.
  * `write_json_atomic` writes config.json (and eval.json) by write-then-rename: a kill leaves the
    old file or the new one, never half of one; a full disk is one line and leaves no temporary.
  * `truncate_metrics` drops the metrics.jsonl rows a resumed run will write again;
    `MetricWriter` appends them (one process writes).
"""

import errno
import fcntl
import glob
import hashlib
import json
import math
import os
import socket
import time

import jax

from swa import reports
from swa.model import ModelConfig

# Fields a resumed run may change without asking: they decide how often the run logs, evaluates
# and checkpoints, how many devices it spreads over and which (equivalent) attention kernel it
# uses, never what it learns.
FREE_FIELDS = (
  "log_every_steps",
  "checkpoint_every_steps",
  "keep_checkpoints",
  "eval.every_steps",
  "eval.examples_per_distance",
  "eval.num_distances",
  "eval.hop_distances",
  "mesh",
  "model.attention",
  "model.block_size",
  "model.blocks_per_step",
  "model.remat",
)
# Fields a resumed run may change only when named in --allow_change: num_steps extends (or
# shortens) a run, which also stretches the learning-rate decay and the linear curriculum from
# the resumed step on, so the result is not the run a fresh start with that num_steps would give.
FLAG_FIELDS = ("num_steps",)
# Fields added to the config since older runs were saved, with the value those runs implied: a
# config.json without one resumes only if the new config has that value.
ADDED_FIELDS = {
  "task": "passkey",
  "init_from": "",  # fine-tuning from another run's parameters (2026-12-04)
  "model.num_sinks": 0,  # attention sinks trained in (2026-12-03)
  "eval.hop_distances": False,  # in-training recall at each hop's distance (2026-12-03)
  # The architecture options of swa/hf/ (off: swa's own architecture).
  "model.mlp": "gelu",
  "model.norm_eps": 1e-6,
  "model.norm_plus_one": False,
  "model.attention_head_dim": None,
  "model.qkv_bias": False,
  "model.tie_embeddings": False,
  "model.embed_scale": False,
  "model.post_norms": False,
  "model.attention_scale": None,
  "model.attention_softcap": None,
  "model.final_softcap": None,
  "model.learned_sinks": False,
  "model.qk_norm": False,
  "model.position_encoding": "rope",  # NoPE (2026-12-03)
  "model.rope_scale": 1.0,  # position interpolation (2026-12-03)
  "data.segment_ids": False,  # text: packed documents, attention inside each (2026-12-03)
}
LOCK_FILE = ".lock"
EVENTS_LOG = "events.log"


class _Absent:
  """A field one of two configs lacks (an older or newer config.json)."""

  def __repr__(self):
    return "(absent)"


ABSENT = _Absent()


class ConfigMismatchError(ValueError):
  """The workdir holds a run of a different config."""


def flatten(tree, prefix=""):
  """{"a": {"b": 1}} -> {"a.b": 1}, for nested dicts as config.json holds them."""
  flat = {}
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, dict):
      flat.update(flatten(value, path + "."))
    else:
      flat[path] = value
  return flat


def config_fields(record):
  """Flat {field: value} of a config record (config.json), windows in their per-layer form."""
  flat = flatten(record)
  try:  # "none" and "full", 32 and "32,32,32" are the same windows.
    flat["model.window_size"] = list(ModelConfig(**record["model"]).layer_windows)
  except Exception:  # pylint: disable=broad-except  # an older record: compare as written
    pass
  return flat


def config_differences(saved, current):
  """[(field, saved value, new value)] for every dotted field whose value differs, sorted."""
  missing = ABSENT

  def same(a, b):
    return a == b or (
      isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
    )

  return [
    (k, saved.get(k, missing), current.get(k, missing))
    for k in sorted(set(saved) | set(current))
    if not same(saved.get(k, missing), current.get(k, missing))
  ]


def _show(value):
  return repr(value) if value is ABSENT else json.dumps(value)


def check_config(saved, current, workdir, allow_changes=()):
  """Refuses (ConfigMismatchError, one line) a resume whose config changes the run.

  Args:
    saved: flat {field: value} of the workdir's config.json (`flatten`).
    current: flat {field: value} of the config asked for now.
    workdir: the workdir, named in the message.
    allow_changes: fields of FLAG_FIELDS the user allowed to differ (--allow_change).

  Returns:
    The differences that are allowed, [(field, saved, new)], for the caller to report: FREE_FIELDS
    and allowed FLAG_FIELDS (ABSENT where one side lacks the field).
  """
  bad = sorted(set(allow_changes) - set(FLAG_FIELDS))
  if bad:
    raise ValueError(
      f"--allow_change={','.join(bad)}: only {', '.join(FLAG_FIELDS)} may be "
      "allowed to change on resume; anything else needs a new --workdir."
    )
  implied = {k: v for k, v in ADDED_FIELDS.items() if k not in saved and k in current}
  differences = config_differences({**saved, **implied}, current)
  # A shaping field only one side has (a damaged or hand-edited config.json, or a code change
  # not in ADDED_FIELDS) proves nothing about the run: refused like a changed one.
  refused = [(k, a, b) for k, a, b in differences if k not in FREE_FIELDS + tuple(allow_changes)]
  if refused:
    changes = "; ".join(f"{k}: {_show(a)} -> {_show(b)}" for k, a, b in refused[:6])
    changes += f"; and {len(refused) - 6} more" if len(refused) > 6 else ""
    flag_only = [k for k, _, _ in refused if k in FLAG_FIELDS]
    way_out = "use a new --workdir to start a separate run"
    if flag_only and len(flag_only) == len(refused):
      way_out += f", or pass --allow_change={','.join(flag_only)} to change it in this run"
    raise ConfigMismatchError(
      f"{workdir} holds a run with a different config ({changes}); {way_out}."
    )
  return differences


def override_suffix(overrides, ignore=FREE_FIELDS):
  """'' without overrides, else '-' and 8 hex digits of the overrides that shape the run.

  Args:
    overrides: {dotted field: value} given on the command line (`get_override_values`).
    ignore: fields that do not change the run (FREE_FIELDS), left out of the name.
  """
  shaping = {k: v for k, v in overrides.items() if k not in ignore}
  if not shaping:
    return ""
  text = json.dumps(shaping, sort_keys=True, default=str)
  return "-" + hashlib.sha256(text.encode()).hexdigest()[:8]


def prepare(workdir):
  """Creates workdir if needed; one clear ValueError if it is a file or cannot be written."""
  reports.make_folder("workdir", workdir)


def claim(workdir, record, fields, allow_changes=()):
  """Checks that workdir may hold the run of config `record`; returns the allowed changes.

  Creates workdir if needed (`prepare`). If it holds a config.json, `check_config` compares
  `fields(saved)` with `fields(record)` (flat {field: value}); checkpoints without a config.json
  are refused. Writes nothing else: the caller writes config.json, and reports the returned line
  ("Resuming with changed fields: ...", or None), once the checkpoint is restored.

  Args:
    workdir: the run's folder.
    record: the config as config.json holds it (a nested dict).
    fields: record -> flat {field: value}, with equivalent spellings made equal.
    allow_changes: fields of FLAG_FIELDS the user allowed to differ (--allow_change).
  """
  prepare(workdir)
  path = os.path.join(workdir, "config.json")
  checkpoints = os.path.join(workdir, "checkpoints")
  if os.path.exists(path):
    saved = read_json(path)
    if not isinstance(saved, dict):
      raise ValueError(
        f"{path} holds no config (a JSON {type(saved).__name__}); use a new --workdir."
      )
    changes = check_config(fields(saved), fields(record), workdir, allow_changes)
    if changes:
      return "Resuming with changed fields: " + "; ".join(
        f"{k}: {a!r} -> {b!r}" for k, a, b in changes
      )
  elif os.path.isdir(checkpoints) and any(n.isdigit() for n in os.listdir(checkpoints)):
    raise ValueError(
      f"{workdir} has checkpoints but no config.json, so nothing shows they belong "
      "to this config; use a new --workdir, or put the run's config.json back."
    )
  return None


class Lock:
  """An exclusive lock on a workdir for one run (fcntl.flock on <workdir>/.lock).

  The holder writes its pid and host in the file; a second holder is refused in one line naming
  them. The kernel releases the lock when the holder exits, however it dies. `release()` (or
  the end of a `with` block) lets go earlier.
  """

  def __init__(self, workdir):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.read(self._fd, 200).decode(errors="replace").strip() or "another process"
      os.close(self._fd)
      raise ValueError(
        f"{workdir} is being trained by {holder}; wait for it to finish or use another --workdir."
      ) from None
    os.ftruncate(self._fd, 0)
    os.write(self._fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode())

  def release(self):
    if self._fd is not None:
      os.close(self._fd)  # Closing the file drops the lock.
      self._fd = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.release()


def disk_error(path, error):
  """A one-line ValueError for an OSError while writing `path` (a full disk, read-only, ...)."""
  hint = (
    "; free some space and run the same command again"
    if error.errno
    in (
      errno.ENOSPC,
      errno.EDQUOT,
    )
    else ""
  )
  return ValueError(f"Cannot write {path}: {error.strerror or error}{hint}.")


def read_json(path):
  """The JSON object at path; a one-line ValueError if it does not parse."""
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as error:
    raise ValueError(
      f"{path} is not valid JSON ({error}); it was not written by this "
      "code (its writes are atomic): restore it or use a new --workdir."
    ) from error


def write_json_atomic(path, obj):
  """Writes obj (a str is written as is) to path through a temporary file and a rename.

  Temporary files that a killed earlier write left beside path are removed afterwards.
  """
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with open(tmp, "w") as f:
      f.write(obj if isinstance(obj, str) else json.dumps(obj, indent=2))
      f.flush()
      os.fsync(f.fileno())
  except OSError as error:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise disk_error(path, error) from error
  os.replace(tmp, path)
  for stale in glob.glob(glob.escape(path) + ".tmp-*"):
    os.remove(stale)


class MetricWriter:
  """Metrics as JSON lines (metrics.jsonl) and TensorBoard event files (tensorboardX)."""

  def __init__(self, workdir, enabled=True):
    self.enabled = enabled
    self._jsonl = self._tb = None
    if enabled:  # Several processes: only the first writes.
      from tensorboardX import SummaryWriter  # Imported here: only the training loop needs it.

      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step, metrics):
    if self._jsonl is None:
      return
    metrics = {k: float(v) for k, v in metrics.items()}
    try:
      self._jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
      self._jsonl.flush()
    except OSError as error:
      raise disk_error(self._jsonl.name, error) from error
    for name, value in metrics.items():
      self._tb.add_scalar(name, value, step)
    self._tb.flush()

  def close(self):
    """Flushes and closes the files; safe to call twice."""
    if self._jsonl is not None:
      self._jsonl.close()
      self._tb.close()
      self._jsonl = self._tb = None


def truncate_metrics(path, step, final_step):
  """Keeps the metrics.jsonl rows a resumed run will not write again.

  Rows after `step` (the restored checkpoint) are written again by the resumed run; so is the
  final evaluation row at `final_step` when the run resumes from its last step.
  """
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  kept = []
  for line in lines:
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      continue  # a line cut short by a kill
    at = row.get("step", 0)
    final_eval = at == step == final_step and any(k.startswith("eval/") for k in row)
    if at <= step and not final_eval:
      kept.append(line if line.endswith("\n") else line + "\n")
  if kept != lines:
    write_json_atomic(path, "".join(kept))


def log_event(workdir, message):
  """Appends a timestamped line to <workdir>/events.log (resumes, fallbacks, allowed changes)."""
  if jax.process_index() == 0:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(os.path.join(workdir, EVENTS_LOG), "a") as f:
      f.write(f"{stamp} {message}\n")
