"""bench_attention.py and swa/bench/ on CPU at tiny sizes: every row is checked and written, a
failing row is recorded without stopping the run, --check_only exits 1 on a wrong row, the float32
reference's tail slice is exact, and the library runs from plain arguments."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags

import bench_attention
from swa import attention
from swa.bench import check, measure, report

TINY = [
  "--lengths=64",
  "--windows=32",
  "--heads=2",
  "--head_dim=16",
  "--dtype=float32",
  "--repeats=1",
  "--calls_per_sample=2",
  "--warmup=1",
  "--pallas_blocks=default,32x16/16x16/16x32/w4s3/w4s2",
]


def _run(tmp_path, *extra):
  fv = flags.FlagValues()
  bench_attention.define_flags(fv)
  out = tmp_path / "bench.md"
  bench_attention.main(["bench_attention.py", *TINY, f"--out={out}", *extra], fv)
  return out.read_text(), json.loads((tmp_path / "bench.json").read_text())["rows"]


def _cells(text):
  """{(w, impl, tiles): cells} of the markdown tables."""
  rows = {}
  for line in text.splitlines():
    if line.startswith("| ") and line[2].isdigit():
      cells = [c.strip() for c in line.strip("|").split("|")]
      rows[(int(cells[0]), cells[1], cells[2])] = cells[3:]
  return rows


@pytest.mark.slow
def test_cpu_run_checks_and_writes_every_row(tmp_path):
  text, rows = _run(tmp_path)
  assert "Command: `python bench_attention.py --lengths=64" in text
  assert "a sample is 2 calls dispatched back to back" in text
  assert "## Summary" in text and "AUTO_MAX_WINDOW = 0" in text
  # Per (n, w): the core rows, then the second pallas tile setting, then FlexAttention.
  assert [(r["w"], r["impl"]) for r in rows] == [
    (w, impl)
    for w in (32,)
    for impl in ("cudnn", "pallas", "chunked", "reference", "pallas", "flex")
  ]
  for r in rows:
    if r["impl"] in ("pallas", "chunked", "reference"):
      assert r["ok"] and r["out_rel_err"] < 1e-5 and r["grad_rel_err"] < 1e-5, r
      assert len(r["grad_rel_errs"]) == 3 and r["fwd_ms"] > 0 and r["fwd_bwd_tflops"] > 0
    else:
      assert r["note"].startswith("skipped"), r
  cells = _cells(text)
  assert cells[(32, "pallas", "32x16/16x16/16x32/w4s3/w4s2")][-1] == "ok"
  assert cells[(32, "chunked", "C=64")][-1] == "ok"


def test_a_failing_row_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
  real = attention.sliding_window_attention

  def failing(*args, implementation="auto", **kwargs):
    if implementation == "chunked":
      raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")
    return real(*args, implementation=implementation, **kwargs)

  monkeypatch.setattr(attention, "sliding_window_attention", failing)
  text, rows = _run(tmp_path, "--impls=chunked,reference", "--windows=8")
  assert [r.get("fwd_note") for r in rows] == ["OOM", None]
  assert rows[1]["ok"]
  assert _cells(text)[(8, "chunked", "C=64")][0] == "OOM"


@pytest.mark.slow
def test_check_only_times_nothing_and_exits_1_on_a_wrong_row(tmp_path, monkeypatch):
  _, rows = _run(tmp_path, "--check_only", "--impls=chunked", "--windows=8")
  assert rows[0]["ok"] and rows[0]["fwd_ms"] is None and "fwd_tflops" not in rows[0]
  monkeypatch.setitem(check.TOLERANCE, "float32", (0.0, 0.0))
  with pytest.raises(SystemExit) as stop:
    _run(tmp_path, "--check_only", "--impls=chunked", "--windows=8")
  assert stop.value.code == 1


def test_deadline_skips_rows_and_bad_flags_raise(tmp_path):
  _, rows = _run(tmp_path, "--impls=chunked", "--windows=8", "--deadline_minutes=1e-9")
  assert rows[0]["note"] == "skipped: past --deadline_minutes"
  with pytest.raises(ValueError, match="--impls: unknown"):
    _run(tmp_path, "--impls=chunked,fast")
  with pytest.raises(ValueError, match="pallas block sizes look like"):
    _run(tmp_path, "--pallas_blocks=big")


@pytest.mark.parametrize(
  "flag, match",
  [
    ("--windows=0", r"^--windows=0 must be an integer >= 1\.$"),
    ("--windows=-1", r"^--windows=-1 must be"),
    ("--lengths=0", r"^--lengths=0 must be"),
    ("--lengths=-1", r"^--lengths=-1 must be"),
    ("--lengths=1k", r"^--lengths takes integers, got '1k'\.$"),
    ("--windows=abc", r"^--windows takes integers"),
    ("--heads=0", r"^--heads=0 must be an integer >= 1\.$"),
    ("--head_dim=0", r"^--head_dim=0 must be"),
    ("--batch=0", r"^--batch=0 must be"),
    ("--pallas_blocks=48x48/48x48/48x48/w1s1/w1s1", r"^pallas block sizes must be powers of two"),
    ("--pallas_blocks=big", r"^pallas block sizes look like"),
    ("--chunked_blocks=0", r"^--chunked_blocks=0 must be"),
  ],
)
def test_bad_flags_raise_one_line_before_any_work(tmp_path, monkeypatch, flag, match):
  monkeypatch.setattr(report, "run", lambda *a, **k: pytest.fail("the run started"))
  with pytest.raises(ValueError, match=match):
    _run(tmp_path, "--check_only", flag)


@pytest.mark.parametrize("failure", ["crash", "oom", "no_reference"])
def test_check_only_exits_1_when_a_row_crashed_or_went_unchecked(tmp_path, monkeypatch, failure):
  if failure == "no_reference":
    broken = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("reference broke"))
    monkeypatch.setattr(check, "reference_f32", broken)
  else:
    real = attention.sliding_window_attention
    error = "RESOURCE_EXHAUSTED: Out of memory" if failure == "oom" else "tiles refused"

    def failing(*args, implementation="auto", **kwargs):
      if implementation == "chunked":
        raise RuntimeError(error)
      return real(*args, implementation=implementation, **kwargs)

    monkeypatch.setattr(attention, "sliding_window_attention", failing)
  with pytest.raises(SystemExit) as stop:
    _run(tmp_path, "--check_only", "--impls=chunked", "--windows=8")
  assert stop.value.code == 1
  text = (tmp_path / "bench.md").read_text()
  assert "FAILED: chunked default: " in text and "within tolerance" not in text


def test_problems_lists_wrong_crashed_and_unchecked_rows_only():
  base = dict(n=64, w=8, variant="default", reference="dense float32")
  rows = [
    dict(base, impl="chunked", ok=True),
    dict(base, impl="cudnn", note="skipped: no cuDNN on cpu"),
    dict(base, impl="pallas", ok=False),
    dict(base, impl="flex", fwd_note="failed: ValueError: bad"),
    dict(base, impl="reference", reference="none (dense float32 reference: OOM)"),
  ]
  assert report.problems(rows) == [
    "pallas default: WRONG (outside the tolerance)",
    "flex default: fwd failed: ValueError: bad",
    "reference default: unchecked (reference: none (dense float32 reference: OOM))",
  ]


def test_tail_reference_is_the_dense_reference_on_its_rows():
  n, w, t0 = 40, 7, 29
  q, k, v, dout = (
    jax.random.normal(key, (1, n, 2, 8)) for key in jax.random.split(jax.random.PRNGKey(3), 4)
  )
  dense = check.reference_f32(q, k, v, dout, w)
  tail = check.reference_f32(q, k, v, dout, w, t0, t0 - w + 1)
  for got, want in zip(tail, dense):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want[:, t0:]), atol=1e-5, rtol=1e-5)


def test_band_pairs_counts_the_mask():
  for n, w in ((40, 7), (16, 16), (10, 30), (12, None)):
    mask = attention.create_sliding_window_mask(n, w)
    assert check.band_pairs(n, w) == int(jnp.sum(mask))


def test_the_library_runs_from_plain_arguments(tmp_path):
  out = str(tmp_path / "lib.md")
  s = measure.Settings(
    lengths=[64],
    windows=[8],
    impls=["chunked"],
    heads=1,
    head_dim=8,
    dtype="float32",
    repeats=1,
    warmup=1,
    out=out,
  )
  rows = report.run(s, command="python bench_attention.py --x")
  assert [(r["impl"], r["ok"]) for r in rows] == [("chunked", True)]
  text = open(out).read()
  assert "Command: `python bench_attention.py --x`" in text and "| 8 | chunked | C=" in text
  with pytest.raises(ValueError, match="--impls: unknown"):
    measure.Settings(lengths=[64], windows=[8], impls=["fast"], out=out)


def test_summary_targets_and_auto_rule():
  def row(w, impl, ms, variant="default", ok=True, fwd_ms=1.0):
    return dict(
      n=64,
      w=w,
      impl=impl,
      variant=variant,
      tiles=f"{impl} tiles",
      fwd_ms=fwd_ms,
      fwd_bwd_ms=ms,
      ok=ok,
    )

  rows = [
    row(8, "cudnn", 2.0),
    row(8, "pallas", 1.0),
    row(8, "chunked", 4.0),
    row(512, "cudnn", 2.0),
    row(512, "pallas", 2.5),
    row(512, "pallas", 1.0, "1x1", ok=False),
  ]
  lines = report.summary_lines(rows, [64], [8, 512])
  assert lines[0] == (
    "- n=64, w=8: best pallas (pallas tiles) fwd+bwd at 2.00× cuDNN's speed (meets ≥ 1.3×); "
    "chunked fwd+bwd 2.00× cuDNN's time (meets ≤ 3×); every row that ran is within tolerance."
  )
  assert "at 0.80× cuDNN's speed (misses ≥ 1.3×)" in lines[1] and "WRONG: pallas 1x1" in lines[1]
  assert "AUTO_MAX_WINDOW = 8 " in lines[2] and "AUTO_TRAIN_MAX_WINDOW = 8 " in lines[2]
  rows[1]["fwd_ms"] = 1.5  # faster fwd+bwd, slower forward: cuDNN unless differentiated
  line = report.summary_lines(rows, [64], [8, 512])[2]
  assert "AUTO_MAX_WINDOW = 0 " in line and "AUTO_TRAIN_MAX_WINDOW = 8 " in line
