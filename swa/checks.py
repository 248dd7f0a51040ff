"""The one validator of integer arguments and settings: a one-line ValueError naming the value.

The bottom of the import graph beside swa/mask.py; every module that takes a count, a length or a
size checks it with `check_int`, so the same mistake reads the same everywhere.
"""

import numpy as np


def check_int(name, value, low=1, high=None):
  """Returns int(value); a one-line ValueError unless it is an integer in [low, high].

  Python and NumPy integers pass; bools, floats (even 4.0) and strings do not.

  Args:
    name: how the user spells the setting (`--max_len`, `data.batch_size`), named in the error.
    value: the value to check.
    low: the smallest allowed value (None: no lower bound).
    high: the largest allowed value (None: no upper bound).
  """
  is_int = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
  if not is_int or (low is not None and value < low) or (high is not None and value > high):
    bounds = ([f">= {low}"] if low is not None else []) + (
      [f"<= {high}"] if high is not None else []
    )
    raise ValueError(
      f"{name}={value!r} must be an integer {' and '.join(bounds)}.".replace(" .", ".")
    )
  return int(value)
