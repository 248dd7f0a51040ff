"""What eval_text.py runs: finished text workdirs -> the four experiments' rows -> one report.

  1, 2. bits/byte vs window and loss by position: read from each run's eval.json (no model);
  3.    shrinking the window at inference: each chosen model's parameters evaluated with every
        layer's window set to each of `shrink_windows` (text_eval.with_windows) on its run's
        validation windows;
  4.    streaming: the held-out stream (corpora.held_out_stream: kjv test books then stdlib test
        files, or its first stream_tokens) through the rolling cache (text_eval.stream_losses) for
        a full-attention model at the cache window `stream_window` with 0 and 4 sinks, the model
        trained at that window, and the sink-token model (SINK put before the stream; losses on
        the same bytes as the others), for each corpus's seed-0 runs.

`run(EvalTextSettings(...))` is the one call; swa/analysis/text.py writes the report.
`stream_text` is stream.py's text mode: the streaming loss of any file for a text run.
"""

import dataclasses
import glob
import json
import os
import sys
from typing import Optional

import numpy as np

from swa import corpora, reports, train_lib
from swa.analysis import text as text_analysis
from swa.checks import check_int
from swa.model import config_of, window_name
from swa.tasks import text, text_eval

EXPERIMENTS = ("window", "position", "shrink", "stream")
# stream.py's text mode streams a full-attention layer with a full-length cache only this far:
# every chunk attends over all of it (chunk x stream x heads float32 scores).
FULL_STREAM_LIMIT = 131_072


@dataclasses.dataclass(frozen=True)
class EvalTextSettings:
  """eval_text.py's flags (eval_text.py documents each)."""

  workdirs: tuple
  out: str
  experiments: tuple = EXPERIMENTS
  shrink_windows: tuple = (64, 128, 256, 512, 1024)
  shrink_models: tuple = ("full", "1024")  # window labels of the models shrunk (seed 0)
  stream_window: int = 128
  stream_sinks: tuple = (0, 4)
  stream_tokens: int = 0  # 0 = the whole held-out stream
  stream_chunk: int = 1024
  segment: int = 65_536
  batch_size: int = 8

  def check(self):
    bad = sorted(set(self.experiments) - set(EXPERIMENTS))
    if bad or not self.experiments:
      raise ValueError(
        f"--experiments={','.join(self.experiments)}: choose from {', '.join(EXPERIMENTS)}."
      )
    for w in self.shrink_windows:
      check_int("--shrink_windows", w, 1)
    for k in self.stream_sinks:
      check_int("--stream_sinks", k, 0)
    check_int("--stream_window", self.stream_window, 1)
    check_int("--stream_tokens", self.stream_tokens, 0)
    check_int("--stream_chunk", self.stream_chunk, 1)
    check_int("--segment", self.segment, 1)
    check_int("--batch_size", self.batch_size, 1)
    if not self.workdirs:
      raise ValueError("--workdirs is empty: pass run folders or a folder of runs.")


_SPLIT_ORDER = ("train", "validation", "test")


def _splits(record):
  """A corpus record (JSON of corpora.corpus_info) as one line: source; each split's size, hash."""
  info = json.loads(record)
  splits = ", ".join(
    f"{s} {v['documents']} docs / {v['tokens']:,} tokens / sha256 {v['sha256'][:16]}"
    for s, v in sorted(info["splits"].items(), key=lambda kv: _SPLIT_ORDER.index(kv[0]))
  )
  return f"{info['source']}; {splits}"


def find_workdirs(paths):
  """Training workdirs (folders with config.json) among paths: each a run, a folder of runs or a
  glob. One-line ValueError for a path that is neither."""
  found = []
  for pattern in paths:
    matches = sorted(glob.glob(pattern)) or [pattern]
    for path in matches:
      if os.path.isfile(os.path.join(path, "config.json")):
        found.append(path)
      elif os.path.isdir(path):
        runs = sorted(
          os.path.join(path, d)
          for d in os.listdir(path)
          if os.path.isfile(os.path.join(path, d, "config.json"))
        )
        if not runs:
          raise ValueError(f"--workdirs: {path} holds no training workdir (no */config.json).")
        found += runs
      else:
        raise ValueError(f"--workdirs: {path} is not a folder.")
  return found


def shrink_rows(run, workdir, windows, batch_size):
  """ShrinkRows of one run: its model at each inference window (and its own, full)."""
  config, graphdef, params = train_lib.restore_params(workdir)
  val = text.validation_windows(config)
  rows = []
  for w in list(windows) + [None]:
    g = text_eval.with_windows(graphdef, params, w)
    losses = text_eval.position_losses(
      g,
      params,
      val["inputs"],
      val["targets"],
      batch_size,
      segment_ids_NT=val.get("segment_ids"),
      positions_NT=val.get("positions"),
    )
    rows.append(
      text_analysis.ShrinkRow(
        run=run.run,
        corpus=run.corpus,
        model=run.model,
        eval_window=window_name(w),
        bits_per_byte=float(losses.mean()) / text.LN2,
      )
    )
    print(f"shrink {run.run} w={window_name(w)}: {rows[-1].bits_per_byte:.4f}", file=sys.stderr)
  return rows


