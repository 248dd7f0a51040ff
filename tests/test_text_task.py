"""swa/tasks/text.py and text_eval.py: batches, loss, training, evaluation, streaming (fast)."""

import json
import math

import numpy as np
import pytest

from configs import text_tiny
from swa import corpora, tasks, train_lib
from swa.model import config_of
from swa.tasks import text, text_eval


def small_config(**changes):
  config = text_tiny.get_config()
  for key, value in changes.items():
    section, _, field = key.rpartition(".")
    setattr(config[section] if section else config, field, value)
  return config


def test_registered_as_text():
  assert isinstance(tasks.get_task("text", small_config()), text.TextTask)


def test_batches_are_deterministic_and_resumable():
  tokens = corpora.stream("kjv", "train")
  make = lambda seed: text.TextBatches(tokens, seq_len=64, batch_size=3, seed=seed)
  a, b = make(0), make(0)
  first = [next(a) for _ in range(4)]
  for batch in first:
    np.testing.assert_array_equal(batch["inputs"], next(b)["inputs"])
    np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
    assert batch["inputs"].shape == (3, 64) and batch["inputs"].dtype == np.int32
  assert a.get_state() == {"step": 4}
  resumed = make(0)
  resumed.set_state({"step": 2})
  np.testing.assert_array_equal(next(resumed)["targets"], first[2]["targets"])
  assert not np.array_equal(next(make(1))["inputs"], first[0]["inputs"])


def test_windows_are_stream_slices_and_the_sink_replaces_position_0():
  tokens = np.arange(100, dtype=np.int32) % 250
  plain = text.make_windows(tokens, [0, 10], 8)
  np.testing.assert_array_equal(plain["inputs"][1], np.arange(10, 18))
  np.testing.assert_array_equal(plain["targets"][1], np.arange(11, 19))
  sink = text.make_windows(tokens, [0, 10], 8, sink_token=True)
  assert (sink["inputs"][:, 0] == corpora.SINK_ID).all()
  np.testing.assert_array_equal(sink["inputs"][:, 1:], plain["inputs"][:, 1:])
  np.testing.assert_array_equal(sink["targets"], plain["targets"])  # scored on the same bytes


def test_eval_offsets_span_the_stream():
  offsets = text.eval_offsets(1000, 100, 5)
  assert offsets[0] == 0 and offsets[-1] == 1000 - 101 and len(offsets) == 5


def test_loss_is_the_hand_computed_cross_entropy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, corpora.VOCAB_SIZE)).astype(np.float32) * 3
  targets = rng.integers(0, corpora.VOCAB_SIZE, size=(2, 5)).astype(np.int32)
  loss, metrics = text.text_loss(logits, {"targets": targets})
  expected = np.mean(
    [
      math.log(sum(math.exp(v) for v in logits[b, t].astype(np.float64)))
      - logits[b, t, targets[b, t]]
      for b in range(2)
      for t in range(5)
    ]
  )
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["bits_per_byte"]), expected / math.log(2), rtol=1e-5)


@pytest.mark.parametrize(
  "key, value, message",
  [
    ("data.corpus", "wiki", "corpus='wiki' is not a corpus"),
    ("model.vocab_size", 256, "model.vocab_size=256 must be 258"),
    ("data.seq_len", 1, "data.seq_len=1 must be an integer >= 2"),
    ("eval.batch_size", 0, "eval.batch_size=0 must be an integer >= 1"),
    ("eval.num_windows", 0, "eval.num_windows=0 must be an integer >= 1"),
  ],
)
def test_bad_config_values_are_one_line_errors(key, value, message):
  with pytest.raises(ValueError, match=message):
    train_lib.validate_config(small_config(**{key: value}))


def test_seq_len_longer_than_a_split_is_an_error():
  config = small_config(**{"data.seq_len": 400_000})
  with pytest.raises(ValueError, match="too long for the kjv validation split"):
    text.validation_windows(config)


