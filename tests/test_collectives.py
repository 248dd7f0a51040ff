"""scripts/collectives.py: the collectives of a compiled sharded training step."""

import os
import subprocess
import sys

import pytest

from scripts import collectives

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_counts_kinds_and_result_bytes():
  hlo = "\n".join(
    [
      "  %p = f32[2,511,16,32]{3,2,1,0} collective-permute(%x), source_target_pairs={{0,1}}",
      "  %r = (f32[72,256]{1,0}, bf16[8]{0}) all-reduce(%a, %b), replica_groups={}",
      "  %s = f32[] all-reduce(%c), replica_groups={}",
      "  %n = f32[4]{0} add(%d, %e)",
    ]
  )
  assert collectives.count_collectives(hlo) == {
    "collective-permute": (1, 2 * 511 * 16 * 32 * 4),
    "all-reduce": (2, 72 * 256 * 4 + 8 * 2 + 4),
  }


@pytest.mark.slow
def test_a_sequence_parallel_step_moves_only_halos_and_the_gradient_sum():
  """Per layer one halo of keys|values forward and its gradient back; no all-gather."""
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "scripts.collectives",
      "--config=configs/tiny.py",
      "--mesh=data:1,seq:2",
      "--seq_len=128",
      "--batch=2",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 0, out.stderr
  lines = {
    line.split(":")[0].strip(): line for line in out.stdout.splitlines() if line.startswith("  ")
  }
  assert lines["collective-permute"].split(":")[1].split(",")[0].strip() == "8"  # 4 layers x 2
  assert "all-gather" not in lines and "all-to-all" not in lines
