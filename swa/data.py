"""Passkey retrieval task: a character-level tokenizer, prompts and batches.

A prompt of `seq_len` tokens (one token per character) reads

    <filler> The passkey is 48213. <filler> What is the passkey? The passkey is

and the model must continue it with the digits `48213`. Filler is random simple sentences with no
digits and no mention of the passkey, so the key sentence is the only place the answer can come
from. Passkeys are 5-digit numbers 10000..99999 (no leading zero, so `str(passkey)` is the key
text). Everything is numpy and a pure function of its seed; nothing is downloaded.

Distance, on which evaluation is stratified. Let `p_last = seq_len - 1` be the index of the last
prompt token (the trailing space of QUESTION) and `k0 = key_position + len(KEY_PREFIX)` the index
of the first key digit. A decoder predicts answer digit j at position `p_last + j` (teacher
forced) and digit j of the key sits at `k0 + j`, so every digit is retrieved across the same

    distance = p_last - k0 = seq_len - 1 - key_position - len(KEY_PREFIX).

With L layers of window w (a query at i sees keys i-w+1..i) information moves at most L*(w-1)
positions, so retrieval is possible in principle iff distance <= L*(w-1). Distances run from
MIN_DISTANCE = 42 (key sentence right before the question) to max_distance(seq_len) (key sentence
at position 0).

Training layout. An example of context length T is T+1 tokens: a prompt of T+1-ANSWER_LEN tokens,
then the answer digits; inputs = tokens[:-1], targets = tokens[1:]. The logits at inputs position
p predict targets[p] = tokens[p+1], so p_last = T - ANSWER_LEN and the answer is the last
ANSWER_LEN targets (answer_mask). The LM loss may use every position.

The resumable training stream (curricula over distance) is swa/curriculum.py.
"""

import math
import string

import numpy as np

# Tokenizer: id 0 is padding, id i+1 is VOCAB[i].
PAD_ID = 0
VOCAB = " " + string.ascii_lowercase + string.ascii_uppercase + string.digits + ".,?!':;-"
VOCAB_SIZE = len(VOCAB) + 1  # 72: PAD plus one id per character.

# Lookup tables over byte values so encoding a whole batch is one numpy gather, not a Python loop.
_ENCODE_TABLE = np.full(256, -1, np.int32)
_ENCODE_TABLE[np.frombuffer(VOCAB.encode("ascii"), np.uint8)] = np.arange(1, VOCAB_SIZE)
_DECODE_TABLE = np.frombuffer(b"\0" + VOCAB.encode("ascii"), np.uint8)

# Task text.
KEY_PREFIX = "The passkey is "
QUESTION = "What is the passkey? The passkey is "
ANSWER_LEN = 5
PASSKEY_MIN, PASSKEY_MAX = 10_000, 99_999
KEY_SENTENCE_LEN = len(KEY_PREFIX) + ANSWER_LEN + len(". ")  # "The passkey is 48213. "
MIN_PROMPT_LEN = KEY_SENTENCE_LEN + len(QUESTION)  # key sentence then question, no filler
MIN_DISTANCE = MIN_PROMPT_LEN - 1 - len(KEY_PREFIX)  # 42: the digits, ". " and the question
MIN_CONTEXT_LEN = MIN_PROMPT_LEN + ANSWER_LEN - 1  # 62: shortest T for passkey_batch

FILLER_SENTENCES = (
  # The usual sentences of the passkey literature...
  "The grass is green.",
  "The sky is blue.",
  "The sun is yellow.",
  "Here we go.",
  "There and back again.",
  # ...and more of the same kind, so the filler is not a short repeating period.
  "The river runs to the sea.",
  "Birds sing in the morning.",
  "The wind is cold tonight.",
  "A cat sleeps on the mat.",
  "The road is long and quiet.",
  "Rain falls on the old roof.",
  "The moon is bright.",
  "Trees grow tall in the forest.",
  "The bread is still warm.",
  "We walk along the shore.",
  "Snow covers the hills.",
  "It's a quiet day, isn't it?",
  "Look at all the stars!",
)
_SHORTEST_FILLER = min(len(s) for s in FILLER_SENTENCES)


