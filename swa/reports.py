"""What every result carries: the command/device/date header, tables, CSV, OOM test, timing.

Every entry point that writes a result (eval_passkey.py, profile_memory.py, bench_attention.py,
stream.py) builds it from these pieces, so a result always says how it was made:

  header = reports.header_lines()          # ["Command: `python ...`", "Device: ...", "Date: ..."]
  text = reports.markdown_header("Title", header) + reports.markdown_table(cols, rows)
  reports.write_csv(path, rows, fields)
  timing = reports.time_fn(fn, args, repeats=5)       # median ms of runs ended by block_until_ready
  if reports.is_oom(error): ...

Nothing here imports the rest of swa: it sits at the bottom of the import graph. JAX is imported
only by the functions that need a device (device_description, time_fn).
"""

import csv
import dataclasses
import datetime
import os
import shlex
import statistics
import sys
import time


def command_line(argv=None, program=None) -> str:
  """The command that is running, as a user would type it: "python eval_passkey.py --x=1".

  Args:
    argv: the arguments after the program (default sys.argv[1:]).
    program: the program's path (default sys.argv[0], relative to the current folder).
  """
  argv = sys.argv[1:] if argv is None else list(argv)
  program = program or sys.argv[0]
  if os.path.isabs(program):
    relative = os.path.relpath(program)
    program = program if relative.startswith("..") else relative
  return shlex.join(["python", program, *argv])


def device_description() -> str:
  """The default device, e.g. "NVIDIA H200 (gpu, 1 device(s)); JAX 0.12.0"."""
  import jax  # Only here and in time_fn: tables and CSVs (swa.analysis) need no JAX.

  device = jax.devices()[0]
  return (
    f"{device.device_kind} ({jax.default_backend()}, {jax.device_count()} device(s)); "
    f"JAX {jax.__version__}"
  )


def utc_date(with_time=False) -> str:
  """Today in UTC: "2026-11-30 (UTC)", or "2026-11-30 08:15 (UTC)" with the time."""
  now = datetime.datetime.now(datetime.timezone.utc)
  return f"{now:%Y-%m-%d %H:%M} (UTC)" if with_time else f"{now:%Y-%m-%d} (UTC)"


def header_lines(command=None, *, device=True, extra=()) -> list:
  """The provenance lines of a result: Command, Device (unless device=False), Date, then extra.

  Args:
    command: the command text (default command_line()).
    device: whether to describe the default device (False for results that read files only:
      describing the device would open it).
    extra: more lines, appended as they are.

  Returns:
    list of str, without list markers (markdown_header adds them).
  """
  lines = [f"Command: `{command or command_line()}`"]
  if device:
    lines.append(f"Device: {device_description()}")
  lines.append(f"Date: {utc_date(with_time=True)}")
  return lines + list(extra)


def markdown_header(title: str, lines) -> str:
  """ "# title", a blank line, one "- line" per line, a blank line."""
  return f"# {title}\n\n" + "".join(f"- {line}\n" for line in lines) + "\n"


def markdown_table(columns, rows, align=None) -> str:
  """A markdown table: columns (str), rows (sequences of cells, turned into str).

  Args:
    columns: the header cells.
    rows: one sequence of cells per row, as long as columns.
    align: one of "l", "r", "c" per column (default: the first left, the others right).

  Returns:
    the table, ending with a newline.
  """
  align = align or "l" + "r" * (len(columns) - 1)
  if len(align) != len(columns):
    raise ValueError(f"align={align!r} must have one letter per column ({len(columns)}).")
  rules = {"l": "---", "r": "---:", "c": ":---:"}
  lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(rules[a] for a in align) + "|"]
  for row in rows:
    cells = [str(c) for c in row]
    if len(cells) != len(columns):
      raise ValueError(f"A row has {len(cells)} cells, the table {len(columns)} columns: {cells}.")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def make_folder(flag, path):
  """Makes `path` a writable folder (creating it), or a one-line ValueError naming `--flag=path`.

  Called before any long work (training, an evaluation), so a bad output folder costs nothing.
  """
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f"--{flag}={path} is a file, not a folder.")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as error:
    raise ValueError(f"--{flag}={path} cannot be created: {error.strerror}.") from None
  if not os.access(path, os.W_OK | os.X_OK):
    raise ValueError(f"--{flag}={path} is not writable.")


