"""Memory profiling on CPU: compiled-plan slopes, the subprocess sweep and its rules, reports,
and profile_memory.py's jobs."""

import csv
import math
import os
import subprocess
import sys

import pytest

from configs import base, tiny
from swa import reports
from swa.profiling import measure, plot, report, rows, sweep, tables, trace

SMALL = dict(heads=2, head_dim=16)  # Small heads: the n^2 or n*w terms dominate from n = 512.


def compiled_bytes(kind, impl, lengths, window=256):
  rows = [
    measure.measure(kind, impl, n, window, method="compiled", repeats=0, **SMALL) for n in lengths
  ]
  assert all(r["status"] == "ok" and r["method"] == "compiled" for r in rows), rows
  return [r["memory_bytes"] for r in rows]


def test_fit_slope_recovers_a_power_law():
  assert rows.fit_slope([1, 2, 4, 8], [3, 12, 48, 192]) == pytest.approx(2.0)
  assert rows.fit_slope([512, 1024], [10, 20]) == pytest.approx(1.0)
  assert math.isnan(rows.fit_slope([512], [10]))
  assert math.isnan(rows.fit_slope([512, 1024], [None, 20]))


@pytest.mark.parametrize("kind", ["attention_fwd", "attention_fwdbwd"])
def test_compiled_memory_is_quadratic_for_full_and_linear_for_sliding(kind):
  lengths = [512, 1024, 2048]
  full = rows.fit_slope(lengths, compiled_bytes(kind, "reference", lengths, window=None))
  sliding = rows.fit_slope(lengths, compiled_bytes(kind, "chunked", lengths))
  assert full > 1.7, full
  assert 0.7 < sliding < 1.3, sliding


def test_blocks_per_step_bounds_chunked_attention_memory():
  n, w = 4096, 256
  plain = measure.measure(
    "attention_fwdbwd", "chunked", n, w, method="compiled", repeats=0, **SMALL
  )
  looped = measure.measure(
    "attention_fwdbwd", "chunked", n, w, method="compiled", repeats=0, blocks_per_step=2, **SMALL
  )
  assert looped["memory_bytes"] < plain["memory_bytes"]


@pytest.mark.slow
def test_train_step_measures_memory_and_time():
  # Recomputation and the query-block loop (how a 1M-token step fits) shrink the plan.
  config = base.get_config()
  lean = measure.measure(
    "train_step", "chunked", 2048, 256, repeats=1, remat=True, blocks_per_step=4, base_config=config
  )
  assert lean["status"] == "ok", lean
  assert lean["memory_bytes"] > 0 and lean["time_ms"] > 0 and len(lean["times_ms"]) == 1
  assert lean["num_params"] > 0 and lean["remat"] is True
  plain = measure.measure(
    "train_step", "chunked", 2048, 256, repeats=0, base_config=config.to_dict()
  )
  assert plain["status"] == "ok" and plain["remat"] is False and "time_ms" not in plain
  # Compiled plans: lean / plain = 0.26 on JAX 0.12, 0.53 on 0.10.2 (whose CPU plan gains
  # nothing from remat alone; the flash-style chunked attention already shrank `plain`).
  assert lean["memory_bytes"] < 0.6 * plain["memory_bytes"]


def test_unavailable_cudnn_is_reported_not_raised():
  if sweep.probe_device()["backend"] == "gpu":
    pytest.skip("cuDNN is available here.")
  row = measure.measure("attention_fwd", "cudnn", 128, 32, repeats=0, dtype="bfloat16", **SMALL)
  assert row["status"].startswith("unsupported"), row


