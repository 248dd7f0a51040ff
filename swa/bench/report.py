"""The attention benchmark's report (markdown tables, summary, .json) and the whole run (`run`)."""

import json
import os

import jax

from swa import reports
from swa.bench import check as check_lib
from swa.bench import measure
from swa.bench.measure import fmt

COLUMNS = [
  "w",
  "impl",
  "tiles",
  "fwd ms",
  "fwd TFLOP/s",
  "fwd+bwd ms",
  "fwd+bwd TFLOP/s",
  "fwd ÷ cuDNN",
  "fwd+bwd ÷ cuDNN",
  "fwd roofline ms",
  "fwd ÷ roofline",
  "fwd bytes ms",
  "fwd+bwd roofline ms",
  "fwd+bwd ÷ roofline",
  "fwd+bwd bytes ms",
  "out rel err",
  "grad rel err",
  "check",
]


def _cell(row, key, spec):
  return row.get(f"{key}_note") or fmt(row.get(f"{key}_ms"), spec)


def _ratio(row, cudnn, key):
  have = cudnn and row.get(f"{key}_ms") and cudnn.get(f"{key}_ms")
  return row[f"{key}_ms"] / cudnn[f"{key}_ms"] if have else None


def _peer(rows, n, w, impl):
  """The row of a one-variant implementation (cudnn, fa3) at (n, w) with a fwd+bwd time, or None."""
  at = (r for r in rows if (r["n"], r["w"], r["impl"]) == (n, w, impl))
  return next((r for r in at if r.get("fwd_bwd_ms")), None)


def _fastest(rows, n, w, impl="pallas", default_only=False):
  """The fastest correct row of a kernel implementation (pallas, mosaic) at (n, w), and cuDNN's;
  (None, cudnn) if none."""
  at = [r for r in rows if r["n"] == n and r["w"] == w]
  kernel = [
    r
    for r in at
    if r["impl"] == impl
    and r.get("fwd_bwd_ms")
    and r.get("ok")
    and (r["variant"] == "default" or not default_only)
  ]
  return min(kernel, key=lambda r: r["fwd_bwd_ms"], default=None), _peer(rows, n, w, "cudnn")


def _wins(kernel, cudnn):
  """Whether the kernel's row is at least as fast as cuDNN's, forward and fwd+bwd."""
  keys = ("fwd_ms", "fwd_bwd_ms")
  return bool(
    kernel and cudnn and all(kernel.get(k) and cudnn.get(k) and kernel[k] <= cudnn[k] for k in keys)
  )


def _kernel_parts(rows, n, w, impl):
  """The summary's words on one kernel implementation at (n, w): its best fwd+bwd and forward
  speed against cuDNN's and the issue's targets (fwd+bwd >= 1.3x at w <= 512, else >= 1.0x;
  forward >= 1.0x), and against FA3's fwd+bwd where FA3 ran."""
  best, cudnn = _fastest(rows, n, w, impl)
  if not (best and cudnn):
    return []
  speed, goal = cudnn["fwd_bwd_ms"] / best["fwd_bwd_ms"], 1.3 if w <= 512 else 1.0
  fwd = cudnn["fwd_ms"] / best["fwd_ms"] if best.get("fwd_ms") and cudnn.get("fwd_ms") else None
  words = (
    f"best {impl} ({best['tiles']}) fwd+bwd at {speed:.2f}× cuDNN's speed "
    f"({'meets' if speed >= goal else 'misses'} ≥ {goal:g}×)"
  )
  if fwd is not None:
    words += f", forward {fwd:.2f}× ({'meets' if fwd >= 1 else 'misses'} ≥ 1×)"
  fa3 = _peer(rows, n, w, "fa3")
  if fa3 and impl == "mosaic":
    words += f", {fa3['fwd_bwd_ms'] / best['fwd_bwd_ms']:.2f}× FA3's fwd+bwd speed"
  return [words]


