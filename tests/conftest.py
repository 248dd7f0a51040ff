"""Helpers shared by the test files (importable as `conftest`: pytest puts tests/ on the path)."""

from swa.analysis import rows as rows_lib


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