@pytest.mark.slow
def test_profile_runs_each_config_in_a_subprocess(tmp_path, monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")  # the subprocesses inherit it
  out, text = report.profile(
    str(tmp_path),
    base_config=None,
    window=32,
    seq_lengths=[128, 256],
    kinds=("attention_fwd",),
    variants=("full_reference", "sliding_chunked", "sliding_cudnn"),
    repeats=1,
    command="test",
    **SMALL,
  )
  assert out == str(tmp_path)
  back = tables.read_csv(tmp_path / "memory.csv")
  ran = [r for r in back if not r["status"].startswith("n/a")]
  assert sorted(r["seq_len"] for r in ran) == [128, 128, 256, 256]
  for r in ran:
    assert r["status"] == "ok" and r["method"] == "compiled", r
    assert r["memory_bytes"] > 0 and r["time_ms"] > 0 and r["process_s"] > 0
  assert {r["variant"] for r in back if r["status"].startswith("n/a")} == {"sliding_cudnn"}
  assert text == (tmp_path / "memory.md").read_text()
  assert "- Command: `test`" in text and "## attention forward" in text
  assert "**compiled**" in text and "| 256 |" in text
  with open(tmp_path / "memory.csv") as f:
    assert len(list(csv.DictReader(f))) == len(back)
  assert (tmp_path / "memory.png").stat().st_size > 10_000


@pytest.mark.slow
def test_a_train_step_config_travels_to_the_worker(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  spec = dict(
    kind="train_step",
    impl="chunked",
    seq_len=128,
    window=32,
    method="compiled",
    repeats=0,
    base_config=tiny.get_config().to_dict(),
  )
  row = sweep.run_in_subprocess(spec, timeout_s=300)
  assert row["status"] == "ok" and row["memory_bytes"] > 0, row
  assert row["num_params"] > 0


def test_train_steps_need_a_config():
  with pytest.raises(ValueError, match="needs base_config"):
    measure.measure("train_step", "chunked", 128, 32, repeats=0)
  with pytest.raises(ValueError, match="needs base_config"):
    sweep.compare_memory_usage([128], kinds=("train_step",), gpu=False)


def test_default_out_is_never_results():
  assert report.default_out({"device": "NVIDIA H200", "backend": "gpu"}) == "profiles/nvidia_h200"
  assert report.default_out({"device": "cpu", "backend": "cpu"}) == "profiles/cpu"


def test_profile_memory_command_line_smoke(tmp_path):
  """The real command: a rebuild from a CSV, then a user mistake in one line."""
  gib = 2**30
  row = dict(
    kind="attention_fwd",
    variant="sliding_chunked",
    impl="chunked",
    seq_len=4096,
    window=512,
    status="ok",
    method="compiled",
    memory_bytes=gib,
    device="cpu",
    backend="cpu",
    jax_version="x",
  )
  tables.write_csv(tmp_path / "a" / "memory.csv", [row])
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  command = [sys.executable, "profile_memory.py", f"--from_csv={tmp_path / 'a' / 'memory.csv'}"]
  done = subprocess.run(
    command + [f"--out={tmp_path / 'out'}"], cwd=root, capture_output=True, text=True, check=True
  )
  assert "| 4,096 | 1 GiB ᶜ |" in done.stdout or "| 4,096 | 1 GiB |" in done.stdout
  assert (tmp_path / "out" / "memory.png").exists()
  failed = subprocess.run(command, cwd=root, capture_output=True, text=True)
  assert failed.returncode == 1
  assert failed.stderr.strip() == "error: --from_csv needs --out=<folder> for the rebuilt report."


class _FakeWorker:
  def kill(self):
    pass

  def communicate(self, *args, **kwargs):
    return "", ""


def test_sweep_stops_a_variant_after_oom_and_plans_slow_runs_only(monkeypatch):
  """Full attention runs out of memory at n=4096 and larger n are then skipped; sliding goes on.
  A full-attention run predicted slower than max_run_seconds gets only its compiled plan."""
  calls = []

  def fake_run(spec, timeout_s, worker):
    calls.append(spec)
    if spec["impl"] == "reference" and spec["seq_len"] >= 4096:
      return dict(spec, status="OOM", process_s=1.0)
    ms = spec["seq_len"] * (10.0 if spec["impl"] == "reference" else 0.01)
    return dict(
      spec,
      status="ok",
      memory_bytes=spec["seq_len"],
      process_s=1.0,
      time_ms=ms if spec["repeats"] else None,
    )

  monkeypatch.setattr(sweep, "run_in_subprocess", fake_run)
  monkeypatch.setattr(sweep, "start_worker", lambda mem_fraction: _FakeWorker())
  rows = sweep.compare_memory_usage(
    [1024, 2048, 4096, 8192],
    window_size=512,
    kinds=("attention_fwd",),
    variants=("full_reference", "sliding_chunked"),
    max_run_seconds=15.0,
    long_from=4096,
    gpu=False,
  )
  status = {(r["variant"], r["seq_len"]): r["status"] for r in rows}
  assert status[("full_reference", 4096)] == "OOM"
  assert status[("full_reference", 8192)].startswith("skipped")
  assert all(status[("sliding_chunked", n)] == "ok" for n in (1024, 2048, 4096, 8192))
  ref = {c["seq_len"]: c for c in calls if c["impl"] == "reference"}
  # 1024 took 10 s a run, so 2048 is predicted at ~41 s: not timed, but its memory is planned.
  assert ref[1024]["repeats"] and ref[1024]["method"] == "auto"
  assert ref[2048]["method"] == "compiled" and ref[2048]["repeats"] == 0
  # Coarse to fine: every other n and the largest first, the n between them after.
  assert [c["seq_len"] for c in calls if c["impl"] == "chunked"] == [1024, 4096, 8192, 2048]
  assert [r["seq_len"] for r in rows if r["variant"] == "sliding_chunked"] == [
    1024,
    2048,
    4096,
    8192,
  ]
  chunked = {c["seq_len"]: c for c in calls if c["impl"] == "chunked"}
  assert chunked[2048].get("blocks_per_step") is None
  assert chunked[4096]["blocks_per_step"] == 32768 // 256


def test_oom_messages_are_recognised():
  assert reports.is_oom("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1 GiB")
  assert reports.is_oom("XlaRuntimeError: out of memory")
  assert not reports.is_oom("INVALID_ARGUMENT: shapes differ")


def test_report_marks_ooms_compiled_plans_and_reach(tmp_path):
  gib = 2**30
  base = dict(
    kind="attention_fwdbwd", batch=1, heads=16, head_dim=128, dtype="bfloat16", bytes_limit=76 * gib
  )
  rows = [
    dict(
      base,
      variant="full_reference",
      impl="reference",
      seq_len=8192,
      status="ok",
      method="peak",
      memory_bytes=8 * gib,
      compiled_bytes=8 * gib,
      time_ms=50.0,
    ),
    dict(
      base, variant="full_reference", impl="reference", seq_len=16384, status="OOM", stage="run"
    ),
    dict(
      base,
      variant="full_cudnn",
      impl="cudnn",
      seq_len=8192,
      status="ok",
      method="peak",
      memory_bytes=gib // 4,
      compiled_bytes=gib // 4,
      time_ms=5.0,
    ),
    dict(
      base,
      variant="full_cudnn",
      impl="cudnn",
      seq_len=16384,
      status="ok",
      method="compiled",
      memory_bytes=gib // 2,
      time_skipped="~9 s a run predicted",
    ),
    dict(
      base,
      variant="sliding_chunked",
      impl="chunked",
      window=512,
      seq_len=8192,
      status="ok",
      method="peak",
      memory_bytes=gib,
      compiled_bytes=gib,
      time_ms=2.0,
    ),
    dict(
      base,
      variant="sliding_chunked",
      impl="chunked",
      window=512,
      seq_len=16384,
      status="failed: XlaRuntimeError",
      stage="run",
      error="INTERNAL: boom\nmore",
    ),
  ]
  text = tables.write_markdown(tmp_path / "memory.md", rows, ["Command: `x`"])
  assert "| 8,192 | 8 GiB | 256 MiB | 1 GiB | 8× |" in text
  assert "| 16,384 | OOM | 512 MiB ᶜ | failed |" in text
  assert "full (reference) ran up to n=8,192, out of memory at n=16,384" in text
  assert "compiled memory plan, not run, up to n=16,384" in text
  assert "failed: XlaRuntimeError (run): `INTERNAL: boom`" in text
  assert "measured peak / compiled plan = 1.00" in text
  tables.write_csv(tmp_path / "memory.csv", rows)
  back = tables.read_csv(tmp_path / "memory.csv")
  assert [r["status"] for r in back] == [r["status"] for r in rows]
  assert back[0]["memory_bytes"] == 8 * gib and back[0]["time_ms"] == 50.0
  plot.plot_memory(tmp_path / "memory.png", back)
  assert (tmp_path / "memory.png").stat().st_size > 10_000


def test_merge_rows_fills_what_earlier_sweeps_skipped():
  row = lambda variant, n, status, **kw: dict(
    kind="attention_fwd", variant=variant, seq_len=n, status=status, device="H200", **kw
  )
  first = [
    row("sliding_cudnn", 4096, "skipped: sweep deadline passed"),
    row("sliding_cudnn", 1024, "ok", memory_bytes=1),
    row("full_reference", 1024, "OOM"),
  ]
  second = [
    row("sliding_cudnn", 4096, "ok", memory_bytes=4),
    row("sliding_cudnn", 1024, "ok", memory_bytes=99),  # already measured: not taken
    row("full_reference", 4096, "skipped: sweep deadline passed"),
  ]
  merged = tables.merge_rows([first, second])
  assert [(r["variant"], r["seq_len"], r["status"], r.get("memory_bytes")) for r in merged] == [
    ("full_reference", 1024, "OOM", None),
    ("full_reference", 4096, "skipped: sweep deadline passed", None),
    ("sliding_cudnn", 1024, "ok", 1),
    ("sliding_cudnn", 4096, "ok", 4),
  ]
  with pytest.raises(ValueError, match="different devices"):
    tables.merge_rows([first, [dict(second[0], device="H100")]])


def test_trace_summary_counts_stream_kernels_once():
  meta = [
    {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/device:GPU:0"}},
    {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/host:CPU"}},
    {"ph": "M", "pid": 1, "tid": 7, "name": "thread_name", "args": {"name": "Stream #7(Compute)"}},
    {"ph": "M", "pid": 1, "tid": 8, "name": "thread_name", "args": {"name": "XLA Ops"}},
  ]
  spans = [
    {"ph": "X", "pid": 1, "tid": 7, "ts": 0.0, "dur": 300.0, "name": "gemm"},
    {"ph": "X", "pid": 1, "tid": 7, "ts": 200.0, "dur": 200.0, "name": "fusion"},  # Overlaps.
    {"ph": "X", "pid": 1, "tid": 7, "ts": 600.0, "dur": 100.0, "name": "gemm"},
    {"ph": "X", "pid": 1, "tid": 8, "ts": 0.0, "dur": 700.0, "name": "op line, not a kernel"},
    {"ph": "X", "pid": 2, "tid": 1, "ts": 0.0, "dur": 1000.0, "name": "host"},
  ]
  lines = trace.summarize_trace({"traceEvents": meta + spans}, num_steps=2)
  assert lines[0] == "traced 2 steps in 1.0 ms (0.50 ms/step)"
  # Busy: the union [0, 400] + [600, 700] = 500 us of 1000; gemm 400 us, fusion 200 us.
  assert lines[1] == "/device:GPU:0: busy 0.25 ms/step (50% of the wall time), 2 kernels/step"
  assert lines[2].split() == ["0.200", "ms/step", "80.0%", "gemm"]
  assert lines[3].split() == ["0.100", "ms/step", "40.0%", "fusion"]
  assert len(lines) == 4


@pytest.mark.parametrize(
  "field, value, match",
  [
    ("seq_lengths", ("0",), "--seq_lengths=0 must be an integer >= 1"),
    ("seq_lengths", ("abc",), "--seq_lengths=abc must be integers"),
    ("seq_lengths", (), "--seq_lengths is empty"),
    ("window", 0, "--window_size=0 must be an integer >= 1"),
    ("batch", -1, "--batch=-1 must be an integer >= 1"),
    ("kinds", ("bogus",), r"--kinds: \['bogus'\] not among"),
    ("repeats", -1, "--repeats=-1 must be an integer >= 0"),
    ("mem_fraction", 1.5, "--mem_fraction=1.5 must be in"),
    ("deadline_minutes", -1.0, "--deadline_minutes=-1.0 must be >= 0"),
  ],
)
def test_settings_refuse_bad_flags_before_any_process(field, value, match):
  with pytest.raises(ValueError, match=match):
    report.Settings(**{field: value}).check()


def test_settings_parse_lengths_and_memory_csvs_are_checked(tmp_path):
  assert report.Settings(seq_lengths=("512", "1024")).check().seq_lengths == (512, 1024)
  (tmp_path / "header.csv").write_text("model,window\n")
  with pytest.raises(ValueError, match="is not a memory.csv of profile_memory.py: no column"):
    tables.read_csv(str(tmp_path / "header.csv"))
  (tmp_path / "binary.csv").write_bytes(b"\xff\xfe\x00\x90")
  with pytest.raises(ValueError, match="not UTF-8 text"):
    tables.read_csv(str(tmp_path / "binary.csv"))
