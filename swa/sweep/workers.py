"""Several subprocesses at once, spread over the GPUs of one machine (swa/sweep/runner.py's runs).

run_jobs calls each job with the environment of a worker slot: slot s of P uses GPU
s mod (number of GPUs) through CUDA_VISIBLE_DEVICES, with XLA_PYTHON_CLIENT_PREALLOCATE=false and
XLA_PYTHON_CLIENT_MEM_FRACTION set to its share of 90 % of that GPU's memory (worker_env), so
that ceil(P / GPUs) processes fit on one GPU. Without GPUs the environment is left as it is (the
processes share the CPU). Runner runs one command with its output in a log file and can end all
the live ones on an interrupt.
"""

import concurrent.futures
import math
import os
import queue
import shlex
import subprocess
import threading
import time

_MEMORY_SHARE = 0.9  # of each GPU's memory, split between the processes placed on it


def _nvidia_smi(field):
  """One value per GPU of `nvidia-smi --query-gpu=<field>`; [] without nvidia-smi."""
  try:
    out = subprocess.run(
      ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"],
      capture_output=True,
      text=True,
      timeout=60,
      check=True,
    ).stdout
  except (OSError, subprocess.SubprocessError):
    return []
  return [line.strip() for line in out.splitlines() if line.strip()]


def detect_gpus():
  """GPU ids for CUDA_VISIBLE_DEVICES: those it already lists, else nvidia-smi's, else []."""
  visible = os.environ.get("CUDA_VISIBLE_DEVICES")
  if visible is not None:
    return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
  return _nvidia_smi("index")


def describe(gpus):
  """ "2 x NVIDIA H200 (GPUs 0,1)" for these GPU ids, or "CPU" without any."""
  if not gpus:
    return "CPU"
  names = dict(zip(_nvidia_smi("index"), _nvidia_smi("name")))
  kinds = sorted({names.get(g, "GPU") for g in gpus})
  return f"{len(gpus)} x {' / '.join(kinds)} (GPUs {','.join(gpus)})"


def worker_env(slot, gpus, parallel, base=None):
  """The environment of a process in worker slot `slot` (of `parallel`) on these GPUs."""
  env = dict(os.environ if base is None else base)
  if gpus:
    per_gpu = math.ceil(parallel / len(gpus))
    env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{_MEMORY_SHARE / per_gpu:.3f}"
  return env


class Runner:
  """Runs commands as subprocesses with their output in a log file; stop() ends the live ones."""

  def __init__(self):
    self._live, self._lock, self._stopped = set(), threading.Lock(), False

  def __call__(self, command, *, env, log_path):
    """Runs `command` to its end with stdout and stderr appended to log_path; returns its status."""
    with open(log_path, "a") as log:
      log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(command)}\n")
      log.flush()
      with self._lock:
        if self._stopped:  # after stop(), a job's next step does not start
          log.write("=== not started: the sweep is stopping\n")
          return -1
        process = subprocess.Popen(
          command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        self._live.add(process)
      try:
        return process.wait()
      finally:
        with self._lock:
          self._live.discard(process)

  def stop(self):
    """Terminates the running subprocesses; later calls start none."""
    with self._lock:
      self._stopped = True
      for process in self._live:
        process.terminate()


def run_jobs(jobs, *, parallel, gpus, stop=None, base_env=None):
  """Calls job(env) for every job, `parallel` at a time, each with its worker slot's environment.

  The environment is worker_env's, built on base_env (default os.environ).

  On an interrupt (or a job's exception) the jobs not started are dropped and stop() (if given)
  is called before waiting for the running ones, so that it can end their subprocesses.

  Returns:
    the jobs' results, in order.
  """
  if parallel < 1:
    raise ValueError(f"--parallel must be >= 1, got {parallel}.")
  slots = queue.Queue()
  for slot in range(parallel):
    slots.put(slot)

  def work(job):
    slot = slots.get()
    try:
      return job(worker_env(slot, gpus, parallel, base=base_env))
    finally:
      slots.put(slot)

  with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
    futures = [pool.submit(work, job) for job in jobs]
    try:
      return [f.result() for f in futures]
    except BaseException:
      for f in futures:
        f.cancel()
      if stop is not None:
        stop()
      raise
