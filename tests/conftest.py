"""Shared test setup: float32 'highest' matmuls, a persistent compile cache,
absl flags marked parsed (grain needs it), and the golden-vector folder."""

from __future__ import annotations

import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top

# Parity tests compare float32 against PyTorch's float32 CPU results.
jax.config.update("jax_default_matmul_precision", "highest")
# Compiling on 2 CPU cores dominates the suite; reuse compiled steps.
jax.config.update(
    "jax_compilation_cache_dir",
    os.environ.get("MTDENSE_JAX_CACHE",
                   str(pathlib.Path.home() / ".cache" / "mtdense_jax" / "jit")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
# grain's multiprocessing reads absl flags.
if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()

REPO = pathlib.Path(__file__).resolve().parents[1]
GOLDEN = REPO.parent / "shared" / "golden"


@pytest.fixture(scope="session")
def golden():
  """Loads ../shared/golden/<name>.npz (and its .json sidecar)."""
  if not GOLDEN.is_dir():
    pytest.skip(f"golden vectors not found at {GOLDEN} (they live in the "
                "read-only shared/ folder beside the project)")

  def load(name: str):
    import json  # pylint: disable=g-import-not-at-top
    npz = dict(np.load(GOLDEN / f"{name}.npz", allow_pickle=False))
    side = GOLDEN / f"{name}.json"
    meta = json.loads(side.read_text()) if side.exists() else {}
    return npz, meta

  return load
