"""The relay probe (swa/hop_probe.py): its prompt pairs, and the mask's bound on what it finds."""

import numpy as np
import pytest
from flax import nnx

from swa import data, hop_probe
from swa.model import ModelConfig, Transformer


def make(windows):
  config = ModelConfig(
    vocab_size=data.VOCAB_SIZE,
    num_layers=len(windows),
    d_model=32,
    num_heads=4,
    num_kv_heads=4,
    mlp_dim=64,
    window_size=windows,
    attention="reference",
  )
  graphdef, params = nnx.split(Transformer(config, rngs=nnx.Rngs(0)), nnx.Param)
  return graphdef, params


def test_pairs_differ_in_the_five_key_digits_only():
  a_BT, b_BT, first = hop_probe.key_swapped_pairs(seed=3, distance=50, num=4, seq_len=96)
  assert first == 96 - data.ANSWER_LEN - 50
  differ_BT = a_BT != b_BT
  assert differ_BT[:, first : first + data.ANSWER_LEN].all() and differ_BT.sum() == 4 * 5
  for row_a, row_b in zip(a_BT, b_BT):
    text_a, text_b = data.decode(row_a), data.decode(row_b)
    assert text_a[first - len(data.KEY_PREFIX) : first] == data.KEY_PREFIX
    key_b = text_b[first : first + data.ANSWER_LEN]
    assert key_b.isdigit() and key_b[0] != "0"


def test_bound_is_the_stacked_window():
  assert hop_probe.bound((8, 32, 32), 1) == 4 + 7
  assert hop_probe.bound((8, 32, 32), 3) == 4 + 7 + 31 + 31
  assert hop_probe.bound((8, None), 2) is None


@pytest.mark.parametrize("windows, reaches_answer", [((8, 16, 16), False), ((8, 32, 32), True)])
def test_nothing_changes_beyond_the_mask_and_the_answer_only_within_reach(windows, reaches_answer):
  graphdef, params = make(windows)
  rows, answer = hop_probe.relay_profile(graphdef, params, 50, num=2, seq_len=96, bin_width=8)
  assert [a["layer"] for a in answer] == [1, 2, 3]
  assert all(a["beyond_bound"] == 0.0 for a in answer)  # exactly: the mask's guarantee
  # Reach 37 < 50: the key cannot reach the answer; reach 69: a random model carries some of it.
  assert (answer[-1]["change"] > 1e-4) == reaches_answer
  assert answer[0]["change"] == 0.0  # one layer of 8 never reaches 50 tokens
  first_bin = [r for r in rows if r["layer"] == 1 and r["offset"] == 0]
  assert first_bin[0]["change"] > 1e-3  # the digits themselves changed
  with pytest.raises(ValueError, match="bin_width=0 must be an integer >= 1"):
    hop_probe.relay_profile(graphdef, params, 50, num=2, seq_len=96, bin_width=0)
  np.testing.assert_array_equal([r["offset"] for r in rows if r["layer"] == 2], range(0, 51, 8))