def encode(text: str) -> np.ndarray:
  """Maps text to token ids, one per character.

  Args:
    text: string made only of characters in VOCAB.

  Returns:
    int32 [len(text)] token ids in 1..VOCAB_SIZE-1.
  """
  if text.isascii():
    ids = _ENCODE_TABLE[np.frombuffer(text.encode("ascii"), np.uint8)]
    if (ids >= 0).all():
      return ids
  index, char = next((i, c) for i, c in enumerate(text) if c not in VOCAB)
  raise ValueError(
    f"character {char!r} at index {index} is not in the vocabulary; allowed are {VOCAB!r}."
  )


def decode(ids) -> str:
  """Maps token ids back to text; PAD ids decode to nothing.

  Args:
    ids: integer array-like [N] of ids in 0..VOCAB_SIZE-1.

  Returns:
    the decoded string (len(ids) minus the number of PAD ids characters).
  """
  ids = np.asarray(ids)
  if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
    raise ValueError(
      f"ids must be a 1-D integer array, got shape {ids.shape} and dtype {ids.dtype}."
    )
  if ids.size and (ids.min() < 0 or ids.max() >= VOCAB_SIZE):
    bad = ids[(ids < 0) | (ids >= VOCAB_SIZE)][0]
    raise ValueError(f"token id {bad} is out of range; allowed ids are 0..{VOCAB_SIZE - 1}.")
  chars = _DECODE_TABLE[ids.astype(np.intp)]
  return chars[ids != PAD_ID].tobytes().decode("ascii")


def _check_prompt_len(seq_len: int) -> None:
  if seq_len < MIN_PROMPT_LEN:
    raise ValueError(
      f"seq_len={seq_len} is too short; a prompt needs at least {MIN_PROMPT_LEN} tokens."
    )


def check_context_len(seq_len: int) -> None:
  """Raises a ValueError if seq_len is too short for passkey_batch."""
  if seq_len < MIN_CONTEXT_LEN:
    raise ValueError(
      f"seq_len={seq_len} is too short; passkey batches need seq_len >= {MIN_CONTEXT_LEN}."
    )


def max_distance(seq_len: int) -> int:
  """Largest distance a prompt of seq_len tokens allows (key sentence at position 0)."""
  _check_prompt_len(seq_len)
  return seq_len - 1 - len(KEY_PREFIX)


def context_max_distance(seq_len: int) -> int:
  """Largest distance a context of seq_len tokens holds: its prompt is seq_len + 1 - ANSWER_LEN
  tokens (module docstring), so this is seq_len - 20."""
  return max_distance(seq_len + 1 - ANSWER_LEN)


def passkey_distance(seq_len: int, key_position: int) -> int:
  """Distance from the first key digit to the last prompt token (see module docstring).

  Args:
    seq_len: prompt length in tokens.
    key_position: token index where the key sentence starts.

  Returns:
    seq_len - 1 - key_position - len(KEY_PREFIX), in MIN_DISTANCE..max_distance(seq_len).
  """
  _check_prompt_len(seq_len)
  last = seq_len - MIN_PROMPT_LEN
  if not 0 <= key_position <= last:
    raise ValueError(
      f"key_position={key_position} is not allowed for seq_len={seq_len}; "
      f"the key sentence must start in 0..{last} to fit before the question."
    )
  return seq_len - 1 - key_position - len(KEY_PREFIX)


def key_position_for_distance(seq_len: int, distance: int) -> int:
  """Inverse of passkey_distance: where the key sentence starts for a given distance."""
  limit = max_distance(seq_len)
  if not MIN_DISTANCE <= distance <= limit:
    raise ValueError(
      f"distance={distance} is impossible for seq_len={seq_len}; "
      f"allowed distances are {MIN_DISTANCE}..{limit}."
    )
  return seq_len - 1 - len(KEY_PREFIX) - distance


def _passkey_text(passkey) -> str:
  """Validates a passkey given as int or str and returns its 5 digits."""
  if isinstance(passkey, str):
    ok = len(passkey) == ANSWER_LEN and passkey.isascii() and passkey.isdigit()
    ok = ok and passkey[0] != "0"
  else:
    ok = isinstance(passkey, (int, np.integer)) and not isinstance(passkey, bool)
    ok = ok and PASSKEY_MIN <= passkey <= PASSKEY_MAX
  if not ok:
    raise ValueError(
      f"passkey={passkey!r} is not allowed; use a 5-digit number "
      f"{PASSKEY_MIN}..{PASSKEY_MAX} as int or str."
    )
  return str(int(passkey))


