"""benchmarks/quickstart.py on a workdir trained with another config than
its default only reads it: the workdir is byte-identical afterwards."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

from mtdense_jax import config_check
from mtdense_jax.train import loop
from tests.conftest import REPO


def _hashes(root):
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob("*")) if p.is_file()}


def test_quickstart_leaves_a_trained_workdir_unchanged(tmp_path, capsys):
  cfg = config_check.load_config_file(
      str(REPO / "configs" / "synthetic_baseline.py") + ":runlocal")
  cfg.data.data_dir = str(tmp_path / "tfds")
  workdir = tmp_path / "run"
  loop.train_and_evaluate(cfg, str(workdir))
  # The run said what it was doing at start and where everything is.
  said = capsys.readouterr().out
  for part in ("Dataset synthetic_scenes ready: took", "Parameters:",
               "total", "Compiling the train step", "took",
               "Done: step 4", f"--workdir {workdir}"):
    assert part in said, part
  before = _hashes(workdir)
  env = dict(os.environ, PYTHONPATH=str(REPO))
  out = subprocess.run(
      [sys.executable, str(REPO / "benchmarks" / "quickstart.py"),
       "--workdir", str(workdir), "--fit_batches", "1"],
      capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "read-only" in out.stdout and "trivial" in out.stdout
  assert _hashes(workdir) == before
