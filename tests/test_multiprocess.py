"""Two processes on localhost (jax.distributed, CPU, gloo) train as one (issue 16 item 4).

Each case starts this file twice with --worker: process 0 and 1 join through
sharding.maybe_initialize_distributed (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID), each with one CPU device, and run train_lib.train_and_evaluate on a mesh over
both devices: "data:2" (data parallel) or "seq:2" (sequence parallel). The losses must equal a
single-process run's, and the run's Orbax checkpoints must save and then restore on every process
(the same command again resumes at the last step on both).
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT = "MULTIPROCESS_RESULT "
NUM_STEPS = 4


def config_for(mesh):
  from test_train import small_config

  config = small_config(num_steps=NUM_STEPS)
  config.checkpoint_every_steps = 2
  config.mesh = mesh
  return config


def worker(workdir, mesh):
  """One of the two processes: train, then run the same command again (a resume)."""
  import jax

  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  from swa import sharding, train_lib

  assert sharding.maybe_initialize_distributed()
  assert jax.process_count() == 2 and len(jax.devices()) == 2
  first = train_lib.train_and_evaluate(config_for(mesh), workdir)
  again = train_lib.train_and_evaluate(config_for(mesh), workdir)
  print(RESULT + json.dumps({"process": jax.process_index(), "first": first, "again": again}))


def free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def read_losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return {row["step"]: row["loss"] for row in rows if "loss" in row}


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
  from swa import train_lib

  workdir = str(tmp_path_factory.mktemp("single") / "run")
  summary = train_lib.train_and_evaluate(config_for("data:1,seq:1"), workdir)
  return workdir, summary


@pytest.mark.slow
@pytest.mark.parametrize("mesh", ["data:2", "seq:2"])
def test_two_processes_train_like_one(single_process, tmp_path, mesh):
  workdir = str(tmp_path / "run")
  env = {
    **os.environ,
    "JAX_COORDINATOR_ADDRESS": f"localhost:{free_port()}",
    "JAX_NUM_PROCESSES": "2",
    "JAX_PLATFORMS": "cpu",
    "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
  }
  procs = [
    subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), "--worker", workdir, mesh],
      cwd=REPO,
      env={**env, "JAX_PROCESS_ID": str(i)},
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  results = []
  for proc in procs:
    try:
      out, err = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
      for p in procs:
        p.kill()
      pytest.fail("a worker process hung")
    assert proc.returncode == 0, err[-3000:]
    (line,) = [x for x in out.splitlines() if x.startswith(RESULT)]
    results.append(json.loads(line[len(RESULT) :]))
    assert f"Resumed from step {NUM_STEPS} in {workdir}." in err  # restored on this process
  assert sorted(r["process"] for r in results) == [0, 1]
  single_dir, single_summary = single_process
  expected, got = read_losses(single_dir), read_losses(workdir)
  assert sorted(got) == list(range(1, NUM_STEPS + 1))  # written once, by process 0
  np.testing.assert_allclose(
    [got[s] for s in sorted(got)], [expected[s] for s in sorted(got)], rtol=2e-5
  )
  single_accuracy = {str(k): v for k, v in single_summary["exact_match_by_distance"].items()}
  for r in results:
    assert r["first"] == r["again"]  # the restored parameters evaluate as the trained ones
    assert r["first"]["exact_match_by_distance"] == single_accuracy
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")))
  assert steps == [2, 4]


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
  sys.path[:0] = [REPO, os.path.join(REPO, "tests")]
  worker(*sys.argv[2:4])