def _filler(rng: np.random.Generator, n: int) -> str:
  """n characters of random filler, ending in a space so that the next sentence starts a word.

  The cut may end mid-word ("The gr ") or, when a sentence ends just before it, in a double space.
  """
  if n == 0:
    return ""
  count = n // _SHORTEST_FILLER + 1  # count * shortest > n: the joined text is long enough to cut
  text = " ".join([FILLER_SENTENCES[i] for i in rng.integers(len(FILLER_SENTENCES), size=count)])
  return text[: n - 1] + " "


def _prompt_text(rng: np.random.Generator, seq_len: int, key_position: int, key: str) -> str:
  """Filler, key sentence at key_position, filler, QUESTION: exactly seq_len characters."""
  middle = seq_len - key_position - MIN_PROMPT_LEN
  return _filler(rng, key_position) + KEY_PREFIX + key + ". " + _filler(rng, middle) + QUESTION


def create_passkey_dataset(
  seq_len: int = 2000, key_position: int = 0, *, passkey=None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  """One passkey prompt and its answer.

  Args:
    seq_len: prompt length in tokens, at least MIN_PROMPT_LEN.
    key_position: token index where "The passkey is " starts, 0..seq_len-MIN_PROMPT_LEN.
    passkey: 5-digit int or str in 10000..99999; None draws one from the seed.
    seed: seeds np.random.default_rng for the passkey and the filler. The passkey is drawn even
      when given, so the filler for a seed does not depend on whether a passkey was passed.

  Returns:
    sequence: int32 [seq_len] prompt ending with QUESTION.
    target: int32 [ANSWER_LEN] token ids of the passkey digits.
  """
  passkey_distance(seq_len, key_position)  # validates seq_len and key_position
  rng = np.random.default_rng(seed)
  drawn = int(rng.integers(PASSKEY_MIN, PASSKEY_MAX + 1))
  key = _passkey_text(drawn if passkey is None else passkey)
  return encode(_prompt_text(rng, seq_len, key_position, key)), encode(key)


def passkey_batch(rng: np.random.Generator, batch_size: int, seq_len: int, distances) -> dict:
  """A batch of teacher-forced passkey examples at chosen distances (layout: module docstring).

  Args:
    rng: source of the passkeys and filler.
    batch_size: B, number of examples.
    seq_len: T, model context length; the prompt is T+1-ANSWER_LEN tokens.
    distances: int [B] (or a scalar for all), each in MIN_DISTANCE..max_distance(T+1-ANSWER_LEN).

  Returns:
    dict of numpy arrays: inputs int32 [B,T]; targets int32 [B,T] (targets[:, p] is
    tokens[:, p+1]); answer_mask float32 [B,T] (1 on the last ANSWER_LEN positions, whose
    targets are the digits); distance int32 [B]; passkey int32 [B].
  """
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size} is not allowed; it must be at least 1.")
  check_context_len(seq_len)
  prompt_len = seq_len + 1 - ANSWER_LEN
  distances = np.asarray(distances)
  if distances.ndim == 0:
    distances = np.full(batch_size, distances)
  if distances.shape != (batch_size,) or not np.issubdtype(distances.dtype, np.integer):
    raise ValueError(
      f"distances must be integers of shape ({batch_size},), got shape "
      f"{distances.shape} and dtype {distances.dtype}."
    )
  limit = context_max_distance(seq_len)
  bad = distances[(distances < MIN_DISTANCE) | (distances > limit)]
  if bad.size:
    raise ValueError(
      f"distance={bad[0]} is impossible for seq_len={seq_len}; "
      f"allowed distances are {MIN_DISTANCE}..{limit}."
    )
  passkeys = rng.integers(PASSKEY_MIN, PASSKEY_MAX + 1, size=batch_size)
  key_positions = prompt_len - 1 - len(KEY_PREFIX) - distances
  texts = [
    _prompt_text(rng, prompt_len, int(k), str(key)) + str(key)
    for k, key in zip(key_positions, passkeys)
  ]
  tokens = encode("".join(texts)).reshape(batch_size, seq_len + 1)
  answer_mask = np.zeros((batch_size, seq_len), np.float32)
  answer_mask[:, -ANSWER_LEN:] = 1.0
  return {
    "inputs": np.ascontiguousarray(tokens[:, :-1]),
    "targets": np.ascontiguousarray(tokens[:, 1:]),
    "answer_mask": answer_mask,
    "distance": distances.astype(np.int32),
    "passkey": passkeys.astype(np.int32),
  }


