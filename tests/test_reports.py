"""swa/reports.py: header, tables, CSV, OOM test, timing harness."""

import csv
import time

import jax.numpy as jnp
import pytest

from swa import reports


def test_time_fn_times_after_the_warm_up_and_keeps_the_median():
  calls = []

  def fn(x):
    calls.append(float(x))
    time.sleep(0.002 * (len(calls) % 3))
    return x + 1

  timing = reports.time_fn(fn, (jnp.float32(0),), repeats=5, warmup=2, keep_first_output=True)
  assert len(calls) == 2 + 5 and len(timing.times_ms) == 5
  assert timing.median_ms == sorted(timing.times_ms)[2]
  assert float(timing.first_output) == 1.0 and timing.first_s > 0
  assert calls == [0.0] * 7  # without thread_output every call takes the same arguments


def test_time_fn_threads_outputs_or_rotates_argument_sets():
  seen = []
  fn = lambda x: (seen.append(int(x)), x + 1)[1]
  timing = reports.time_fn(fn, (jnp.int32(0),), repeats=3, thread_output=lambda args, out: (out,))
  assert seen == [0, 1, 2, 3] and int(timing.last_args[0]) == 4
  assert timing.first_output is None  # dropped unless asked for
  seen.clear()
  sets = [(jnp.int32(10),), (jnp.int32(20),)]
  reports.time_fn(fn, sets[0], repeats=3, warmup=2, arg_sets=sets)
  assert seen == [10, 20, 10, 20, 10]


def test_time_fn_samples_several_calls_and_divides():
  seen = []
  slow = lambda x: (seen.append(int(x)), time.sleep(0.01), x + 1)[2]
  sets = [(jnp.int32(10),), (jnp.int32(20),), (jnp.int32(30),)]
  timing = reports.time_fn(slow, sets[0], repeats=2, arg_sets=sets, calls_per_sample=4)
  assert seen == [10] + [20, 30, 10, 20] + [30, 10, 20, 30]  # the sets keep rotating
  assert len(timing.times_ms) == 2 and all(10 <= t < 20 for t in timing.times_ms)  # per call
  with pytest.raises(ValueError, match="calls_per_sample=0"):
    reports.time_fn(slow, sets[0], calls_per_sample=0)


def test_time_fn_stops_at_its_budget_but_times_once():
  slow = lambda x: (time.sleep(0.02), x)[1]
  timing = reports.time_fn(slow, (jnp.float32(0),), repeats=50, time_budget_s=0.03)
  assert 1 <= len(timing.times_ms) <= 3
  with pytest.raises(ValueError, match="repeats=0"):
    reports.time_fn(slow, (jnp.float32(0),), repeats=0)


def test_is_oom():
  assert reports.is_oom("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1 GiB")
  assert reports.is_oom(RuntimeError("XlaRuntimeError: out of memory"))
  assert not reports.is_oom("INVALID_ARGUMENT: shapes differ")


def test_header_table_and_csv(tmp_path):
  lines = reports.header_lines("python x.py --a=1", device=False, extra=["Seeds: 0"])
  assert lines[0] == "Command: `python x.py --a=1`" and lines[-1] == "Seeds: 0"
  assert lines[1].startswith("Date: ") and lines[1].endswith("(UTC)")
  assert reports.header_lines("c")[1].startswith("Device: ")
  text = reports.markdown_header("T", lines)
  assert text.startswith("# T\n\n- Command: `python x.py --a=1`\n") and text.endswith("\n\n")
  table = reports.markdown_table(["a", "b"], [[1, "x"], [2, "y"]], align="lc")
  assert table == "| a | b |\n|---|:---:|\n| 1 | x |\n| 2 | y |\n"
  with pytest.raises(ValueError, match="2 columns"):
    reports.markdown_table(["a", "b"], [[1]])
  reports.write_csv(tmp_path / "sub" / "t.csv", [{"a": 1, "b": 2, "c": 3}], ["a", "b"])
  with open(tmp_path / "sub" / "t.csv") as f:
    assert list(csv.DictReader(f)) == [{"a": "1", "b": "2"}]


def test_formats_and_command_line():
  assert reports.format_bytes(1536) == "1.5 KiB" and reports.format_bytes(None) == "—"
  assert reports.format_ms(12.34) == "12.3 ms" and reports.format_ms(4560) == "4.56 s"
  assert reports.command_line(["--x=a b"], "prog.py") == "python prog.py '--x=a b'"
