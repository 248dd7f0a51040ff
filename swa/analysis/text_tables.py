"""The text report's markdown tables (swa/analysis/text.py writes them): bits/byte per window,
where loss by position stops improving, bits/byte against the inference window, and streams."""

from swa import reports
from swa.analysis.text import window_key


def _f(x, digits=4):
  return "" if x is None else f"{x:.{digits}f}"


def format_window_table(summary_rows):
  body = [
    (
      r["corpus"],
      r["model"],
      "full" if r["reach"] is None else r["reach"],
      r["seeds"],
      _f(r["mean_bits_per_byte"]),
      f"[{_f(r['low'])}, {_f(r['high'])}]" if r["low"] is not None else "(1 seed)",
      r["per_seed"],
    )
    for r in summary_rows
  ]
  columns = ["corpus", "model", "reach", "seeds", "bits/byte", "95 % t-interval", "per seed"]
  return reports.markdown_table(columns, body)


def format_plateau_table(plateaus):
  body = []
  for p in plateaus:
    reach = p["reach"]
    at = p["stops_improving_at"]
    body.append(
      (
        p["corpus"],
        p["model"],
        "full" if reach is None else reach,
        at,
        "" if reach is None else f"{at / reach:.2f}",
        _f(p["final_bits_per_byte"]),
      )
    )
  columns = ["corpus", "model", "reach L(w-1)", "stops improving at", "/ reach"]
  columns += ["last octave bits/byte"]
  return reports.markdown_table(columns, body)


def format_shrink_table(rows):
  windows = sorted({r.eval_window for r in rows}, key=window_key)
  by_run = {}
  for r in rows:
    by_run.setdefault((r.corpus, r.model, r.run), {})[r.eval_window] = r.bits_per_byte
  body = [
    (corpus, model, run, *[_f(v.get(w)) for w in windows])
    for (corpus, model, run), v in by_run.items()
  ]
  return reports.markdown_table(["corpus", "trained", "run", *[f"w={w}" for w in windows]], body)


def format_stream_table(summary_rows):
  body = [
    (
      s["name"],
      f"{s['tokens']:,}",
      _f(s["kjv_bits_per_byte"]),
      _f(s["stdlib_bits_per_byte"]),
      reports.format_mib(s["cache_bytes"]),
      _mib_range(s["device_bytes_min"], s["device_bytes_max"]),
      "" if s["tokens_per_second"] is None else f"{s['tokens_per_second']:,.0f}",
    )
    for s in summary_rows
  ]
  columns = ["stream", "tokens", "kjv part bits/byte", "stdlib part", "cache MiB"]
  columns += ["device MiB in use (min-max)", "tokens/s"]
  return reports.markdown_table(columns, body)


def _mib_range(low, high):
  if low is None:
    return "n/a"
  return f"{reports.format_mib(low)}-{reports.format_mib(high)}"
