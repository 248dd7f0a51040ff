"""Training: one step, resume equivalence, NaN stop, and the command line."""

import functools
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from configs import tiny
from swa import curriculum as curriculum_lib
from swa import data, train_lib
from swa import workdir as workdir_lib
from swa.model import ModelConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_config(num_steps=6):
  config = tiny.get_config()
  config.model.num_layers = 2
  config.model.d_model = 32
  config.model.mlp_dim = 64
  config.model.window_size = 8
  config.data.seq_len = 64
  config.model.block_size = None  # The pinned losses below were taken with the default blocks.
  config.data.cap_at_reach = False  # Reach 14 < MIN_DISTANCE: these tests are about the mechanics.
  config.data.batch_size = 4
  config.num_steps = num_steps
  config.log_every_steps = 1
  config.checkpoint_every_steps = 3
  config.eval.every_steps = 0
  config.eval.examples_per_distance = 4
  config.eval.num_distances = 2
  config.optim.warmup_steps = 2
  config.optim.learning_rate = 1e-3  # The pinned losses below were taken at this rate.
  config.data.curriculum_fraction = 0.7  # The pinned curriculum tops below were taken at it.
  return config


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return {row["step"]: row for row in rows if "loss" in row}


def test_one_training_run_logs_finite_metrics(tmp_path):
  summary = train_lib.train_and_evaluate(small_config(num_steps=3), str(tmp_path))
  metrics = read_metrics(tmp_path)
  assert sorted(metrics) == [1, 2, 3]
  for row in metrics.values():
    for key in ("loss", "answer_loss", "lm_loss", "grad_norm", "param_norm", "learning_rate"):
      assert np.isfinite(row[key]), key
  assert set(summary["exact_match_by_distance"]) == set(data.even_distances(64, 2))
  assert os.path.exists(tmp_path / "config.json") and os.path.exists(tmp_path / "eval.json")
  assert os.listdir(tmp_path / "tensorboard")


def test_train_step_pinned_loss():
  """Three optimiser steps on one fixed batch give these exact losses (nanodo's test_train_step).

  Step 1's loss is the initial parameters' (the warmup's learning rate is 0 at step 0); step 3's
  follows one real update. Both agree to the last printed digit on JAX 0.10.2 and 0.12 (CPU,
  float32). Update the numbers only for an intended change of the initialisation, the model's
  forward, the loss, the optimiser or data.passkey_batch, and say which in the commit; any other
  drift is a regression.
  """
  config = small_config()
  graphdef, params = train_lib.create_model(config)
  optimizer = train_lib.create_optimizer(config)
  state = train_lib.init_state(params, optimizer)
  batch = data.passkey_batch(np.random.default_rng(0), 4, 64, np.full(4, 42))
  batch = {k: batch[k] for k in ("inputs", "targets", "answer_mask")}
  losses = []
  for _ in range(3):
    state, metrics = train_lib.train_step(
      state, batch, graphdef=graphdef, optimizer=optimizer, lm_weight=1.0
    )
    losses.append(float(metrics["loss"]))
  np.testing.assert_allclose(losses, [9.443102, 9.443102, 9.184101], rtol=1e-6)
  np.testing.assert_allclose(float(metrics["grad_norm"]), 6.081457, rtol=1e-6)