def test_training_lowers_the_loss_and_writes_eval_json(tmp_path):
  config = small_config(num_steps=20, log_every_steps=1, checkpoint_every_steps=20)
  summary = train_lib.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / "metrics.jsonl") as f:
    losses = [r["loss"] for r in map(json.loads, f) if "loss" in r]
  assert len(losses) == 20
  assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 1.0  # 5.5 nats at init
  with open(tmp_path / "eval.json") as f:
    saved = json.load(f)
  assert saved == json.loads(json.dumps(summary))
  assert len(saved["loss_by_position"]) == config.data.seq_len
  np.testing.assert_allclose(saved["bits_per_byte"], saved["loss"] / math.log(2))
  np.testing.assert_allclose(np.mean(saved["loss_by_position"]), saved["loss"], rtol=1e-4)
  assert saved["corpus"]["splits"]["train"]["sha256"] == corpora.stream_sha256(
    corpora.stream("kjv", "train")
  )
  assert saved["bits_per_byte"] < 5.0  # log2(258) = 8.01 for a uniform guess


def _model(**changes):
  return train_lib.create_model(small_config(**changes))


def test_with_windows_replaces_only_the_windows():
  graphdef, params = _model()
  shrunk = text_eval.with_windows(graphdef, params, 8)
  assert config_of(shrunk, params).layer_windows == (8, 8)
  tokens = corpora.stream("kjv", "validation")[:65][None]
  inputs, targets = tokens[:, :-1], tokens[:, 1:]
  own = text_eval.position_losses(graphdef, params, inputs, targets, 1)
  wide = text_eval.position_losses(
    text_eval.with_windows(graphdef, params, 32), params, inputs, targets, 1
  )
  np.testing.assert_array_equal(own, wide)  # the same windows: the same model
  narrow = text_eval.position_losses(shrunk, params, inputs, targets, 1)
  np.testing.assert_allclose(narrow[:, :8], own[:, :8], atol=1e-6)  # inside both windows
  assert not np.allclose(narrow[:, 9:], own[:, 9:])


def test_position_losses_pads_the_last_batch():
  graphdef, params = _model()
  windows = text.make_windows(corpora.stream("kjv", "validation"), [0, 50, 100], 32)
  one = text_eval.position_losses(graphdef, params, windows["inputs"], windows["targets"], 1)
  two = text_eval.position_losses(graphdef, params, windows["inputs"], windows["targets"], 2)
  assert two.shape == (3, 32)
  np.testing.assert_allclose(one, two, atol=1e-6)


@pytest.mark.parametrize(
  "changes, window, sinks",
  [
    ({}, None, None),  # window 32, the model's own cache
    ({"model.window_size": None}, 16, 4),  # full attention streamed at w16 with 4 sinks
    ({"model.num_sinks": 1}, None, None),  # the sink model
  ],
)
def test_streaming_loss_equals_the_batch_loss(changes, window, sinks):
  graphdef, params = _model(**changes)
  if window is not None:  # the batch forward with the cache's window and sinks
    graphdef = text_eval.with_windows(graphdef, params, window, num_sinks=sinks)
  tokens = corpora.stream("kjv", "validation")[1000:1201]
  batch = text_eval.position_losses(graphdef, params, tokens[None, :-1], tokens[None, 1:], 1)[0]
  streamed = text_eval.stream_losses(graphdef, params, tokens, 37, num_sinks=sinks)
  assert streamed["losses"].shape == (200,)
  np.testing.assert_allclose(streamed["losses"], batch, atol=2e-5)
  assert streamed["cache_bytes"] > 0


def test_stream_losses_rejects_a_short_stream():
  graphdef, params = _model()
  with pytest.raises(ValueError, match="one stream of >= 2 tokens"):
    text_eval.stream_losses(graphdef, params, np.array([1]), 8)


def test_every_text_config_loads_and_validates():
  import importlib

  for name in ("text_base", "text_w128", "text_full", "text_mix", "text_sink", "text_tiny"):
    config = importlib.import_module(f"configs.{name}").get_config()
    train_lib.validate_config(config)
    assert config.task == "text" and config.model.vocab_size == corpora.VOCAB_SIZE