def problems(rows):
  """'impl variant: why' for every row that ran and is not a pass: wrong (ok False), crashed or
  out of memory (a "<key>_note"), or unchecked (its reference failed). Skipped rows are not here.
  """
  found = []
  for r in rows:
    if "note" in r:
      continue
    notes = [f"{key[: -len('_note')]} {value}" for key, value in r.items() if key.endswith("_note")]
    if r.get("ok") is False:
      why = "WRONG (outside the tolerance)"
    elif notes:
      why = "; ".join(notes)
    elif r.get("ok") is not True:
      why = f"unchecked (reference: {r.get('reference')})"
    else:
      continue
    found.append(f"{r['impl']} {r['variant']}: {why}")
  return found


def summary_lines(rows, lengths, windows):
  """Per (n, w): targets met or missed; then the auto rule the run supports.

  Args:
    rows: the run's row dicts (swa/bench/measure.py).
    lengths: the sequence lengths n of the run.
    windows: the windows w of the run.

  Returns:
    list of str, markdown list items.
  """
  lines = []
  for n in lengths:
    for w in windows:
      at = [r for r in rows if r["n"] == n and r["w"] == w]
      wrong = [f"{r['impl']} {r['variant']}" for r in at if r.get("ok") is False]
      crashed = [p for p in problems(at) if "WRONG" not in p]
      _, cudnn = _fastest(rows, n, w)
      chunked = next((r for r in at if r["impl"] == "chunked" and r.get("fwd_bwd_ms")), None)
      parts = _kernel_parts(rows, n, w, "mosaic") + _kernel_parts(rows, n, w, "pallas")
      if chunked and cudnn:
        ratio = chunked["fwd_bwd_ms"] / cudnn["fwd_bwd_ms"]
        parts.append(
          f"chunked fwd+bwd {ratio:.2f}× cuDNN's time ({'meets' if ratio <= 3 else 'misses'} ≤ 3×)"
        )
      if wrong:
        parts.append(f"WRONG: {', '.join(wrong)}")
      if crashed:
        parts.append(f"FAILED: {', '.join(crashed)}")
      if not wrong and not crashed:
        parts.append("every row that ran is within tolerance")
      lines.append(f"- n={n}, w={w}: " + "; ".join(parts) + ".")

  def largest_window(wins, impl="pallas", against="cudnn"):
    """The largest w up to which impl (default tiles) wins against `against`'s row (cudnn, fa3)
    at every n, by `wins`."""

    pair = lambda n, w: (_fastest(rows, n, w, impl, True)[0], _peer(rows, n, w, against))
    best = 0
    for w in sorted(windows):
      if not all(wins(*pair(n, w)) for n in lengths):
        break
      best = w
    return best

  if not any(r["impl"] == "cudnn" and r.get("fwd_bwd_ms") for r in rows):
    # no yardstick (off a GPU, --check_only, packed documents): no rule to read
    lines.append("- auto rules: none read from this run (no cuDNN row was timed).")
    return lines
  train_wins = lambda p, c: bool(p and c and p["fwd_bwd_ms"] <= c["fwd_bwd_ms"])
  if any(r["impl"] == "mosaic" and r.get("fwd_bwd_ms") for r in rows):
    lines.append(
      "- mosaic: the largest w up to which its default tiles' fwd+bwd beat cuDNN's at every n "
      f"measured: {largest_window(train_wins, 'mosaic')} (mosaic_attention.AUTO_TRAIN_MAX_WINDOW:"
      " cudnn_mosaic); FA3's: "
      f"{largest_window(train_wins, 'mosaic', 'fa3')} (AUTO_TRAIN_OVER_FA3_MAX_WINDOW: "
      "fa3_mosaic); its forward and fwd+bwd both cuDNN's: "
      f"{largest_window(_wins, 'mosaic')} (AUTO_MAX_WINDOW: mosaic)."
    )
  lines.append(
    f"- auto rule this run supports: pallas_attention.AUTO_MAX_WINDOW = "
    f"{largest_window(_wins)} (the largest w up to which pallas with its default tiles beat "
    "cuDNN in the forward and in fwd+bwd at every n measured; 0 = keep cuDNN) and "
    f"AUTO_TRAIN_MAX_WINDOW = {largest_window(train_wins)} (the same for fwd+bwd alone: "
    "cudnn_pallas, cuDNN's forward where a call is not differentiated)."
  )
  return lines


