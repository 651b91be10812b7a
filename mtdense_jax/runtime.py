"""Process-level setup shared by launch.py, predict and the notebooks."""

from __future__ import annotations

import functools
import os
import pathlib
import signal
import sys
import threading
from typing import Callable

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


class _Stop:
  """The signal that asked the running loop to stop, if any."""
  name: str | None = None


def stop_requested() -> str | None:
  """'SIGTERM' / 'SIGINT' once such a signal asked the run to stop."""
  return _Stop.name


def stop_on_signals(fn: Callable) -> Callable:
  """Decorates a training run so preemption loses nothing.

  While `fn` runs, SIGTERM (schedulers, TPU/GPU preemption) and a first
  SIGINT only set ``stop_requested()``; the loop then checkpoints the
  current step and returns normally (exit 0), and rerunning resumes. A
  second SIGINT raises KeyboardInterrupt as usual.
  """
  @functools.wraps(fn)
  def run(*args, **kwargs):
    if threading.current_thread() is not threading.main_thread():
      return fn(*args, **kwargs)   # signal handlers live in the main thread

    def handler(signum, frame):
      del frame
      if _Stop.name is not None and signum == signal.SIGINT:
        raise KeyboardInterrupt("second SIGINT")
      if _Stop.name is None:
        _Stop.name = signal.Signals(signum).name
        print(f"{_Stop.name} received: saving a checkpoint after this step, "
              "then stopping (Ctrl-C again aborts).", file=sys.stderr,
              flush=True)

    old = {s: signal.signal(s, handler)
           for s in (signal.SIGTERM, signal.SIGINT)}
    _Stop.name = None
    try:
      return fn(*args, **kwargs)
    finally:
      for s, h in old.items():
        signal.signal(s, h)
      _Stop.name = None
  return run
