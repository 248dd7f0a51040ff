"""Streams text of any length through a trained model with a rolling KV cache (swa/stream_modes.py).

  # A million tokens of passkey text (the key inside the model's reach), then the answer:
  python stream.py --workdir=workdirs/w128
  # Any text file (characters outside the vocabulary become spaces), then 200 generated tokens:
  python stream.py --workdir=workdirs/w128 --text_file=book.txt --generate=200
  # Passkey exact match through the streaming path, without and with 4 attention sinks
  # (-> <out>/streaming_sinks.md):
  python stream.py --workdir=workdirs/w128 --passkey --passkey_seq_len=4096 --passkey_sinks=0,4
  # Decode speed and memory against stream length, rolling vs full-length cache
  # (-> <out>/streaming.md and streaming.png; about a minute on one H100):
  python stream.py --workdir=workdirs/w128 --benchmark
  # A Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer.json; docs/hf.md):
  python stream.py --hf_checkpoint=Mistral-7B-v0.1 --prompt="The capital of France is" --generate=20

A text run (train.py --config=configs/text_*.py) streams bytes instead and reports the loss
(swa/tasks/text_experiments.py stream_text): bits/byte per segment of --text_file (default: the
held-out stream of swa/corpora.py), optionally through a smaller window cache:
  python stream.py --workdir=workdirs/text_full --text_file=notes.txt --text_window=128 --num_sinks=4

Without --workdir, --config=configs/w128.py gives a randomly initialised model of that
architecture (enough for --benchmark, whose numbers do not depend on the weights); --out is then
required for --passkey and --benchmark. With --workdir, --out defaults to <workdir>/stream. The
stream mode writes nothing; nothing is ever written inside the checkpoints.

The passkey stream puts its key --key_distance tokens before the question; by default half the
model's reach (the sum over layers of window - 1), at most 200, so the model can answer it. A
distance beyond the reach is allowed, and the verdict then says why no answer can be right.
"""

from absl import flags, logging
from ml_collections import config_flags