def segment_rows(name, run, cache_window, sinks, result, *, segment, kjv_tokens, offset=0):
  """StreamRows of one stream: the mean loss of each segment of `segment` targets.

  Segments restart at the kjv/stdlib boundary (after kjv_tokens targets), so each lies in one
  part of the held-out stream and the parts' means are exact.

  offset: targets dropped from the front of result["losses"] (1 after a prepended SINK), so the
  device samples (taken at chunk ends, in tokens fed) fall into the segments they were read in;
  a segment takes the last one read in it.
  """
  losses = result["losses"]
  samples = sorted(result.get("device_bytes") or ())
  rows, boundary = [], min(kjv_tokens, losses.size)
  starts = [*range(0, boundary, segment), *range(boundary, losses.size, segment)]
  for start, stop in zip(starts, starts[1:] + [losses.size]):
    piece = losses[start:stop]
    end = stop  # targets scored so far = tokens streamed after the first
    rows.append(
      text_analysis.StreamRow(
        name=name,
        run=run.run,
        corpus=run.corpus,
        cache_window=cache_window,
        sinks=sinks,
        segment_end=end,
        domain="kjv" if end <= kjv_tokens else "stdlib",
        bits_per_byte=float(piece.mean()) / text.LN2,
        cache_bytes=int(result["cache_bytes"]),
        tokens_per_second=result["tokens_per_second"],
        device_bytes=next(
          (b for fed, b in reversed(samples) if start + offset < fed <= end + offset), None
        ),
      )
    )
  return rows


def stream_plan(runs, stream_window, stream_sinks):
  """[(name, run, window override or None, sinks, prepend SINK)] for each corpus's seed-0 runs."""
  plan = []
  for corpus in sorted({r.corpus for r in runs}):
    seed0 = [r for r in runs if r.corpus == corpus and r.seed == min(x.seed for x in runs)]
    plain = {r.window: r for r in seed0 if not (r.num_sinks or r.sink_token)}
    if "full" in plain:
      for k in stream_sinks:
        name = f"{corpus} full @ w{stream_window} cache + {k} sinks"
        plan.append((name, plain["full"], stream_window, k, False))
    if str(stream_window) in plain:
      run = plain[str(stream_window)]
      plan.append((f"{corpus} {run.model} (own window)", run, None, 0, False))
    for r in seed0:
      if r.sink_token:
        plan.append((f"{corpus} {r.model} (own window)", r, None, r.num_sinks, True))
  return plan


def stream_rows(plan, workdirs, tokens, settings):
  kjv_tokens = min(corpora.stream("kjv", "test").size, tokens.size)
  rows = []
  for name, run, window, sinks, prepend in plan:
    _, graphdef, params = train_lib.restore_params(workdirs[run.run])
    if window is not None:
      graphdef = text_eval.with_windows(graphdef, params, window)
    fed = np.concatenate([[corpora.SINK_ID], tokens]) if prepend else tokens
    result = text_eval.stream_losses(
      graphdef, params, fed, settings.stream_chunk, num_sinks=sinks, sample_every=settings.segment
    )
    if prepend:  # drop the prediction of the first byte from SINK: score the same bytes
      result["losses"] = result["losses"][1:]
    rows += segment_rows(
      name,
      run,
      str(window or run.window),
      sinks,
      result,
      segment=settings.segment,
      kjv_tokens=kjv_tokens - 1,
      offset=int(prepend),
    )
    rate = result["tokens_per_second"]
    print(
      f"stream {name}: {result['losses'].mean() / text.LN2:.4f} bits/byte, "
      f"{'n/a' if rate is None else f'{rate:,.0f}'} tokens/s",
      file=sys.stderr,
    )
  return rows


