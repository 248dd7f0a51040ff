"""Fault injection: runs that cannot be lost or mixed (docs/reliability.md, issue 17).

Fast, in-process: a changed config refuses, a bad value leaves config.json alone, a corrupt newest
checkpoint falls back, metrics.jsonl keeps no duplicate steps. Slow (subprocesses of train.py):
kill -9 during a step, during a checkpoint save and during the config.json write each resume to
the same parameters as an uninterrupted run, and each bad input ends in its one-line message.
"""

import errno
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from test_train import read_metrics, small_config

from swa import train_lib
from swa import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A finished 6-step run with checkpoints at steps 3 and 6."""
  workdir = str(tmp_path_factory.mktemp("trained") / "run")
  train_lib.train_and_evaluate(small_config(num_steps=6), workdir)
  return workdir


def copy_run(trained, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(trained, workdir)
  return workdir


def params_of(workdir):
  return jax.tree.leaves(train_lib.restore_params(workdir)[2])


def assert_same_params(a, b):
  for x, y in zip(params_of(a), params_of(b), strict=True):
    np.testing.assert_array_equal(x, y)


# Workdir ownership.


def test_changed_config_refuses_and_leaves_the_run_alone(trained, tmp_path):
  workdir = copy_run(trained, tmp_path)
  before = open(os.path.join(workdir, "config.json")).read()
  config = small_config(num_steps=6)
  config.model.window_size = 16
  with pytest.raises(
    workdir_lib.ConfigMismatchError,
    match=r"model.window_size: \[8, 8\] -> "
    r"\[16, 16\]\); use a new --workdir",
  ):
    train_lib.train_and_evaluate(config, workdir)
  config = small_config(num_steps=9)  # extending needs the explicit flag
  with pytest.raises(workdir_lib.ConfigMismatchError, match="--allow_change=num_steps"):
    train_lib.train_and_evaluate(config, workdir)
  assert open(os.path.join(workdir, "config.json")).read() == before
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]


def test_bad_value_fails_before_anything_is_written(trained, tmp_path):
  workdir = copy_run(trained, tmp_path)
  before = {p: open(os.path.join(workdir, p)).read() for p in ("config.json", "metrics.jsonl")}
  config = small_config(num_steps=6)
  config.data.seq_len = 8
  with pytest.raises(ValueError, match=r"^data.seq_len=8 is too short"):
    train_lib.train_and_evaluate(config, workdir)
  for path, text in before.items():
    assert open(os.path.join(workdir, path)).read() == text, path


@pytest.mark.parametrize(
  "field, value, message",
  [
    ("data.seq_len", 8, "data.seq_len=8 is too short"),
    ("num_steps", 0, "num_steps=0 must be a positive integer."),
    ("checkpoint_every_steps", 0, "checkpoint_every_steps=0 must be a positive integer."),
    ("optim.warmup_steps", -1, "optim.warmup_steps=-1 must be an integer >= 0."),
    ("optim.b2", 1.5, r"optim.b2=1.5 is not allowed; it must be in \[0, 1\)."),
    ("optim.learning_rate", -1.0, "optim.learning_rate=-1.0 is not allowed; it must be >= 0."),
  ],
)
def test_invalid_values_are_named_as_given(field, value, message):
  config = small_config()
  section, _, name = field.rpartition(".")
  (config[section] if section else config)[name] = value
  with pytest.raises(ValueError, match="^" + message):
    train_lib.validate_config(config)


def test_free_fields_change_and_num_steps_only_when_allowed():
  saved = {"num_steps": 6, "log_every_steps": 1, "mesh": "data:1", "model.d_model": 32}
  current = {**saved, "num_steps": 9, "log_every_steps": 5, "mesh": "data:2"}
  with pytest.raises(workdir_lib.ConfigMismatchError, match=r"\(num_steps: 6 -> 9\)"):
    workdir_lib.check_config(saved, current, "w")
  allowed = workdir_lib.check_config(saved, current, "w", allow_changes=["num_steps"])
  assert [k for k, _, _ in allowed] == ["log_every_steps", "mesh", "num_steps"]
  with pytest.raises(ValueError, match="--allow_change=model.d_model: only num_steps"):
    workdir_lib.check_config(saved, current, "w", allow_changes=["model.d_model"])
  assert workdir_lib.override_suffix({}) == ""
  assert workdir_lib.override_suffix({"mesh": "data:2", "eval.every_steps": 5}) == ""
  suffix = workdir_lib.override_suffix({"model.window_size": 16})
  assert len(suffix) == 9 and suffix != workdir_lib.override_suffix({"model.window_size": 8})


@pytest.mark.parametrize(
  "saved, current, refused",
  [  # refused: the message's list of fields, or None when the resume may go on
    ({}, {"model.d_model": 32, "log_every_steps": 1}, r"\(model.d_model: \(absent\) -> 32\)"),
    ({"model.d_model": 32}, {"model.d_model": 32, "model.new": 1}, r"model.new: \(absent\) -> 1"),
    ({"model.d_model": 32, "model.gone": 1}, {"model.d_model": 32}, r"model.gone: 1 -> \(absent"),
    ({"model.d_model": 32}, {"model.d_model": 32, "task": "passkey"}, None),  # ADDED_FIELDS
    ({"x": 1}, {"x": 1, "model.num_sinks": 0}, None),  # a run from before sinks were trainable
    ({"x": 1}, {"x": 1, "model.num_sinks": 2}, r"model.num_sinks: 0 -> 2"),
    # a run from before NoPE and position interpolation
    ({"x": 1}, {"x": 1, "model.position_encoding": "rope", "model.rope_scale": 1.0}, None),
    ({"x": 1}, {"x": 1, "model.position_encoding": "none"}, r"position_encoding: \"rope\" -> \"no"),
    ({"x": 1}, {"x": 1, "model.rope_scale": 2.0}, r"model.rope_scale: 1.0 -> 2.0"),
    ({"model.d_model": 32}, {"model.d_model": 32, "task": "text"}, r"task: \"passkey\" -> \"text"),
    ({"x": 1}, {"x": 1, "model.block_size": 8}, None),  # a FREE_FIELDS one may be missing
    ({f"f{i}": 0 for i in range(8)}, {f"f{i}": 1 for i in range(8)}, r"f5: 0 -> 1; and 2 more\)"),
  ],
)
def test_a_shaping_field_missing_on_either_side_refuses(saved, current, refused):
  """Issue 28 (4): a config.json with missing fields must not let any config resume."""
  if refused is None:
    workdir_lib.check_config(saved, current, "w")
  else:
    with pytest.raises(workdir_lib.ConfigMismatchError, match=refused):
      workdir_lib.check_config(saved, current, "w")


def test_an_emptied_config_json_refuses_to_resume(trained, tmp_path):
  workdir = copy_run(trained, tmp_path)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write("{}")
  config = small_config(num_steps=6)
  config.model.window_size = 16
  with pytest.raises(workdir_lib.ConfigMismatchError, match=r"holds a run with a different"):
    train_lib.train_and_evaluate(config, workdir)
  assert open(os.path.join(workdir, "config.json")).read() == "{}"


def test_a_refused_resume_logs_no_changed_fields(trained, tmp_path):
  """D19: events.log records the changed fields only of a resume that happens."""
  workdir = copy_run(trained, tmp_path)
  with pytest.raises(ValueError, match="num_steps=3 is below the step 6"):
    train_lib.train_and_evaluate(small_config(num_steps=3), workdir, allow_changes=["num_steps"])
  assert "Resuming with changed fields" not in open(os.path.join(workdir, "events.log")).read()


def test_a_workdir_that_is_a_file_is_refused(tmp_path):
  path = tmp_path / "file"
  path.write_text("")
  with pytest.raises(ValueError, match=f"^--workdir={path} is a file, not a folder.$"):
    workdir_lib.prepare(str(path))


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path, monkeypatch):
  path = str(tmp_path / "config.json")
  workdir_lib.write_json_atomic(path, {"a": 1})

  def killed(src, dst):
    raise KeyboardInterrupt("killed before the rename")

  monkeypatch.setattr(os, "replace", killed)
  with pytest.raises(KeyboardInterrupt):
    workdir_lib.write_json_atomic(path, {"a": 2})
  assert json.load(open(path)) == {"a": 1}
  monkeypatch.undo()
  workdir_lib.write_json_atomic(path, {"a": 3})  # the next write clears the killed one's file
  assert json.load(open(path)) == {"a": 3} and os.listdir(tmp_path) == ["config.json"]


def test_metrics_are_cut_back_to_the_restored_step(tmp_path):
  path = tmp_path / "metrics.jsonl"
  rows = [
    {"step": 1, "loss": 1},
    {"step": 2, "loss": 2},
    {"step": 2, "eval/x": 0.5},
    {"step": 3, "loss": 3},
  ]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "lo')  # cut by a kill
  workdir_lib.truncate_metrics(str(path), step=2, final_step=6)
  assert [json.loads(line) for line in path.read_text().splitlines()] == rows[:3]
  workdir_lib.truncate_metrics(str(path), step=2, final_step=2)  # a finished run evaluates again
  assert [json.loads(line) for line in path.read_text().splitlines()] == rows[:2]


# Checkpoint fallback.


def corrupt(step_dir, how):
  if how == "truncated array file":
    array = max(
      glob.glob(os.path.join(step_dir, "state", "ocdbt.process_0", "d", "*")), key=os.path.getsize
    )
    with open(array, "r+b") as f:
      f.truncate(os.path.getsize(array) // 2)
  elif how == "missing _METADATA":
    os.remove(os.path.join(step_dir, "state", "_METADATA"))
  elif how == "missing data state":
    shutil.rmtree(os.path.join(step_dir, "data"))


@pytest.mark.parametrize(
  "how, reason",
  [
    ("truncated array file", "error while reading array"),
    ("missing _METADATA", "missing state/_METADATA"),
  ],
)
def test_reading_skips_a_corrupt_newest_checkpoint(trained, tmp_path, capsys, how, reason):
  workdir, older = copy_run(trained, tmp_path), str(tmp_path / "older")
  shutil.copytree(trained, older)
  shutil.rmtree(os.path.join(older, "checkpoints", "6"))
  corrupt(os.path.join(workdir, "checkpoints", "6"), how)
  before = tree_of(workdir)
  capsys.readouterr()
  assert_same_params(workdir, older)  # restore_params falls back to step 3
  err = capsys.readouterr().err
  assert f"warning: the checkpoint at step 6 in {workdir} cannot be restored" in err
  assert reason in err and "using step 3 instead" in err
  assert tree_of(workdir) == before  # reading creates, moves and writes nothing


def tree_of(folder):
  """{relative path: (size, mtime)} of every file and folder under folder."""
  return {
    os.path.relpath(os.path.join(root, name), folder): os.stat(os.path.join(root, name))[6:9:2]
    for root, dirs, files in os.walk(folder)
    for name in dirs + files
  }


def test_resume_falls_back_past_a_corrupt_checkpoint(trained, tmp_path, capsys):
  workdir = copy_run(trained, tmp_path)
  corrupt(os.path.join(workdir, "checkpoints", "6"), "missing data state")
  capsys.readouterr()
  train_lib.train_and_evaluate(small_config(num_steps=6), workdir)  # the same command again
  err = capsys.readouterr().err
  line = [x for x in err.splitlines() if x.startswith("warning:")]
  assert len(line) == 1 and "step 6" in line[0] and "missing data" in line[0]
  assert "resumed from step 3 instead" in line[0]
  assert os.listdir(os.path.join(workdir, "unreadable_checkpoints")) == ["6"]  # kept, not deleted
  assert "cannot be restored" in open(os.path.join(workdir, "events.log")).read()
  assert_same_params(workdir, trained)  # steps 4..6 again give the same parameters
  steps = [
    json.loads(x)["step"]
    for x in open(os.path.join(workdir, "metrics.jsonl"))
    if "loss" in json.loads(x)
  ]
  assert steps == [1, 2, 3, 4, 5, 6]


def test_no_restorable_checkpoint_stops_instead_of_starting_over(trained, tmp_path):
  workdir = copy_run(trained, tmp_path)
  for step in ("3", "6"):
    corrupt(os.path.join(workdir, "checkpoints", step), "missing _METADATA")
  with pytest.raises(ValueError, match=r"No checkpoint in .* can be restored \(step 6: missing"):
    train_lib.restore_params(workdir)


def test_checkpoints_without_config_json_are_refused(trained, tmp_path):
  workdir = copy_run(trained, tmp_path)
  os.remove(os.path.join(workdir, "config.json"))
  with pytest.raises(ValueError, match="has checkpoints but no config.json"):
    train_lib.train_and_evaluate(small_config(num_steps=6), workdir)
  assert not os.path.exists(os.path.join(workdir, "config.json"))


# Kill -9 and the command line (subprocesses of train.py).

ARGS = (
  "--config.num_steps=6",
  "--config.checkpoint_every_steps=3",
  "--config.log_every_steps=1",
  "--config.data.seq_len=64",
  "--config.data.batch_size=4",
  "--config.model.d_model=32",
  "--config.model.mlp_dim=64",
  "--config.model.num_layers=2",
  "--config.model.window_size=8",
  "--config.data.cap_at_reach=False",
  "--config.eval.every_steps=0",
  "--config.eval.examples_per_distance=4",
  "--config.eval.num_distances=2",
  "--config.optim.warmup_steps=2",
)

# Runs train.py's main through cli.run with one fault: SIGKILL at the point named by SWA_KILL_AT.
DRIVER = r"""
import os, signal, sys
sys.path.insert(0, os.environ["REPO"])
point = os.environ.get("SWA_KILL_AT", "")
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
from absl import flags
import orbax.checkpoint as ocp
import train
from swa import cli, curriculum
if point == "step":            # while step 5 runs (after the step-3 checkpoint)
  next_batch = curriculum.PasskeyBatches.__next__
  curriculum.PasskeyBatches.__next__ = lambda self: die() if self.get_state()["step"] == 4 else next_batch(self)
