"""Tests for swa/data.py: tokenizer, passkey prompts, distances and batches."""

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swa import data

DIGIT_IDS = data.encode("0123456789")


def _digit_positions(ids):
  return np.flatnonzero(np.isin(ids, DIGIT_IDS))


# Tokenizer.


def test_vocab_constants():
  assert data.PAD_ID == 0
  assert data.VOCAB_SIZE == len(data.VOCAB) + 1 == 72
  assert len(set(data.VOCAB)) == len(data.VOCAB)


def test_round_trip_every_character():
  ids = data.encode(data.VOCAB)
  assert ids.dtype == np.int32
  np.testing.assert_array_equal(ids, np.arange(1, data.VOCAB_SIZE))
  assert data.decode(ids) == data.VOCAB
  assert data.decode(data.encode("")) == ""


def test_round_trip_random_text():
  rng = np.random.default_rng(0)
  text = "".join(rng.choice(list(data.VOCAB), size=5000))
  assert data.decode(data.encode(text)) == text


def test_pad_decodes_to_nothing():
  ids = np.concatenate([[data.PAD_ID], data.encode("Hi there."), [data.PAD_ID, data.PAD_ID]])
  assert data.decode(ids) == "Hi there."


@pytest.mark.parametrize(
  "text, char", [("abc#d", "#"), ("caf\u00e9!", "\u00e9"), ("a\nb", "\n"), ("x\x00", "\x00")]
)
def test_encode_unknown_character(text, char):
  message = f"character {char!r} at index {text.index(char)} is not in the vocabulary"
  with pytest.raises(ValueError, match=re.escape(message)):
    data.encode(text)


def test_decode_rejects_bad_ids():
  with pytest.raises(ValueError, match="token id 72 is out of range"):
    data.decode([1, 72])
  with pytest.raises(ValueError, match="token id -1 is out of range"):
    data.decode([-1])
  with pytest.raises(ValueError, match="1-D integer array"):
    data.decode(np.ones((2, 2), np.int32))


# Task text.


def test_filler_sentences_are_clean():
  assert {
    "The grass is green.",
    "The sky is blue.",
    "The sun is yellow.",
    "Here we go.",
    "There and back again.",
  } <= set(data.FILLER_SENTENCES)
  assert len(data.FILLER_SENTENCES) >= 15
  for sentence in data.FILLER_SENTENCES:
    assert not any(c.isdigit() for c in sentence)
    assert "passkey" not in sentence.lower()
    data.encode(sentence)  # every filler character is in the vocabulary


def test_constants_agree():
  assert data.KEY_SENTENCE_LEN == len("The passkey is 12345. ")
  assert data.MIN_CONTEXT_LEN == 62
  assert data.MIN_PROMPT_LEN == data.KEY_SENTENCE_LEN + len(data.QUESTION) == 58
  assert data.MIN_DISTANCE == data.passkey_distance(data.MIN_PROMPT_LEN, 0) == 42


# create_passkey_dataset.


@pytest.mark.parametrize(
  "seq_len, key_position",
  [(2000, 0), (2000, 1), (2000, 777), (2000, 1942), (58, 0), (59, 1), (100, 13)],
)
def test_create_passkey_dataset_layout(seq_len, key_position):
  sequence, target = data.create_passkey_dataset(seq_len, key_position, seed=key_position)
  assert sequence.shape == (seq_len,) and sequence.dtype == np.int32
  assert target.shape == (data.ANSWER_LEN,) and target.dtype == np.int32
  text = data.decode(sequence)
  key = data.decode(target)
  assert len(key) == 5 and key.isdigit() and 10000 <= int(key) <= 99999
  assert text[key_position : key_position + data.KEY_SENTENCE_LEN] == f"The passkey is {key}. "
  assert text.endswith(data.QUESTION)
  # The key is the only place digits appear, so the answer is unambiguous.
  k0 = key_position + len(data.KEY_PREFIX)
  np.testing.assert_array_equal(_digit_positions(sequence), np.arange(k0, k0 + 5))
  np.testing.assert_array_equal(sequence[k0 : k0 + 5], target)
  assert text.count("passkey") == 3  # key sentence plus the two in the question
  # Filler ends in a space, so the key sentence and the question start a word.
  if key_position > 0:
    assert text[key_position - 1] == " "
  if seq_len - key_position > data.MIN_PROMPT_LEN:
    assert text[-len(data.QUESTION) - 1] == " "


def test_create_passkey_dataset_given_passkey_and_determinism():
  a, ta = data.create_passkey_dataset(300, 50, passkey=12345, seed=7)
  b, tb = data.create_passkey_dataset(300, 50, passkey="12345", seed=7)
  c, _ = data.create_passkey_dataset(300, 50, seed=7)
  d, _ = data.create_passkey_dataset(300, 50, seed=8)
  np.testing.assert_array_equal(a, b)
  assert data.decode(ta) == data.decode(tb) == "12345"
  # Filler depends on the seed only, not on whether a passkey was given.
  k0 = 50 + len(data.KEY_PREFIX)
  np.testing.assert_array_equal(np.delete(a, np.s_[k0 : k0 + 5]), np.delete(c, np.s_[k0 : k0 + 5]))
  assert not np.array_equal(c, d)


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(seq_len=57), "seq_len=57 is too short"),
    (dict(seq_len=2000, key_position=-1), "key_position=-1 is not allowed for seq_len=2000"),
    (dict(seq_len=2000, key_position=1943), r"key_position=1943 .* 0\.\.1942"),
    (dict(seq_len=100, passkey=1234), "passkey=1234 is not allowed"),
    (dict(seq_len=100, passkey=100000), "passkey=100000 is not allowed"),
    (dict(seq_len=100, passkey="01234"), "passkey='01234' is not allowed"),
    (dict(seq_len=100, passkey="1234a"), "passkey='1234a' is not allowed"),
    (dict(seq_len=100, passkey="123456"), "passkey='123456' is not allowed"),
    (dict(seq_len=100, passkey=True), "passkey=True is not allowed"),
    (dict(seq_len=100, passkey=12345.0), "passkey=12345.0 is not allowed"),
  ],
)
def test_create_passkey_dataset_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    data.create_passkey_dataset(**kwargs)


