"""The longest context T a config can train at, on one device or on its mesh.

  python -m scripts.longest_context --config=configs/w512.py --config.model.remat=true \
      --config.data.batch_size=1 --config.mesh=data:1,seq:2 --lengths=4M,8M,16M,32M

For each T in --lengths (ascending), compiles train_step at that T, prints XLA's memory estimate
(arguments + temporaries per device), then runs one real step; the first length whose step runs
out of device memory (or fails otherwise, named) ends the search. The last line names the longest
T that trained. Set XLA_PYTHON_CLIENT_MEM_FRACTION (e.g. 0.95) to let JAX use most of the card.
"""

import time

import jax
import jax.numpy as jnp
from absl import flags
from ml_collections import config_flags

from swa import cli, curriculum, reports, sharding, train_lib

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment config file.", lock_config=True
)
_LENGTHS = flags.DEFINE_list("lengths", ["1M", "2M", "4M"], "Context lengths, e.g. 262144 or 4M.")


def main(argv):
  del argv
  config = _CONFIG.value
  lengths = sorted(cli.parse_length(t) for t in _LENGTHS.value)
  mesh = sharding.make_mesh(config.mesh)
  graphdef, params = train_lib.create_model(config, mesh)
  optimizer = train_lib.create_optimizer(config)
  lm_weight = float(config.data.lm_weight)
  longest = None
  for T in lengths:
    state = train_lib.init_state(jax.tree.map(jnp.copy, params), optimizer)  # Donated below.
    if mesh.size > 1:
      state = sharding.shard_train_state(state, mesh)
    batches = curriculum.PasskeyBatches(
      seq_len=T, batch_size=config.data.batch_size, seed=0, total_steps=config.num_steps
    )
    start = time.perf_counter()
    try:
      host = {
        k: v for k, v in batches.batch_at(0).items() if k in ("inputs", "targets", "answer_mask")
      }
      batch = sharding.shard_batch(host, mesh) if mesh.size > 1 else host
      compiled = train_lib.train_step.lower(
        state, batch, graphdef=graphdef, optimizer=optimizer, lm_weight=lm_weight
      ).compile()
      memory = compiled.memory_analysis()
      estimate = (
        f"XLA estimate {(memory.argument_size_in_bytes + memory.temp_size_in_bytes) / 2**30:.1f} GiB"
        " per device"
        if memory is not None
        else "no XLA estimate"
      )
      state, metrics = compiled(state, batch)
      loss = float(metrics["loss"])
      stats = jax.devices()[0].memory_stats() or {}
      peak = stats.get("peak_bytes_in_use")
      print(
        f"T={T:,}: trained ({estimate}; peak {peak / 2**30:.1f} GiB on device 0; "
        f"loss {loss:.3f}; {time.perf_counter() - start:.0f} s)"
        if peak
        else f"T={T:,}: trained ({estimate}; loss {loss:.3f})",
        flush=True,
      )
      longest = T
    except Exception as error:  # noqa: BLE001  (any failure ends the search, named)
      what = "out of memory" if reports.is_oom(error) else f"failed: {type(error).__name__}"
      print(f"T={T:,}: {what} ({str(error).splitlines()[0][:300]})", flush=True)
      break
    finally:
      del state
  devices = f"{mesh.size} x {jax.devices()[0].device_kind}"
  print(
    f"longest trained T: {longest:,} on {devices} (mesh {dict(mesh.shape)})"
    if longest
    else f"no length in {lengths} trained on {devices}",
    flush=True,
  )
  return 0 if longest else 1


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  cli.run(main)