elif point == "save":          # while the step-6 checkpoint is being written
  save = ocp.CheckpointManager.save
  def save_then_die(self, step, *args, **kwargs):
    save(self, step, *args, **kwargs)
    if step == 6:
      die()
  ocp.CheckpointManager.save = save_then_die
elif point == "config":        # after writing config.json's temporary file, before the rename
  replace = os.replace
  os.replace = lambda src, dst: die() if str(dst).endswith("config.json") else replace(src, dst)
flags.mark_flag_as_required("config")
cli.run(train.main)
"""


def run_train(*args, kill_at=""):
  argv = [sys.executable, "-c", DRIVER, f"--config={os.path.join(REPO, 'configs/tiny.py')}", *args]
  env = {**os.environ, "REPO": REPO, "SWA_KILL_AT": kill_at}
  return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("straight") / "run")
  done = run_train(f"--workdir={workdir}", *ARGS)
  assert done.returncode == 0, done.stderr[-2000:]
  return workdir


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", ["step", "save", "config"])
def test_kill_9_then_the_same_command_resumes_bit_exactly(straight, tmp_path, kill_at):
  workdir = str(tmp_path / "run")
  killed = run_train(f"--workdir={workdir}", *ARGS, kill_at=kill_at)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
  done = run_train(f"--workdir={workdir}", *ARGS)
  assert done.returncode == 0, done.stderr[-2000:]
  assert_same_params(workdir, straight)
  a, b = read_metrics(straight), read_metrics(workdir)
  assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
  for step in a:
    assert a[step]["loss"] == b[step]["loss"]
  steps = [
    json.loads(x)["step"]
    for x in open(os.path.join(workdir, "metrics.jsonl"))
    if "loss" in json.loads(x)
  ]
  assert steps == sorted(set(steps)), steps  # no step logged twice
  assert not glob.glob(os.path.join(workdir, "*.tmp-*"))  # no temporary file left behind
  with (
    open(os.path.join(workdir, "eval.json")) as f,
    open(os.path.join(straight, "eval.json")) as g,
  ):
    assert json.load(f) == json.load(g)


@pytest.mark.slow
def test_bad_inputs_end_in_one_line(straight, tmp_path):
  """Each user mistake: exit 1 and one line `error: ...` on stderr naming what was given."""
  a_file = tmp_path / "a_file"
  a_file.write_text("")
  # The cases run at once, and each trainer locks its workdir: every case that reuses the
  # finished run gets its own copy, or all but one would be refused for the lock instead.
  done = [copy_run(straight, tmp_path / f"done{i}") for i in range(3)]
  cases = [  # (arguments, what the one line must contain)
    (
      (f"--workdir={done[0]}", *ARGS, "--config.model.window_size=16"),
      "model.window_size: [8, 8] -> [16, 16]); use a new --workdir",
    ),
    ((f"--workdir={done[1]}", *ARGS, "--config.num_steps=9"), "--allow_change=num_steps"),
    (
      (f"--workdir={tmp_path / 'w1'}", *ARGS, "--config.data.seq_len=8"),
      "data.seq_len=8 is too short",
    ),
    (
      (f"--workdir={tmp_path / 'w2'}", *ARGS, "--config.model.windw_size=8"),
      "--config.model.windw_size=8: the config has no field 'windw_size'; Did you mean "
      '"window_size"',
    ),
    ((f"--workdir={a_file}", *ARGS), f"--workdir={a_file} is a file, not a folder."),
    (
      (f"--workdir={tmp_path / 'w3'}", *ARGS, "--config.data.batch_size=0"),
      "data.batch_size=0 must be a positive integer.",
    ),
    (
      (f"--workdir={tmp_path / 'w4'}", *ARGS, "--config.optim.learning_rate=nan"),
      "Loss became nan at step 2; stopping.",
    ),
    (
      (f"--workdir={done[2]}", *ARGS, "--allow_change=model.d_model"),
      "--allow_change=model.d_model: only num_steps",
    ),
  ]
  env = {**os.environ, "REPO": REPO, "SWA_KILL_AT": ""}
  procs = [
    subprocess.Popen(
      [sys.executable, "-c", DRIVER, f"--config={os.path.join(REPO, 'configs/tiny.py')}", *args],
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for args, _ in cases
  ]
  missing = subprocess.run(
    [sys.executable, os.path.join(REPO, "train.py"), "--config=configs/no_such.py"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert missing.returncode == 1
  assert missing.stderr.strip() == "error: --config: config file not found: configs/no_such.py"
  for proc, (args, expected) in zip(procs, cases):
    _, err = proc.communicate(timeout=300)
    last = err.strip().splitlines()[-1]
    assert proc.returncode == 1 and last.startswith("error: ") and expected in last, (args, err)
    assert "Traceback" not in err, err
  for workdir in done:  # refused runs leave the finished run as it was
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]


# Issue 28: one run per workdir, checksummed checkpoints, data states, full disks, quiet fallbacks.

HOLD_LOCK = """
import sys, time
from swa import workdir
lock = workdir.Lock(sys.argv[1])
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_trainer_is_refused_while_the_first_holds_the_workdir(trained, tmp_path):
  workdir = copy_run(trained, tmp_path)
  holder = subprocess.Popen(
    [sys.executable, "-c", HOLD_LOCK, workdir], cwd=REPO, stdout=subprocess.PIPE, text=True
  )
  try:
    assert holder.stdout.readline().strip() == "locked"
    before = tree_of(workdir)
    with pytest.raises(
      ValueError, match=rf"^{workdir} is being trained by process {holder.pid} on"
    ):
      train_lib.train_and_evaluate(small_config(num_steps=6), workdir)
    assert tree_of(workdir) == before  # nothing written, nothing moved
  finally:
    holder.kill()
    holder.wait()
  # The holder died without letting go: its lock went with it.
  train_lib.train_and_evaluate(small_config(num_steps=6), workdir)
  assert open(os.path.join(workdir, ".lock")).read().startswith(f"process {os.getpid()} on ")
  with workdir_lib.Lock(workdir):  # released at the end of the run
    pass


