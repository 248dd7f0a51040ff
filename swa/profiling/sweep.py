"""A sweep of profiling configurations, each measured in a fresh subprocess.

`compare_memory_usage` runs every (kind, variant, n) of a sweep through `python -m
swa.profiling.measure` (`measure` of one configuration, read as JSON on stdin). The next
worker is started, and does its imports, while the current one measures; every worker runs with
XLA_PYTHON_CLIENT_PREALLOCATE=false, because a process's peak memory can never be reset. A variant
stops after its first out-of-memory, timeout or failure; full attention predicted too slow to time
gets only its compiled memory plan; every other n runs first so that a deadline cuts detail, not
range. profile_memory.py is the command line; swa/profiling/tables.py and plot.py turn the rows
into memory.md, memory.csv and memory.png.
"""

import json
import os
import subprocess
import sys
import time

import swa
from swa import attention, reports
from swa.profiling.rows import KINDS, RESULT_MARKER, VARIANTS, describe, fit_slope, sort_rows

# Statuses after which larger n is not tried for that variant.
STOPPING = ("OOM", "timeout", "failed")
# The workers run in the folder that holds this process's `swa` package, so that `python -m
# swa.profiling.measure` imports the same code whether swa is installed or run from a checkout.
_SWA_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(swa.__file__)))


def _subprocess_env(mem_fraction=0.95):
  env = dict(os.environ)
  env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
  env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", str(mem_fraction))
  return env


def probe_device(mem_fraction=0.95):
  """{backend, device, jax_version, bytes_limit} of JAX's default device, read in a subprocess
  so that this process never opens the accelerator (a context here would hold device memory
  for the whole sweep)."""
  code = (
    "import json, jax; d = jax.devices()[0]; s = d.memory_stats() or {}; "
    "print(json.dumps(dict(backend=jax.default_backend(), device=d.device_kind, "
    "jax_version=jax.__version__, bytes_limit=s.get('bytes_limit'))))"
  )
  proc = subprocess.run(
    [sys.executable, "-c", code],
    cwd=_SWA_PARENT,
    env=_subprocess_env(mem_fraction),
    capture_output=True,
    text=True,
    check=True,
  )
  return json.loads(proc.stdout.strip().splitlines()[-1])


