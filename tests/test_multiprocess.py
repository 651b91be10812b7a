"""Two processes on localhost (jax.distributed, 2 CPU devices each) train 2
steps on one global mesh and agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import portpicker

from mtdense_jax import config_check
from mtdense_jax.data import sources
from tests.conftest import REPO


def test_two_processes_train_and_agree(tmp_path):
  cfg = config_check.load_config_file(
      str(REPO / "configs" / "synthetic_baseline.py") + ":runlocal")
  cfg.data.data_dir = str(tmp_path / "tfds")
  sources.prepare(sources.get_builder(cfg.data))   # once, before the workers
  port = portpicker.pick_unused_port()
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["PYTHONPATH"] = str(REPO)
  procs = [subprocess.Popen(
      [sys.executable, str(REPO / "tests" / "mp_worker.py"), str(pid),
       str(port), cfg.data.data_dir], cwd=REPO, env=env, text=True,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE) for pid in (0, 1)]
  outs = []
  for p in procs:
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    outs.append(json.loads(out.strip().splitlines()[-1]))
  a, b = outs
  assert np.all(np.isfinite(a["losses"]))
  np.testing.assert_allclose(a["losses"], b["losses"], rtol=1e-6)
  np.testing.assert_allclose(a["checksum"], b["checksum"], rtol=1e-6)
  assert a["losses"][1] != a["losses"][0]   # it trained
