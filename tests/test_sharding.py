"""Data and sequence parallelism (swa/sharding.py) against the single-device computation.

Multi-device checks need 8 CPU devices, i.e. XLA_FLAGS set before JAX starts, so
they run in one child process (this file with --child), once per test session, that
prints one JSON line per case; each case is a test here that reads its line. The child
starts in the background at the session's first test (tests/conftest.py), so the tests
before these run beside it, and pytest-xdist's workers share its results through a file.
Single-device checks (the per-shard call on hand-made halos, mesh specs, the multi-host
launch rules) run in this process.
"""

import json
import os
import subprocess
import sys
import time
import traceback
import zlib

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_DEVICES = 8
B, T, N, K, H = 4, 64, 4, 2, 8

# (name, mesh, window, implementation, extra kwargs). Shards are T / seq = 8, 16 or
# 32 tokens; windows: 1, shorter than a shard, equal to one, longer (the halo then
# comes from 2-3 neighbours, or is the whole prefix), None (full attention).
ATTENTION_CASES = [
  ("seq8_w1", "seq:8", 1, "chunked", {}),
  ("seq8_w5", "seq:8", 5, "chunked", {}),
  ("seq8_w8_equal_shard", "seq:8", 8, "chunked", {}),
  ("seq8_w20_three_hops", "seq:8", 20, "chunked", {}),
  ("seq8_w20_three_hops_reference", "seq:8", 20, "reference", {}),
  ("seq8_w20_three_hops_pallas", "seq:8", 20, "pallas", {}),  # tail_aligned kernel
  ("seq8_full_attention", "seq:8", None, "chunked", {}),
  ("seq8_w11_3d_inputs", "seq:8", 11, "chunked", {"rank3": True}),
  ("data2_seq4_w1", "data:2,seq:4", 1, "chunked", {}),
  ("data2_seq4_w7", "data:2,seq:4", 7, "chunked", {}),
  ("data2_seq4_w16_equal_shard", "data:2,seq:4", 16, "chunked", {}),
  ("data2_seq4_w37_three_hops", "data:2,seq:4", 37, "chunked", {}),
  (
    "data2_seq4_w37_blocks_per_step",
    "data:2,seq:4",
    37,
    "chunked",
    {"block_size": 8, "blocks_per_step": 1},
  ),
  ("data4_seq2_w13", "data:4,seq:2", 13, "chunked", {}),
  ("data4_seq2_w32_equal_shard", "data:4,seq:2", 32, "chunked", {}),
  ("data4_seq2_w45_whole_prefix", "data:4,seq:2", 45, "chunked", {}),
  ("data4_seq2_w20_reference", "data:4,seq:2", 20, "reference", {}),
  ("data4_seq2_w13_pallas", "data:4,seq:2", 13, "pallas", {}),
  # Packed sequences: segments cross the shard boundaries, so the halo's segment ids matter.
  ("seq8_w20_segments", "seq:8", 20, "chunked", {"segments": True}),
  ("seq8_w20_segments_pallas", "seq:8", 20, "pallas", {"segments": True}),
  ("data2_seq4_w37_segments_reference", "data:2,seq:4", 37, "reference", {"segments": True}),
]
# (name, mesh, per-layer windows): two train steps with plain data parallelism, and with
# sequence parallelism where one layer's window fits a shard and the other spans 2-3.
TRAIN_CASES = [
  ("train_data8", "data:8", "5,24"),
  ("train_data2_seq4", "data:2,seq:4", "5,24"),
  ("train_seq8", "seq:8", "5,24"),
]
ATTENTION_TOL, TRAIN_TOL = 1e-5, 1e-5


# ------------------------------------------------------------------ the child


