"""The text-LM report: rows, seed intervals, tables and figures of eval_text.py (no JAX here).

Four experiments, each a row type and a part of the report (`write_report`):

  1. bits/byte vs window per corpus (TextRun, one per training run, read from its eval.json):
     runs.csv, window_summary.csv (mean over seeds with a t-interval, stats.seed_interval),
     window.png.
  2. loss by token position (TextRun.loss_by_position, in log-spaced buckets): position.csv,
     position.png (log x, one line per window, seeds averaged) and where each curve stops
     improving (`stops_improving`) against the reach L * (w - 1).
  3. shrinking the window at inference (ShrinkRow): a model evaluated with other windows on the
     same validation windows: shrink.csv, shrink.png.
  4. streaming (StreamRow): the loss per segment of a long held-out stream fed through the
     rolling cache, the cache's bytes and tokens/s: stream.csv, stream_summary.csv, stream.png.

report.md holds every table under the provenance header. The JAX side (what produces rows 3 and
4) is swa/tasks/text_experiments.py.
"""

import dataclasses
import json
import math
import os
from typing import Optional

import numpy as np

from swa import reports
from swa.analysis import stats

LN2 = math.log(2.0)
# "Stops improving": the first position bucket from which no bucket is above the curve's last
# octave (positions T/2 .. T-1) by more than this many bits/byte plus two standard errors of the
# bucket's mean (eval.json's loss_sd / sqrt(positions x windows)). One byte's loss varies by ~2.1
# bits (tiny kjv models, CPU, 2026-12-03), so a one-position bucket over 256 windows has a standard
# error of ~0.13 bits: without the error term its noise would decide.
PLATEAU_TOLERANCE = 0.02
NUM_BUCKETS = 24  # log-spaced position buckets of the position figure and CSV


@dataclasses.dataclass(frozen=True)
class TextRun:
  """One training run: its eval.json and config.json, flattened."""

  run: str  # workdir name
  corpus: str
  window: str  # ModelConfig.window_label: "128", "full", "128,128,128,128,128,full"
  num_layers: int
  reach: Optional[int]  # sum over layers of (w - 1); None with a full-attention layer
  num_sinks: int
  sink_token: bool
  seed: int
  seq_len: int
  steps: int
  num_params: int
  bits_per_byte: float
  loss_sd: float  # nats, of one byte's loss over the validation windows
  eval_windows: int
  python: str
  train_sha256: str
  # The corpus as the run recorded it (eval.json's "corpus", JSON): source and each split's
  # documents, tokens and sha256; the report's header quotes it.
  corpus_record: str = dataclasses.field(default="{}", repr=False, compare=False)
  loss_by_position: tuple = dataclasses.field(default=(), repr=False, compare=False)

  @property
  def model(self) -> str:
    """The model without its seed: "w128", "full", "mix 128x5+full", "w128 + sink"."""
    parts = self.window.split(",")
    if len(set(parts)) == 1:
      name = "full" if parts[0] == "full" else f"w{parts[0]}"
    else:
      name = "mix " + "+".join(f"{w}x{n}" if n > 1 else w for w, n in _runs_of(parts))
    if self.sink_token or self.num_sinks:
      name += f" + {self.num_sinks} sink" + (" token" if self.sink_token else "")
    return name

  @property
  def window_order(self):
    """Sort key: plain windows by size, full, then the rest."""
    parts = self.window.split(",")
    plain = len(set(parts)) == 1 and not (self.sink_token or self.num_sinks)
    if plain:
      return (0, math.inf if parts[0] == "full" else int(parts[0]), self.model)
    return (1, 0, self.model)

  def to_dict(self):
    d = dataclasses.asdict(self)
    d.pop("loss_by_position")
    d["model"] = self.model
    return d


RUN_FIELDS = [f.name for f in dataclasses.fields(TextRun) if f.name != "loss_by_position"] + [
  "model"
]


def _runs_of(parts):
  out = []
  for p in parts:
    if out and out[-1][0] == p:
      out[-1][1] += 1
    else:
      out.append([p, 1])
  return out


def read_run(workdir):
  """The TextRun of a finished text workdir (eval.json); a one-line ValueError otherwise."""
  path = os.path.join(workdir, "eval.json")
  if not os.path.isfile(path):
    raise ValueError(f"{workdir} has no eval.json: the run has not finished.")
  with open(path) as f:
    e = json.load(f)
  if e.get("task") != "text":
    raise ValueError(f"{workdir} is not a text run (its eval.json has task={e.get('task')!r}).")
  return TextRun(
    run=os.path.basename(os.path.normpath(workdir)),
    corpus=e["corpus"]["corpus"],
    window=e["window"],
    num_layers=e["num_layers"],
    reach=e["receptive_reach"],
    num_sinks=e["num_sinks"],
    sink_token=e["sink_token"],
    seed=e["seed"],
    seq_len=e["seq_len"],
    steps=e["step"],
    num_params=e["num_params"],
    bits_per_byte=e["bits_per_byte"],
    loss_sd=e.get("loss_sd", 0.0),  # an eval.json from before 2026-12-03 06:20: no error term
    eval_windows=e["eval_windows"],
    python=e["corpus"]["python"],
    train_sha256=e["corpus"]["splits"]["train"]["sha256"],
    corpus_record=json.dumps(e["corpus"], sort_keys=True),
    loss_by_position=tuple(e["loss_by_position"]),
  )