def test_document_segments_start_at_each_sep():
  S = corpora.SEP_ID
  inputs = np.array([[7, 8, S, 9, 9, S, S, 1], [S, 1, 2, 3, 4, 5, 6, 7]])
  segment_ids, positions = text.document_segments(inputs)
  np.testing.assert_array_equal(segment_ids, [[0, 0, 1, 1, 1, 2, 3, 3], [1, 1, 1, 1, 1, 1, 1, 1]])
  np.testing.assert_array_equal(positions, [[0, 1, 0, 1, 2, 0, 0, 1], np.arange(8)])
  assert segment_ids.dtype == positions.dtype == np.int32
  tokens = np.r_[np.arange(10), S, np.arange(10)].astype(np.int32)
  batch = text.make_windows(tokens, [0, 5], 12, segment_ids=True)
  assert set(batch) == {"inputs", "targets", "segment_ids", "positions"}
  np.testing.assert_array_equal(batch["segment_ids"][1], np.repeat([0, 1], [5, 7]))
  assert set(text.make_windows(tokens, [0], 12)) == {"inputs", "targets"}  # off: as before


def test_packed_documents_are_scored_as_if_each_ran_alone():
  """With segment ids a window that holds a SEP gives, on each side of it, the losses of that
  piece run alone: no window crosses the document boundary (without ids it does)."""
  graphdef, params = _model()
  tokens = corpora.stream("kjv", "validation")
  sep = int(np.flatnonzero(tokens == corpora.SEP_ID)[0])
  start = sep - 20  # the window's inputs: 20 bytes of one document, then SEP and the next one
  packed = text.make_windows(tokens, [start], 64, segment_ids=True)
  losses = lambda w, **kw: text_eval.position_losses(
    graphdef, params, w["inputs"], w["targets"], 1, **kw
  )[0]
  got = losses(packed, segment_ids_NT=packed["segment_ids"], positions_NT=packed["positions"])
  before = losses(text.make_windows(tokens, [start], 20))
  after = losses(text.make_windows(tokens, [sep], 44))
  np.testing.assert_allclose(got, np.r_[before, after], atol=2e-5)
  assert np.abs(losses(packed)[20:] - after).max() > 1e-3  # plain packing sees across


def test_training_with_packed_documents(tmp_path):
  config = small_config(num_steps=3, log_every_steps=1, checkpoint_every_steps=3)
  config.data.segment_ids = True
  task = tasks.get_task("text", config)
  assert task.batch_keys == ("inputs", "targets", "segment_ids", "positions")
  summary = train_lib.train_and_evaluate(config, str(tmp_path))
  assert summary["segment_ids"] is True and np.isfinite(summary["loss"])
  assert tasks.get_task("text", small_config()).batch_keys == ("inputs", "targets")


@pytest.mark.parametrize(
  "changes, message",
  [
    ({"data.segment_ids": 1}, "data.segment_ids=1 must be True or False"),
    ({"data.segment_ids": True, "data.sink_token": True}, "data.segment_ids=True takes no sink"),
    ({"data.segment_ids": True, "model.num_sinks": 1}, "data.segment_ids=True takes no sink"),
  ],
)
def test_packed_documents_config_errors(changes, message):
  config = small_config()
  with config.ignore_type():
    for key, value in changes.items():
      section, _, field = key.rpartition(".")
      setattr(config[section], field, value)
  with pytest.raises(ValueError, match=message):
    train_lib.validate_config(config)


def test_a_workdir_from_before_segment_ids_still_resumes():
  from swa import workdir as workdir_lib

  saved = {"data.seq_len": 256}
  workdir_lib.check_config(saved, {**saved, "data.segment_ids": False}, "w")
  with pytest.raises(workdir_lib.ConfigMismatchError, match="data.segment_ids: false -> true"):
    workdir_lib.check_config(saved, {**saved, "data.segment_ids": True}, "w")