from swa import cli, stream_modes
from swa.tasks import text_experiments

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Experiment config for a random-init model; ignored with --workdir.",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Training workdir to restore the model from (read only)."
)
_OUT = flags.DEFINE_string(
  "out", None, "Folder for --passkey and --benchmark outputs; default <workdir>/stream."
)
_CHUNK = flags.DEFINE_integer("chunk_size", 1024, "Prefill chunk (tokens per forward call).")
_SINKS = flags.DEFINE_integer("num_sinks", 0, "Attention sinks kept by every windowed layer.")
_MAX_LEN = flags.DEFINE_integer(
  "max_len", None, "Slots of full-attention layers; default: the stream length plus --generate."
)
# Stream mode.
_STREAM_TOKENS = flags.DEFINE_integer(
  "stream_tokens", 1_000_000, "Length of the passkey stream (without --text_file)."
)
_KEY_DISTANCE = flags.DEFINE_integer(
  "key_distance",
  None,
  "Passkey stream: distance from the key "
  "to the question (swa/data.py's definition); default half "
  "the model's reach, at most 200.",
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the passkey text.")
_TEXT_FILE = flags.DEFINE_string("text_file", None, "Stream this file instead of passkey text.")
_GENERATE = flags.DEFINE_integer("generate", 5, "Greedy tokens to generate after the stream.")
# Text mode (a text run's --workdir).
_TEXT_WINDOW = flags.DEFINE_integer(
  "text_window", None, "Text runs: every layer's window replaced by this while streaming."
)
_TEXT_SEGMENT = flags.DEFINE_integer("text_segment", 65_536, "Text runs: bytes per table row.")
# Passkey mode.
_PASSKEY = flags.DEFINE_bool("passkey", False, "Passkey exact match through the streaming path.")
_PASSKEY_SEQ_LEN = flags.DEFINE_integer(
  "passkey_seq_len", None, "Context length; default the training one."
)
_PASSKEY_DISTANCES = flags.DEFINE_list(
  "passkey_distances",
  None,
  "Default: the config's number of distances spread over all the length allows.",
)
_PASSKEY_SINKS = flags.DEFINE_list("passkey_sinks", ["0", "4"], "Sink counts to compare.")
_PASSKEY_EXAMPLES = flags.DEFINE_integer("passkey_examples", 64, "Examples per distance.")
_PASSKEY_BATCH = flags.DEFINE_integer("passkey_batch_size", 64, "Examples per forward call.")
_COMPARE_BATCH = flags.DEFINE_bool(
  "compare_batch",
  True,
  "Also run the batch (whole-sequence) evaluation, which the 0-sink streaming one must equal.",
)
# Benchmark mode.
_BENCHMARK = flags.DEFINE_bool("benchmark", False, "Decode speed and memory vs stream length.")
_LENGTHS = flags.DEFINE_list(
  "lengths",
  ["1024", "4096", "16384", "65536", "262144", "1048576"],
  "Stream lengths at which decoding is timed.",
)
_DECODE_STEPS = flags.DEFINE_integer("decode_steps", 100, "Decode steps timed at each length.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Benchmark: streams decoded side by side.")
# A Hugging Face checkpoint (swa/hf/): stream mode over --prompt or --text_file, its tokenizer.
_HF_CHECKPOINT = flags.DEFINE_string(
  "hf_checkpoint",
  None,
  "Folder of a Hugging Face checkpoint (config.json, *.safetensors, tokenizer.json) to stream "
  "through instead of --workdir or --config.",
)
_PROMPT = flags.DEFINE_string("prompt", None, "With --hf_checkpoint: the text to stream.")
_ATTENTION = flags.DEFINE_string(
  "attention", "auto", "With --hf_checkpoint: the attention implementation (swa.attention)."
)
_HF_DTYPE = flags.DEFINE_enum(
  "hf_dtype",
  "float32",
  ["float32", "bfloat16", "float16"],
  "With --hf_checkpoint: the dtype of its weights and activations.",
)


def _ints(values, flag):
  try:
    return tuple(cli.parse_length(v) for v in values)
  except ValueError:
    raise cli.UserError(f"--{flag}={','.join(values)} must be a list of integers.") from None


def main(argv):
  if len(argv) > 1:
    raise cli.UserError(f"Unexpected arguments: {argv[1:]}")
  if _PASSKEY.value and _BENCHMARK.value:
    raise cli.UserError("Choose one of --passkey and --benchmark.")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every restore step at INFO.
  if _WORKDIR.value and text_experiments.is_text_workdir(_WORKDIR.value):
    text_experiments.stream_text(
      _WORKDIR.value,
      _TEXT_FILE.value,
      chunk_size=_CHUNK.value,
      num_sinks=_SINKS.value,
      window=_TEXT_WINDOW.value,
      segment=_TEXT_SEGMENT.value,
    )
    return
  config_name = _CONFIG.value and config_flags.get_config_filename(flags.FLAGS["config"])
  settings = stream_modes.StreamSettings(
    workdir=_WORKDIR.value,
    config=_CONFIG.value,
    config_name=config_name,
    out=_OUT.value,
    mode="benchmark" if _BENCHMARK.value else "passkey" if _PASSKEY.value else "stream",
    chunk_size=_CHUNK.value,
    num_sinks=_SINKS.value,
    max_len=_MAX_LEN.value,
    stream_tokens=_STREAM_TOKENS.value,
    key_distance=_KEY_DISTANCE.value,
    seed=_SEED.value,
    text_file=_TEXT_FILE.value,
    generate=_GENERATE.value,
    passkey_seq_len=_PASSKEY_SEQ_LEN.value,
    passkey_distances=_PASSKEY_DISTANCES.value
    and _ints(_PASSKEY_DISTANCES.value, "passkey_distances"),
    passkey_sinks=_ints(_PASSKEY_SINKS.value, "passkey_sinks"),
    passkey_examples=_PASSKEY_EXAMPLES.value,
    passkey_batch_size=_PASSKEY_BATCH.value,
    compare_batch=_COMPARE_BATCH.value,
    lengths=_ints(_LENGTHS.value, "lengths"),
    decode_steps=_DECODE_STEPS.value,
    batch_size=_BATCH.value,
    hf_checkpoint=_HF_CHECKPOINT.value,
    prompt=_PROMPT.value,
    attention=_ATTENTION.value,
    hf_dtype=_HF_DTYPE.value,
  )
  stream_modes.run(settings)


if __name__ == "__main__":
  cli.run(main)
