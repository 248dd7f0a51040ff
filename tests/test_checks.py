"""swa.checks.check_int: the one integer validator."""

import numpy as np
import pytest

from swa.checks import check_int


@pytest.mark.parametrize("value", [1, 7, np.int64(4), np.int32(1)])
def test_integers_in_range_pass_as_int(value):
  out = check_int("n", value)
  assert out == int(value) and type(out) is int


@pytest.mark.parametrize("value", [0, -3, True, False, 4.0, "3", None, np.bool_(True)])
def test_others_raise_one_line_naming_the_value(value):
  with pytest.raises(ValueError, match=r"^--n=.* must be an integer >= 1\.$"):
    check_int("--n", value)


def test_bounds():
  assert check_int("k", 0, low=0) == 0
  with pytest.raises(ValueError, match=r"^k=9 must be an integer >= 0 and <= 8\.$"):
    check_int("k", 9, low=0, high=8)
  with pytest.raises(ValueError, match=r"^k=\(-1\+0j\) must be an integer\.$"):
    check_int("k", -1.0 + 0j, low=None)
