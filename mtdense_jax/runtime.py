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


# The persistent compilation cache: on by default (a rerun or resume of the
# same config loads its compiled programs instead of compiling for a minute).
CACHE_ENV = "MTDENSE_JAX_CACHE"   # a directory, or one of _OFF
_OFF = ("off", "none", "0", "false")
# Programs that compile faster than this are not written: they cost less to
# compile than to read back. Low, because start-up is many small programs.
CACHE_MIN_COMPILE_SECS = 0.2


def default_cache_dir() -> pathlib.Path:
  """$XDG_CACHE_HOME (or ~/.cache)/mtdense_jax/jit."""
  base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
  return pathlib.Path(base) / "mtdense_jax" / "jit"


def compilation_cache_dir(config=None) -> str | None:
  """Where compiled programs persist, or None when the cache is off.

  Off when ``config.compile_cache.enabled`` is False or $MTDENSE_JAX_CACHE
  is "off"; else the first set of ``config.compile_cache.dir``,
  $MTDENSE_JAX_CACHE and `default_cache_dir`.
  """
  cc = config.get("compile_cache", None) if config is not None else None
  env = os.environ.get(CACHE_ENV, "").strip()
  if env.lower() in _OFF or (cc is not None and not cc.get("enabled", True)):
    return None
  return str((cc.get("dir", None) if cc is not None else None) or env or
             default_cache_dir())


def use_compilation_cache(directory: str | None,
                          min_compile_secs: float = CACHE_MIN_COMPILE_SECS
                          ) -> None:
  """Turns the persistent compilation cache on at `directory` (None: off).

  Takes effect for the next compilation even when this process already
  compiled with another setting (jax otherwise fixes the cache at its first
  use).
  """
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_enable_compilation_cache", directory is not None)
  if directory is not None:
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(min_compile_secs))
  compilation_cache.reset_cache()


def initialize(cache_dir: str | None = None, config=None) -> None:
  """Multi-process init when the environment asks for it, and the
  persistent compilation cache (compiles dominate short CPU runs):
  `cache_dir` if given, else `compilation_cache_dir(config)`.

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
  use_compilation_cache(cache_dir or compilation_cache_dir(config))


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
