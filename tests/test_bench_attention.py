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
  assert "## Summary" in text and "auto rules: none read from this run (no cuDNN row" in text
  # Per (n, w): the core rows, then the second pallas tile setting, then FlexAttention (it runs
  # first, measure.jobs_in_order, and is listed last).
  assert [(r["w"], r["impl"]) for r in rows] == [
    (w, impl)
    for w in (32,)
    for impl in ("cudnn", "fa3", "mosaic", "pallas", "chunked", "reference", "pallas", "flex")
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
  _, rows = _run(
    tmp_path, "--check_only", "--impls=chunked", "--windows=8", "--chunked_blocks=64,16"
  )
  assert [r["tiles"] for r in rows] == ["C=64", "C=16"]  # every tile setting is checked
  for r in rows:
    assert r["ok"] and r["fwd_ms"] is None and "fwd_tflops" not in r
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
    ("--kv_heads=3", r"^--kv_heads=3 must divide --heads=2\.$"),
    ("--kv_heads=0", r"^--kv_heads=0 must be an integer >= 1\.$"),
    ("--head_dim=64,x", r"^--head_dim takes integers, got '64,x'\.$"),
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


def test_packed_documents_give_every_row_segment_ids(tmp_path):
  """--document_length: the rows and their reference see documents of that length (which change
  the answer at these shapes); an implementation without segment ids says so."""
  out = str(tmp_path / "docs.md")
  s = measure.Settings(
    lengths=[64],
    windows=[24],
    impls=["cudnn", "chunked", "reference"],
    heads=2,
    head_dim=8,
    dtype="float32",
    document_length=20,
    repeats=1,
    warmup=1,
    out=out,
  )
  rows = report.run(s, command="python bench_attention.py --document_length=20")
  assert [(r["impl"], r.get("ok")) for r in rows] == [
    ("cudnn", None),
    ("chunked", True),
    ("reference", True),
  ]
  assert rows[0]["note"] == "skipped: cudnn takes no segment ids (--document_length)"
  text = open(out).read()
  assert "Packed documents of 20 tokens" in text and "auto rules: none read" in text
  assert measure.document_ids(s, 64)[0, [0, 19, 20, 63]].tolist() == [0, 0, 1, 3]
  q, k, v, dout = measure._inputs(s, 64, 24, 8, 2)[0]
  packed = check.reference_f32(q, k, v, dout, 24, segment_ids=measure.document_ids(s, 64))
  assert not jnp.allclose(packed[0], check.reference_f32(q, k, v, dout, 24)[0])
  with pytest.raises(ValueError, match="--document_length"):
    measure.Settings(lengths=[64], windows=[8], document_length=-3, out=out)


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
    "- n=64, w=8: best pallas (pallas tiles) fwd+bwd at 2.00× cuDNN's speed (meets ≥ 1.3×), "
    "forward 1.00× (meets ≥ 1×); chunked fwd+bwd 2.00× cuDNN's time (meets ≤ 3×); every row "
    "that ran is within tolerance."
  )
  assert "at 0.80× cuDNN's speed (misses ≥ 1.3×)" in lines[1] and "WRONG: pallas 1x1" in lines[1]
  assert "AUTO_MAX_WINDOW = 8 " in lines[2] and "AUTO_TRAIN_MAX_WINDOW = 8 " in lines[2]
  rows[1]["fwd_ms"] = 1.5  # faster fwd+bwd, slower forward: cuDNN unless differentiated
  line = report.summary_lines(rows, [64], [8, 512])[2]
  assert "AUTO_MAX_WINDOW = 0 " in line and "AUTO_TRAIN_MAX_WINDOW = 8 " in line


def test_summary_puts_mosaic_against_cudnn_fa3_and_its_targets():
  def row(w, impl, ms, fwd_ms):
    return dict(n=64, w=w, impl=impl, variant="default", tiles=impl, fwd_ms=fwd_ms, fwd_bwd_ms=ms)

  rows = [row(8, "cudnn", 2.0, 1.0), row(8, "fa3", 1.5, 0.8), row(8, "mosaic", 1.6, 1.25)]
  rows[-1]["ok"] = True
  lines = report.summary_lines(rows, [64], [8])
  assert lines[0].startswith(
    "- n=64, w=8: best mosaic (mosaic) fwd+bwd at 1.25× cuDNN's speed (misses ≥ 1.3×), forward "
    "0.80× (misses ≥ 1×), 0.94× FA3's fwd+bwd speed;"
  )
  assert lines[1] == (
    "- mosaic: the largest w up to which its default tiles' fwd+bwd beat cuDNN's at every n "
    "measured: 8 (mosaic_attention.AUTO_TRAIN_MAX_WINDOW: cudnn_mosaic); FA3's: 0 "
    "(AUTO_TRAIN_OVER_FA3_MAX_WINDOW: fa3_mosaic); its forward and fwd+bwd both cuDNN's: 0 "
    "(AUTO_MAX_WINDOW: mosaic)."
  )
  rows[1]["fwd_bwd_ms"] = 1.7  # FA3 slower than mosaic's fwd+bwd
  assert "FA3's: 8 " in report.summary_lines(rows, [64], [8])[1]