# --- The evaluation grid: the distances tested and each one's prompt length --------------------
#
# Prompt length. With RoPE, attention depends only on relative positions, so a windowed model
# gives the same answer logits (up to float rounding) on any prompt of at least reach +
# ANSWER_LEN tokens that ends with the same reach + 1 tokens. Each distance is evaluated at
#
#     T = max(train_seq_len, round_up(d + ANSWER_LEN + len(KEY_PREFIX), LENGTH_MULTIPLE)),
#
# the trained length while d fits (exactly the training distribution), else the shortest prompt
# holding d, rounded up so that few shapes are compiled; such rows carry beyond_train_len=True.
# A full-attention model's output depends on the whole prefix: beyond its trained length it
# extrapolates RoPE, which is what `sweep_distances(full_max_factor > 1)` measures.
#
# swa/evaluate.py scores models at these distances.

LENGTH_MULTIPLE = 64  # beyond the trained length, prompts are rounded up to this many tokens
FINE_FRACTION, FINE_STEP = 0.05, 8  # sweeps: every <= 8 tokens within +-5 % of the reach


def context_len(distance: int, train_seq_len: int, multiple: int = LENGTH_MULTIPLE) -> int:
  """Context length T at which `distance` is evaluated (the comment above)."""
  shortest = distance + ANSWER_LEN + len(KEY_PREFIX)  # key sentence at position 0
  return max(train_seq_len, -(-shortest // multiple) * multiple)


def even_distances(seq_len: int, num: int) -> list:
  """`num` distances evenly spaced over all that a prompt of context seq_len allows (train.py)."""
  top = context_max_distance(seq_len)
  return sorted(set(np.linspace(MIN_DISTANCE, top, num).round().astype(int).tolist()))


def hop_distances(windows, seq_len: int, fraction: float = 0.95):
  """One distance per hop: fraction x sum_{l<=k} (w_l - 1) for k = 1..L, inside the context.

  Recall there needs the first k layers to relay the key (fewer cannot reach it), so the step at
  which each distance is first answered is the step at which hop k formed (eval.hop_distances).
  Hops shorter than MIN_DISTANCE (e.g. a short first layer) are left out; None when a layer has
  full attention.
  """
  if None in windows:
    return None
  top = context_max_distance(seq_len)
  picked = {int(fraction * r) for r in np.cumsum([w - 1 for w in windows])}
  return sorted(d for d in picked if MIN_DISTANCE <= d <= top)


def sweep_distances(
  reach, train_seq_len: int, *, max_factor: float = 2.0, step=None, full_max_factor: float = 1.0
) -> list:
  """Distances to evaluate, from MIN_DISTANCE on.

  Windowed models (reach an int): up to ceil(max_factor * reach), every `step` tokens
  (default reach / 16), every step / 4 (default reach / 64) within +-15 % of the reach, every
  min(that, FINE_STEP) within +-FINE_FRACTION of it, and reach and reach + 1 themselves. Full
  attention (reach None): up to full_max_factor times the trained length's largest distance
  (> 1: prompts longer than trained, to find where full attention stops), every `step`
  (default 1/32 of the range within the trained length).

  Returns:
    sorted list of distinct ints.
  """
  if reach is None:
    if full_max_factor < 1:
      raise ValueError(f"full_max_factor={full_max_factor} must be >= 1.")
    trained_top = context_max_distance(train_seq_len)
    top = math.ceil(full_max_factor * trained_top)
    coarse = step or max(1, round((trained_top - MIN_DISTANCE) / 32))
    points = set(range(MIN_DISTANCE, top + 1, coarse)) | {trained_top, top}
  else:
    top = max(MIN_DISTANCE, math.ceil(max_factor * reach))
    coarse = step or max(1, round(reach / 16))
    fine = max(1, coarse // 4) if step else max(1, round(reach / 64))
    points = set(range(MIN_DISTANCE, top + 1, coarse)) | {top, reach, reach + 1}
    points |= set(range(math.floor(0.85 * reach), math.ceil(1.15 * reach) + 1, fine))
    finest = min(fine, FINE_STEP)
    points |= set(
      range(
        math.floor((1 - FINE_FRACTION) * reach), math.ceil((1 + FINE_FRACTION) * reach) + 1, finest
      )
    )
  return sorted(d for d in points if MIN_DISTANCE <= d <= top)
