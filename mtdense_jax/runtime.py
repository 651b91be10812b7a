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


# Libraries whose INFO/WARNING records a user cannot act on (orbax's
# read-only manager notes, TFDS's "custom data configuration", jax's backend
# probing); their errors still show.
_NOISY = ("orbax", "tensorflow_datasets", "jax/_src/xla_bridge",
          "etils", "grain")


class _DropLibraryNoise:
  """A logging filter: drops sub-ERROR records logged from _NOISY code."""

  def filter(self, record) -> bool:
    import logging as py_logging  # pylint: disable=g-import-not-at-top
    if record.levelno >= py_logging.ERROR:
      return True
    path = (record.pathname or "").replace("\\", "/")
    return not any(f"/{n}" in path or path.startswith(n) for n in _NOISY)


_quiet = False


def quiet_logs(verbose: bool = False) -> None:
  """absl at WARNING, library noise dropped and TFDS progress bars off, once
  per process, unless `verbose` or ``MTDENSE_VERBOSE=1``."""
  global _quiet
  import logging as py_logging  # pylint: disable=g-import-not-at-top
  if _quiet or verbose or os.environ.get("MTDENSE_VERBOSE") == "1":
    return
  _quiet = True
  logging.set_verbosity(logging.WARNING)
  noise = _DropLibraryNoise()
  logging.get_absl_handler().addFilter(noise)
  for handler in py_logging.getLogger().handlers:
    handler.addFilter(noise)
  for name in ("orbax", "jax._src.xla_bridge"):
    py_logging.getLogger(name).setLevel(py_logging.ERROR)
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    tfds.disable_progress_bar()
  except ImportError:
    pass


def help_and_exit_if_asked(argv, doc: str | None) -> None:
  """`--help` of an absl program prints its doc and flags and exits 0
  (absl's own --help exits 1, which reads as a failure)."""
  if not any(a in ("-h", "--help", "--helpshort", "--helpfull")
             for a in argv[1:]):
    return
  import sys  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  if doc:
    print(doc)
  print(flags.FLAGS.main_module_help())
  sys.exit(0)


class _Stop:
  """The signal that asked the running loop to stop, if any."""
  name: str | None = None
  active = False   # handlers installed (nested runs, e.g. stages, share them)


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
    if (_Stop.active or
        threading.current_thread() is not threading.main_thread()):
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
    _Stop.name, _Stop.active = None, True
    try:
      return fn(*args, **kwargs)
    finally:
      for s, h in old.items():
        signal.signal(s, h)
      _Stop.name, _Stop.active = None, False
  return run


def parse_counts(spec: str) -> dict[str, int]:
  """A CLI 'name=n,...' list (head sizes, class counts) -> {name: n}."""
  out = {}
  for item in filter(None, spec.split(",")):
    name, _, n = item.partition("=")
    out[name.strip()] = int(n)
  return out