def _table_row(r, cudnn):
  """The cells of one row; cudnn is cuDNN's row at the same (n, w), or None."""
  if "note" in r:
    return [r["w"], r["impl"], r["variant"], r["note"]] + ["—"] * (len(COLUMNS) - 4)
  check = "—" if "ok" not in r else ("ok" if r["ok"] else "**WRONG**")
  return [
    r["w"],
    r["impl"],
    r.get("tiles", r["variant"]),
    _cell(r, "fwd", ".3f"),
    fmt(r.get("fwd_tflops"), ".3g"),
    _cell(r, "fwd_bwd", ".3f"),
    fmt(r.get("fwd_bwd_tflops"), ".3g"),
    fmt(_ratio(r, cudnn, "fwd"), ".2f"),
    fmt(_ratio(r, cudnn, "fwd_bwd"), ".2f"),
    fmt(r.get("fwd_roofline_ms"), ".3f"),
    fmt(r.get("fwd_x_roofline"), ".2f"),
    fmt(r.get("fwd_bytes_ms"), ".3f"),
    fmt(r.get("fwd_bwd_roofline_ms"), ".3f"),
    fmt(r.get("fwd_bwd_x_roofline"), ".2f"),
    fmt(r.get("fwd_bwd_bytes_ms"), ".3f"),
    fmt(r.get("out_rel_err"), ".2e"),
    fmt(r.get("grad_rel_err"), ".2e"),
    check,
  ]


# The CSV beside the report: one line per row (its times, ratios and roofline columns).
CSV_FIELDS = [
  "H",
  "K",
  "n",
  "w",
  "impl",
  "variant",
  "tiles",
  "note",
  "fwd_ms",
  "fwd_tflops",
  "fwd_bwd_ms",
  "fwd_bwd_tflops",
  "fwd_vs_cudnn",
  "fwd_bwd_vs_cudnn",
  "fwd_roofline_ms",
  "fwd_x_roofline",
  "fwd_bytes_ms",
  "fwd_bwd_roofline_ms",
  "fwd_bwd_x_roofline",
  "fwd_bwd_bytes_ms",
  "out_rel_err",
  "grad_rel_err",
  "ok",
]


def _shape(r):
  """A row's (head dim, key/value heads): rows from before the grid had neither."""
  return r.get("H"), r.get("K")


def _cudnn_row(rows, r):
  """cuDNN's row at r's shape and (n, w), or None."""
  return next(
    (
      c
      for c in rows
      if c["impl"] == "cudnn" and (c["n"], c["w"], _shape(c)) == (r["n"], r["w"], _shape(r))
    ),
    None,
  )


def write_report(path, header, rows, lengths, windows):
  """Writes the markdown report, its .json (header and rows) and .csv; returns the markdown.

  The summary covers the first shape (head dim, key/value heads) of the rows only.

  Args:
    path: the markdown file; the .json and .csv go beside it (same name).
    header: the provenance lines (reports.header_lines).
    rows: the row dicts, sorted by (n, w).
    lengths: the run's sequence lengths (for the summary).
    windows: the run's windows (for the summary).
  """
  text = reports.markdown_header("Sliding-window attention benchmark", header)
  shapes = list(dict.fromkeys(_shape(r) for r in rows))
  for shape in shapes:
    for n in sorted({r["n"] for r in rows if _shape(r) == shape}):
      table = [
        _table_row(r, _cudnn_row(rows, r)) for r in rows if (_shape(r), r["n"]) == (shape, n)
      ]
      title = (
        f"n = {n}" if shape == (None, None) else f"n = {n}, H = D = {shape[0]}, K = {shape[1]}"
      )
      align = "rll" + "r" * (len(COLUMNS) - 3)
      text += f"## {title}\n\n" + reports.markdown_table(COLUMNS, table, align=align) + "\n"
  first = [r for r in rows if shapes and _shape(r) == shapes[0]]
  text += "## Summary\n\n" + "\n".join(summary_lines(first, lengths, windows)) + "\n"
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    f.write(text)
  with open(os.path.splitext(path)[0] + ".json", "w") as f:
    json.dump(dict(header=header, rows=rows), f, indent=1)
  ratios = [
    dict(r, fwd_vs_cudnn=_ratio(r, c, "fwd"), fwd_bwd_vs_cudnn=_ratio(r, c, "fwd_bwd"))
    for r, c in ((r, _cudnn_row(rows, r)) for r in rows)
  ]
  reports.write_csv(os.path.splitext(path)[0] + ".csv", ratios, CSV_FIELDS)
  return text


