"""Training-step rate of an experiment config: steps/s, examples/s and tokens/s of train_step.

  python -m scripts.step_rate --config=configs/w128.py --config.data.batch_size=64 --seconds=20

Used to size num_steps and batch_size of a GPU run before spending its time. The batches are the
real PasskeyBatches stream (their host-side generation counts, as in train.py; the distance
curriculum does not matter for speed and is left at its defaults). `--start_at` (a Unix
time) holds the timed window back until then, so that several processes started together time the
same stretch of wall clock while sharing one card.
"""

import time

import jax
from absl import flags
from ml_collections import config_flags

from swa import cli, curriculum, train_lib

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment config file.", lock_config=True
)
_SECONDS = flags.DEFINE_float("seconds", 20.0, "Length of the timed window.")
_START_AT = flags.DEFINE_float("start_at", 0.0, "Unix time at which timing starts (0 = at once).")


def main(argv):
  del argv
  config = _CONFIG.value
  d = config.data
  graphdef, params = train_lib.create_model(config)
  optimizer = train_lib.create_optimizer(config)
  state = train_lib.init_state(params, optimizer)
  batches = curriculum.PasskeyBatches(
    seq_len=d.seq_len, batch_size=d.batch_size, seed=config.seed, total_steps=config.num_steps
  )

  def step(state):
    batch = next(batches)
    batch = {k: batch[k] for k in ("inputs", "targets", "answer_mask")}
    return train_lib.train_step(
      state, batch, graphdef=graphdef, optimizer=optimizer, lm_weight=float(d.lm_weight)
    )

  for _ in range(3):  # Compile and warm up.
    state, metrics = step(state)
  jax.block_until_ready(metrics)
  time.sleep(max(0.0, _START_AT.value - time.time()))
  steps, start = 0, time.perf_counter()
  while time.perf_counter() - start < _SECONDS.value:
    state, metrics = step(state)
    float(metrics["loss"])  # As train.py does: one host read per step.
    steps += 1
  elapsed = time.perf_counter() - start
  name = config_flags.get_config_filename(flags.FLAGS["config"])
  print(
    f"{name} window={config.model.window_size} B={d.batch_size} T={d.seq_len}: "
    f"{steps / elapsed:.1f} steps/s, {steps * d.batch_size / elapsed:,.0f} examples/s, "
    f"{steps * d.batch_size * d.seq_len / elapsed:,.0f} tokens/s ({steps} steps, "
    f"{jax.devices()[0].device_kind})",
    flush=True,
  )


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  cli.run(main)