def _attention_case(mesh_spec, window, implementation, extra):
  """Largest |sequence-parallel - reference| over the output and the q, k, v gradients."""
  import jax
  import jax.numpy as jnp

  from swa import attention, sharding

  mesh = sharding.make_mesh(mesh_spec)
  keys = jax.random.split(jax.random.PRNGKey(zlib.crc32(f"{mesh_spec} {window}".encode())), 4)
  shape = lambda heads: (B, T, heads, H)
  q, k, v, ct = (jax.random.normal(key, shape(n)) for key, n in zip(keys, (N, K, K, N)))
  if extra.get("rank3"):
    q, k, v, ct = q[:, :, 0], k[:, :, 0], v[:, :, 0], ct[:, :, 0]
  kwargs = {n: extra[n] for n in ("block_size", "blocks_per_step") if n in extra}
  segments = {}
  if extra.get("segments"):  # segments of 5, 1, 20, 11, ... tokens, different per row
    lengths = np.resize([5, 1, 20, 11, 3, 24], T + 3 * B)
    ids = np.repeat(np.arange(lengths.size), lengths)
    segments = dict(segment_ids=jnp.asarray(np.stack([ids[3 * b : 3 * b + T] for b in range(B)])))

  def value_and_grads(fn, q, k, v):
    out, vjp = jax.vjp(fn, q, k, v)
    return (out, *vjp(ct))

  parallel = jax.jit(
    lambda q, k, v: value_and_grads(
      lambda q, k, v: attention.sliding_window_attention(
        q,
        k,
        v,
        window,
        implementation="sequence_parallel",
        mesh=mesh,
        local_implementation=implementation,
        **kwargs,
        **segments,
      ),
      q,
      k,
      v,
    )
  )(q, k, v)
  single = jax.jit(
    lambda q, k, v: value_and_grads(
      lambda q, k, v: attention.sliding_window_attention(
        q, k, v, window, implementation="reference", **segments
      ),
      q,
      k,
      v,
    )
  )(q, k, v)
  return max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(parallel, single))


def _train_config(windows):
  from configs import tiny

  config = tiny.get_config()
  config.model.update(
    num_layers=2, d_model=32, num_heads=4, num_kv_heads=2, mlp_dim=64, attention="chunked"
  )
  with config.model.ignore_type():
    config.model.window_size = windows
  config.data.seq_len, config.optim.warmup_steps = T, 2
  return config


def _train(config, mesh):
  """(losses, optimiser state, params) after 2 steps, on one device if mesh is None."""
  import jax

  from swa import data, sharding, train_lib

  rng = np.random.default_rng(0)
  batches = [data.passkey_batch(rng, 8, T, np.full(8, data.MIN_DISTANCE + i)) for i in range(2)]
  batches = [{k: b[k] for k in ("inputs", "targets", "answer_mask")} for b in batches]
  # The trainer's construction: sequence-parallel attention when the mesh splits "seq".
  graphdef, params = train_lib.create_model(config, mesh=mesh)
  optimizer = train_lib.create_optimizer(config)
  # A fresh jit of train_step's body, so no trace is shared between runs.
  step = jax.jit(
    lambda state, batch: train_lib.train_step.__wrapped__(
      state, batch, graphdef=graphdef, optimizer=optimizer, lm_weight=1.0
    )
  )
  state = train_lib.init_state(params, optimizer)
  if mesh is not None:
    state = sharding.shard_train_state(state, mesh)
  losses = []
  for batch in batches:
    state, metrics = step(state, batch if mesh is None else sharding.shard_batch(batch, mesh))
    losses.append(metrics["loss"])
  return jax.device_get((losses, state["opt_state"], state["params"]))


_SINGLE_DEVICE_RUNS = {}


def _train_case(mesh_spec, windows):
  """Largest relative difference of losses, Adam's moments (gradients) and params after 2 steps."""
  import jax

  from swa import sharding

  if windows not in _SINGLE_DEVICE_RUNS:
    _SINGLE_DEVICE_RUNS[windows] = _train(_train_config(windows), None)
  single = _SINGLE_DEVICE_RUNS[windows]
  parallel = _train(_train_config(windows), sharding.make_mesh(mesh_spec))
  errors = [
    np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-6)
    for a, b in zip(jax.tree.leaves(parallel), jax.tree.leaves(single))
  ]
  return float(max(errors))


def _collectives():
  """Collective ops in the compiled gradient of a 3-hop sequence-parallel attention."""
  import re

  import jax
  import jax.numpy as jnp

  from swa import sharding

  mesh = sharding.make_mesh("data:2,seq:4")
  q, k = jnp.ones((B, T, N, H)), jnp.ones((B, T, K, H))
  loss = lambda q, k, v: jnp.sum(sharding.sequence_parallel(mesh)(q, k, v, 37))
  hlo = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, k, k).compile().as_text()
  ops = re.findall(
    r"\b(all-gather|collective-permute|all-reduce|all-to-all|reduce-scatter)"
    r"(?:-start)?\(",
    hlo,
  )
  return {op: ops.count(op) for op in sorted(set(ops))}