def run(settings: EvalTextSettings, command: Optional[str] = None):
  """Checks the settings, evaluates the workdirs and writes the report; returns report.md."""
  settings.check()
  reports.make_folder("out", settings.out)
  paths = find_workdirs(settings.workdirs)
  runs, workdirs, skipped = [], {}, []
  for path in paths:
    try:
      r = text_analysis.read_run(path)
    except ValueError as error:  # unfinished or another task: reported, not fatal
      skipped.append(str(error))
      continue
    runs.append(r)
    workdirs[r.run] = path
  for line in skipped:
    print(f"Skipped: {line}", file=sys.stderr)
  if not runs:
    raise ValueError(f"No finished text run among {len(paths)} workdir(s).")
  notes = [f"Runs: {len(runs)} finished ({len(skipped)} skipped)."]
  local = bool({"shrink", "stream"} & set(settings.experiments))  # they read this machine's corpus
  for corpus in sorted({r.corpus for r in runs}):
    records = sorted({r.corpus_record for r in runs if r.corpus == corpus})
    for i, record in enumerate(records):  # what the runs trained on, not this machine's corpus
      which = "" if len(records) == 1 else f" (form {i + 1} of {len(records)}: the runs differ)"
      notes.append(f"Corpus {corpus} as its runs recorded it{which}: {_splits(record)}.")
    if local:
      info = corpora.corpus_info(corpus)
      if {r.train_sha256 for r in runs if r.corpus == corpus} != {
        info["splits"]["train"]["sha256"]
      }:
        notes.append(
          f"WARNING: shrink and stream read this machine's {corpus} corpus, which is not the one "
          f"every run was trained on: {_splits(json.dumps(info))}."
        )
  shrink, stream = [], []
  if "shrink" in settings.experiments:
    seed0 = min(r.seed for r in runs)
    for r in runs:
      plain = not (r.num_sinks or r.sink_token)
      if plain and r.seed == seed0 and r.window in settings.shrink_models:
        shrink += shrink_rows(r, workdirs[r.run], settings.shrink_windows, settings.batch_size)
  if "stream" in settings.experiments:
    tokens = corpora.held_out_stream()
    if settings.stream_tokens:
      tokens = tokens[: settings.stream_tokens]
    notes.append(
      f"Stream: {tokens.size:,} tokens in chunks of {settings.stream_chunk}, segments of "
      f"{settings.segment:,}."
    )
    plan = stream_plan(runs, settings.stream_window, settings.stream_sinks)
    stream = stream_rows(plan, workdirs, tokens, settings)
  header = reports.header_lines(command)
  text_md = text_analysis.write_report(runs, settings.out, header=header, shrink=shrink,
                                       stream=stream, notes=notes)  # fmt: skip
  print(f"Wrote {settings.out}/report.md", file=sys.stderr)
  return text_md


# --- stream.py's text mode ------------------------------------------------------------------------


def is_text_workdir(workdir):
  """Whether workdir holds a text run (its config.json says task "text"); reads nothing else."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    return False
  with open(path) as f:
    return json.load(f).get("task") == "text"


def file_stream(path):
  """The byte tokens of a file (int32; SEP and SINK never occur in it)."""
  with open(path, "rb") as f:
    return corpora.pack([f.read()])[:-1]


def stream_text(workdir, text_file=None, *, chunk_size=1024, num_sinks=0, window=None,
                segment=65_536):  # fmt: skip
  """The loss of every byte of text_file (default: the held-out stream) streamed through the
  rolling cache of a text run's model; prints a report and returns stream_losses' result.

  Args:
    workdir: a finished or checkpointed text run.
    text_file: any file, read as bytes; None: corpora.held_out_stream().
    chunk_size: tokens per forward call.
    num_sinks: sinks the cache keeps; at least the model's own (a sink model needs them).
    window: every layer's window replaced by this (e.g. a full-attention model in a window
      cache); None: the model's own windows.
    segment: tokens per row of the per-segment table.
  """
  check_int("--chunk_size", chunk_size, 1)
  check_int("--num_sinks", num_sinks, 0)
  check_int("--text_segment", segment, 1)
  if window is not None:
    check_int("--text_window", window, 1)
  if text_file is not None and not os.path.isfile(text_file):
    raise ValueError(f"--text_file={text_file}: no such file.")
  config, graphdef, params = train_lib.restore_params(workdir)
  tokens = corpora.held_out_stream() if text_file is None else file_stream(text_file)
  what = "the held-out stream (kjv test + stdlib test)" if text_file is None else text_file
  sinks = max(num_sinks, int(config.model.num_sinks))
  if config.data.sink_token:
    tokens = np.concatenate([[corpora.SINK_ID], tokens])
  if window is not None:
    graphdef = text_eval.with_windows(graphdef, params, window)
  elif None in config_of(graphdef, params).layer_windows and tokens.size > FULL_STREAM_LIMIT:
    raise ValueError(
      f"The model has full-attention layers: each chunk would attend over the whole stream of "
      f"{tokens.size:,} tokens (a cache of all of it); pass --text_window=W to stream through a "
      f"window cache, or a file of at most {FULL_STREAM_LIMIT:,} bytes."
    )
  print(
    f"Streaming {what}: {tokens.size:,} tokens in chunks of {chunk_size}; window "
    f"{window or config.model.window_size}, {sinks} sinks; device {reports.device_description()}",
    file=sys.stderr,
  )
  result = text_eval.stream_losses(graphdef, params, tokens, chunk_size, num_sinks=sinks)
  losses = result["losses"][1:] if config.data.sink_token else result["losses"]
  rows = [
    (f"{start:,}-{start + piece.size:,}", f"{piece.mean() / text.LN2:.4f}")
    for start in range(0, losses.size, segment)
    for piece in [losses[start : start + segment]]
  ]
  rate = result["tokens_per_second"]
  print(
    f"bits/byte over {losses.size:,} predicted bytes: {losses.mean() / text.LN2:.4f}; "
    f"{'n/a' if rate is None else f'{rate:,.0f}'} tokens/s after the first chunk; cache arrays "
    f"{reports.format_mib(result['cache_bytes'])} MiB throughout."
  )
  print(reports.markdown_table(["bytes", "bits/byte"], rows), end="")
  return result
