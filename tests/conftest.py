"""Helpers shared by the test files (importable as `conftest`: pytest puts tests/ on the path)."""

import pytest

from swa.analysis import rows as rows_lib


@pytest.fixture(scope="session", autouse=True)
def _sharding_child_in_background(request, tmp_path_factory):
  """Starts tests/test_sharding.py's multi-device child at the session's first test, where
  its tests are selected, so that it runs beside the others rather than ahead of its own."""
  items = [i for i in request.session.items if i.path.name == "test_sharding.py"]
  child = None
  if items:
    module = items[0].module
    child = module.start_child(module.shared_folder(tmp_path_factory, request.config))
  yield
  if child is not None:  # another worker may still wait for its file
    child.wait()


def passkey_rows(
  model, accuracies, *, seed=0, reach=508, window="128", layers=4, n=100, train=640, seq_len=None
):
  """PasskeyRows of one model and seed from {distance: accuracy}. Prompts have seq_len tokens,
  or by default the trained length where d fits in it, else 64 tokens longer per 64 of d."""
  return [
    rows_lib.PasskeyRow(
      model=model,
      window=window,
      layers=layers,
      reach=reach,
      distance=d,
      accuracy=a,
      n=n,
      seq_len=seq_len or max(train, -(-(d + 20) // 64) * 64),
      train_seq_len=train,
      seed=seed,
    )
    for d, a in accuracies.items()
  ]
