"""Process-level setup shared by launch.py, predict and the notebooks."""

from __future__ import annotations

import os
import pathlib

from absl import logging
import jax

# Environment variables that mean "this is one process of several".
_MULTIPROCESS_ENV = ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS",
                     "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")


def initialize(cache_dir: str | None = None) -> None:
  """Multi-process init when the environment asks for it, and a persistent
  compilation cache (compiles dominate short CPU runs).

  ``MTDENSE_CPU_DEVICES=n`` gives each process n CPU devices (set before
  any backend starts), so a multi-host run can be rehearsed on one machine
  without XLA_FLAGS.
  """
  if os.environ.get("MTDENSE_CPU_DEVICES"):
    jax.config.update("jax_num_cpu_devices",
                      int(os.environ["MTDENSE_CPU_DEVICES"]))
  if any(os.environ.get(k) for k in _MULTIPROCESS_ENV):
    kw = {}
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
      kw = dict(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                process_id=int(os.environ["JAX_PROCESS_ID"]))
    jax.distributed.initialize(**kw)
    logging.info("jax.distributed: process %d of %d", jax.process_index(),
                 jax.process_count())
  cache_dir = cache_dir or os.environ.get(
      "MTDENSE_JAX_CACHE",
      str(pathlib.Path.home() / ".cache" / "mtdense_jax" / "jit"))
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
