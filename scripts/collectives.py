"""Lists the collectives in one compiled training step: what a mesh makes the devices exchange.

  python -m scripts.collectives --config=configs/w512.py --mesh=data:1,seq:2 --seq_len=4096

Builds the train state and a batch on the mesh (on a CPU, --devices forced host devices stand in
for GPUs), compiles train_lib.train_step and prints, per kind of collective (all-reduce,
collective-permute, all-gather, reduce-scatter, all-to-all), how many the optimized HLO holds and
the bytes of their results. The count and kinds do not depend on the backend's speed, so this shows
on a laptop whether a sharded step moves more than its halos and its gradient reduction.
"""

import collections
import os
import re
import sys

# Forced host devices must be set before JAX starts (the flag is read again below, for --help);
# only when run as a program, so importing count_collectives leaves the environment alone.
if __name__ == "__main__":
  _FORCED = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--devices=")), "2")
  _XLA_FLAGS = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" not in _XLA_FLAGS:  # other XLA flags stay
    _XLA_FLAGS += f" --xla_force_host_platform_device_count={_FORCED}"
    os.environ["XLA_FLAGS"] = _XLA_FLAGS.strip()

import jax  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from swa import cli, curriculum, sharding, train_lib  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config.", lock_config=True)

_DEVICES = flags.DEFINE_integer("devices", 2, "Forced host devices when JAX runs on a CPU.")
_MESH = flags.DEFINE_string("mesh", "data:1,seq:2", "Mesh spec (config.mesh).")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 4096, "Training context T.")
_BATCH = flags.DEFINE_integer("batch", 2, "Global batch.")
_DTYPE = flags.DEFINE_string("dtype", "float32", "Activation dtype (CPUs lack fast bfloat16).")

KINDS = ("all-reduce", "collective-permute", "all-gather", "reduce-scatter", "all-to-all")
_BYTES = {"f64": 8, "f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2, "s8": 1, "u8": 1, "pred": 1}


def count_collectives(hlo_text):
  """{kind: (count, result bytes)} of the collectives in an optimized HLO module's text."""
  found = collections.defaultdict(lambda: [0, 0])
  pattern = re.compile(r"= (\(.*?\)|\w+\[[\d,]*\]\S*) (" + "|".join(KINDS) + r")(?:-start)?\(")
  for line in hlo_text.splitlines():
    match = pattern.search(line)
    if not match:
      continue
    size = 0
    for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", match.group(1)):
      n = 1
      for d in filter(None, dims.split(",")):
        n *= int(d)
      size += n * _BYTES.get(dtype, 4)
    found[match.group(2)][0] += 1
    found[match.group(2)][1] += size
  return {kind: tuple(v) for kind, v in found.items()}


def main(argv):
  del argv
  config = _CONFIG.value
  config.mesh, config.data.seq_len, config.data.batch_size = (
    _MESH.value,
    _SEQ_LEN.value,
    _BATCH.value,
  )
  config.model.dtype = _DTYPE.value
  train_lib.validate_config(config)
  mesh = sharding.make_mesh(config.mesh)
  graphdef, params = train_lib.create_model(config, mesh)
  optimizer = train_lib.create_optimizer(config)
  state = sharding.shard_train_state(train_lib.init_state(params, optimizer), mesh)
  batches = curriculum.PasskeyBatches(
    seq_len=config.data.seq_len,
    batch_size=config.data.batch_size,
    seed=0,
    total_steps=config.num_steps,
    max_distance=train_lib.training_max_distance(config),
  )
  batch = sharding.shard_batch(next(iter(batches)), mesh)
  compiled = train_lib.train_step.lower(
    state, batch, graphdef=graphdef, optimizer=optimizer, lm_weight=float(config.data.lm_weight)
  ).compile()
  print(
    f"{config.mesh} over {jax.device_count()} {jax.default_backend()} devices, "
    f"T={config.data.seq_len}, batch {config.data.batch_size}, {config.model.dtype}"
  )
  for kind, (count, size) in sorted(count_collectives(compiled.as_text()).items()):
    print(f"  {kind}: {count}, {size / 2**20:.2f} MiB of results")


if __name__ == "__main__":
  cli.run(main)
