"""One process of the 2-process test: python tests/mp_worker.py PID PORT DATA_DIR.

Trains 2 steps of the runlocal config on a mesh over both processes' CPU
devices (2 each) and prints the per-step losses and a parameter checksum as
JSON on the last line.
"""

import json
import sys

import jax

jax.config.update("jax_num_cpu_devices", 2)
jax.config.update("jax_default_matmul_precision", "highest")


def main(pid: int, port: int, data_dir: str) -> None:
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                             num_processes=2, process_id=pid)
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.FLAGS.mark_as_parsed()
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from mtdense_jax import config_check  # pylint: disable=g-import-not-at-top
  from tests import train_testing  # pylint: disable=g-import-not-at-top

  cfg = config_check.load_config_file("configs/synthetic_baseline.py:runlocal")
  cfg.data.data_dir = data_dir
  history, state = train_testing.run_steps(cfg, 2)
  assert jax.device_count() == 4
  losses = [m["total"] for m in history]
  params = multihost_utils.process_allgather(state["params"], tiled=True)
  checksum = float(sum(np.abs(np.asarray(x, np.float64)).sum()
                       for x in jax.tree.leaves(params)))
  print(json.dumps({"pid": pid, "losses": losses, "checksum": checksum}))


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
