"""The two jobs of profile_memory.py: `profile` (run a memory sweep and report it) and `rebuild`.

Both write memory.md and memory.csv (swa/profiling/tables.py) and memory.png
(swa/profiling/plot.py) under one folder. `Settings` is what the command was asked to do (one
field per flag), checked once by `Settings.check` before any process starts.
"""

import dataclasses
import os
import time

from swa import reports
from swa.checks import check_int
from swa.profiling import plot, sweep, tables
from swa.profiling import rows as rows_lib

GPU_SEQ_LENGTHS = [2**k for k in range(10, 21)]  # 1,024 ... 1,048,576
GPU_TRAIN_SEQ_LENGTHS = [4096, 16384, 65536, 262144, 1048576]
CPU_SEQ_LENGTHS = [512, 1024, 2048, 4096]


@dataclasses.dataclass(frozen=True)
class Settings:
  """profile_memory.py's flags (their help says what each is); sweep.compare_memory_usage's
  keywords where the names match."""

  out: str = None
  window: int = 512
  seq_lengths: tuple = None  # None: by device (GPU_SEQ_LENGTHS / CPU_SEQ_LENGTHS)
  train_seq_lengths: tuple = None  # None: GPU_TRAIN_SEQ_LENGTHS on a GPU, else seq_lengths
  kinds: tuple = rows_lib.KINDS
  variants: tuple = tuple(rows_lib.VARIANTS)
  method: str = "auto"
  dtype: str = None
  batch: int = 1
  heads: int = 16
  head_dim: int = 128
  long_from: int = 131072
  group_queries: int = 32768
  repeats: int = 5
  time_budget_s: float = 1.0
  max_run_seconds: float = 5.0
  timeout_per_config: int = 180
  mem_fraction: float = 0.95
  deadline_minutes: float = 6.0

  def check(self):
    """The settings with lengths as ints; one-line ValueErrors naming the flag and value."""
    lengths = {}
    for name in ("seq_lengths", "train_seq_lengths"):
      given = getattr(self, name)
      if given is None:
        lengths[name] = None
        continue
      try:
        values = tuple(int(v) for v in given)
      except (TypeError, ValueError):
        raise ValueError(f"--{name}={','.join(map(str, given))} must be integers.") from None
      if not values:
        raise ValueError(f"--{name} is empty; give lengths such as 512,1024.")
      for v in values:
        check_int(f"--{name}", v)
      lengths[name] = values
    for name, allowed in (("kinds", rows_lib.KINDS), ("variants", tuple(rows_lib.VARIANTS))):
      bad = [v for v in getattr(self, name) if v not in allowed]
      if bad or not getattr(self, name):
        raise ValueError(f"--{name}: {bad or 'nothing'} not among {list(allowed)}.")
    if self.method not in rows_lib.METHODS:
      raise ValueError(f"--method={self.method!r} must be one of {list(rows_lib.METHODS)}.")
    check_int("--window_size", self.window)
    for name in ("batch", "heads", "head_dim", "group_queries", "timeout_per_config"):
      check_int(f"--{name}", getattr(self, name))
    check_int("--long_from", self.long_from, low=0)
    check_int("--repeats", self.repeats, low=0)
    for name in ("time_budget_s", "max_run_seconds"):
      if not getattr(self, name) > 0:
        raise ValueError(f"--{name}={getattr(self, name)} must be > 0.")
    if not 0 < self.mem_fraction <= 1:
      raise ValueError(f"--mem_fraction={self.mem_fraction} must be in (0, 1].")
    if not self.deadline_minutes >= 0:
      raise ValueError(f"--deadline_minutes={self.deadline_minutes} must be >= 0.")
    if self.out:
      reports.make_folder("out", self.out)
    return dataclasses.replace(self, **lengths)


def write_reports(out, rows, header, window, final=True, train_model="configs/base.py"):
  """memory.csv and memory.md (and memory.png when final) under out; returns the markdown."""
  path = lambda ext: os.path.join(out, f"memory.{ext}")
  tables.write_csv(path("csv"), rows)
  if final:
    device = next((r for r in rows if r.get("device")), {})
    plot.plot_memory(
      path("png"),
      rows,
      title=f"Memory and time against n, window {window}, "
      f"on {device.get('device', '?')} ({device.get('backend', '?')})",
    )
  else:
    header = header + [
      f"Partial: {len(rows)} configurations so far; the sweep is still running or was stopped."
    ]
  return tables.write_markdown(path("md"), rows, header, train_model)


