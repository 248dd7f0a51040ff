"""Training-step rate of an experiment config, optionally with a profile of where the time goes.

  python -m scripts.step_rate --config=configs/w128.py --config.data.batch_size=64 --seconds=20
  python -m scripts.step_rate --config=configs/w512.py --config.mesh=data:1,seq:2 \
      --config.data.seq_len=1048576 --config.data.batch_size=1 --config.model.remat=true \
      --profile_dir=/tmp/trace

Prints steps/s, examples/s and tokens/s of training (one line), on one device or on the
config's mesh (`--config.mesh`). It runs train.py's loop itself (swa/train_lib.py Trainer.train:
the jitted step with its shardings, the input pipeline drawing the task's real batches ahead on
a thread, metrics read one step late, the log-step syncs) without a workdir, evaluations or
checkpoints. Used to size a GPU run before spending its time, and to measure scale-out.
`--vmap_seeds=N` trains N seeds in one vmapped step (Trainer.update, drawn and read on the main
thread each step); against N processes started with the same `--start_at`, it says which way of
sharing a card trains a sweep's seeds faster. `--start_at` (a Unix time) holds the timed window back until then, so
that several processes started together time the same stretch of wall clock while sharing a card.

`--profile_dir` then traces `--profile_steps` more steps with jax.profiler (a Perfetto trace
under that folder, for ui.perfetto.dev) and prints, per device, the share of the wall time its
streams were busy and the kernels that took the most time per step.
"""

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from ml_collections import config_flags

from swa import cli, sharding, train_lib
from swa.profiling import trace

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment config file.", lock_config=True
)
_SECONDS = flags.DEFINE_float("seconds", 20.0, "Length of the timed window.")
_START_AT = flags.DEFINE_float("start_at", 0.0, "Unix time at which timing starts (0 = at once).")
_PROFILE_DIR = flags.DEFINE_string("profile_dir", None, "Trace some steps into this folder.")
_PROFILE_STEPS = flags.DEFINE_integer("profile_steps", 5, "Steps in the trace.")
_TOP = flags.DEFINE_integer("top", 12, "Kernels listed per device.")
_VMAP_SEEDS = flags.DEFINE_integer(
  "vmap_seeds",
  1,
  "Train this many seeds (config.seed, +1, ...) in one jitted step, vmapped over stacked models, "
  "each on its own batches; the rates count every seed. One device only.",
)


def _loop(config):
  """(state, run): the training loop itself (Trainer.train: the input pipeline, one-step-late
  reads, logging), without a workdir. run(state, seconds=None, count=None) -> (state, steps)."""
  trainer = train_lib.Trainer(config)
  pipeline = trainer.input_pipeline(trainer.task.batches(config))
  done = 0

  def run(state, seconds=None, count=None):
    nonlocal done
    start = time.perf_counter()
    stop = None if seconds is None else (lambda: time.perf_counter() - start >= seconds)
    steps = range(done, done + count if count else sys.maxsize)
    state, n = trainer.train(state, pipeline, steps, evaluate=False, should_stop=stop)
    done += n
    return state, n

  return trainer.place(trainer.initial_state), run


def _vmapped(config, seeds):
  """(state, run): `seeds` models stacked and trained by one jitted step, each on its batches."""
  trainers = []
  for seed in range(config.seed, config.seed + seeds):
    seeded = config.copy_and_resolve_references()
    seeded.seed = seed
    trainers.append(train_lib.Trainer(seeded))
  state = jax.tree.map(lambda *xs: jnp.stack(xs), *(t.initial_state for t in trainers))
  batches = [t.task.batches(t.config) for t in trainers]
  keys = trainers[0].task.batch_keys
  update = jax.jit(jax.vmap(trainers[0].update), donate_argnums=0)

  def run(state, seconds=None, count=None):
    n, start = 0, time.perf_counter()
    while (count is None or n < count) and (
      seconds is None or time.perf_counter() - start < seconds
    ):
      drawn = [next(b) for b in batches]
      state, metrics = update(state, {k: np.stack([b[k] for b in drawn]) for k in keys})
      float(metrics["loss"].sum())  # One host read per step.
      n += 1
    return state, n

  return state, run


def main(argv):
  del argv
  config = _CONFIG.value
  d = config.data
  mesh = sharding.make_mesh(config.mesh)
  seeds = _VMAP_SEEDS.value
  if seeds < 1 or (seeds > 1 and mesh.size > 1):
    raise ValueError(f"vmap_seeds={seeds} is not allowed; it must be >= 1, and 1 on a mesh.")
  state, run = _vmapped(config, seeds) if seeds > 1 else _loop(config)
  state, _ = run(state, count=3)  # Compile and warm up.
  jax.block_until_ready(state)
  time.sleep(max(0.0, _START_AT.value - time.time()))
  start = time.perf_counter()
  state, steps = run(state, seconds=_SECONDS.value)
  jax.block_until_ready(state)
  elapsed = time.perf_counter() - start
  name = config_flags.get_config_filename(flags.FLAGS["config"])
  print(
    f"{name} window={config.model.window_size} B={d.batch_size} T={d.seq_len} "
    f"mesh={dict(mesh.shape)}{f' seeds={seeds} (vmapped)' if seeds > 1 else ''}: "
    f"{steps / elapsed:.1f} steps/s, {steps * seeds * d.batch_size / elapsed:,.0f} examples/s, "
    f"{steps * seeds * d.batch_size * d.seq_len / elapsed:,.0f} tokens/s ({steps} steps, "
    f"{jax.devices()[0].device_kind})",
    flush=True,
  )
  if _PROFILE_DIR.value:

    def traced_step():
      nonlocal state
      state, _ = run(state, count=1)

    recorded = trace.trace(traced_step, _PROFILE_STEPS.value, _PROFILE_DIR.value)
    lines = trace.summarize_trace(recorded, _PROFILE_STEPS.value, _TOP.value)
    print("\n".join(lines) + f"\ntrace: {_PROFILE_DIR.value}", flush=True)


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  cli.run(main)