def test_seeds_trained_in_one_vmapped_step_equal_their_own_runs():
  """scripts/step_rate.py --vmap_seeds: one program over stacked seeds changes no seed's numbers."""
  config = small_config()
  optimizer = train_lib.create_optimizer(config)
  step = functools.partial(train_lib.train_step, optimizer=optimizer, lm_weight=1.0)
  states, batches = [], []
  for seed in (0, 1):
    config.seed = seed
    graphdef, params = train_lib.create_model(config)
    states.append(train_lib.init_state(params, optimizer))
    batch = data.passkey_batch(np.random.default_rng(seed), 4, 64, np.full(4, 42))
    batches.append({k: batch[k] for k in ("inputs", "targets", "answer_mask")})
  first, second = (jax.tree.leaves(s["params"])[0] for s in states)
  assert not np.allclose(first, second)  # Two seeds, two models.
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
  both = jax.tree.map(lambda *xs: np.stack(xs), *batches)
  stacked, metrics = jax.jit(jax.vmap(functools.partial(step, graphdef=graphdef)))(stacked, both)
  for i, (state, batch) in enumerate(zip(states, batches)):
    state, alone = step(state, batch, graphdef=graphdef)
    np.testing.assert_allclose(metrics["loss"][i], alone["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(stacked["params"])):
      np.testing.assert_allclose(b[i], a, rtol=1e-5, atol=1e-6)


# Adaptive (its curriculum state must survive the kill) in the default run; linear with -m slow.
@pytest.mark.parametrize("curriculum", [pytest.param("linear", marks=pytest.mark.slow), "adaptive"])
def test_resume_reaches_the_same_loss(tmp_path, monkeypatch, curriculum):
  def config():
    c = small_config(num_steps=6)
    c.data.curriculum = curriculum
    # Adaptive: advance one token whenever a step had an example at the top, whatever the results
    # (target 0), so the curriculum state moves during these 6 steps and must survive the kill.
    c.data.curriculum_stage, c.data.curriculum_target, c.data.curriculum_examples = 1, 0.0, 1
    return c

  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  train_lib.train_and_evaluate(config(), str(straight))

  # Kill the same run while it fetches the batch of step 5 (after the step-3 checkpoint).
  original_next = curriculum_lib.PasskeyBatches.__next__

  def killed_at_step_5(batches):
    if batches.get_state()["step"] == 4:
      raise KeyboardInterrupt("simulated kill")
    return original_next(batches)

  monkeypatch.setattr(curriculum_lib.PasskeyBatches, "__next__", killed_at_step_5)
  with pytest.raises(KeyboardInterrupt):
    train_lib.train_and_evaluate(config(), str(resumed))
  monkeypatch.setattr(curriculum_lib.PasskeyBatches, "__next__", original_next)
  train_lib.train_and_evaluate(config(), str(resumed))  # same command again
  a, b = read_metrics(straight), read_metrics(resumed)
  with open(resumed / "metrics.jsonl") as f:  # Step 4 ran twice but is logged once.
    assert [row["step"] for row in map(json.loads, f) if "loss" in row] == [1, 2, 3, 4, 5, 6]
  for step in (4, 5, 6):
    np.testing.assert_allclose(b[step]["loss"], a[step]["loss"], rtol=1e-6)
    assert b[step]["curriculum_top"] == a[step]["curriculum_top"]
  tops = [a[step]["curriculum_top"] for step in range(1, 7)]
  # Linear follows the step; adaptive moves as the (one step late) results come in.
  assert tops == (
    [42, 42, 43, 44, 44, 44] if curriculum == "adaptive" else [42, 42, 42, 43, 43, 44]
  )
  _, _, params_a = train_lib.restore_params(str(straight))
  _, _, params_b = train_lib.restore_params(str(resumed))
  for x, y in zip(*(jax_leaves(p) for p in (params_a, params_b))):
    np.testing.assert_array_equal(x, y)


def jax_leaves(tree):
  import jax

  return jax.tree.leaves(tree)


def test_training_distances_stop_at_the_receptive_reach():
  config = small_config()
  config.model.window_size = 16  # reach 2 * 15 = 30 < MIN_DISTANCE = 42
  config.data.cap_at_reach = True
  with pytest.raises(ValueError, match="reach 30 is below the shortest passkey distance 42"):
    train_lib.training_max_distance(config)
  config.model.window_size = 24  # reach 46; a 64-token context allows distances up to 44
  assert train_lib.training_max_distance(config) == 44 == data.max_distance(64 + 1 - 5)
  config.data.seq_len = 128
  assert train_lib.training_max_distance(config) == 46
  config.data.max_distance = 43  # an explicit cap below the reach wins
  assert train_lib.training_max_distance(config) == 43
  config.data.max_distance = -1
  config.model.window_size = None  # full attention: no reach limit
  assert train_lib.training_max_distance(config) == data.max_distance(128 + 1 - 5)
  config.model.window_size = 24
  config.data.cap_at_reach = False
  assert train_lib.training_max_distance(config) == data.max_distance(128 + 1 - 5)


def test_nan_loss_stops_with_a_clear_message(tmp_path):
  config = small_config(num_steps=4)
  config.optim.learning_rate = float("nan")
  with pytest.raises(FloatingPointError, match="Loss became nan at step 2"):
    train_lib.train_and_evaluate(config, str(tmp_path))


@pytest.mark.parametrize(
  "text, windows",
  [
    ("64", (64, 64, 64, 64)),  # configs/tiny.py has 4 layers
    ("None", (None, None, None, None)),
    ("full", (None, None, None, None)),
    ("8,32,32,32", (8, 32, 32, 32)),
    ("32,none,32,32", (32, None, 32, 32)),
    ("'16,16,16,16'", (16, 16, 16, 16)),
  ],
)
def test_window_size_from_the_command_line(text, windows):
  """An int, none/full or per-layer windows, as `--config.model.window_size=...` gives them."""
  argv = [
    "train.py",
    f"--config={os.path.join(REPO, 'configs/tiny.py')}",
    f"--config.model.window_size={text}",
  ]
  flag_values = flags.FlagValues()
  config = config_flags.DEFINE_config_file(
    "config", flag_values=flag_values, lock_config=True, sys_argv=argv
  )
  flag_values(argv)
  assert ModelConfig.from_config(config.value).layer_windows == windows
  reloaded = json.loads(config.value.to_json())["model"]  # what config.json holds
  assert (
    ModelConfig.from_config(config.value).layer_windows
    == ModelConfig.from_config(
      type(config.value)({**config.value.to_dict(), "model": reloaded})
    ).layer_windows
  )


def _train_cli(workdir_args, *overrides, cwd=REPO):
  args = [
    sys.executable,
    os.path.join(REPO, "train.py"),
    f"--config={os.path.join(REPO, 'configs/tiny.py')}",
    *workdir_args,
    "--config.num_steps=1",
    "--config.data.seq_len=64",
    "--config.data.batch_size=2",
    "--config.model.d_model=32",
    "--config.model.num_layers=2",
    "--config.eval.examples_per_distance=2",
    "--config.eval.num_distances=2",
    *overrides,
  ]
  if not any(o.startswith("--config.model.window_size=") for o in overrides):
    args.append("--config.model.window_size=32")  # For every layer (tiny.py lists four windows).
  return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_command_line_overrides_and_typos(tmp_path):
  done = _train_cli([f"--workdir={tmp_path / 'ok'}"], "--config.model.window_size=32")
  assert done.returncode == 0, done.stderr[-2000:]
  with open(tmp_path / "ok" / "config.json") as f:
    assert json.load(f)["model"]["window_size"] == 32
  assert "| distance | exact match |" in done.stdout
  typo = _train_cli([f"--workdir={tmp_path / 'typo'}"], "--config.model.windw_size=32")
  assert typo.returncode != 0 and "windw_size" in typo.stderr


@pytest.mark.slow
def test_default_workdir_is_named_after_the_config(tmp_path):
  """No --workdir: workdirs/<config name>, plus a hash of the overrides that shape the run."""
  done = _train_cli([], cwd=tmp_path)  # As the README's main command, with shrinking overrides.
  assert done.returncode == 0, done.stderr[-2000:]
  (workdir,) = os.listdir(tmp_path / "workdirs")
  assert re.fullmatch(r"tiny-[0-9a-f]{8}", workdir), workdir
  assert f"Workdir: workdirs/{workdir}" in done.stderr
  assert (tmp_path / "workdirs" / workdir / "config.json").exists()
  # Without overrides (or with only FREE_FIELDS ones) the name is the plain workdirs/tiny.
  assert workdir_lib.override_suffix({"log_every_steps": 1, "mesh": "data:1"}) == ""


def test_trainer_step_gives_the_pinned_losses():
  """The Trainer's jitted step (task loss, explicit shardings, donation) is train_step's math."""
  trainer = train_lib.Trainer(small_config())
  state = trainer.place(trainer.initial_state)
  batch = data.passkey_batch(np.random.default_rng(0), 4, 64, np.full(4, 42))
  batch = {k: batch[k] for k in trainer.task.batch_keys}
  losses = []
  for _ in range(3):
    state, metrics = trainer.step(state, batch)
    losses.append(float(metrics["loss"]))
  np.testing.assert_allclose(losses, [9.443102, 9.443102, 9.184101], rtol=1e-6)
  assert int(state["step"]) == 3


def test_tasks_are_found_by_name_with_one_line_errors(monkeypatch):
  from swa import tasks

  task = tasks.get_task("passkey", small_config())
  assert task.name == "passkey" and task.batch_keys == ("inputs", "targets", "answer_mask")
  assert not task.feedback and tasks.get_task("passkey").lm_weight == 1.0
  with pytest.raises(ValueError, match=r"^task='bogus' is not a task; choose one of passkey, "):
    tasks.get_task("bogus")
  monkeypatch.setitem(tasks.TASKS, "missing", "swa.tasks.no_such_module:Missing")
  with pytest.raises(ValueError, match=r"^task='missing' needs swa/tasks/no_such_module.py, which"):
    tasks.get_task("missing")
  config = small_config()
  config.task = "bogus"
  with pytest.raises(ValueError, match="task='bogus' is not a task"):
    train_lib.validate_config(config)


class _Stream:
  """A Batches of step-numbered batches that fails when asked for batch `fail_at`."""

  def __init__(self, fail_at=None):
    self.step, self.fail_at = 0, fail_at

  def __next__(self):
    if self.step == self.fail_at:
      raise KeyboardInterrupt("simulated kill")
    self.step += 1
    return {"inputs": np.full((2, 3), self.step - 1), "extra": self.step - 1}

  def get_state(self):
    return {"step": self.step}


@pytest.mark.parametrize("background", [True, False])
def test_input_pipeline_keeps_order_and_the_consumed_state(background):
  from swa.input_pipeline import InputPipeline

  put = lambda b: {k: v + 100 for k, v in b.items()}
  pipeline = InputPipeline(_Stream(fail_at=4), put, ["inputs"], background=background)
  for i in range(4):
    host, device = next(pipeline)
    assert host["extra"] == i and set(device) == {"inputs"} and device["inputs"][0, 0] == 100 + i
    # What a checkpoint after this step saves, however far the thread has drawn ahead.
    assert pipeline.data_state() == {"step": i + 1}
  for _ in range(2):  # The stream's error, when its batch is asked for, and after.
    with pytest.raises(KeyboardInterrupt):
      next(pipeline)
  pipeline.close()
  pipeline.close()
  limited = InputPipeline(_Stream(), put, ["inputs"], limit=2, background=background)
  next(limited), next(limited)
  with pytest.raises(ValueError, match="more than its 2 batches"):
    next(limited)
  limited.close()


def test_passkey_task_refuses_a_vocabulary_below_its_tokenizer():
  from configs import tiny
  from swa.tasks.passkey import PasskeyTask

  config = tiny.get_config()
  config.model.vocab_size = 3
  with pytest.raises(ValueError, match="model.vocab_size=3 is below the passkey tokenizer's 72"):
    PasskeyTask(config).validate(config)


@pytest.mark.slow  # two short training runs (~25 s on 2 cores)
def test_init_from_starts_a_run_from_another_runs_parameters(tmp_path):
  """A fresh run with init_from takes that run's newest parameters (lr 0 keeps them exactly) at a
  longer context; another architecture, or a folder that is not a run, is one line."""
  first = str(tmp_path / "first")
  train_lib.train_and_evaluate(small_config(num_steps=3), first)
  tuned = small_config(num_steps=1)
  tuned.init_from = first
  tuned.data.seq_len = 128
  tuned.optim.learning_rate = 0.0
  train_lib.train_and_evaluate(tuned, str(tmp_path / "tuned"))
  same = lambda x, y: jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), x, y))
  _, _, before = train_lib.restore_params(first)
  _, _, after = train_lib.restore_params(str(tmp_path / "tuned"))
  assert same(before, after)
  fresh = small_config(num_steps=1)
  fresh.optim.learning_rate = 0.0
  train_lib.train_and_evaluate(fresh, str(tmp_path / "fresh"))
  _, _, own = train_lib.restore_params(str(tmp_path / "fresh"))
  assert not same(before, own)
  wider = small_config(num_steps=1)
  wider.init_from, wider.model.mlp_dim = first, 128
  with pytest.raises(ValueError, match=r"first: its parameter .*mlp_in.* has shape \(64,\), this"):
    train_lib.train_and_evaluate(wider, str(tmp_path / "wider"))
  assert not os.path.exists(tmp_path / "wider" / "config.json")  # the run can start again
  wider.init_from = str(tmp_path)
  with pytest.raises(ValueError, match="is not a training workdir: it has no config.json"):
    train_lib.train_and_evaluate(wider, str(tmp_path / "nowhere"))
  assert not os.path.exists(tmp_path / "nowhere")
