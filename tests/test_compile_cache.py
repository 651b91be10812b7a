"""The persistent compilation cache is on by default, lands where
config.compile_cache / $MTDENSE_JAX_CACHE say, and can be switched off.

Every test here points the cache at its own tmp dir and restores the
suite's cache (tests/conftest.py) afterwards: nothing is written to the
user's cache."""

from __future__ import annotations

import jax
import pytest

from mtdense_jax import config_check, runtime
from mtdense_jax.data import sources
from mtdense_jax.train import loop
from mtdense_jax.train import sharding as shd
from mtdense_jax.train import state as state_lib
from tests.conftest import REPO


@pytest.fixture(autouse=True)
def restore_suite_cache():
  saved = (jax.config.jax_compilation_cache_dir,
           jax.config.jax_enable_compilation_cache,
           jax.config.jax_persistent_cache_min_compile_time_secs)
  yield
  runtime.use_compilation_cache(saved[0] if saved[1] else None, saved[2])


def _config(tmp_path, seed: int):
  cfg = config_check.load_config_file(
      str(REPO / "configs" / "synthetic_baseline.py") + ":runlocal")
  cfg.data.data_dir = str(tmp_path / "tfds")
  # A seed of its own: a program no other test compiled in this process.
  cfg.seed = seed
  return cfg


def _init(cfg):
  """The start-up compile of a run: the sharded train-state init (the
  dataset's metadata only; nothing is rendered)."""
  meta = sources.dataset_meta(sources.get_builder(cfg.data))
  exp = loop.build_experiment(cfg, meta, shd.make_mesh(cfg.mesh))
  state_lib.init_state(exp.factory, exp.tx, exp.weighting, list(exp.tasks),
                       exp.mesh, cfg.get("sharding"), loop.trainable(cfg))


def test_dir_resolution(monkeypatch, tmp_path):
  cfg = _config(tmp_path, 0)
  monkeypatch.delenv(runtime.CACHE_ENV, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert runtime.compilation_cache_dir(cfg) == str(
      tmp_path / "xdg" / "mtdense_jax" / "jit")
  monkeypatch.setenv(runtime.CACHE_ENV, str(tmp_path / "env"))
  assert runtime.compilation_cache_dir(cfg) == str(tmp_path / "env")
  assert runtime.compilation_cache_dir(None) == str(tmp_path / "env")
  cfg.compile_cache.dir = str(tmp_path / "key")
  assert runtime.compilation_cache_dir(cfg) == str(tmp_path / "key")
  cfg.compile_cache.enabled = False
  assert runtime.compilation_cache_dir(cfg) is None
  cfg.compile_cache.enabled = True
  monkeypatch.setenv(runtime.CACHE_ENV, "off")
  assert runtime.compilation_cache_dir(cfg) is None


def test_a_run_fills_the_configured_cache(tmp_path):
  cfg = _config(tmp_path, 7101)
  cfg.compile_cache.dir = str(tmp_path / "cache")
  runtime.initialize(config=cfg)
  _init(cfg)
  assert any((tmp_path / "cache").iterdir())


def test_config_key_switches_the_cache_off(tmp_path):
  cfg = _config(tmp_path, 7102)
  cfg.compile_cache.dir = str(tmp_path / "cache")
  cfg.compile_cache.enabled = False
  runtime.initialize(config=cfg)
  assert not jax.config.jax_enable_compilation_cache
  _init(cfg)
  assert not (tmp_path / "cache").exists() or not any(
      (tmp_path / "cache").iterdir())