def test_roofline_on_a_hand_computed_case():
  # n=4, w=2: P = 7 pairs; B=1, N=2, K=1, H=8, bf16. fwd FLOPs 4·7·8·2 = 448; bytes: q, o
  # 1·4·2·8·2 = 128 each, k, v 64 each: 384 forward, 768 with dO, dq, dk, dv.
  assert check.band_flops(4, 2, 1, 2, 8) == 448
  got = check.roofline(4, 2, 1, 2, 1, 8, 2, flop_s=448e3, byte_s=384e3)
  assert got == {
    "fwd_roofline_ms": 1.0,
    "fwd_bytes_ms": 1.0,
    "fwd_bwd_roofline_ms": 3.5,
    "fwd_bwd_bytes_ms": 2.0,
  }


@pytest.mark.slow
def test_rows_carry_the_roofline_columns_when_the_rates_are_known(tmp_path, monkeypatch):
  monkeypatch.setattr(measure, "machine_rates", lambda s: (1e12, 1e12))
  text, rows = _run(tmp_path, "--impls=chunked", "--windows=8")
  # n=64, w=8: P = 64·8 − 28 = 484; B=1, N=2, H=16: 4·484·16·2 = 61952 FLOPs = 6.1952e-5 ms.
  assert rows[0]["fwd_roofline_ms"] == pytest.approx(6.1952e-5)
  assert rows[0]["fwd_x_roofline"] == pytest.approx(rows[0]["fwd_ms"] / 6.1952e-5)
  assert rows[0]["fwd_bwd_bytes_ms"] == pytest.approx(1e3 * 8 * 64 * 2 * 16 * 4 / 1e12)
  assert "fwd+bwd ÷ roofline" in text
  csv_text = (tmp_path / "bench.csv").read_text().splitlines()
  assert csv_text[0].startswith("H,K,n,w,impl") and "fwd_bwd_x_roofline" in csv_text[0]
  assert csv_text[1].startswith("16,2,64,8,chunked,default")


def test_fa3_without_its_package_is_a_skipped_row(tmp_path):
  if attention.lookup("fa3").check(*(jnp.zeros((1, 8, 2, 16)),) * 3, 8) is None:
    pytest.skip("fa3 runs here")
  text, rows = _run(tmp_path, "--impls=fa3", "--windows=8")
  assert rows[0]["note"].startswith("skipped: ") and "fwd_ms" not in rows[0]
  assert "| 8 | fa3 | default | skipped: " in text


@pytest.mark.slow
def test_head_dim_and_gqa_grid(tmp_path):
  _, rows = _run(
    tmp_path, "--impls=chunked", "--windows=8", "--head_dim=8,16", "--kv_heads=2,1", "--repeats=1"
  )
  assert [(r["H"], r["K"]) for r in rows] == [(8, 2), (8, 1), (16, 2), (16, 1)]
  assert all(r["ok"] for r in rows)


def test_jobs_run_flex_first_over_the_head_dim_and_gqa_grid():
  s = measure.Settings(
    lengths=[64],
    windows=[8],
    impls=["cudnn", "flex"],
    head_dim=[8, 16],
    kv_heads=[2, 1],
    heads=2,
    out="/tmp/unused.md",
  )
  jobs = measure.jobs_in_order(s)
  assert [(h, k, impls[0][0]) for h, k, _, _, impls in jobs] == [
    (8, 2, "flex"), (8, 1, "flex"), (16, 2, "flex"), (16, 1, "flex"),
    (8, 2, "cudnn"), (8, 1, "cudnn"), (16, 2, "cudnn"), (16, 1, "cudnn"),
  ]  # fmt: skip


@pytest.mark.slow
def test_gqa_tail_reference_is_the_dense_reference_on_its_rows():
  n, w, t0 = 24, 5, 17
  keys = jax.random.split(jax.random.PRNGKey(4), 4)
  q, dout = (jax.random.normal(key, (1, n, 4, 8)) for key in keys[:2])
  k, v = (jax.random.normal(key, (1, n, 2, 8)) for key in keys[2:])
  dense = check.reference_f32(q, k, v, dout, w)
  tail = check.reference_f32(q, k, v, dout, w, t0, t0 - w + 1)
  fn = lambda q, k, v: attention.sliding_window_attention(q, k, v, w, implementation="reference")
  out, vjp = jax.vjp(fn, q, k, v)
  for got, want in zip(dense, (out,) + vjp(dout)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)
  for got, want in zip(tail, dense):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want[:, t0:]), atol=1e-5, rtol=1e-5)
