"""The text-LM report of finished runs: bits/byte vs window, by position, at other inference
windows, and streamed through the rolling cache (swa/tasks/text_experiments.py, swa/analysis/text.py).

  python eval_text.py --workdirs=OUT/runs --out=OUT/report      # what text_experiments.sh runs
  python eval_text.py --workdirs=workdirs/text_tiny --out=/tmp/r --experiments=window,position

--workdirs takes runs, folders of runs or globs (runs without eval.json are skipped and named).
Experiments 1-2 (window, position) read each run's eval.json; 3 (shrink) evaluates the seed-0
models whose window is in --shrink_models at each of --shrink_windows; 4 (stream) feeds the
held-out stream through the rolling cache (a full-attention model at --stream_window with each of
--stream_sinks sinks, the model trained at --stream_window, the sink-token model). Writes
report.md, CSVs and PNGs into --out; nothing is written into the workdirs.
"""

from absl import flags, logging

from swa import cli
from swa.tasks import text_experiments


def define_flags():
  """The command's flags (defined only when run as a program)."""
  flags.DEFINE_list("workdirs", None, "Text training workdirs, folders of them or globs.")
  flags.DEFINE_string("out", None, "Folder for report.md, the CSVs and the figures.")
  flags.DEFINE_list(
    "experiments",
    list(text_experiments.EXPERIMENTS),
    "Which of window, position, shrink, stream (window and position are always written: "
    "they only read eval.json).",
  )
  flags.DEFINE_list("shrink_windows", ["64", "128", "256", "512", "1024"], "Inference windows.")
  flags.DEFINE_list(
    "shrink_models", ["full", "1024"], "Trained windows whose seed-0 models are shrunk."
  )
  flags.DEFINE_integer("stream_window", 128, "Cache window of the streaming experiment.")
  flags.DEFINE_list("stream_sinks", ["0", "4"], "Sink counts for the full-attention model.")
  flags.DEFINE_integer(
    "stream_tokens", 0, "Tokens of the held-out stream to feed; 0 = all of it (1.5M)."
  )
  flags.DEFINE_integer("stream_chunk", 1024, "Tokens per forward call when streaming.")
  flags.DEFINE_integer("segment", 65_536, "Tokens per point of the streaming curve.")
  flags.DEFINE_integer("batch_size", 8, "Windows per forward call (shrink experiment).")


def _ints(values, flag):
  try:
    return tuple(int(v) for v in values)
  except ValueError:
    raise cli.UserError(f"--{flag}={','.join(values)} must be a list of integers.") from None


def main(argv):
  if len(argv) > 1:
    raise cli.UserError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO.
  f = flags.FLAGS
  if not f.out:
    raise cli.UserError("--out is required (the report's folder).")
  text_experiments.run(
    text_experiments.EvalTextSettings(
      workdirs=tuple(f.workdirs or ()),
      out=f.out,
      experiments=tuple(f.experiments),
      shrink_windows=_ints(f.shrink_windows, "shrink_windows"),
      shrink_models=tuple(f.shrink_models),
      stream_window=f.stream_window,
      stream_sinks=_ints(f.stream_sinks, "stream_sinks"),
      stream_tokens=f.stream_tokens,
      stream_chunk=f.stream_chunk,
      segment=f.segment,
      batch_size=f.batch_size,
    )
  )


if __name__ == "__main__":
  define_flags()
  cli.run(main)