def write_csv(path, rows, fields):
  """Writes dict rows to a CSV with these columns (other keys are left out); makes the folder."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)


def is_oom(error) -> bool:
  """Whether an exception (or its message) says the device ran out of memory."""
  msg = str(error)
  return "RESOURCE_EXHAUSTED" in msg or "out of memory" in msg.lower()


def format_bytes(b) -> str:
  """1536 -> "1.5 KiB"; None -> "—"."""
  if b is None:
    return "—"
  for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if abs(b) >= size:
      return f"{b / size:.3g} {unit}"
  return f"{b} B"


MIB = 2**20


def format_mib(num_bytes) -> str:
  """Bytes in MiB with two decimals ("1,024.00"); None (the backend does not say) -> "n/a"."""
  return "n/a" if num_bytes is None else f"{num_bytes / MIB:,.2f}"


def format_ms(ms) -> str:
  """Milliseconds as "12.3 ms" or, from one second on, "4.56 s"; None -> "—"."""
  if ms is None:
    return "—"
  return f"{ms / 1e3:.3g} s" if ms >= 1e3 else f"{ms:.3g} ms"


@dataclasses.dataclass
class Timing:
  """What time_fn measured.

  Attributes:
    median_ms: the median of times_ms.
    times_ms: every timed run, in milliseconds.
    first_s: seconds of the first call (compilation included).
    first_output: the first call's output (None unless time_fn was asked to keep it).
    last_args: the arguments the next call would take (see time_fn's thread_output).
  """

  median_ms: float
  times_ms: list
  first_s: float
  first_output: object
  last_args: tuple


def time_fn(
  fn,
  args,
  *,
  repeats=5,
  warmup=1,
  time_budget_s=None,
  arg_sets=None,
  thread_output=None,
  keep_first_output=False,
  calls_per_sample=1,
) -> Timing:
  """Median wall time of fn(*args) per call, each sample ended by jax.block_until_ready.

  The first call (it compiles) and `warmup - 1` more are not timed. Then up to `repeats` samples
  are timed, fewer once they add up to time_budget_s (at least one is always timed). A sample is
  `calls_per_sample` calls dispatched back to back and one block_until_ready on the last; its
  time is divided by that count. With more than one call the host dispatches the next call while
  the device runs the last one, as in a training loop, so the per-call time is the device's (plus
  what dispatch cannot hide) rather than device time plus one dispatch latency.

  Args:
    fn: the function (usually jitted).
    args: a tuple of positional arguments.
    repeats: timed calls, >= 1.
    warmup: untimed calls, the first (compiling) one included; >= 1.
    time_budget_s: stop timing once the timed calls add up to this many seconds (None: never).
    arg_sets: optional list of argument tuples; call i then takes arg_sets[i % len] (inputs that
      alternate, so no cache can serve a repeated call); `args` is the first call's.
    thread_output: optional thread_output(args, out) -> the next call's args (e.g. a train step
      whose new state replaces its donated old one).
    keep_first_output: return the first call's output (e.g. to check it); by default it is
      dropped before the timed calls, so it does not add to their memory.
    calls_per_sample: calls per timed sample, >= 1.

  Returns:
    a Timing.
  """
  if repeats < 1 or warmup < 1 or calls_per_sample < 1:
    raise ValueError(
      f"repeats={repeats}, warmup={warmup} and calls_per_sample={calls_per_sample} must all be "
      ">= 1."
    )
  import jax

  args = tuple(args)
  thread = thread_output or (lambda a, out: a)
  call = 0

  def next_args(current, out):
    nonlocal call
    call += 1
    return tuple(arg_sets[call % len(arg_sets)]) if arg_sets else thread(current, out)

  start = time.perf_counter()
  first = jax.block_until_ready(fn(*args))
  first_s = time.perf_counter() - start
  args = next_args(args, first)
  if not keep_first_output:
    first = None
  for _ in range(warmup - 1):
    args = next_args(args, jax.block_until_ready(fn(*args)))
  times_ms = []
  while len(times_ms) < repeats and (
    time_budget_s is None or not times_ms or sum(times_ms) < 1e3 * time_budget_s
  ):
    start = time.perf_counter()
    for i in range(calls_per_sample):
      out = fn(*args)
      if i + 1 < calls_per_sample:
        args = next_args(args, out)
    jax.block_until_ready(out)
    times_ms.append(1e3 * (time.perf_counter() - start) / calls_per_sample)
    args = next_args(args, out)
    del out
  return Timing(statistics.median(times_ms), times_ms, first_s, first, args)