# Distances.


def test_distance_definition():
  # Key digit 0 at key_position + 15; last prompt token at seq_len - 1.
  assert data.passkey_distance(2000, 0) == 2000 - 1 - 15 == data.max_distance(2000)
  assert data.passkey_distance(2000, 1942) == data.MIN_DISTANCE
  assert data.passkey_distance(100, 10) == 74


def test_distance_inverse_round_trip():
  for seq_len in (58, 59, 64, 513, 2000):
    positions = range(seq_len - data.MIN_PROMPT_LEN + 1)
    distances = [data.passkey_distance(seq_len, k) for k in positions]
    assert distances == list(range(data.max_distance(seq_len), data.MIN_DISTANCE - 1, -1))
    assert [data.key_position_for_distance(seq_len, d) for d in distances] == list(positions)


def test_distance_errors():
  with pytest.raises(ValueError, match=r"distance=41 is impossible for seq_len=100; .* 42\.\.84"):
    data.key_position_for_distance(100, 41)
  with pytest.raises(ValueError, match="distance=85 is impossible"):
    data.key_position_for_distance(100, 85)
  with pytest.raises(ValueError, match="seq_len=10 is too short"):
    data.max_distance(10)
  with pytest.raises(ValueError, match="key_position=43 is not allowed for seq_len=100"):
    data.passkey_distance(100, 43)


@settings(max_examples=60, deadline=None)
@given(
  st.integers(58, 3000).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 58))),
  st.integers(0, 2**32 - 1),
)
def test_property_prompt_layout(seq_len_and_position, seed):
  seq_len, key_position = seq_len_and_position
  sequence, target = data.create_passkey_dataset(seq_len, key_position, seed=seed)
  distance = data.passkey_distance(seq_len, key_position)
  assert data.key_position_for_distance(seq_len, distance) == key_position
  assert len(sequence) == seq_len
  p_last = seq_len - 1
  np.testing.assert_array_equal(_digit_positions(sequence), p_last - distance + np.arange(5))
  np.testing.assert_array_equal(sequence[p_last - distance + np.arange(5)], target)
  text = data.decode(sequence)
  assert text[key_position:].startswith(data.KEY_PREFIX) and text.endswith(data.QUESTION)


# passkey_batch.


def test_passkey_batch_off_by_one():
  seq_len, batch_size = 128, 16
  limit = data.max_distance(seq_len + 1 - data.ANSWER_LEN)
  distances = np.linspace(data.MIN_DISTANCE, limit, batch_size).astype(np.int64)
  batch = data.passkey_batch(np.random.default_rng(1), batch_size, seq_len, distances)
  for key in ("inputs", "targets", "answer_mask"):
    assert batch[key].shape == (batch_size, seq_len)
  assert batch["inputs"].dtype == batch["targets"].dtype == np.int32
  assert batch["answer_mask"].dtype == np.float32
  assert batch["distance"].dtype == batch["passkey"].dtype == np.int32
  np.testing.assert_array_equal(batch["distance"], distances)
  # Targets are inputs shifted by one.
  np.testing.assert_array_equal(batch["targets"][:, :-1], batch["inputs"][:, 1:])
  p_last = seq_len - data.ANSWER_LEN
  answer_positions = np.flatnonzero(batch["answer_mask"][0])
  np.testing.assert_array_equal(answer_positions, p_last + np.arange(5))
  np.testing.assert_array_equal(batch["answer_mask"].sum(axis=1), 5)
  for b in range(batch_size):
    digits = data.encode(str(batch["passkey"][b]))
    d = int(batch["distance"][b])
    # The logit at p_last + j predicts digit j, which sits d positions earlier in the inputs.
    np.testing.assert_array_equal(batch["targets"][b, p_last + np.arange(5)], digits)
    np.testing.assert_array_equal(batch["inputs"][b, p_last + np.arange(5) - d], digits)
    prompt = batch["inputs"][b, : p_last + 1]
    assert data.decode(prompt).endswith(data.QUESTION)
    np.testing.assert_array_equal(_digit_positions(prompt), p_last - d + np.arange(5))


def test_passkey_batch_scalar_distance_and_errors():
  rng = np.random.default_rng(0)
  batch = data.passkey_batch(rng, 3, 100, 50)
  np.testing.assert_array_equal(batch["distance"], [50, 50, 50])
  with pytest.raises(ValueError, match="seq_len=61 is too short; .* >= 62"):
    data.passkey_batch(rng, 2, 61, 42)
  with pytest.raises(ValueError, match=r"distance=43 is impossible for seq_len=62; .* 42\.\.42"):
    data.passkey_batch(rng, 2, 62, [42, 43])
  with pytest.raises(ValueError, match=r"shape \(3,\)"):
    data.passkey_batch(rng, 3, 64, [42, 43])
  with pytest.raises(ValueError, match="integers"):
    data.passkey_batch(rng, 2, 64, [42.0, 43.0])
  with pytest.raises(ValueError, match="batch_size=0"):
    data.passkey_batch(rng, 0, 64, [])
