"""Multi-host training through launch.py: 2 processes x 2 CPU devices on
localhost (jax.distributed), FSDP over the 4-device global mesh. One run is
killed after its first checkpoint and restarted; it must end with exactly
the parameters of an uninterrupted 2-process run (Orbax saves and restores
each process's shards; grain restores each process's data position).
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import portpicker
import pytest

from mtdense_jax import config_check
from mtdense_jax.data import sources
from tests import train_testing
from tests.conftest import REPO

STEPS = 16     # Long enough that the kill lands mid-run (~1 step/s here).


def _launch(workdir: pathlib.Path, data_dir: str) -> list[subprocess.Popen]:
  port = portpicker.pick_unused_port()
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
             JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
             JAX_NUM_PROCESSES="2", MTDENSE_CPU_DEVICES="2")
  args = [sys.executable, "launch.py",
          "--config", "configs/synthetic_baseline.py:runlocal",
          f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
          f"--config.train.steps={STEPS}",
          f"--config.optim.total_steps={STEPS}",
          "--config.train.ckpt_every=4", "--config.train.log_every=4",
          "--config.train.eval_every=1000", "--config.train.keep_ckpts=2",
          "--config.sharding.strategy=fsdp", "--config.sharding.min_size=1024"]
  logs = workdir.parent / f"{workdir.name}.log"
  procs = []
  for pid in (0, 1):
    out = open(f"{logs}.{pid}.{time.time_ns()}", "w")
    procs.append(subprocess.Popen(args, cwd=REPO, text=True, stdout=out,
                                  stderr=subprocess.STDOUT,
                                  env={**env, "JAX_PROCESS_ID": str(pid)}))
  return procs


def _wait(procs: list[subprocess.Popen]) -> None:
  for p in procs:
    assert p.wait(timeout=600) == 0, f"process exited {p.returncode}"


def _committed(workdir: pathlib.Path) -> list[int]:
  """Steps Orbax has committed (in-flight saves live in *tmp* dirs)."""
  root = workdir / "checkpoints"
  if not root.is_dir():
    return []
  return sorted(int(d.name) for d in root.iterdir() if d.name.isdigit())


def _params(workdir, cfg):
  return train_testing.restored_params(workdir / "checkpoints", cfg)


@pytest.mark.slow
def test_killed_two_process_run_resumes_exactly(tmp_path):
  cfg = config_check.load_config_file(
      str(REPO / "configs" / "synthetic_baseline.py") + ":runlocal")
  cfg.data.data_dir = str(tmp_path / "tfds")
  sources.prepare(sources.get_builder(cfg.data))   # once, before the workers

  straight = tmp_path / "straight"
  _wait(_launch(straight, cfg.data.data_dir))

  crashed = tmp_path / "crashed"
  procs = _launch(crashed, cfg.data.data_dir)
  deadline = time.time() + 600
  while not _committed(crashed) and time.time() < deadline:
    assert all(p.poll() in (None, 0) for p in procs), "worker failed"
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGKILL)   # One host dies mid-run ...
  procs[1].wait()
  procs[0].send_signal(signal.SIGKILL)   # ... and the job is torn down.
  procs[0].wait()
  done = _committed(crashed)
  assert done and done[-1] < STEPS, (
      f"the run reached step {done} before the kill; raise STEPS")
  _wait(_launch(crashed, cfg.data.data_dir))

  a, step_a = _params(straight, cfg)
  b, step_b = _params(crashed, cfg)
  assert step_a == step_b == STEPS
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