def _indivisible_error():
  import jax.numpy as jnp

  from swa import sharding

  x = jnp.ones((2, 60, 1, 8))
  try:
    sharding.sequence_parallel(sharding.make_mesh("seq:8"))(x, x, x, 5)
  except ValueError as e:
    return str(e)
  return "no error"


def _child():
  import jax

  assert jax.device_count() == NUM_DEVICES, jax.devices()
  jobs = [(name, _attention_case, args) for name, *args in ATTENTION_CASES]
  jobs += [(name, _train_case, args) for name, *args in TRAIN_CASES]
  jobs += [
    ("no_all_gather", _collectives, ()),
    ("indivisible_length_error", _indivisible_error, ()),
  ]
  for name, fn, args in jobs:
    try:
      result = {"case": name, "value": fn(*args)}
    except Exception:  # Report and go on: one failing case must not hide the others.
      result = {"case": name, "error": traceback.format_exc()}
    print("RESULT " + json.dumps(result), flush=True)


# ----------------------------------------------------------------- the parent


def _run_child():
  """The child's results by case name, or a failure message."""
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    XLA_FLAGS=f"--xla_force_host_platform_device_count={NUM_DEVICES}",
    PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])),
  )
  try:
    child = subprocess.run(
      [sys.executable, os.path.abspath(__file__), "--child"],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
    )
  except subprocess.TimeoutExpired:
    return {"failure": "the multi-device child ran for over 600 s"}
  results = {}
  for line in child.stdout.splitlines():
    if line.startswith("RESULT "):
      row = json.loads(line[len("RESULT ") :])
      results[row["case"]] = row
  if child.returncode or not results:
    return {"failure": f"child exited with {child.returncode}:\n{child.stderr[-3000:]}"}
  return {"results": results}


def shared_folder(tmp_path_factory, config):
  """The test session's folder: under pytest-xdist (a worker's config has workerinput) the one
  above each worker's own."""
  base = tmp_path_factory.getbasetemp()
  return base.parent if hasattr(config, "workerinput") else base


