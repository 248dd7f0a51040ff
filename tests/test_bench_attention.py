"""bench_attention.py on CPU at tiny sizes: it runs, writes every row, and chunked is exact."""

import json
import math

import jax
import numpy as np

import bench_attention

LENGTHS, WINDOWS = (64, 128), (8, 32)


def table_rows(text):
  """{(n, w, impl): [cells]} from the markdown's per-n tables."""
  rows, n = {}, None
  for line in text.splitlines():
    if line.startswith("## n = "):
      n = int(line.removeprefix("## n = "))
    elif line.startswith("| ") and line[2].isdigit():
      cells = [c.strip() for c in line.strip("|").split("|")]
      rows[(n, int(cells[0]), cells[1].split(" (")[0])] = cells[2:]
  return rows


def test_cpu_smoke_run_writes_a_row_per_config(tmp_path):
  out, out_json = tmp_path / "bench.md", tmp_path / "bench.json"
  bench_attention.main([
      "--lengths", ",".join(map(str, LENGTHS)), "--windows", ",".join(map(str, WINDOWS)),
      "--heads", "2", "--head_dim", "16", "--repeats", "1", "--dtype", "float32",
      "--block_sizes", "default",       # one chunked variant: fewer compilations on CPU
      "--out", str(out), "--json", str(out_json)])
  text = out.read_text()
  assert "Command: `python bench_attention.py --lengths 64,128" in text
  assert "Roofline estimate" in text
  assert text.count("**best**") == len(LENGTHS) * len(WINDOWS)   # one best chunked per (n, w)
  rows = table_rows(text)
  for n in LENGTHS:
    for w in WINDOWS:
      for impl in ("chunked", "reference", "cudnn"):
        assert (n, w, impl) in rows, (n, w, impl)
      fwd, fwd_bwd, _, _, max_abs, rel, grad_rel = rows[(n, w, "chunked")]
      assert all(math.isfinite(float(x)) for x in (fwd, fwd_bwd, max_abs, rel, grad_rel))
      assert float(max_abs) < 1e-4 and float(rel) < 1e-4 and float(grad_rel) < 1e-4
      assert float(rows[(n, w, "reference")][0]) > 0
      if not jax.default_backend() == "gpu":
        assert rows[(n, w, "cudnn")][0].startswith("skipped")
  configs = json.loads(out_json.read_text())["configs"]
  assert len(configs) == len(LENGTHS) * len(WINDOWS)
  assert all(len(r["fwd_times_ms"]) == 1 for c in configs for r in c["rows"] if "fwd_ms" in r)


def test_tail_reference_matches_dense_reference_rows():
  n, w, t0 = 40, 7, 29          # the tail starts mid-sequence, its keys at t0 - w + 1
  q, k, v, dout = (jax.random.normal(key, (1, n, 2, 8))
                   for key in jax.random.split(jax.random.PRNGKey(3), 4))
  dense = bench_attention.reference_f32(q, k, v, dout, w)[0]
  tail = bench_attention.tail_reference_f32(q, k, v, w, t0)
  np.testing.assert_allclose(np.asarray(tail), np.asarray(dense[:, t0:]), atol=1e-5, rtol=1e-5)