def start_worker(mem_fraction=0.95):
  """A fresh Python process that imports JAX and swa, then waits for one configuration on
  stdin. Starting the next worker while the current one measures hides the import time; the
  accelerator is opened only once the configuration arrives."""
  return subprocess.Popen(
    [sys.executable, "-m", "swa.profiling.measure"],
    cwd=_SWA_PARENT,
    env=_subprocess_env(mem_fraction),
    stdin=subprocess.PIPE,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def run_in_subprocess(spec, *, timeout_s=600, mem_fraction=0.95, worker=None):
  """`measure(**spec)` in a fresh Python process (`worker`, or a new one); returns its row.

  The status is "timeout" when the process is killed after timeout_s, and "failed: ..." (or
  "OOM", by its message) when it dies without a result.
  """
  worker = worker or start_worker(mem_fraction)
  start = time.perf_counter()
  try:
    stdout, stderr = worker.communicate(json.dumps(spec) + "\n", timeout=timeout_s)
  except subprocess.TimeoutExpired:
    worker.kill()
    worker.communicate()
    return dict(spec, status="timeout", process_s=time.perf_counter() - start)
  process_s = time.perf_counter() - start
  for line in reversed(stdout.splitlines()):
    if line.startswith(RESULT_MARKER):
      return dict(json.loads(line[len(RESULT_MARKER) :]), process_s=process_s)
  # No result line: the process died (a crash in the runtime, the host out of memory, ...).
  tail = (stderr or stdout)[-2000:]
  status = "OOM" if reports.is_oom(tail) else f"failed: exit code {worker.returncode}"
  return dict(spec, status=status, error=tail, process_s=process_s)


def _predicted_seconds(points, seq_len, windowed):
  """One run's time at seq_len, extrapolated from the variant's (n, ms) so far."""
  if not points:
    return 0.0
  slope = 1.0 if windowed else 2.0
  if len(points) >= 2:
    slope = min(max(fit_slope(*zip(*points[-2:])), 1.0), 2.0)
  n, ms = points[-1]
  return ms / 1e3 * (seq_len / n) ** slope


def compare_memory_usage(
  seq_lengths=(512, 1024, 2048, 4096),
  window_size=512,
  *,
  kinds=KINDS,
  variants=tuple(VARIANTS),
  train_seq_lengths=None,
  method="auto",
  dtype=None,
  batch=1,
  heads=16,
  head_dim=128,
  long_from=131072,
  group_queries=32768,
  repeats=5,
  time_budget_s=1.0,
  max_run_seconds=5.0,
  timeout_per_config=180,
  mem_fraction=0.95,
  deadline_s=None,
  gpu=None,
  log=None,
  on_row=None,
  base_config=None,
):
  """Memory and time of full against sliding attention over n, each configuration in a fresh
  process.

  Args:
    seq_lengths: n for the attention kinds (and for train_step unless train_seq_lengths).
    window_size: w of the sliding variants.
    kinds: any of KINDS.
    variants: any of VARIANTS: full_reference, full_cudnn, sliding_chunked, sliding_cudnn.
    train_seq_lengths: n for train_step; default seq_lengths.
    method, dtype, batch, heads, head_dim, repeats, time_budget_s: passed to `measure`.
    long_from: from this n on, chunked attention loops over groups of query blocks
      (blocks_per_step = group_queries // block size) and train steps recompute each block
      (model.remat); 0 = never.
    group_queries: queries per loop step of chunked attention for long sequences.
    max_run_seconds: full attention only (its time grows as n^2): where one run, extrapolated
      from the variant's smaller n, would take longer than this, only the compiled memory plan
      is taken (method "compiled", nothing run); sliding variants always run.
    timeout_per_config: seconds before a configuration's process is killed ("timeout").
    mem_fraction: XLA_PYTHON_CLIENT_MEM_FRACTION for the subprocesses (unless already set).
    deadline_s: after this many seconds no new configuration starts (the rest: "skipped").
    gpu: whether cuDNN variants can run; default: `probe_device()` finds a GPU.
    log: callable(str) for progress lines.
    on_row: callable(rows so far) after each configuration (to save partial results).
    base_config: train_step's experiment config, as a dict (ConfigDict.to_dict()): it travels
      to the worker processes as JSON. Required when kinds include train_step.

  Returns:
    A list of rows (dicts, see `measure`) with `variant` added, sorted by kind, variant and n;
    configurations not run have status "skipped: ..." or "n/a: ...". After an OOM, timeout or
    failure, a variant's larger n are skipped. Every other n (and the largest) runs first, the
    n between them after, so that a deadline cuts the detail, not the range.
  """
  log = log or (lambda msg: None)
  if gpu is None:
    gpu = probe_device(mem_fraction)["backend"] == "gpu"
  for name in variants:
    if name not in VARIANTS:
      raise ValueError(f"Unknown variant {name!r}; choose from {tuple(VARIANTS)}.")
  for kind in kinds:
    if kind not in KINDS:
      raise ValueError(f"Unknown kind {kind!r}; choose from {KINDS}.")
  if "train_step" in kinds and base_config is None:
    raise ValueError("kind train_step needs base_config, the experiment config to step.")

  spare = []  # The next worker, started early so its imports overlap the current measurement.

  def run(spec):
    worker = spare.pop() if spare else start_worker(mem_fraction)
    spare.append(start_worker(mem_fraction))
    # The config goes to the worker only: rows stay flat (the report states the config).
    sent = dict(spec, base_config=base_config) if spec["kind"] == "train_step" else spec
    row = run_in_subprocess(sent, timeout_s=timeout_per_config, worker=worker)
    row.pop("base_config", None)
    return row

  # Coarse to fine: every other n (and the largest) for every kind and variant first, then the
  # n between, so a sweep cut short by its deadline still spans the whole range.
  rows, start = [], time.perf_counter()
  stops, timed = {}, {}  # (kind, variant) -> (first stopping n, why); -> [(n, ms)]
  try:
    for fine in (False, True):
      for kind in kinds:
        lengths = sorted(
          train_seq_lengths if kind == "train_step" and train_seq_lengths else seq_lengths
        )
        coarse = set(lengths[::2] + lengths[-1:])
        for name in variants:
          impl, windowed = VARIANTS[name]
          window = window_size if windowed else None
          for n in (n for n in lengths if (n in coarse) != fine):
            long = bool(long_from) and n >= long_from
            spec = dict(
              kind=kind,
              impl=impl,
              seq_len=int(n),
              window=window,
              method=method,
              dtype=dtype,
              batch=batch,
              repeats=repeats,
              time_budget_s=time_budget_s,
            )
            if kind == "train_step":
              spec["remat"] = long
            else:
              spec.update(heads=heads, head_dim=head_dim)
            if impl == "chunked" and long:
              block = attention.default_block_size(window, n)
              spec["blocks_per_step"] = max(1, group_queries // block)
            if impl == "cudnn" and not gpu:
              rows.append(dict(spec, variant=name, status="n/a: cuDNN needs a GPU"))
              continue
            stop_n, why = stops.get((kind, name), (None, None))
            if deadline_s is not None and time.perf_counter() - start > deadline_s:
              why = "sweep deadline passed"
            elif stop_n is None or n < stop_n:
              why = None
            if why:
              rows.append(dict(spec, variant=name, status=f"skipped: {why}"))
              continue
            below = sorted(p for p in timed.get((kind, name), []) if p[0] < n)
            predicted = _predicted_seconds(below, n, windowed)
            note = None
            if repeats and not windowed and predicted > max_run_seconds:
              # Too slow to time: keep the memory, from the compiled plan alone.
              note = f"~{predicted:.0f} s a run predicted"
              spec.update(method="compiled", repeats=0)
            log(f"{kind} {name} n={n}" + (f" (compiled plan only: {note})" if note else ""))
            row = dict(run(spec), variant=name)
            if note:
              row["time_skipped"] = note
            rows.append(row)
            log(
              f"  {describe(row)}, {reports.format_ms(row.get('time_ms'))}, process "
              f"{row.get('process_s', 0):.1f} s"
            )
            if row["status"] == "ok" and row.get("time_ms"):
              timed.setdefault((kind, name), []).append((n, row["time_ms"]))
            status = row["status"].split(":")[0]
            if status in STOPPING and (stop_n is None or n < stop_n):
              stops[(kind, name)] = (n, f"{status} at n={n}")
            if on_row:
              on_row(rows)
  finally:
    for worker in spare:
      worker.kill()
      worker.communicate()
  return sort_rows(rows)