def start_child(shared):
  """Starts the child in the background, once per session (the first xdist worker to call it
  wins): it writes shared/sharding_child.json when done. Returns its Popen, or None where
  another worker started it."""
  try:
    os.close(os.open(shared / "sharding_child.started", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
  except FileExistsError:
    return None
  command = [sys.executable, os.path.abspath(__file__), "--results", str(shared)]
  return subprocess.Popen(command, cwd=REPO)


def _write_results(shared):
  """The background job: runs the child and writes its outcome (atomically: the readers poll)."""
  path = os.path.join(shared, "sharding_child.json")
  with open(path + ".tmp", "w") as f:
    json.dump(_run_child(), f)
  os.replace(path + ".tmp", path)


@pytest.fixture(scope="module")
def child_results(tmp_path_factory, pytestconfig):
  """The child's results, waited for (tests/conftest.py started the child at the first test)."""
  shared = shared_folder(tmp_path_factory, pytestconfig)
  path, deadline = shared / "sharding_child.json", time.monotonic() + 700
  while not path.exists():
    if time.monotonic() > deadline:
      pytest.fail("the multi-device child wrote no results in 700 s")
    time.sleep(0.2)
  outcome = json.loads(path.read_text())
  if "failure" in outcome:
    pytest.fail(outcome["failure"])
  return outcome["results"]


def _value(results, name):
  row = results.get(name)
  assert row is not None, f"the child printed no result for {name}"
  assert "error" not in row, row["error"]
  return row["value"]


# ------------------------------------------------------- single-device checks


@pytest.mark.parametrize(
  "T_, L, window, implementation, kwargs",
  [
    (48, 8, 1, "chunked", {}),
    (48, 8, 5, "chunked", {}),
    (48, 8, 8, "reference", {}),
    (48, 8, 19, "chunked", {}),  # halo from 3 shards
    (48, 12, 30, "chunked", {"block_size": 4, "blocks_per_step": 2}),
    (45, 9, 45, "chunked", {}),  # whole prefix; odd shard length
    (45, 9, 45, "reference", {}),
    (45, 9, None, "auto", {}),  # full attention
  ],
)
def test_local_step_on_hand_made_halos(T_, L, window, implementation, kwargs):
  """A shard's call (q_offset = its start; keys [halo; own] end where its queries end) gives
  its slice of the global reference."""
  import jax
  import jax.numpy as jnp

  from swa import attention, sharding

  keys = jax.random.split(jax.random.PRNGKey(window or 0), 3)
  q = jax.random.normal(keys[0], (2, T_, 4, 8))
  k, v = (jax.random.normal(key, (2, T_, 2, 8)) for key in keys[1:])
  expected = jax.jit(
    lambda q, k, v: attention.sliding_window_attention(q, k, v, window, implementation="reference")
  )(q, k, v)
  halo = sharding.halo_size(window, T_, T_ // L)
  local = jax.jit(
    lambda q, k, v, start: attention.sliding_window_attention(
      q, k, v, window, implementation=implementation, q_offset=start, **kwargs
    )
  )
  # Zeros stand in for rows before the sequence start, as ppermute delivers them.
  k_pad, v_pad = (jnp.pad(x, ((0, 0), (halo, 0), (0, 0), (0, 0))) for x in (k, v))
  for start in range(0, T_, L):
    out = local(
      q[:, start : start + L],
      k_pad[:, start : start + halo + L],
      v_pad[:, start : start + halo + L],
      start,
    )
    np.testing.assert_allclose(out, expected[:, start : start + L], atol=1e-5, rtol=1e-5)


def test_halo_size():
  from swa.sharding import halo_size

  assert halo_size(1, 64, 8) == 0
  assert halo_size(8, 64, 8) == 7
  assert halo_size(20, 64, 8) == 19
  assert halo_size(None, 64, 8) == 56  # full attention: the last shard needs 7 shards
  assert halo_size(500, 64, 2) == 32


def test_one_device_mesh_matches_plain_attention():
  import jax

  from swa import attention, sharding

  mesh = sharding.make_mesh("data:-1,seq:1")
  assert dict(mesh.shape) == {"data": jax.device_count(), "seq": 1}
  keys = jax.random.split(jax.random.PRNGKey(3), 3)
  q, k, v = (jax.random.normal(key, (2, 40, 2, 8)) for key in keys)
  parallel = jax.jit(
    lambda q, k, v: attention.sliding_window_attention(
      q, k, v, 7, implementation="sequence_parallel", mesh=mesh, data_axis=None
    )
  )
  reference = jax.jit(
    lambda q, k, v: attention.sliding_window_attention(q, k, v, 7, implementation="reference")
  )
  np.testing.assert_allclose(parallel(q, k, v), reference(q, k, v), atol=1e-5, rtol=1e-5)
  assert not sharding.is_sequence_parallel(mesh) and not sharding.is_sequence_parallel(None)
  assert sharding.sequence_parallel(mesh) is None and sharding.sequence_parallel(None) is None


def test_mesh_spec_parsing():
  from swa.sharding import parse_mesh_spec

  assert parse_mesh_spec("data:-1,seq:2") == (("data", -1), ("seq", 2))
  assert parse_mesh_spec("seq:4, data:2") == (("seq", 4), ("data", 2))
  assert parse_mesh_spec("seq:8") == (("seq", 8), ("data", 1))
  assert parse_mesh_spec("") == (("data", 1), ("seq", 1))


@pytest.mark.parametrize(
  "spec, message",
  [
    ("model:2", "must be one of"),
    ("data:2,data:2", "at most once"),
    ("data:x", "must be an integer"),
    ("data:0", "sizes must be >= 1 or -1"),
    ("data:-1,seq:-1", "at most one axis"),
    ("data:1024", "needs 1024 devices"),
    (("data", 2), "must be a string"),
  ],
)
def test_bad_mesh_specs_are_refused(spec, message):
  from swa import sharding

  with pytest.raises(ValueError, match=message):
    sharding.make_mesh(spec)


def test_bad_arguments_are_refused():
  import functools

  import jax.numpy as jnp

  from swa import attention, sharding

  mesh, x = sharding.make_mesh("data:1,seq:1"), jnp.ones((1, 8, 1, 4))
  attend = functools.partial(
    attention.sliding_window_attention, implementation="sequence_parallel", mesh=mesh
  )
  with pytest.raises(ValueError, match="with tail offsets, .* got 'splash'"):
    attend(x, x, x, 3, local_implementation="splash")
  with pytest.raises(ValueError, match="not an axis of the mesh"):
    attend(x, x, x, 3, seq_axis="sequence")
  with pytest.raises(ValueError, match="window_size must be >= 1"):
    attend(x, x, x, 0)
  with pytest.raises(ValueError, match=r"does not support \['offsets'\]"):
    attend(x, x, x, 3, q_offset=2, k_offset=0)


def test_the_mesh_is_not_part_of_the_model():
  """The trainer picks sequence parallelism; ModelConfig and swa/model.py know no mesh."""
  import ast
  import dataclasses

  from swa import model

  source = open(os.path.join(REPO, "swa", "model.py")).read()
  imported = {
    a.name.split(".")[-1]
    for n in ast.walk(ast.parse(source))
    if isinstance(n, (ast.Import, ast.ImportFrom))
    for a in n.names
  }
  assert "sharding" not in imported, imported
  assert "mesh" not in {f.name for f in dataclasses.fields(model.ModelConfig)}


@pytest.mark.parametrize("processes", [1, 2])
def test_shard_batch_and_state_place_arrays(monkeypatch, processes):
  import jax

  from swa import sharding

  # With several processes each device slices the same global array (a callback).
  monkeypatch.setattr(jax, "process_count", lambda: processes)
  mesh = sharding.make_mesh("data:1,seq:1")
  inputs = np.arange(16, dtype=np.int32).reshape(2, 8)
  batch = sharding.shard_batch({"inputs": inputs, "w": np.ones(2)}, mesh)
  assert batch["inputs"].sharding.spec == jax.sharding.PartitionSpec("data", "seq")
  assert batch["w"].sharding.spec == jax.sharding.PartitionSpec("data")
  np.testing.assert_array_equal(batch["inputs"], inputs)
  state = sharding.shard_train_state({"step": np.int32(3)}, mesh)
  assert state["step"].sharding.is_fully_replicated and int(state["step"]) == 3


@pytest.mark.parametrize(
  "environ, kind",
  [
    ({}, None),
    ({"SLURM_STEP_NODELIST": "n1", "SLURM_NTASKS": "1"}, None),
    ({"SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "2"}, "slurm"),
    ({"OMPI_COMM_WORLD_SIZE": "4"}, "openmpi"),
    ({"TPU_WORKER_HOSTNAMES": "a,b"}, "tpu"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1234"}, "explicit"),
  ],
)
def test_distributed_environment(environ, kind):
  from swa import sharding

  assert sharding.distributed_environment(environ) == kind


def test_maybe_initialize_distributed(monkeypatch):
  import jax

  from swa import sharding

  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  assert not sharding.maybe_initialize_distributed({})
  assert sharding.maybe_initialize_distributed(
    {"JAX_COORDINATOR_ADDRESS": "h:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
  )
  assert sharding.maybe_initialize_distributed({"OMPI_COMM_WORLD_SIZE": "2"})
  assert calls == [{"coordinator_address": "h:1234", "num_processes": 2, "process_id": 1}, {}]
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES and JAX_PROCESS_ID"):
    sharding.maybe_initialize_distributed({"JAX_COORDINATOR_ADDRESS": "h:1234"})


# ------------------------------------------ multi-device checks (the child)


@pytest.mark.parametrize("name", [c[0] for c in ATTENTION_CASES])
def test_sequence_parallel_attention_matches_single_device(child_results, name):
  assert _value(child_results, name) < ATTENTION_TOL


@pytest.mark.parametrize("name", [c[0] for c in TRAIN_CASES])
def test_parallel_train_step_matches_single_device(child_results, name):
  assert _value(child_results, name) < TRAIN_TOL


def test_halo_moves_by_ppermute_only(child_results):
  ops = _value(child_results, "no_all_gather")
  # Three hops forward, their three transposes backward; nothing gathers the sequence.
  assert ops == {"collective-permute": 6}, ops


def test_indivisible_sequence_is_refused(child_results):
  assert "60 must be divisible by the mesh axis 'seq' of size 8" in _value(
    child_results, "indivisible_length_error"
  )


if __name__ == "__main__" and sys.argv[1:] == ["--child"]:
  _child()
elif __name__ == "__main__" and sys.argv[1:2] == ["--results"]:
  _write_results(sys.argv[2])
