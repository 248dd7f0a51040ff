"""Helpers shared by the test files (importable as `conftest`: pytest puts tests/ on the path)."""

import os

# XLA's CPU backend without LLVM's optimisation passes: the tests compile hundreds of small
# programs and run each once or twice, and these passes were most of their time (a case of
# tests/test_attention.py: 6.4 s -> 1.2 s on a 2-core box). XLA's own passes still run, so the
# programs are the same; machine code may differ (float results in the last bits at most). Set
# before JAX starts (subprocesses inherit it); an XLA_FLAGS that names the level already wins.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
  ).strip()

import pytest  # noqa: E402

from swa.analysis import rows as rows_lib  # noqa: E402


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
