"""Training-step rate of an experiment config, optionally with a profile of where the time goes.

  python -m scripts.step_rate --config=configs/w128.py --config.data.batch_size=64 --seconds=20
  python -m scripts.step_rate --config=configs/w512.py --config.mesh=data:1,seq:2 \
      --config.data.seq_len=1048576 --config.data.batch_size=1 --config.model.remat=true \
      --profile_dir=/tmp/trace

Prints steps/s, examples/s and tokens/s of train_step (one line), on one device or on the
config's mesh (`--config.mesh`, as train.py: the state replicated, each batch split by
sharding.shard_batch before the step). Used to size a GPU run before spending its time, and to
measure scale-out. `--vmap_seeds=N` trains N seeds in one vmapped step; against N processes
started with the same `--start_at`, it says which way of sharing a card trains a sweep's seeds
faster. The batches are the real PasskeyBatches stream (their host-side generation
counts, as in train.py). `--start_at` (a Unix time) holds the timed window back until then, so
that several processes started together time the same stretch of wall clock while sharing a card.

`--profile_dir` then traces `--profile_steps` more steps with jax.profiler (a Perfetto trace
under that folder, for ui.perfetto.dev) and prints, per device, the share of the wall time its
streams were busy and the kernels that took the most time per step.
"""

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from ml_collections import config_flags

from swa import cli, curriculum, sharding, train_lib
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


def main(argv):
  del argv
  config = _CONFIG.value
  d = config.data
  mesh = sharding.make_mesh(config.mesh)
  seeds = _VMAP_SEEDS.value
  if seeds < 1 or (seeds > 1 and mesh.size > 1):
    raise ValueError(f"vmap_seeds={seeds} is not allowed; it must be >= 1, and 1 on a mesh.")
  optimizer = train_lib.create_optimizer(config)
  states, batches = [], []
  for seed in range(config.seed, config.seed + seeds):
    seeded = config.copy_and_resolve_references()
    seeded.seed = seed
    graphdef, params = train_lib.create_model(seeded, mesh)
    states.append(train_lib.init_state(params, optimizer))
    batches.append(
      curriculum.PasskeyBatches(
        seq_len=d.seq_len, batch_size=d.batch_size, seed=seed, total_steps=config.num_steps
      )
    )
  train_step = functools.partial(
    train_lib.train_step, graphdef=graphdef, optimizer=optimizer, lm_weight=float(d.lm_weight)
  )
  if seeds > 1:  # One program for all seeds: every array gets a leading seed axis.
    state = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
    train_step = jax.jit(jax.vmap(train_step), donate_argnums=0)
  else:
    state = states[0]
  if mesh.size > 1:
    state = sharding.shard_train_state(state, mesh)

  def step(state):
    drawn = [next(b) for b in batches]
    batch = {k: drawn[0][k] for k in ("inputs", "targets", "answer_mask")}
    if seeds > 1:
      batch = {k: np.stack([b[k] for b in drawn]) for k in batch}
    if mesh.size > 1:
      batch = sharding.shard_batch(batch, mesh)
    return train_step(state, batch)

  for _ in range(3):  # Compile and warm up.
    state, metrics = step(state)
  jax.block_until_ready(metrics)
  time.sleep(max(0.0, _START_AT.value - time.time()))
  steps, start = 0, time.perf_counter()
  while time.perf_counter() - start < _SECONDS.value:
    state, metrics = step(state)
    float(metrics["loss"].sum())  # As train.py does: one host read per step.
    steps += 1
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
      state, metrics = step(state)
      float(metrics["loss"].sum())

    recorded = trace.trace(traced_step, _PROFILE_STEPS.value, _PROFILE_DIR.value)
    lines = trace.summarize_trace(recorded, _PROFILE_STEPS.value, _TOP.value)
    print("\n".join(lines) + f"\ntrace: {_PROFILE_DIR.value}", flush=True)


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  cli.run(main)
