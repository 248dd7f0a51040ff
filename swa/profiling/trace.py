"""A jax.profiler trace, summarised per device: busy share of the wall time, longest kernels.

`trace(fn, steps, folder)` runs fn `steps` times under `jax.profiler.trace` with a Perfetto trace
and returns that trace (a dict); `summarize_trace` turns it into lines. Used by scripts/step_rate.py
(a training step) and scripts/attention_trace.py (one attention fwd+bwd).
"""

import collections
import glob
import gzip
import json

import jax


def trace(fn, steps, folder):
  """Calls fn() `steps` times under the profiler; returns the Perfetto trace it wrote to folder."""
  with jax.profiler.trace(folder, create_perfetto_trace=True):
    for _ in range(steps):
      fn()
  (path,) = sorted(glob.glob(f"{folder}/**/perfetto_trace.json.gz", recursive=True))[-1:]
  with gzip.open(path) as f:
    return json.load(f)


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
