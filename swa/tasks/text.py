"""The text task: a byte-level language model on real text (swa/corpora.py), next-byte loss.

Data: windows of T + 1 consecutive tokens of a corpus's train stream (documents packed with SEP,
swa/corpora.py) at random offsets: batch k draws its B offsets uniformly from [0, L - T - 1] with
the numpy Generator seeded by (config.seed, k), so the stream's whole state is the step `k` and a
resumed run draws exactly the batches an uninterrupted one would. inputs = window[:-1], targets =
window[1:]. With data.sink_token the input at position 0 is SINK_ID instead of the window's first
byte; the targets stay the same, so every model is scored on the same bytes (the sink model sees
one byte less of context, at position 0 only).

Packed documents (data.segment_ids): each window's documents become packed sequences. SEP starts a
document (it plays the beginning-of-document token; the byte before it predicts it as the end of
its own document), so an input's segment is the number of SEPs at or before it in the window
(`document_segments`), and positions restart at 0 at each one. The batch then carries
"segment_ids" and "positions" as well, the model attends only inside each document (no window
crosses a SEP) and every document is scored as if it were run alone from its SEP on. The targets
are the same bytes either way; only the first, partial document of a window has no SEP in front.

Loss: the mean next-byte cross-entropy over every position (float32 log-softmax,
text_eval.token_losses); bits/byte = loss / ln 2 is logged beside it.

Evaluation: the same loss on eval.num_windows fixed windows of the validation stream, offsets
evenly spaced from 0 to L - T - 1 (`eval_offsets`): eval/bits_per_byte and eval/loss. The final
evaluation also keeps the loss by position 0..T-1 averaged over the windows and the standard
deviation of one byte's loss (the noise of each position's mean); eval.json holds them with the
corpus's fingerprint (corpora.corpus_info: Python version, sha256 of each split).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from swa import corpora
from swa.checks import check_int
from swa.model import ModelConfig
from swa.tasks import text_eval

LN2 = math.log(2.0)


def text_loss(logits_BTV, batch):
  """(mean next-byte cross-entropy in nats, {bits_per_byte, accuracy}) of one batch."""
  losses_BT = text_eval.token_losses(logits_BTV, batch["targets"])
  loss = jnp.mean(losses_BT)
  accuracy = jnp.mean(jnp.argmax(logits_BTV, axis=-1) == batch["targets"])
  return loss, {"bits_per_byte": loss / LN2, "accuracy": accuracy}


def document_segments(inputs_NT):
  """(segment_ids, positions) int32 [N, T] of windows of a packed stream (the module docstring).

  A SEP input starts a new document: segment = the number of SEPs at or before each position;
  position = the distance from the start of its document (or of the window).
  """
  inputs_NT = np.asarray(inputs_NT)
  starts_NT = inputs_NT == corpora.SEP_ID
  segment_ids = np.cumsum(starts_NT, axis=1, dtype=np.int32)
  index_NT = np.broadcast_to(np.arange(inputs_NT.shape[1], dtype=np.int32), inputs_NT.shape)
  start_NT = np.maximum.accumulate(np.where(starts_NT, index_NT, 0), axis=1)
  return segment_ids, (index_NT - start_NT).astype(np.int32)


def make_windows(tokens, offsets, seq_len, sink_token=False, segment_ids=False):
  """{"inputs", "targets"} int32 [len(offsets), seq_len] of the windows starting at `offsets`;
  with segment_ids also their documents' "segment_ids" and "positions" (`document_segments`)."""
  index_NT = np.asarray(offsets, np.int64)[:, None] + np.arange(seq_len + 1)
  windows = np.asarray(tokens, np.int32)[index_NT]
  inputs = windows[:, :-1].copy()
  if sink_token:
    inputs[:, 0] = corpora.SINK_ID
  batch = {"inputs": inputs, "targets": windows[:, 1:]}
  if segment_ids:
    batch["segment_ids"], batch["positions"] = document_segments(inputs)
  return batch


def check_stream_length(tokens, seq_len, what):
  if tokens.size < seq_len + 1:
    raise ValueError(
      f"data.seq_len={seq_len} is too long for {what} ({tokens.size:,} tokens); it needs "
      f"seq_len + 1 tokens."
    )


def eval_offsets(num_tokens, seq_len, num_windows):
  """num_windows window starts evenly spaced over a stream of num_tokens (int64 numpy)."""
  return np.linspace(0, num_tokens - seq_len - 1, num_windows).round().astype(np.int64)


def validation_windows(config):
  """The fixed evaluation windows of a config: {"inputs", "targets"} [eval.num_windows, T]."""
  d = config.data
  tokens = corpora.stream(d.corpus, "validation")
  check_stream_length(tokens, d.seq_len, f"the {d.corpus} validation split")
  offsets = eval_offsets(tokens.size, d.seq_len, config.eval.num_windows)
  return make_windows(tokens, offsets, d.seq_len, d.sink_token, packed_documents(config))


def packed_documents(config):
  """config.data.segment_ids (False for a config from before the field)."""
  return bool(config.data.get("segment_ids", False))