def group(runs):
  """{(corpus, model): [runs sorted by seed]} in corpus then window order."""
  out = {}
  for r in sorted(runs, key=lambda r: (r.corpus, r.window_order, r.seed)):
    out.setdefault((r.corpus, r.model), []).append(r)
  return out


def window_summary(runs):
  """Per (corpus, model): seeds, mean bits/byte, its 95 % t-interval over seeds (None for one)."""
  rows = []
  for (corpus, model), group_runs in group(runs).items():
    values = [r.bits_per_byte for r in group_runs]
    interval = stats.seed_interval(values, clip=None)
    rows.append(
      dict(
        corpus=corpus,
        model=model,
        reach=group_runs[0].reach,
        seeds=len(values),
        mean_bits_per_byte=float(np.mean(values)),
        low=interval and interval["low"],
        high=interval and interval["high"],
        per_seed=" ".join(f"{v:.4f}" for v in values),
      )
    )
  return rows


def position_buckets(seq_len, num_buckets=NUM_BUCKETS):
  """Bucket edges over positions 0..seq_len-1: [0, 1, 2, ...] log-spaced, unique ints."""
  edges = np.unique(np.round(np.geomspace(1, seq_len, num_buckets + 1)).astype(int))
  return np.concatenate([[0], edges[edges < seq_len], [seq_len]])


def bucket_curve(loss_by_position, edges):
  """bits/byte averaged over each bucket [edges[i], edges[i + 1])."""
  x = np.asarray(loss_by_position, np.float64) / LN2
  return np.array([x[a:b].mean() for a, b in zip(edges[:-1], edges[1:])])


def stops_improving(curve, edges, final, stderr=0.0, tolerance=PLATEAU_TOLERANCE):
  """First position (a bucket's start) from which no bucket of the curve is above `final` (the
  mean of its last octave) by more than tolerance + 2 x its standard error (`stderr`: one per
  bucket, or a number)."""
  above = np.flatnonzero(np.asarray(curve) > final + tolerance + 2 * np.asarray(stderr))
  first = 0 if above.size == 0 else int(above[-1]) + 1
  return int(edges[min(first, len(curve) - 1)])