def header(s, command, flop_s=None, byte_s=None):
  """The report's provenance lines: command, device, date, shapes, timing, FLOPs, check, card."""
  rates = (
    "Card: not measured (check_only or not a GPU)."
    if flop_s is None
    else f"Card: {flop_s / 1e12:.0f} TFLOP/s (8192³ bf16 matmul), {byte_s / 1e12:.2f} TB/s "
    "(1 GiB copy, read + write), measured at the start of this run."
  )
  return reports.header_lines(
    command,
    extra=[
      f"Shapes: B={s.batch}, N={s.heads} query heads, K={'/'.join(map(str, s.kv_heads))} "
      f"key/value heads, H=D={'/'.join(map(str, s.head_dim))}, {s.dtype}. "
      + (
        f"Packed documents of {s.document_length} tokens (segment ids; FLOPs and roofline "
        "below still count the window's band). "
        if s.document_length
        else ""
      )
      + (
        "Check only: one call each, nothing timed."
        if s.check_only
        else f"Times: per call, the median of {s.repeats} samples after {s.warmup} untimed "
        f"(compiling) calls; a sample is {s.calls_per_sample} calls dispatched back to back and "
        "ended by one block_until_ready (torch: between two CUDA events), inputs alternating "
        f"between {measure.INPUT_SETS} random sets; fwd+bwd = grads of sum(out · dout) w.r.t. "
        "q, k, v."
      ),
      "TFLOP/s: band FLOPs (fwd 2·P·N·(H + D) = 4·n·w_eff·H per head, P = query-key pairs in "
      f"the window, w_eff = P / n; fwd+bwd {check_lib.FWD_BWD_FACTOR:g}× that: the backward's "
      "five band matmuls against the forward's two) over the time. ÷ cuDNN: time ratio to cuDNN "
      "in this run (< 1 = faster).",
      "Roofline: roofline ms = those band FLOPs at the card's matmul rate (below); ÷ roofline = "
      "the row's time over it (1 = at the matmul rate; its inverse is the fraction of the "
      "roofline reached); bytes ms = the fewest bytes (q, k, v, o; fwd+bwd also dO, dq, dk, dv; "
      "each read or written once) at the card's copy rate.",
      f"Check: out rel err = ‖out − ref‖/‖ref‖, grad rel err = max over dq, dk, dv, against the "
      f"float32 reference (matmul precision {check_lib.reference_precision()}) on the inputs "
      f"upcast; ok within {check_lib.TOLERANCE[s.dtype]} (out, grads).",
      rates,
    ],
  )


def run(s, command=None):
  """The whole benchmark: every row checked and timed, the report rewritten after each (n, w).

  FlexAttention's rows run first, then the JAX rows (measure.jobs_in_order); the card's matmul
  and copy rates are measured before them all, for the roofline columns.

  Args:
    s: a measure.Settings.
    command: the command line for the report's header (default reports.command_line()).

  Returns:
    the row dicts (also in s.out and the .json beside it); a row with "ok" False is wrong.
  """
  measure.restart_clock()
  measure.log(reports.device_description())
  rates = measure.machine_rates(s)
  head = header(s, command, *rates)
  rows, state = [], {"rates": rates if rates[0] else None}
  shapes = [(h, k) for h in s.head_dim for k in s.kv_heads]
  for H, K, n, w, jobs in measure.jobs_in_order(s):
    rows += measure.measure_config(s, n, w, jobs, state, head_dim=H, kv_heads=K)
    # Flex runs first (measure.jobs_in_order) but is listed after its (n, w)'s JAX rows.
    rows.sort(key=lambda r: (shapes.index(_shape(r)), r["n"], r["w"], r["impl"] == "flex"))
    write_report(s.out, head, rows, s.lengths, s.windows)
    jax.clear_caches()
  text = write_report(s.out, head, rows, s.lengths, s.windows)
  print(text, flush=True)
  measure.log(f"wrote {s.out} and its .json")
  return rows