class TextBatches:
  """Resumable training batches of random windows (the module docstring): state {"step"}."""

  def __init__(self, tokens, *, seq_len, batch_size, seed, sink_token=False, segment_ids=False):
    self.tokens, self.seq_len, self.batch_size = tokens, seq_len, batch_size
    self.seed, self.sink_token, self.step = seed, sink_token, 0
    self.segment_ids = segment_ids

  def __next__(self):
    rng = np.random.default_rng([self.seed, self.step])
    offsets = rng.integers(0, self.tokens.size - self.seq_len, size=self.batch_size)
    self.step += 1
    return make_windows(self.tokens, offsets, self.seq_len, self.sink_token, self.segment_ids)

  def get_state(self):
    return {"step": self.step}

  def set_state(self, state):
    self.step = check_int("data state step", int(state["step"]), 0)


class TextTask:
  """Byte-level language modelling on real text (swa/tasks/__init__.py's Task).

  Args:
    config: the experiment config (configs/text_base.py); None: defaults (no sink token).
  """

  name = "text"
  batch_keys = ("inputs", "targets")
  feedback = False

  def __init__(self, config=None):
    if config is not None and packed_documents(config):  # the model reads these too
      self.batch_keys = ("inputs", "targets", "segment_ids", "positions")
    self.position_loss = None  # [T] mean loss by position of the last evaluation
    self.loss_sd = None  # standard deviation of one byte's loss in it (nats)

  def validate(self, config):
    d, e = config.data, config.eval
    corpora.check_corpus(d.corpus)
    check_int("data.seq_len", d.seq_len, 2)
    check_int("eval.num_windows", e.num_windows, 1)
    check_int("eval.batch_size", e.batch_size, 1)
    if not isinstance(d.sink_token, bool):
      raise ValueError(f"data.sink_token={d.sink_token!r} must be True or False.")
    packed = d.get("segment_ids", False)
    if not isinstance(packed, bool):
      raise ValueError(f"data.segment_ids={packed!r} must be True or False.")
    if packed and (d.sink_token or config.model.num_sinks):
      raise ValueError(
        "data.segment_ids=True takes no sink (data.sink_token, model.num_sinks): a window's sink "
        "would serve only its first document."
      )
    if config.model.vocab_size != corpora.VOCAB_SIZE:
      raise ValueError(
        f"model.vocab_size={config.model.vocab_size!r} must be {corpora.VOCAB_SIZE} for "
        "byte-level text (256 bytes + SEP + SINK)."
      )

  def batches(self, config):
    d = config.data
    tokens = corpora.stream(d.corpus, "train")
    check_stream_length(tokens, d.seq_len, f"the {d.corpus} train split")
    return TextBatches(
      tokens,
      seq_len=d.seq_len,
      batch_size=d.batch_size,
      seed=config.seed,
      sink_token=d.sink_token,
      segment_ids=packed_documents(config),
    )

  def loss(self, logits_BTV, batch):
    return text_loss(logits_BTV, batch)

  def observe(self, batch, metrics):
    return {}

  def evaluate(self, graphdef, params, config):
    """Validation loss on the fixed windows: {"bits_per_byte", "loss"}."""
    windows = validation_windows(config)
    losses_NT = text_eval.position_losses(
      graphdef,
      params,
      windows["inputs"],
      windows["targets"],
      config.eval.batch_size,
      segment_ids_NT=windows.get("segment_ids"),
      positions_NT=windows.get("positions"),
    )
    self.position_loss, self.loss_sd = losses_NT.mean(0), float(losses_NT.std())
    loss = float(losses_NT.mean())
    return {"bits_per_byte": loss / LN2, "loss": loss}

  def final_summary(self, config, graphdef, params, eval_metrics):
    """eval.json (the run, its corpus's fingerprint, bits/byte, loss by position) and a table."""
    if self.position_loss is None:  # e.g. a task object that did not run the evaluation
      self.evaluate(graphdef, params, config)
    model = ModelConfig.from_config(config)
    num_params = int(sum(np.size(x) for x in jax.tree.leaves(params)))
    summary = {
      "task": "text",
      "step": config.num_steps,
      "corpus": corpora.corpus_info(config.data.corpus),
      "seq_len": config.data.seq_len,
      "window": model.window_label,
      "layer_windows": list(model.layer_windows),
      "receptive_reach": model.reach,
      "num_layers": model.num_layers,
      "num_sinks": model.num_sinks,
      "sink_token": config.data.sink_token,
      "segment_ids": packed_documents(config),
      "seed": config.seed,
      "num_params": num_params,
      "eval_windows": config.eval.num_windows,
      "bits_per_byte": eval_metrics["bits_per_byte"],
      "loss": eval_metrics["loss"],
      "loss_sd": self.loss_sd,  # of one byte's loss: the noise of loss_by_position's entries
      "loss_by_position": [round(float(x), 5) for x in self.position_loss],
    }
    table = format_summary_table(summary)
    return summary, table


def format_summary_table(summary):
  """The markdown table train.py prints: bits/byte overall and over position ranges."""
  by_position = np.asarray(summary["loss_by_position"])
  T = by_position.size
  edges = [0] + [e for e in (16, 64, 256, 1024, 4096, 16384) if e < T] + [T]
  lines = [
    f"Validation bits/byte of {summary['corpus']['corpus']} ({summary['eval_windows']} windows of "
    f"{T}), window {summary['window']}, reach {summary['receptive_reach']}, "
    f"sinks {summary['num_sinks']}{' + sink token' if summary['sink_token'] else ''}: "
    f"{summary['bits_per_byte']:.4f}",
    "",
    "| positions | bits/byte |",
    "|---|---:|",
  ]
  for a, b in zip(edges[:-1], edges[1:]):
    lines.append(f"| {a}-{b - 1} | {by_position[a:b].mean() / LN2:.4f} |")
  return "\n".join(lines)