def position_rows(runs):
  """Per (corpus, model, bucket): mean bits/byte over seeds; plus each curve's plateau start."""
  rows, plateaus = [], []
  for (corpus, model), group_runs in group(runs).items():
    T = group_runs[0].seq_len
    edges = position_buckets(T)
    per_position = np.mean([r.loss_by_position for r in group_runs], axis=0)
    curve = bucket_curve(per_position, edges)
    final = float(per_position[T // 2 :].mean()) / LN2
    samples = np.diff(edges) * sum(r.eval_windows for r in group_runs)
    stderr = max(r.loss_sd for r in group_runs) / LN2 / np.sqrt(samples)
    for a, b, v in zip(edges[:-1], edges[1:], curve):
      rows.append(dict(corpus=corpus, model=model, first=int(a), last=int(b) - 1, bits_per_byte=v))
    plateaus.append(
      dict(
        corpus=corpus,
        model=model,
        reach=group_runs[0].reach,
        seeds=len(group_runs),
        stops_improving_at=stops_improving(curve, edges, final, stderr),
        final_bits_per_byte=final,
        curve=curve,
        edges=edges,
      )
    )
  return rows, plateaus


@dataclasses.dataclass(frozen=True)
class ShrinkRow:
  """A model evaluated at an inference window (same validation windows as its training run)."""

  run: str
  corpus: str
  model: str  # the trained model (TextRun.model)
  eval_window: str  # "64", ..., "full"
  bits_per_byte: float


@dataclasses.dataclass(frozen=True)
class StreamRow:
  """One segment of a long stream fed through the rolling cache."""

  name: str  # e.g. "kjv full @ w128 + 4 sinks"
  run: str
  corpus: str  # the model's training corpus
  cache_window: str  # window of the cache (the model's own, or the one it was given)
  sinks: int
  segment_end: int  # tokens streamed at the end of this segment
  domain: str  # the held-out stream's part this segment ends in: "kjv" | "stdlib"
  bits_per_byte: float
  cache_bytes: int
  tokens_per_second: Optional[float]
  device_bytes: Optional[int] = None  # device memory in use at the segment's end (GPU only)


def stream_summary(rows):
  """Per stream: bits/byte over its kjv part and its stdlib part (segments weighted by size)."""
  out = {}
  for r in rows:
    s = out.setdefault(
      r.name,
      dict(
        name=r.name,
        corpus=r.corpus,
        cache_window=r.cache_window,
        sinks=r.sinks,
        tokens=0,
        cache_bytes=r.cache_bytes,
        tokens_per_second=r.tokens_per_second,
        device_bytes_min=None,
        device_bytes_max=None,
        _sums={},
        _prev=0,
      ),
    )
    if r.device_bytes is not None:
      low, high = s["device_bytes_min"], s["device_bytes_max"]
      s["device_bytes_min"] = r.device_bytes if low is None else min(low, r.device_bytes)
      s["device_bytes_max"] = r.device_bytes if high is None else max(high, r.device_bytes)
    n = r.segment_end - s["_prev"]
    total, count = s["_sums"].get(r.domain, (0.0, 0))
    s["_sums"][r.domain] = (total + r.bits_per_byte * n, count + n)
    s["_prev"] = s["tokens"] = r.segment_end
  result = []
  for s in out.values():
    sums = s.pop("_sums")
    s.pop("_prev")
    for domain in ("kjv", "stdlib"):
      total, count = sums.get(domain, (0.0, 0))
      s[f"{domain}_bits_per_byte"] = total / count if count else None
    result.append(s)
  return result


# --- Tables --------------------------------------------------------------------------------------


def window_key(w):
  """Sort key of a window label: its number, "full" last."""
  return math.inf if w == "full" else int(w)


def write_report(runs, out, *, header, shrink=(), stream=(), notes=()):
  """Writes report.md and the CSVs and figures of the module docstring into `out`.

  Args:
    runs: TextRuns (experiments 1 and 2).
    out: the folder (created).
    header: provenance lines (reports.header_lines).
    shrink: ShrinkRows (experiment 3; skipped when empty).
    stream: StreamRows (experiment 4; skipped when empty).
    notes: more lines for the header (corpus fingerprints, settings).

  Returns:
    The text of report.md.
  """
  from swa.analysis.text_figures import plot_position, plot_shrink, plot_stream, plot_window
  from swa.analysis.text_tables import (
    format_plateau_table,
    format_shrink_table,
    format_stream_table,
    format_window_table,
  )

  if not runs:
    raise ValueError("No finished text runs to report.")
  import matplotlib

  matplotlib.use("Agg")
  reports.make_folder("out", out)
  path = lambda name: os.path.join(out, name)
  text = reports.markdown_header("Byte-level LM on real text", list(header) + list(notes))

  reports.write_csv(path("runs.csv"), [r.to_dict() for r in runs], RUN_FIELDS)
  summary_rows = window_summary(runs)
  reports.write_csv(path("window_summary.csv"), summary_rows, list(summary_rows[0]))
  plot_window(runs, path("window.png"))
  text += "## 1. Validation bits/byte vs window\n\n" + format_window_table(summary_rows)
  text += (
    "\nIntervals: mean over seeds +- t(0.975, k-1) sd / sqrt(k) (how much a new seed may "
    "differ); rows per run in runs.csv; window.png.\n\n"
  )

  position, plateaus = position_rows(runs)
  reports.write_csv(path("position.csv"), position, list(position[0]))
  plot_position(plateaus, path("position.png"))
  text += "## 2. Loss by token position\n\n" + format_plateau_table(plateaus)
  text += (
    f"\n'Stops improving at': the first log-spaced position bucket from which no bucket is above "
    f"the curve's last octave (positions T/2..T-1; seeds averaged) by more than {PLATEAU_TOLERANCE} "
    "bits/byte + 2 standard errors of its mean (one byte's loss sd / sqrt(positions x windows)). "
    "Below the reach L(w-1) a windowed model's later layers still gain context; a curve that "
    "stops near w rather than near the reach uses mostly one layer's window. position.csv, position.png.\n\n"
  )

  if shrink:
    reports.write_csv(
      path("shrink.csv"), [dataclasses.asdict(r) for r in shrink], _fields(ShrinkRow)
    )
    plot_shrink(shrink, path("shrink.png"))
    text += "## 3. Shrinking the window at inference\n\n" + format_shrink_table(shrink)
    text += (
      "\nThe trained model's parameters with every layer's window replaced at evaluation time, "
      "on the validation windows of its training run. shrink.csv, shrink.png.\n\n"
    )
  if stream:
    reports.write_csv(
      path("stream.csv"), [dataclasses.asdict(r) for r in stream], _fields(StreamRow)
    )
    summary_stream = stream_summary(stream)
    reports.write_csv(path("stream_summary.csv"), summary_stream, list(summary_stream[0]))
    plot_stream(stream, path("stream.png"))
    text += "## 4. Streaming perplexity through the rolling cache\n\n"
    text += format_stream_table(summary_stream)
    text += (
      "\nThe held-out stream (kjv test books, then stdlib test files, documents separated by "
      "SEP, each once) fed in fixed chunks through the rolling KV cache; a full-attention model "
      "streams with its windows replaced by the cache window. Cache bytes are the cache arrays "
      "(constant: the ring does not grow); device MiB in use is read at every segment's end (GPU; "
      "n/a where the backend does not say): flat when nothing grows; tokens/s after the first "
      "chunk. stream.csv, "
      "stream_summary.csv, stream.png.\n"
    )
  with open(path("report.md"), "w") as f:
    f.write(text)
  return text


def _fields(cls):
  return [f.name for f in dataclasses.fields(cls)]
