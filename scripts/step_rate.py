"""Training-step rate of an experiment config, optionally with a profile of where the time goes.

  python -m scripts.step_rate --config=configs/w128.py --config.data.batch_size=64 --seconds=20
  python -m scripts.step_rate --config=configs/w512.py --config.mesh=data:1,seq:2 \
      --config.data.seq_len=1048576 --config.data.batch_size=1 --config.model.remat=true \
      --profile_dir=/tmp/trace

Prints steps/s, examples/s and tokens/s of train_step (one line), on one device or on the
config's mesh (`--config.mesh`, as train.py: the state replicated, each batch split by
sharding.shard_batch before the step). Used to size a GPU run before spending its time, and to
measure scale-out. The batches are the real PasskeyBatches stream (their host-side generation
counts, as in train.py). `--start_at` (a Unix time) holds the timed window back until then, so
that several processes started together time the same stretch of wall clock while sharing a card.

`--profile_dir` then traces `--profile_steps` more steps with jax.profiler (a Perfetto trace
under that folder, for ui.perfetto.dev) and prints, per device, the share of the wall time its
streams were busy and the kernels that took the most time per step.
"""

import collections
import glob
import gzip
import json
import time

import jax
from absl import flags
from ml_collections import config_flags

from swa import cli, curriculum, sharding, train_lib

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment config file.", lock_config=True
)
_SECONDS = flags.DEFINE_float("seconds", 20.0, "Length of the timed window.")
_START_AT = flags.DEFINE_float("start_at", 0.0, "Unix time at which timing starts (0 = at once).")
_PROFILE_DIR = flags.DEFINE_string("profile_dir", None, "Trace some steps into this folder.")
_PROFILE_STEPS = flags.DEFINE_integer("profile_steps", 5, "Steps in the trace.")
_TOP = flags.DEFINE_integer("top", 12, "Kernels listed per device.")


def _busy_us(intervals):
  """Length of the union of (start, end) intervals."""
  total, end = 0.0, float("-inf")
  for s, e in sorted(intervals):
    if e > end:
      total += e - max(s, end)
      end = e
  return total


def summarize_trace(trace: dict, num_steps: int, top: int = 12) -> list[str]:
  """Lines describing a Perfetto trace of num_steps steps: per device (a process named
  "/device:..."), the busy share of the traced wall time and the longest kernels per step.

  Only threads named "Stream ..." hold kernels (XLA's op and module lines above them overlap
  them); a device without such threads counts all its threads.
  """
  events = trace["traceEvents"]
  processes = {e["pid"]: e["args"]["name"] for e in events if e.get("name") == "process_name"}
  threads = {
    (e["pid"], e["tid"]): e["args"]["name"] for e in events if e.get("name") == "thread_name"
  }
  spans = [e for e in events if e.get("ph") == "X" and "dur" in e]
  if not spans:
    return ["the trace holds no timed events"]
  wall = max(e["ts"] + e["dur"] for e in spans) - min(e["ts"] for e in spans)
  lines = [
    f"traced {num_steps} steps in {wall / 1e3:.1f} ms ({wall / 1e3 / num_steps:.2f} ms/step)"
  ]
  for pid, name in sorted(processes.items(), key=lambda kv: kv[1]):
    if not name.startswith("/device:"):
      continue
    mine = [e for e in spans if e["pid"] == pid]
    streams = [e for e in mine if threads.get((pid, e.get("tid")), "").startswith("Stream")]
    kernels = streams or mine
    if not kernels:
      continue
    busy = _busy_us([(e["ts"], e["ts"] + e["dur"]) for e in kernels])
    lines.append(
      f"{name}: busy {busy / 1e3 / num_steps:.2f} ms/step ({busy / wall:.0%} of the wall time), "
      f"{len(kernels) / num_steps:.0f} kernels/step"
    )
    by_name = collections.Counter()
    for e in kernels:
      by_name[e["name"][:90]] += e["dur"]
    for kernel, dur in by_name.most_common(top):
      lines.append(f"  {dur / 1e3 / num_steps:8.3f} ms/step {dur / busy:5.1%}  {kernel}")
  return lines


def main(argv):
  del argv
  config = _CONFIG.value
  d = config.data
  mesh = sharding.make_mesh(config.mesh)
  graphdef, params = train_lib.create_model(config, mesh)
  optimizer = train_lib.create_optimizer(config)
  state = train_lib.init_state(params, optimizer)
  if mesh.size > 1:
    state = sharding.shard_train_state(state, mesh)
  batches = curriculum.PasskeyBatches(
    seq_len=d.seq_len, batch_size=d.batch_size, seed=config.seed, total_steps=config.num_steps
  )

  def step(state):
    batch = next(batches)
    batch = {k: batch[k] for k in ("inputs", "targets", "answer_mask")}
    if mesh.size > 1:
      batch = sharding.shard_batch(batch, mesh)
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
    f"{name} window={config.model.window_size} B={d.batch_size} T={d.seq_len} "
    f"mesh={dict(mesh.shape)}: "
    f"{steps / elapsed:.1f} steps/s, {steps * d.batch_size / elapsed:,.0f} examples/s, "
    f"{steps * d.batch_size * d.seq_len / elapsed:,.0f} tokens/s ({steps} steps, "
    f"{jax.devices()[0].device_kind})",
    flush=True,
  )
  if _PROFILE_DIR.value:
    with jax.profiler.trace(_PROFILE_DIR.value, create_perfetto_trace=True):
      for _ in range(_PROFILE_STEPS.value):
        state, metrics = step(state)
        float(metrics["loss"])
    (path,) = sorted(glob.glob(f"{_PROFILE_DIR.value}/**/perfetto_trace.json.gz", recursive=True))[
      -1:
    ]
    with gzip.open(path) as f:
      trace = json.load(f)
    print("\n".join(summarize_trace(trace, _PROFILE_STEPS.value, _TOP.value)), flush=True)
    print(f"trace: {path}", flush=True)


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  cli.run(main)