def newest_data_file(workdir):
  return os.path.join(workdir, "checkpoints", "6", "data", "metadata")


def flip_bytes(workdir):
  """Overwrites 420 bytes inside the largest array file of the newest checkpoint (same size)."""
  d = os.path.join(workdir, "checkpoints", "6", "state", "ocdbt.process_0", "d", "*")
  array = max(glob.glob(d), key=os.path.getsize)
  size = os.path.getsize(array)
  with open(array, "r+b") as f:
    f.seek(size // 3)
    f.write(b"GARBAGEGARBAGEGARBAGE" * 20)
  assert os.path.getsize(array) == size


def rewrite_data(workdir, change):
  path = newest_data_file(workdir)
  data = json.load(open(path))
  with open(path, "w") as f:
    json.dump(change(data), f)


@pytest.mark.parametrize(
  "damage, reason",
  [
    (flip_bytes, ""),  # Orbax's error or our checksum, whichever sees it first
    (lambda w: rewrite_data(w, lambda d: {**d, "step": 2}), "the data state is at step 2"),
    pytest.param(  # ~5 s a case: two of the data-state cases run with -m slow
      lambda w: rewrite_data(w, lambda d: {k: v for k, v in d.items() if k != "step"}),
      "no step",
      marks=pytest.mark.slow,
    ),
    pytest.param(
      lambda w: rewrite_data(w, lambda d: {**d, "step": -1}),
      "the data state is at step -1",
      marks=pytest.mark.slow,
    ),
    (  # What bytes that Orbax reads without complaint would give: leaves unlike their checksums.
      lambda w: rewrite_data(
        w, lambda d: {**d, "leaf_checksums": {**d["leaf_checksums"], "['step']": 0}}
      ),
      "checksum mismatch in 1 arrays, e.g. ['step']",
    ),
  ],
)
def test_a_damaged_newest_checkpoint_falls_back(trained, tmp_path, capsys, damage, reason):
  workdir = copy_run(trained, tmp_path)
  damage(workdir)
  capsys.readouterr()
  train_lib.train_and_evaluate(small_config(num_steps=6), workdir)
  (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("warning:")]
  assert "step 6" in line and reason in line and "resumed from step 3 instead" in line, line
  assert_same_params(workdir, trained)  # never the damaged state: steps 4..6 trained again


@pytest.mark.parametrize(
  "change, reason",
  [
    (
      lambda s, d: ({**s, "step": s["step"] + 1}, d),
      "checksum mismatch in 1 arrays, e.g. ['step']",
    ),
    (lambda s, d: (s, {k: v for k, v in d.items() if k != "step"}), "the data state has no step"),
    (lambda s, d: (s, {**d, "step": 0}), "the data state is at step 0, the train state at 3"),
    (lambda s, d: (s, {k: v for k, v in d.items() if k != "leaf_checksums"}), None),  # older
  ],
)
def test_restored_checkpoints_are_checked(change, reason):
  from swa import checkpoints

  state = {"params": {"w": np.arange(4.0)}, "step": np.int32(3)}
  data = {"step": 3, "leaf_checksums": checkpoints.leaf_checksums(state)}
  state, data = change(state, data)
  if reason is None:
    assert checkpoints.check_restored({"state": state, "data": data}) == {"step": 3}
  else:
    with pytest.raises(ValueError, match="^" + re.escape(reason) + "$"):
      checkpoints.check_restored({"state": state, "data": data})


def _full_disk(*args, **kwargs):
  raise OSError(errno.ENOSPC, "No space left on device")


class _FullFile:
  name = "metrics.jsonl"
  write = flush = staticmethod(_full_disk)

  def close(self):
    pass


@pytest.mark.parametrize(
  "what, where",
  [
    ("config.json", "config.json"),
    ("metrics.jsonl", "metrics.jsonl"),
    ("checkpoint", os.path.join("checkpoints", "3")),
  ],
)
def test_a_full_disk_ends_in_one_line(tmp_path, monkeypatch, what, where):
  workdir = str(tmp_path / "run")
  if what == "config.json":
    monkeypatch.setattr(os, "fsync", _full_disk)
  elif what == "metrics.jsonl":
    init = workdir_lib.MetricWriter.__init__

    def full_jsonl(self, *args, **kwargs):
      init(self, *args, **kwargs)
      self._jsonl.close()
      self._jsonl = _FullFile()

    monkeypatch.setattr(workdir_lib.MetricWriter, "__init__", full_jsonl)
  else:
    monkeypatch.setattr(ocp.CheckpointManager, "save", _full_disk)
  with pytest.raises(ValueError) as raised:
    train_lib.train_and_evaluate(small_config(num_steps=3), workdir)
  message = str(raised.value)
  assert "\n" not in message and message.startswith("Cannot write ") and where in message
  assert message.endswith(
    "No space left on device; free some space and run the same command again."
  )
  assert not glob.glob(os.path.join(workdir, "*.tmp-*"))  # no empty temporary left behind


QUIET_FALLBACK = """
import sys
from swa import train_lib
train_lib.restore_params(sys.argv[1])
"""


@pytest.mark.slow
def test_a_fallback_prints_its_one_line_last(trained, tmp_path):
  """Issue 28 (7): Orbax's, absl's and asyncio's noise does not drown the warning."""
  workdir = copy_run(trained, tmp_path)
  corrupt(os.path.join(workdir, "checkpoints", "6"), "truncated array file")
  done = subprocess.run(
    [sys.executable, "-c", QUIET_FALLBACK, workdir],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert done.returncode == 0, done.stderr[-2000:]
  lines = done.stderr.strip().splitlines()
  assert len(lines) <= 3, done.stderr[-3000:]
  assert lines[-1].startswith(f"warning: the checkpoint at step 6 in {workdir} cannot be restored")
