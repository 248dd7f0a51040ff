"""scripts/longest_context.py, attention_trace.py and step_rate.py (one model, vmapped seeds) on CPU."""

import os
import re
import subprocess
import sys

import pytest

from swa import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_lengths_parse_with_binary_units():
  assert [cli.parse_length(t) for t in ("4M", "256k", "1000", " 2m ")] == [
    4 * 2**20,
    256 * 2**10,
    1000,
    2 * 2**20,
  ]
  with pytest.raises(ValueError, match="is not a length"):
    cli.parse_length("4 MB")


def _run(*args):
  done = subprocess.run(
    [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=300
  )
  assert done.returncode == 0, done.stderr[-2000:]
  return done.stdout.splitlines()


@pytest.mark.slow
def test_longest_context_names_the_longest_length_that_trained():
  lines = _run(
    "scripts.longest_context",
    "--config=configs/tiny.py",
    "--config.model.d_model=32",
    "--config.data.batch_size=1",
    "--lengths=1k,256",
  )
  assert lines[0].startswith("T=256: trained (") and lines[1].startswith("T=1,024: trained (")
  assert lines[-1] == "longest trained T: 1,024 on 1 x cpu (mesh {'data': 1, 'seq': 1})"


@pytest.mark.slow
def test_attention_trace_runs_each_implementation():
  lines = _run(
    "scripts.attention_trace",
    "--n=128",
    "--window=16",
    "--impls=chunked,pallas",
    "--pallas_blocks=default,16x16/16x16/16x16/w4s3/w4s3/1loop",
    "--heads=2",
    "--head_dim=16",
    "--steps=1",
  )
  assert [line for line in lines if line.startswith("== ")] == [
    "== chunked: n=128 w=16 (1, 128, 2, 16) bf16, fwd+bwd",
    "== pallas 64x64/64x32/32x64/w4s3/w4s3/1loop: n=128 w=16 (1, 128, 2, 16) bf16, fwd+bwd",
    "== pallas 16x16/16x16/16x16/w4s3/w4s3/1loop: n=128 w=16 (1, 128, 2, 16) bf16, fwd+bwd",
  ]


# A step of the tiny model small enough for a test.
_TINY_STEP_RATE = (
  "scripts.step_rate",
  "--config=configs/tiny.py",
  "--seconds=0.5",
  "--config.data.seq_len=64",
  "--config.data.batch_size=2",
  "--config.model.d_model=32",
)


@pytest.mark.slow
def test_step_rate_script_prints_the_rates():
  lines = _run(*_TINY_STEP_RATE)
  assert re.search(
    r"configs/tiny.py window=\(8, 32, 32, 32\) B=2 T=64 mesh=\{'data': 1, 'seq': 1\}: [\d.]+ steps/s, "
    r"[\d,]+ examples/s",
    lines[-1],
  )


@pytest.mark.slow
def test_step_rate_trains_vmapped_seeds():
  lines = _run(*_TINY_STEP_RATE, "--vmap_seeds=2")
  assert "seeds=2 (vmapped):" in lines[-1] and " tokens/s (" in lines[-1]