def rebuild(csv_paths, out, *, window=512, command=None):
  """memory.md, .csv and .png in `out` from earlier sweeps' memory.csv files of one device.

  A later file fills only what the earlier ones skipped (tables.merge_rows). Returns the markdown.
  """
  if not csv_paths:
    raise ValueError("No memory.csv given to rebuild from.")
  rows = tables.merge_rows([tables.read_csv(p) for p in csv_paths])
  device = next((r for r in rows if r.get("device")), {})
  window = next((r["window"] for r in rows if r.get("window")), window)
  header = [
    f"Command: `{command or reports.command_line()}` (rebuilt from "
    f"{', '.join(csv_paths)}; the measurements' own commands and dates are in the "
    "markdown that came with each)",
    f"Device: {device.get('device')} ({device.get('backend')}); JAX {device.get('jax_version')}",
    f"Date: rebuilt {reports.utc_date().split()[0]}; measured on the dates in the "
    "markdown of each source",
  ]
  return write_reports(out, rows, header, window)


def default_out(device):
  """profiles/<device kind>, e.g. profiles/nvidia_h200 (git-ignored; never results/)."""
  name = "".join(c if c.isalnum() else "_" for c in device["device"].lower()).strip("_")
  return os.path.join("profiles", name or device["backend"])


def profile(
  out=None,
  *,
  base_config,
  window=512,
  seq_lengths=None,
  train_seq_lengths=None,
  long_from=131072,
  group_queries=32768,
  repeats=5,
  time_budget_s=1.0,
  mem_fraction=0.95,
  deadline_minutes=6.0,
  command=None,
  log=None,
  config_name="configs/base.py",
  **sweep_kwargs,
):
  """The memory sweep of profile_memory.py: runs it, writes memory.{md,csv,png} under out.

  Args:
    out: output folder; default default_out(device).
    base_config: the experiment config whose LM the train steps use, as a dict.
    config_name: how the report names that config (e.g. its file).
    window: w of the sliding variants.
    seq_lengths, train_seq_lengths: n of the attention kinds and of train_step; defaults by
      device (GPU_SEQ_LENGTHS, GPU_TRAIN_SEQ_LENGTHS; CPU_SEQ_LENGTHS for both elsewhere).
    long_from, group_queries, repeats, time_budget_s, mem_fraction: compare_memory_usage's.
    deadline_minutes: start no new configuration after this many minutes; 0 = no limit.
    command: the header's command (default reports.command_line()).
    log: callable(str) for progress lines.
    **sweep_kwargs: the rest of compare_memory_usage's keywords (kinds, variants, method, ...).

  Returns:
    (out, the markdown text).
  """
  start = time.perf_counter()
  device = sweep.probe_device(mem_fraction)
  gpu = device["backend"] == "gpu"
  out = out or default_out(device)
  seq_lengths = [int(n) for n in seq_lengths or (GPU_SEQ_LENGTHS if gpu else CPU_SEQ_LENGTHS)]
  train_seq_lengths = [
    int(n) for n in train_seq_lengths or (GPU_TRAIN_SEQ_LENGTHS if gpu else seq_lengths)
  ]
  limit = device.get("bytes_limit")
  header = [
    f"Command: `{command or reports.command_line()}`",
    f"Device: {device['device']} ({device['backend']}); JAX {device['jax_version']}"
    + (f"; allocator limit {reports.format_bytes(limit)} per process" if limit else ""),
    f"Date: {reports.utc_date()}",
    f"Times: median of up to {repeats} runs after a warm-up (compilation excluded; timing "
    f"stops once the runs add up to {time_budget_s:g} s), each ended by `block_until_ready`; "
    "one set of random inputs.",
    f"Long sequences: from n = {long_from:,} chunked attention runs {group_queries:,} queries "
    "a loop step (`blocks_per_step`, recomputed in the backward pass) and train steps "
    "recompute each block (`model.remat`); the settings column says where.",
  ]
  rows = sweep.compare_memory_usage(
    seq_lengths,
    window,
    train_seq_lengths=train_seq_lengths,
    long_from=long_from,
    group_queries=group_queries,
    repeats=repeats,
    time_budget_s=time_budget_s,
    mem_fraction=mem_fraction,
    deadline_s=60 * deadline_minutes if deadline_minutes else None,
    gpu=gpu,
    log=log,
    base_config=base_config,
    on_row=lambda rows: write_reports(
      out, rows, header, window, final=False, train_model=config_name
    ),
    **sweep_kwargs,
  )
  header[2] = (
    f"Date: {reports.utc_date()}; sweep wall time "
    f"{(time.perf_counter() - start) / 60:.1f} min, "
    f"{sum(r.get('process_s') is not None for r in rows)} processes"
  )
  return out, write_reports(out, rows, header, window, train_model=config_name)
